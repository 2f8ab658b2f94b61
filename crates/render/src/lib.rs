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
//! [`Templates`] keeps the last render's servers serialized, so a health
//! flip does not convert a thousand unchanged servers into Tera's context
//! again; a value is reused only for an equal server, so the output is the
//! same with or without it.
#![deny(missing_docs)]

pub mod error;
mod memo;
pub mod sanitize;
pub mod templates;
pub mod view;

use std::collections::BTreeMap;

use converge_model::manifest::Validator;
use converge_model::{Catalog, Layout, NodeDesired, ReloadAction, RenderedFile, RenderedSet};

pub use error::{RenderError, SyntaxError};
pub use templates::Templates;

/// Renders every target of `desired` against `catalog`, paths under `layout`.
pub fn render(
    desired: &NodeDesired,
    catalog: &Catalog,
    templates: &Templates,
    layout: &Layout,
) -> Result<RenderedSet, RenderError> {
    let view::View {
        context,
        rejections,
        warnings,
    } = view::build(desired, catalog, layout);
    let files = templates.memo.with_context(context, |context| {
        render_targets(desired, templates, layout, context)
    })?;
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

fn render_targets(
    desired: &NodeDesired,
    templates: &Templates,
    layout: &Layout,
    context: &tera::Context,
) -> Result<BTreeMap<String, RenderedFile>, RenderError> {
    let mut files = BTreeMap::new();
    let mut without_catalog = None;
    for (name, target) in &desired.targets {
        let context = if target.validate == Validator::Keepalived {
            &*without_catalog.get_or_insert_with(|| {
                let mut kept = tera::Context::new();
                for key in KEEPALIVED_KEYS {
                    if let Some(value) = context.get(key) {
                        kept.insert(*key, value);
                    }
                }
                kept
            })
        } else {
            context
        };
        let bytes = templates.render(name, &target.template, context)?;
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
