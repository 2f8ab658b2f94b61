//! `converge fleet plan`: what a manifest change would do on every node,
//! before it is merged and published.
//!
//! Every node of either revision is rendered twice against one catalog
//! snapshot: once at the *published* revision (the bundle `<prefix>/desired`
//! names, fetched and checked against its checksum as a node does), once
//! at the *proposed* one (the local manifests and templates, a pull
//! request's checkout). Each render goes through the same [`pass`] as
//! every other command, with no guard baseline (as `validate`: a
//! repository has no live state to guard), and the two are compared by
//! [`converge_apply::plan_between`], which classifies the result with the
//! very code `plan` uses: diffs masked, runtime API updates, reloads,
//! settings that need a restart.
//!
//! Unlike `converge plan` on a node, no live file is read: the answer is
//! the change between two revisions, the same on any machine, not what a
//! node would do now (that also depends on drift and on a pass the node has
//! not made yet). Both revisions resolve `file:` secrets against the same
//! directory, so only the manifests and templates can make a difference.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use converge_apply::{Dropped, Plan};
use converge_consul::Client;
use converge_model::{Catalog, Layout, Rejection};
use serde::Serialize;

use super::view;
use crate::error::AgentError;
use crate::inputs::{Inputs, Unpacked};
use crate::pass::{self, Prepared};
use crate::publish::Keys;
use crate::revision::Revision;
use crate::{follow, publish::bundle};

/// The published revision, loaded.
#[derive(Debug)]
pub struct Published {
    /// Its name, as `<prefix>/desired` gives it.
    pub revision: Revision,
    /// Its manifests and templates.
    pub prepared: Prepared,
}

/// Reads `<prefix>/desired` and loads the bundle it names, after checking
/// the bundle's bytes against the published checksum; `file:` secrets
/// resolve against `secrets`. `None` when nothing is published yet.
pub async fn published(
    client: &Client,
    keys: &Keys,
    secrets: &Path,
) -> Result<Option<Published>, String> {
    let Some(desired) = view::desired(client, keys).await? else {
        return Ok(None);
    };
    let p = &desired.current;
    let files = follow::fetch(client, keys, p).await?;
    let dir = tempfile::tempdir().map_err(|e| format!("cannot make a scratch directory: {e}"))?;
    bundle::write_into(dir.path(), &files)
        .and_then(|()| std::fs::write(dir.path().join("revision"), p.revision.as_str()))
        .map_err(|e| format!("cannot unpack revision {}: {e}", p.revision))?;
    let inputs = Inputs {
        manifests: dir.path().join("manifests"),
        templates: dir.path().join("templates"),
        catalog: PathBuf::new(),
        root: PathBuf::from("/"),
        unpacked: Some(Unpacked {
            revision: dir.path().join("revision"),
            secrets: secrets.to_path_buf(),
        }),
    };
    let prepared = inputs
        .prepare()
        .map_err(|e| format!("the published revision {} does not load: {e}", p.revision))?;
    Ok(Some(Published {
        revision: p.revision.clone(),
        prepared,
    }))
}

/// The published revision loaded for a node whose files are under
/// `root`, without making it the node's: `plan --published` and
/// `validate --published` read what `apply --once --published` and the
/// daemon would switch to, and leave the node's store as it is.
///
/// # Errors
///
/// Consul cannot be asked within `timeout`, nothing is published, or the
/// bundle fails its checksum or does not load.
pub fn published_once(
    config: converge_consul::Config,
    keys: &Keys,
    secrets: &Path,
    root: &Path,
    timeout: Duration,
) -> Result<Prepared, AgentError> {
    let found = follow::once(config, timeout, |client| async move {
        published(&client, keys, secrets)
            .await?
            .ok_or_else(|| format!("nothing is published at {} yet", keys.desired()))
    })?;
    let mut prepared = found.prepared;
    prepared.layout = Layout::new(root);
    Ok(prepared)
}

/// Every node, proposed against published.
#[derive(Debug, Serialize)]
pub struct FleetPlan {
    /// The proposed revision (the local directories).
    pub proposed: Option<Revision>,
    /// The published revision compared against; `None` when nothing is
    /// published yet (then every target is new).
    pub published: Option<Revision>,
    /// Some node would change, or is added or dropped.
    pub changes: bool,
    /// Per node of either revision, by name.
    pub nodes: Vec<NodePlan>,
}

