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
    // A halt is the one wait that is an error: the revision failed here
    // or elsewhere, and nobody takes it.
    let halted = following
        .waiting
        .as_ref()
        .filter(|w| matches!(w, crate::rollout::Waiting::Halted { .. }))
        .map(ToString::to_string);
    let error = following
        .error
        .clone()
        .or(halted)
        .or_else(|| status.input_error.clone())
        .or_else(|| status.source_error.clone())
        .or(target_error);
    NodeReport {
        node: status.node.clone(),
        revision: status.revision.clone(),
        desired: following.desired,
        converged: status.converged
            && following.error.is_none()
            && following.waiting != Some(crate::rollout::Waiting::Gate),
        catalog_index: status.catalog_index,
        targets: status
            .targets
            .iter()
            .map(|(name, t)| {
                let report = TargetReport {
                    sha256: t.sha256.clone(),
                    outcome: t.outcome.clone(),
                    last_drift: t.last_drift,
                    held_by: t.held_by.clone(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::board::TargetStatus;
    use crate::follow::Following;
    use crate::revision::Revision;

    fn status() -> Status {
        let mut s = Status {
            node: "lb1".into(),
            revision: Revision::parse("abc1234"),
            converged: true,
            ..Status::default()
        };
        s.targets.insert(
            "app".into(),
            TargetStatus {
                sha256: Some("00".into()),
                outcome: Some("unchanged".into()),
                ..TargetStatus::default()
            },
        );
        s
    }

    #[test]
    fn a_published_revision_not_taken_is_the_error_and_the_node_not_converged() {
        let mut s = status();
        let report = node_report(&s);
        assert!(report.converged && report.error.is_none());
        assert!(report.converged_on(&Revision::parse("abc1234").expect("rev")));

        s.published = Some(Following {
            desired: Revision::parse("def5678"),
            error: Some("checksum mismatch".into()),
            waiting: None,
        });
        s.targets.get_mut("app").expect("app").last_error = Some("rejected".into());
        let report = node_report(&s);
        assert!(!report.converged, "stays on its last good revision");
        assert_eq!(report.error.as_deref(), Some("checksum mismatch"));
        assert_eq!(report.desired, Revision::parse("def5678"));
    }

    #[test]
    fn reports_made_at_different_times_with_the_same_content_are_the_same() {
        let a = node_report(&status());
        let b = NodeReport {
            since: a.since + 60,
            ..a.clone()
        };
        assert!(a.same_as(&b));
        let c = NodeReport {
            catalog_index: 7,
            ..a.clone()
        };
        assert!(!a.same_as(&c));
    }
}
