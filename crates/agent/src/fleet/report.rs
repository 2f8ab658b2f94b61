//! A node's report: what it runs and how its last pass went, as
//! `<prefix>/nodes/<node>` holds it. The daemon builds it from its status
//! (`daemon::node_report`), so the report, `/status` and `converge status`
//! never disagree.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::revision::Revision;

/// One node's report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    /// The node.
    pub node: String,
    /// The revision it runs (the last one that loaded here).
    pub revision: Option<Revision>,
    /// The fleet's desired revision as the node last read it.
    pub desired: Option<Revision>,
    /// Its last pass left every target applied or unchanged, nothing held
    /// or left out, on the revision it runs, with nothing in the way of
    /// the desired one.
    pub converged: bool,
    /// Consul's index of the catalog snapshot the last pass rendered.
    pub catalog_index: u64,
    /// Per target.
    pub targets: BTreeMap<String, TargetReport>,
    /// Changes the guard holds back, as `backend: reason`.
    pub holds: Vec<String>,
    /// What keeps the node from converging, if anything: the published
    /// revision not taken, inputs that do not load, the catalog source
    /// failing, a target failing.
    pub error: Option<String>,
    /// converge's version.
    pub version: String,
    /// Unix time of the last apply that changed a file.
    pub last_apply: Option<u64>,
    /// Unix time this report's content last changed.
    pub since: u64,
}

/// One target in a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetReport {
    /// SHA-256 of the content rendered for it.
    pub sha256: Option<String>,
    /// `applied`, `unchanged`, `held` (a hold keeps part of the catalog's
    /// change out of it), `rejected`, `failed`, `rolled_back` or `drifted`.
    pub outcome: Option<String>,
    /// Unix time its live file was last found changed by hand.
    pub last_drift: Option<u64>,
    /// The held backends and databases whose change it is kept from (see
    /// [`NodeReport::holds`] for why).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held_by: Vec<String>,
}

impl NodeReport {
    /// Whether `other` says the same, whenever each was made.
    pub fn same_as(&self, other: &NodeReport) -> bool {
        Self {
            since: 0,
            ..self.clone()
        } == Self {
            since: 0,
            ..other.clone()
        }
    }

    /// Whether this node runs `revision` and is converged on it.
    pub fn converged_on(&self, revision: &Revision) -> bool {
        self.converged && self.revision.as_ref() == Some(revision)
    }
}
