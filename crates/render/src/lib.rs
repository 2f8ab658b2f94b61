//! Rendering: desired state + catalog snapshot → bytes per target.
//!
//! A pure function of its inputs. [`view`] first turns the manifest and the
//! catalog into a plain, sorted context (servers per backend, the primary
//! per database, this node's VRRP instances), refusing catalog values that
//! could break out of their field ([`sanitize`]). Templates then only format
//! that context; they make no decisions about health or roles, so the same
//! rules hold whatever template an operator writes.
//!
//! Determinism is by construction: every collection in the context is a
//! sorted `Vec` or a `BTreeMap`, and Tera iterates them in order, so an
//! unchanged world renders byte-identical files (invariant 3).
//!
//! [`Templates`] keeps what a health flip would otherwise redo for every
//! unchanged backend. A template whose backends are written by one loop
//! that reads nothing but its backend is rendered in pieces, and the text of
//! a backend equal to one of the last render is reused (`split.rs`); any
//! other template is rendered whole, reusing the last render's servers
//! serialized into Tera's context (`memo.rs`). Either is reused only for an
//! equal input, so the output is the same with or without them.
#![deny(missing_docs)]

#[cfg(test)]
mod churn;
pub mod error;
mod memo;
pub mod sanitize;
mod split;
pub mod templates;
pub mod view;

use std::collections::BTreeMap;

use converge_model::manifest::Validator;
use converge_model::{Catalog, Layout, NodeDesired, ReloadAction, RenderedFile, RenderedSet};

pub use error::{RenderError, SyntaxError};
use split::Shape;
pub use templates::Templates;

/// Renders every target of `desired` against `catalog`, paths under `layout`.
pub fn render(
    desired: &NodeDesired,
    catalog: &Catalog,
    templates: &Templates,
    layout: &Layout,
) -> Result<RenderedSet, RenderError> {
    render_as(desired, catalog, templates, layout, true)
}

/// [`render`], with `split` false rendering every template whole (what the
/// tests compare split renders with).
fn render_as(
    desired: &NodeDesired,
    catalog: &Catalog,
    templates: &Templates,
    layout: &Layout,
    split: bool,
) -> Result<RenderedSet, RenderError> {
    let view::View {
        mut context,
        rejections,
        warnings,
    } = view::build(desired, catalog, layout);
    let in_pieces = split
        && desired.targets.values().all(|t| {
            matches!(
                templates.shapes.get(&t.template),
                Some(Shape::Without | Shape::Split(_))
            )
        });
    let mut pieces = None;
    if in_pieces {
        let pass = templates
            .bodies
            .start(std::mem::take(&mut context.backends));
        match render_pieces(desired, templates, layout, &context, pass) {
            Ok(files) => pieces = Some(files),
            Err(backends) => context.backends = backends,
        }
    }
    let files = match pieces {
        Some(files) => files,
        None => templates.memo.with_context(context, |context| {
            render_targets(desired, layout, context, |target, template, context, _| {
                templates.render(target, template, context)
            })
        })?,
    };
    Ok(RenderedSet {
        node: desired.name.clone(),
        layout: layout.clone(),
        files,
        rejections,
        warnings,
        secrets: desired.secrets.values().cloned().collect(),
    })
}

/// The context's keys a target validated as keepalived renders with:
/// all but `backends` and `databases`, the two built from the catalog.
///
/// So keepalived's config is a function of the revision alone, and only
/// a new revision changes it: a reload of keepalived is always a switch
/// of revision, which the rollout rations with its locks, while catalog
/// changes, which take no lock, can never reload it. A keepalived
/// template that reads `backends` or `databases` does not render (Tera
/// names the variable), rather than reloading keepalived, outside any
/// lock, whenever a server comes or goes.
const KEEPALIVED_KEYS: &[&str] = &[
    "node",
    "root",
    "haproxy",
    "frontends",
    "pgbouncer",
    "vips",
    "keepalived",
    "targets",
];

/// Renders targets whose templates are all split or never read `backends`
/// ([`split`]), from `context` without its backends, which `pass` holds.
/// On any error, the backends back for a render of whole templates, which
/// reports the error as it always has.
fn render_pieces(
    desired: &NodeDesired,
    templates: &Templates,
    layout: &Layout,
    context: &view::Context,
    mut pass: split::Pass,
) -> Result<BTreeMap<String, RenderedFile>, Vec<view::BackendView>> {
    let Ok(tera_context) = tera::Context::from_serialize(context) else {
        return Err(pass.into_backends());
    };
    let files = render_targets(
        desired,
        layout,
        &tera_context,
        |target, template, context, with_catalog| match templates.shapes.get(template) {
            // A keepalived template gets no backends: rendered whole, one
            // that reads them fails as it does without pieces.
            Some(Shape::Split(split)) if with_catalog => {
                pass.render(&templates.tera, template, split, context)
            }
            _ => templates.render(target, template, context),
        },
    );
    match files {
        Ok(files) => {
            templates.bodies.finish(pass);
            Ok(files)
        }
        Err(_) => Err(pass.into_backends()),
    }
}

/// Renders every target through `render(target, template, context,
/// with_catalog)`: `context`, or for keepalived the part of it without
/// catalog data ([`KEEPALIVED_KEYS`]; `with_catalog` false).
fn render_targets(
    desired: &NodeDesired,
    layout: &Layout,
    context: &tera::Context,
    mut render: impl FnMut(&str, &str, &tera::Context, bool) -> Result<String, RenderError>,
) -> Result<BTreeMap<String, RenderedFile>, RenderError> {
    let mut files = BTreeMap::new();
    let mut without_catalog = None;
    for (name, target) in &desired.targets {
        let (context, with_catalog) = if target.validate == Validator::Keepalived {
            let kept = without_catalog.get_or_insert_with(|| {
                let mut kept = tera::Context::new();
                for key in KEEPALIVED_KEYS {
                    if let Some(value) = context.get(key) {
                        kept.insert(*key, value);
                    }
                }
                kept
            });
            (&*kept, false)
        } else {
            (context, true)
        };
        let bytes = render(name, &target.template, context, with_catalog)?;
        let mode = converge_model::check::parse_mode(&target.mode).unwrap_or(0o644);
        files.insert(
            name.clone(),
            RenderedFile {
                target: name.clone(),
                destination: layout.path(&target.destination),
                bytes: bytes.into_bytes(),
                mode,
                owner: target.owner.clone(),
                group: target.group.clone(),
                validate: target.validate.clone(),
                reload: ReloadAction::resolve(&target.reload, layout),
                bundle: target.bundle.clone().unwrap_or_else(|| name.clone()),
                secret: target.secret,
                backups: target.backups,
            },
        );
    }
    Ok(files)
}
