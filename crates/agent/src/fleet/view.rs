//! The fleet as `converge fleet status` and `converge fleet wait` see it:
//! the desired revision, every node's report and whether its session is
//! alive, and the nodes the revision's manifests name.
//!
//! Which nodes must converge comes from the manifests of the revision
//! asked about (their `nodes:` section, read from its bundle in KV), so a
//! node that never reported counts as not converged. Only when that bundle
//! cannot be read are the nodes with reports used instead, and the view
//! says so.

use std::collections::BTreeMap;
use std::time::Duration;

use converge_consul::{Client, Consistency, KvPair, QueryOptions};
use converge_model::Manifests;
use serde::Serialize;

use super::report::NodeReport;
use crate::publish::{bundle, Desired, Keys};
use crate::revision::Revision;

/// One node as the fleet sees it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    /// The node.
    pub node: String,
    /// Its report's session is alive: the report is current, not stale.
    pub alive: bool,
    /// Alive and converged on the revision asked about.
    pub converged: bool,
    /// Its report, absent when it never wrote one.
    pub report: Option<NodeReport>,
}

/// The whole fleet, against one revision.
#[derive(Debug, Clone, Serialize)]
pub struct FleetView {
    /// The revision every node should run.
    pub revision: Option<Revision>,
    /// `manifests` (the revision's `nodes:`) or `reports` (the nodes that
    /// wrote one, when the manifests could not be read).
    pub nodes_from: &'static str,
    /// Why the manifests could not be read, if they could not.
    pub nodes_note: Option<String>,
    /// Every node, by name.
    pub nodes: Vec<NodeView>,
    /// Every node is alive and converged on `revision`.
    pub converged: bool,
}

impl FleetView {
    /// Nodes not (yet) alive and converged on the revision.
    pub fn stragglers(&self) -> impl Iterator<Item = &NodeView> {
        self.nodes.iter().filter(|n| !n.converged)
    }
}

/// Reads `<prefix>/desired` (`None` when nothing is published).
pub async fn desired(client: &Client, keys: &Keys) -> Result<Option<Desired>, String> {
    let key = keys.desired();
    let opts = QueryOptions {
        consistency: Consistency::Consistent,
        ..QueryOptions::default()
    };
    let read = client
        .kv_get(&key, &opts)
        .await
        .map_err(|e| format!("cannot read {key}: {e}"))?;
    parse_desired(keys, read.value.map(|p| p.value))
}

/// `<prefix>/desired`'s value, parsed; `None` when nothing is published.
/// The one decoder of that key, so every reader calls a corrupt value
/// corrupt (and none mistakes it for another revision).
pub fn parse_desired(keys: &Keys, value: Option<Vec<u8>>) -> Result<Option<Desired>, String> {
    value
        .map(|v| {
            serde_json::from_slice::<Desired>(&v)
                .map_err(|e| format!("{} is not a converge publication: {e}", keys.desired()))
        })
        .transpose()
}

/// The nodes the manifests of `revision` name, from its bundle in KV.
pub async fn manifest_nodes(
    client: &Client,
    keys: &Keys,
    revision: &Revision,
) -> Result<Vec<String>, String> {
    let key = keys.bundle(revision);
    let bytes = client
        .kv_get(&key, &QueryOptions::default())
        .await
        .map_err(|e| format!("cannot read {key}: {e}"))?
        .value
        .ok_or_else(|| format!("{key} is gone"))?
        .value;
    let files = bundle::unpack(&bytes)?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    std::fs::create_dir_all(dir.path().join("manifests")).map_err(|e| e.to_string())?;
    for (path, data) in files.iter().filter(|(p, _)| p.starts_with("manifests/")) {
        std::fs::write(dir.path().join(path), data).map_err(|e| e.to_string())?;
    }
    let manifests =
        Manifests::load(&dir.path().join("manifests")).map_err(|e| format!("{key}: {e}"))?;
    Ok(manifests.manifest.nodes.keys().cloned().collect())
}

/// Every node's report by node, with whether its session is alive
/// (`None`: a value that is not a report).
pub type Reports = BTreeMap<String, (bool, Option<NodeReport>)>;

/// Every report under `<prefix>/nodes/`, with whether its session is
/// alive; blocks while `index` is current (0: a plain read). Returns
/// the index of the answer too.
pub async fn reports(
    client: &Client,
    keys: &Keys,
    index: u64,
    wait: Duration,
) -> Result<(Reports, u64), String> {
    let prefix = keys.nodes();
    let opts = QueryOptions {
        index,
        wait: Some(wait),
        ..QueryOptions::default()
    };
    let read = client
        .kv_list(&prefix, &opts)
        .await
        .map_err(|e| format!("cannot read {prefix}: {e}"))?;
    Ok((parse_reports(keys, read.value), read.meta.index))
}

/// The reports among `pairs`, a listing of `<prefix>/nodes/`.
pub fn parse_reports(keys: &Keys, pairs: Vec<KvPair>) -> Reports {
    let prefix = keys.nodes();
    pairs
        .into_iter()
        .filter_map(|pair| {
            let node = pair.key.strip_prefix(&prefix)?.to_string();
            let report = serde_json::from_slice(&pair.value).ok();
            Some((node, (pair.session.is_some(), report)))
        })
        .collect()
}

/// The view of the fleet against `revision`, for the nodes `nodes`
/// (`None`: the nodes with reports).
pub fn view(
    revision: Option<Revision>,
    nodes: Result<Vec<String>, String>,
    reports: &Reports,
) -> FleetView {
    let (names, nodes_from, nodes_note) = match nodes {
        Ok(names) => (names, "manifests", None),
        Err(e) => (reports.keys().cloned().collect(), "reports", Some(e)),
    };
    let nodes: Vec<NodeView> = names
        .into_iter()
        .map(|node| {
            let (alive, report) = reports.get(&node).cloned().unwrap_or((false, None));
            let converged = alive
                && revision
                    .as_ref()
                    .is_some_and(|r| report.as_ref().is_some_and(|rep| rep.converged_on(r)));
            NodeView {
                node,
                alive,
                converged,
                report,
            }
        })
        .collect();
    FleetView {
        converged: !nodes.is_empty() && nodes.iter().all(|n| n.converged),
        revision,
        nodes_from,
        nodes_note,
        nodes,
    }
}
