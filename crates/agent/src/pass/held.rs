//! Which targets a hold keeps from changing.
//!
//! A hold is per backend or database, but a node reports per target, and
//! what an operator looks for is the file that is not what the catalog
//! asks for. Templates are free to render any backend into any target,
//! so the only honest answer is to ask the render: for each hold, render
//! again with that one service at the instances the guard kept out, and
//! every target whose bytes differ is held by it. Only a pass that holds
//! something pays for this, one render per hold.

use std::collections::BTreeMap;

use converge_model::{Layout, NodeDesired, RenderedSet};

use crate::guard::Guarded;
use crate::pass::Prepared;

/// Per target `set` renders differently than it would without a hold of
/// `guarded`, the holds (backend or database names) that make the
/// difference. A render without the hold that fails names nothing: the
/// hold is still listed by backend.
pub(super) fn targets(
    desired: &NodeDesired,
    prepared: &Prepared,
    layout: &Layout,
    guarded: &Guarded,
    set: &RenderedSet,
) -> BTreeMap<String, Vec<String>> {
    let mut held: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for h in &guarded.holds {
        let Some(entry) = guarded.displaced.get(&h.service) else {
            continue;
        };
        let without = guarded
            .catalog
            .clone()
            .with_service(&h.service, entry.clone());
        let Ok(other) = converge_render::render(desired, &without, &prepared.templates, layout)
        else {
            continue;
        };
        for (name, file) in &set.files {
            if other.files.get(name).is_some_and(|o| o.bytes != file.bytes) {
                held.entry(name.clone())
                    .or_default()
                    .push(h.backend.clone());
            }
        }
    }
    held
}
