//! One pass: every decision converge makes about a node, in one pure call.
//!
//! `inputs + catalog + guard baseline + operator releases → rendered set +
//! holds + left-out instances + databases to pause`. `converge plan`, `converge apply --once`,
//! `converge validate` and the daemon's reconciler all call [`run`], and
//! nothing else decides what goes live, so `plan` on a node shows exactly
//! what `run` would do there, holds included: a decision made only in the
//! daemon would be a bug by construction, not by oversight.
//!
//! The pass touches nothing. Reading the baseline from disk, applying the
//! rendered set and recording the next baseline are the callers' steps
//! around it ([`crate::once`] for the one-shot commands, the reconciler
//! for the daemon).

use std::collections::{BTreeMap, BTreeSet};

use converge_model::{Catalog, Layout, Manifests, NodeDesired, Rejection, RenderedSet};
use converge_render::Templates;

use crate::error::AgentError;
use crate::guard::{guard, Hold};
use crate::pause::{self, Pause};
use crate::revision::Revision;

mod held;

/// Validated manifests and parsed templates: the desired state of every
/// node, waiting for a catalog. What a pass reads besides the catalog.
#[derive(Debug)]
pub struct Prepared {
    /// The manifests, validated.
    pub manifests: Manifests,
    /// Parsed templates.
    pub templates: Templates,
    /// Path layout under `--root`.
    pub layout: Layout,
    /// What these manifests and templates are called (see [`Revision`]);
    /// `None` when it could not be told.
    pub revision: Option<Revision>,
}

impl Prepared {
    /// The desired state of `node`.
    pub fn desired(&self, node: &str) -> Result<NodeDesired, AgentError> {
        self.manifests.for_node(node).map_err(AgentError::Manifest)
    }
}

/// What one pass decided.
#[derive(Debug)]
pub struct Pass {
    /// Every target of the node, rendered against [`Pass::accepted`]; its
    /// `rejections` are the instances left out.
    pub set: RenderedSet,
    /// Changes the guard held back, each with its reason.
    pub holds: Vec<Hold>,
    /// Per target a hold keeps from changing, the held backends and
    /// databases: the targets a node reports as `held`. Found by rendering
    /// once more per hold with that one service let through (only while
    /// something is held), since templates may put any backend anywhere.
    pub held_targets: BTreeMap<String, Vec<String>>,
    /// The catalog as rendered: the input with held services at their
    /// baseline instances. What the next baseline becomes once applied.
    pub accepted: Catalog,
    /// PgBouncer databases to keep paused while their primary is unclear
    /// (see [`pause`]); only the daemon carries them out.
    pub pauses: Vec<Pause>,
}

impl Pass {
    /// Catalog instances left out of the render, and why.
    pub fn left_out(&self) -> &[Rejection] {
        &self.set.rejections
    }

    /// Whether the render holds everything the catalog asked for: nothing
    /// held back, nobody left out.
    pub fn complete(&self) -> bool {
        self.holds.is_empty() && self.left_out().is_empty()
    }
}

/// Guards `catalog` against `baseline` (minus the backends and databases
/// an operator `released`) and renders `node` against the result, paths
/// under `layout`.
pub fn run(
    prepared: &Prepared,
    node: &str,
    layout: &Layout,
    catalog: Catalog,
    baseline: Option<&Catalog>,
    released: &BTreeSet<String>,
) -> Result<Pass, AgentError> {
    let desired = prepared.desired(node)?;
    let guarded = guard(&desired.manifest, baseline, catalog, released);
    let set = converge_render::render(&desired, &guarded.catalog, &prepared.templates, layout)?;
    let held_targets = held::targets(&desired, prepared, layout, &guarded, &set);
    let pauses = pause::decide(&desired, layout, &guarded.holds);
    Ok(Pass {
        set,
        holds: guarded.holds,
        held_targets,
        accepted: guarded.catalog,
        pauses,
    })
}
