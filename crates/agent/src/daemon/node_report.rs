//! The daemon's status as the report a node following the published
//! revision writes to `<prefix>/nodes/<node>` (see [`crate::fleet`]).

use super::board::{unix_now, Status};
use crate::fleet::report::TargetReport;
use crate::fleet::NodeReport;

/// The report of a daemon whose status is `status`, dated now.
pub fn node_report(status: &Status) -> NodeReport {
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
    NodeReport {
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
