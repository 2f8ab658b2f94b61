//! A node's report: what it runs and how its last pass went, as
//! `<prefix>/nodes/<node>` holds it. Built from the daemon's status, so
//! the report, `/status` and `converge status` never disagree.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::daemon::board::{unix_now, Status};
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
    /// `applied`, `unchanged`, `rejected`, `failed`, `rolled_back` or
    /// `drifted` (changes held back are in [`NodeReport::holds`]).
    pub outcome: Option<String>,
    /// Unix time its live file was last found changed by hand.
    pub last_drift: Option<u64>,
}

impl NodeReport {
    /// The report of a daemon whose status is `status`, dated now.
    pub fn from_status(status: &Status) -> Self {
        let following = status.published.clone().unwrap_or_default();
        let target_error = status
            .targets
            .iter()
            .find_map(|(name, t)| t.last_error.as_ref().map(|e| format!("{name}: {e}")));
        let error = following
            .error
            .clone()
            .or_else(|| status.input_error.clone())
            .or_else(|| status.source_error.clone())
            .or(target_error);
        Self {
            node: status.node.clone(),
            revision: status.revision.clone(),
            desired: following.desired,
            converged: status.converged && following.error.is_none(),
            catalog_index: status.catalog_index,
            targets: status
                .targets
                .iter()
                .map(|(name, t)| {
                    let report = TargetReport {
                        sha256: t.sha256.clone(),
                        outcome: t.outcome.clone(),
                        last_drift: t.last_drift,
                    };
                    (name.clone(), report)
                })
                .collect(),
            holds: status
                .holds
                .iter()
                .map(|h| format!("{}: {}", h.backend, h.reason))
                .collect(),
            error,
            version: env!("CARGO_PKG_VERSION").to_string(),
            last_apply: status.targets.values().filter_map(|t| t.last_apply).max(),
            since: unix_now(),
        }
    }

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