impl FleetPlan {
    /// Nodes whose render failed.
    pub fn errors(&self) -> impl Iterator<Item = &NodePlan> {
        self.nodes.iter().filter(|n| n.error.is_some())
    }
}

/// One node, proposed against published.
#[derive(Debug, Serialize)]
pub struct NodePlan {
    /// The node.
    pub node: String,
    /// A node of the proposed manifests.
    pub in_proposed: bool,
    /// A node of the published manifests.
    pub in_published: bool,
    /// Something would change on it (a target changed, new or dropped, or
    /// the node itself added or dropped).
    pub changes: bool,
    /// What `apply` would do on it going from the published render to the
    /// proposed one; `None` when it is not a node of the proposed
    /// manifests or did not render.
    pub plan: Option<Plan>,
    /// Targets the published revision renders and the proposed one no
    /// longer does (their files are left in place).
    pub dropped: Vec<Dropped>,
    /// Catalog instances the proposed render leaves out.
    pub left_out: Vec<Rejection>,
    /// Warnings of the proposed render.
    pub warnings: Vec<String>,
    /// Why a render failed.
    pub error: Option<String>,
}

/// Plans every node of `proposed` and `published` against `catalog`.
pub fn plan(proposed: &Prepared, published: Option<&Published>, catalog: &Catalog) -> FleetPlan {
    let before = published.map(|p| &p.prepared);
    let nodes: BTreeSet<&String> = [Some(proposed), before]
        .into_iter()
        .flatten()
        .flat_map(|p| p.manifests.manifest.nodes.keys())
        .collect();
    let nodes: Vec<NodePlan> = nodes
        .into_iter()
        .map(|node| node_plan(node, proposed, before, catalog))
        .collect();
    FleetPlan {
        proposed: proposed.revision.clone(),
        published: published.map(|p| p.revision.clone()),
        changes: nodes.iter().any(|n| n.changes),
        nodes,
    }
}

/// One node, rendered at both revisions and compared.
fn node_plan(
    node: &str,
    proposed: &Prepared,
    published: Option<&Prepared>,
    catalog: &Catalog,
) -> NodePlan {
    let is_node = |p: &Prepared| p.manifests.manifest.nodes.contains_key(node);
    let mut out = NodePlan {
        node: node.to_string(),
        in_proposed: is_node(proposed),
        in_published: published.is_some_and(is_node),
        changes: false,
        plan: None,
        dropped: Vec::new(),
        left_out: Vec::new(),
        warnings: Vec::new(),
        error: None,
    };
    // Both renders under `/`: destinations read as on a node, and nothing
    // under them is read.
    let layout = Layout::new("/");
    let render = |p: &Prepared| {
        pass::run(p, node, &layout, catalog.clone(), None, &BTreeSet::new()).map(|pass| pass.set)
    };
    let before = match published.filter(|p| is_node(p)).map(render).transpose() {
        Ok(set) => set,
        Err(e) => {
            out.error = Some(format!("the published revision does not render: {e}"));
            return out;
        }
    };
    if !out.in_proposed {
        out.changes = true;
        if let Some(b) = &before {
            out.dropped = converge_apply::dropped(b, &empty(b));
        }
        return out;
    }
    match render(proposed) {
        Ok(after) => {
            let plan = converge_apply::plan_between(before.as_ref(), &after);
            if let Some(b) = &before {
                out.dropped = converge_apply::dropped(b, &after);
            }
            out.changes = plan.has_changes() || !out.dropped.is_empty() || !out.in_published;
            out.left_out = after.rejections;
            out.warnings = after.warnings;
            out.plan = Some(plan);
        }
        Err(e) => out.error = Some(format!("the proposed revision does not render: {e}")),
    }
    out
}

/// `set` with no files: what a node no longer in the manifests renders.
fn empty(set: &converge_model::RenderedSet) -> converge_model::RenderedSet {
    converge_model::RenderedSet {
        files: Default::default(),
        ..set.clone()
    }
}
