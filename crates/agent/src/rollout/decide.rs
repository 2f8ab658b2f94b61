//! Whether a node may start taking a revision now (pure): the rules of
//! the rollout other than the locks, in the order an operator would ask
//! them.

use converge_model::rollout::NodeRollout;

use super::{FleetState, Waiting};
use crate::revision::Revision;

/// `None`: go and take the locks; else why not yet.
pub fn decide(
    plan: &NodeRollout,
    node: &str,
    revision: &Revision,
    fleet: &FleetState,
) -> Option<Waiting> {
    if fleet.paused || fleet.paused_nodes.contains(node) {
        return Some(Waiting::Paused {
            fleet: fleet.paused,
        });
    }
    if let Some(h) = fleet.halt.as_ref().filter(|h| h.halts(revision)) {
        return Some(Waiting::Halted {
            node: h.node.clone(),
            reason: h.reason.clone(),
        });
    }
    let canaries: Vec<String> = plan
        .wait_for_canaries
        .iter()
        .filter(|c| fleet.soaked.get(*c) != Some(revision))
        .cloned()
        .collect();
    if !canaries.is_empty() {
        return Some(Waiting::Canaries { nodes: canaries });
    }
    // A member that is not running (no live report) is not waited for:
    // the MASTER must not wait for a dead BACKUP. Nor is one whose report
    // does not parse: the order only spares the VIP a second move, the
    // locks keep the two apart regardless.
    let first: Vec<String> = plan
        .after
        .iter()
        .filter(|n| {
            fleet.reports.get(*n).is_some_and(|(alive, r)| {
                *alive && r.as_ref().is_some_and(|r| !r.converged_on(revision))
            })
        })
        .cloned()
        .collect();
    if !first.is_empty() {
        return Some(Waiting::Order { nodes: first });
    }
    None
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::fleet::NodeReport;
    use crate::rollout::Halt;

    fn plan(canaries: &[&str], after: &[&str]) -> NodeRollout {
        NodeRollout {
            locks: Vec::new(),
            max_parallel: None,
            canary: false,
            wait_for_canaries: canaries.iter().map(|s| s.to_string()).collect(),
            after: after.iter().map(|s| s.to_string()).collect(),
            soak: Duration::ZERO,
            settle: Duration::ZERO,
            gate_timeout: Duration::ZERO,
        }
    }

    fn rev(r: &str) -> Revision {
        Revision::parse(r).expect("rev")
    }

    fn report(node: &str, on: &str) -> NodeReport {
        NodeReport {
            node: node.into(),
            revision: Some(rev(on)),
            desired: Some(rev(on)),
            converged: true,
            catalog_index: 1,
            targets: Default::default(),
            holds: Vec::new(),
            error: None,
            version: String::new(),
            last_apply: None,
            since: 0,
        }
    }

    #[test]
    fn a_pause_comes_first_then_a_halt_of_this_revision_only() {
        let mut fleet = FleetState::default();
        fleet.paused_nodes.insert("lb1".into());
        let p = plan(&[], &[]);
        assert_eq!(
            decide(&p, "lb1", &rev("b2"), &fleet),
            Some(Waiting::Paused { fleet: false })
        );
        assert_eq!(decide(&p, "lb3", &rev("b2"), &fleet), None);
        fleet.halt = Some(Halt {
            revision: Some(rev("b2")),
            node: "lb2".into(),
            reason: "rejected".into(),
            at: 0,
        });
        assert!(matches!(
            decide(&p, "lb3", &rev("b2"), &fleet),
            Some(Waiting::Halted { .. })
        ));
        assert_eq!(
            decide(&p, "lb3", &rev("c3"), &fleet),
            None,
            "a new publication resumes"
        );
    }

    #[test]
    fn others_wait_for_every_canary_to_soak_this_revision() {
        let mut fleet = FleetState::default();
        let p = plan(&["lb2"], &[]);
        fleet.soaked.insert("lb2".into(), rev("a1"));
        assert_eq!(
            decide(&p, "lb1", &rev("b2"), &fleet),
            Some(Waiting::Canaries {
                nodes: vec!["lb2".into()]
            })
        );
        fleet.soaked.insert("lb2".into(), rev("b2"));
        assert_eq!(decide(&p, "lb1", &rev("b2"), &fleet), None);
    }

    #[test]
    fn the_master_waits_for_live_backups_only() {
        let mut fleet = FleetState::default();
        let p = plan(&[], &["lb2"]);
        fleet
            .reports
            .insert("lb2".into(), (true, Some(report("lb2", "a1"))));
        assert!(matches!(
            decide(&p, "lb1", &rev("b2"), &fleet),
            Some(Waiting::Order { .. })
        ));
        fleet
            .reports
            .insert("lb2".into(), (true, Some(report("lb2", "b2"))));
        assert_eq!(decide(&p, "lb1", &rev("b2"), &fleet), None);
        fleet
            .reports
            .insert("lb2".into(), (false, Some(report("lb2", "a1"))));
        assert_eq!(decide(&p, "lb1", &rev("b2"), &fleet), None, "a dead BACKUP");
    }
}
