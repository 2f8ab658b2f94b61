//! The `rollout:` section: how a new published revision spreads over the
//! fleet, and what it means for one node (pure; the agent's `rollout`
//! module carries it out with Consul locks).
//!
//! A new revision is the one change that reloads every program of every
//! node at once, so it is the one change that is rationed: nodes of a
//! group (by default the nodes of one VRRP instance, so both load
//! balancers of a pair never reload together) take it one at a time, at
//! most `max_parallel` nodes fleet-wide, canaries first; inside a VRRP
//! group the node with the highest priority (the MASTER) goes last, so the
//! VIP moves at most once.

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::HaproxyDuration;

// What the section means for one node: `Manifest::node_rollout` in
// `desired.rs`, beside the rest of the per-node desired state.

/// The `rollout:` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    /// Named groups of nodes that never take a new revision at the same
    /// time, besides one group per VRRP instance (its nodes), which
    /// always applies.
    #[serde(default)]
    pub groups: BTreeMap<String, Vec<String>>,
    /// At most this many nodes take a new revision at once, fleet-wide;
    /// unset: only the groups limit.
    #[serde(default)]
    pub max_parallel: Option<u32>,
    /// Nodes that take a new revision first; the others wait until every
    /// canary ran it healthy for `soak`.
    #[serde(default)]
    pub canary: Vec<String>,
    /// How long every canary runs a new revision healthy before the other
    /// nodes take it (`60s`).
    #[serde(default = "default_soak")]
    pub soak: HaproxyDuration,
    /// How long a node's health gate watches it after it applied a new
    /// revision before it releases its locks (`5s`).
    #[serde(default = "default_settle")]
    pub settle: HaproxyDuration,
    /// How long a node waits for its pass to apply a new revision before
    /// the gate fails and the node rolls back (`2m`).
    #[serde(default = "default_gate_timeout")]
    pub gate_timeout: HaproxyDuration,
}

fn default_soak() -> HaproxyDuration {
    "60s".into()
}

fn default_settle() -> HaproxyDuration {
    "5s".into()
}

fn default_gate_timeout() -> HaproxyDuration {
    "2m".into()
}

impl Default for Rollout {
    fn default() -> Self {
        Self {
            groups: BTreeMap::new(),
            max_parallel: None,
            canary: Vec::new(),
            soak: default_soak(),
            settle: default_settle(),
            gate_timeout: default_gate_timeout(),
        }
    }
}

/// A lock a node takes before it switches to a new revision.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Lock {
    /// The group of a VRRP instance, by the instance's name.
    Vip(String),
    /// A group of the `rollout.groups` section, by name.
    Group(String),
}

impl Lock {
    /// The lock's key below `<prefix>/rollout/locks/`.
    pub fn key(&self) -> String {
        match self {
            Self::Vip(v) => format!("vip/{v}"),
            Self::Group(g) => format!("group/{g}"),
        }
    }
}

/// What the rollout section means for one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRollout {
    /// The locks it holds while it switches, in key order (every node
    /// takes them in the same order, so two nodes never deadlock).
    pub locks: Vec<Lock>,
    /// At most this many nodes switch at once.
    pub max_parallel: Option<u32>,
    /// Whether this node is a canary.
    pub canary: bool,
    /// The canaries it waits for (empty for a canary).
    pub wait_for_canaries: Vec<String>,
    /// Nodes that must run the revision before this one: the other
    /// members of a VRRP instance in which this node has the highest
    /// priority.
    pub after: Vec<String>,
    /// How long canaries soak.
    pub soak: Duration,
    /// How long the health gate watches.
    pub settle: Duration,
    /// How long the gate waits for the pass.
    pub gate_timeout: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Manifest;

    fn manifest(yaml: &str) -> Manifest {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("m.yaml"), yaml).expect("write");
        crate::load::Manifests::load(dir.path())
            .expect("loads")
            .manifest
    }

    const PAIR: &str = "nodes:\n  lb1: {}\n  lb2: {}\n  lb3: {}\n\
        vips:\n  front:\n    virtual_router_id: 51\n    interface: eth0\n    \
        addresses: [10.0.0.10/24]\n    priorities: {lb1: 150, lb2: 100}\n";

    #[test]
    fn nodes_of_a_vrrp_instance_share_a_lock_and_the_master_goes_last() {
        let m = manifest(PAIR);
        let lb1 = m.node_rollout("lb1");
        let lb2 = m.node_rollout("lb2");
        assert_eq!(lb1.locks, vec![Lock::Vip("front".into())]);
        assert_eq!(lb2.locks, lb1.locks);
        assert_eq!(lb1.after, vec!["lb2".to_string()], "MASTER after BACKUP");
        assert!(lb2.after.is_empty());
        let lb3 = m.node_rollout("lb3");
        assert!(lb3.locks.is_empty() && lb3.after.is_empty());
        assert_eq!(lb3.soak, Duration::from_secs(60));
    }

    #[test]
    fn groups_and_canaries_come_from_the_section() {
        let m = manifest(&format!(
            "{PAIR}rollout:\n  groups:\n    db: [lb3, lb2]\n  canary: [lb2]\n  soak: 2s\n  max_parallel: 1\n"
        ));
        let lb2 = m.node_rollout("lb2");
        assert_eq!(
            lb2.locks,
            vec![Lock::Vip("front".into()), Lock::Group("db".into())]
        );
        assert!(lb2.canary && lb2.wait_for_canaries.is_empty());
        let lb3 = m.node_rollout("lb3");
        assert_eq!(lb3.wait_for_canaries, vec!["lb2".to_string()]);
        assert_eq!(lb3.soak, Duration::from_secs(2));
        assert_eq!(lb3.max_parallel, Some(1));
        assert_eq!(Lock::Group("db".into()).key(), "group/db");
    }

    #[test]
    fn a_canary_or_group_member_that_is_no_node_is_named_at_its_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let yaml = format!(
            "{PAIR}rollout:\n  canary: [lb9]\n  groups:\n    x: [lb1]\n  max_parallel: 0\n"
        );
        std::fs::write(dir.path().join("m.yaml"), yaml).expect("write");
        let loaded = crate::load::Manifests::load(dir.path()).expect("parses");
        let errors = loaded.validate().expect_err("refused").to_string();
        assert!(errors.contains("m.yaml:12:3: rollout.canary"), "{errors}");
        assert!(errors.contains("node `lb9` is not defined"), "{errors}");
        assert!(errors.contains("needs at least two nodes"), "{errors}");
        assert!(errors.contains("max_parallel"), "{errors}");
    }
}
