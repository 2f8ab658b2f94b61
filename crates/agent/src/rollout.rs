//! Rolling a new published revision out: which node takes it when.
//!
//! A new revision is the change that reloads programs on every node at
//! once, so a following node takes it only when the fleet allows
//! ([`decide`]: not paused, not halted, every canary soaked, the BACKUPs of
//! its VRRP instance done), and only while it holds Consul locks for its
//! groups and a slot of the fleet-wide semaphore ([`lock`]), under a
//! session tied to its Consul agent's health with a TTL, so a node that
//! dies releases them. It switches, lets its pass apply the revision, and
//! keeps its locks until its health gate ([`gate`], which asks the
//! programs through [`serving`]) passes; a failed gate switches back to
//! the revision before and halts the rollout for everyone. Catalog-driven changes never wait for any of this: they
//! change membership, are latency-critical, and HAProxy's runtime API or
//! a hitless reload applies them; only a switch of `current` is rationed.
//!
//! Everything lives under `<prefix>/rollout/`:
//!
//! ```text
//! locks/vip/<vrrp instance>    held (acquire) by the node switching in that pair
//! locks/group/<group>          held by the node switching in that group
//! semaphore/<session>          a contender for the fleet-wide slots
//! semaphore/.lock              {limit, holders}: who holds a slot (check-and-set)
//! canaries/<node>              the revision the canary ran healthy for its soak
//! halt                         {revision, node, reason, at}: nobody takes revision
//! pause, pause/<node>          `converge fleet pause [--node N]`
//! ```

pub mod decide;
pub mod gate;
pub mod lock;
pub mod serving;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use std::time::Duration;

use converge_consul::{Client, KvPair, QueryOptions};
use serde::{Deserialize, Serialize};

use crate::fleet::view::{self, Reports};
use crate::publish::Keys;
use crate::revision::Revision;

/// Why a node has not taken the desired revision yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Waiting {
    /// `converge fleet pause`, fleet-wide or for this node.
    Paused {
        /// Whether the whole fleet is paused (else this node).
        fleet: bool,
    },
    /// A node failed with this revision; nobody takes it.
    Halted {
        /// The node that failed.
        node: String,
        /// Why.
        reason: String,
    },
    /// Canaries that have not run the revision healthy for their soak.
    Canaries {
        /// Those nodes.
        nodes: Vec<String>,
    },
    /// Members of this node's VRRP instance (lower priority) that go first.
    Order {
        /// Those nodes.
        nodes: Vec<String>,
    },
    /// A lock another node holds.
    Lock {
        /// The key below `<prefix>/rollout/`.
        key: String,
    },
    /// Switched; the health gate watches the new revision. The node is
    /// not reported converged until the gate passed, so `fleet wait` and
    /// the MASTER of a pair wait for it too.
    Gate,
}

impl fmt::Display for Waiting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Paused { fleet: true } => write!(f, "the fleet is paused"),
            Self::Paused { fleet: false } => write!(f, "this node is paused"),
            Self::Halted { node, reason } => write!(f, "halted at {node}: {reason}"),
            Self::Canaries { nodes } => write!(f, "waiting for canaries {}", nodes.join(", ")),
            Self::Order { nodes } => write!(f, "waiting for {} to go first", nodes.join(", ")),
            Self::Lock { key } => write!(f, "waiting for lock {key}"),
            Self::Gate => write!(f, "in its health gate"),
        }
    }
}

/// `<prefix>/rollout/halt`: the revision nobody takes, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Halt {
    /// The revision that failed; `None` halts every revision (a halt key
    /// that does not parse: which revision it halted is unknown).
    pub revision: Option<Revision>,
    /// Where.
    pub node: String,
    /// Why.
    pub reason: String,
    /// Unix time.
    pub at: u64,
}

impl Halt {
    /// The halt `value` of `key` says. A value that does not parse still
    /// halts, every revision, with a reason naming the key and the error:
    /// a halt written by a newer converge or damaged in KV must not let
    /// the revision that failed through (fail closed). Deleting or
    /// rewriting the key resumes.
    pub fn parse(key: &str, value: &[u8]) -> Self {
        serde_json::from_slice(value).unwrap_or_else(|e| Self {
            revision: None,
            node: "an unknown node".into(),
            reason: format!(
                "{key} does not parse as a halt ({e}); every revision is halted until the key \
                 is deleted or rewritten"
            ),
            at: 0,
        })
    }

    /// Whether this halt keeps nodes from taking `revision`.
    pub fn halts(&self, revision: &Revision) -> bool {
        self.revision.as_ref().is_none_or(|r| r == revision)
    }
}

/// What the fleet says about a rollout, read from Consul.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetState {
    /// The whole fleet is paused.
    pub paused: bool,
    /// Nodes paused one by one.
    pub paused_nodes: BTreeSet<String>,
    /// The halt, if any (it names its revision: a new one is not halted).
    pub halt: Option<Halt>,
    /// Per canary, the revision it ran healthy for its soak.
    pub soaked: BTreeMap<String, Revision>,
    /// Node reports, with whether their session still holds them.
    pub reports: Reports,
}

/// The keys below `<prefix>/rollout/`.
#[derive(Debug, Clone)]
pub struct RolloutKeys(String);

impl RolloutKeys {
    /// Under the fleet's keys.
    pub fn new(keys: &Keys) -> Self {
        Self(keys.rollout())
    }

    /// The prefix itself, with its trailing `/`.
    pub fn prefix(&self) -> &str {
        &self.0
    }

    /// `pause` (fleet-wide) or `pause/<node>`.
    pub fn pause(&self, node: Option<&str>) -> String {
        match node {
            Some(n) => format!("{}pause/{n}", self.0),
            None => format!("{}pause", self.0),
        }
    }

    /// `halt`.
    pub fn halt(&self) -> String {
        format!("{}halt", self.0)
    }

    /// `canaries/<node>`.
    pub fn soaked(&self, node: &str) -> String {
        format!("{}canaries/{node}", self.0)
    }

    /// `locks/<lock>`.
    pub fn lock(&self, lock: &converge_model::rollout::Lock) -> String {
        format!("{}locks/{}", self.0, lock.key())
    }

    /// `semaphore/`.
    pub fn semaphore(&self) -> String {
        format!("{}semaphore/", self.0)
    }
}

/// Reads the rollout's keys and the node reports, one listing each.
pub async fn read(client: &Client, keys: &Keys) -> Result<FleetState, String> {
    let rk = RolloutKeys::new(keys);
    let rollout = client
        .kv_list(rk.prefix(), &QueryOptions::default())
        .await
        .map_err(|e| format!("cannot read {}: {e}", rk.prefix()))?;
    let (reports, _) = view::reports(client, keys, 0, Duration::ZERO).await?;
    Ok(FleetState::new(&rk, rollout.value, reports))
}

impl FleetState {
    /// The state from `rollout`, a listing of `<prefix>/rollout/`, and
    /// the node reports.
    pub fn new(keys: &RolloutKeys, rollout: Vec<KvPair>, reports: Reports) -> Self {
        let mut state = Self {
            reports,
            ..Self::default()
        };
        for pair in rollout {
            let Some(rest) = pair.key.strip_prefix(keys.prefix()) else {
                continue;
            };
            if rest == "pause" {
                state.paused = true;
            } else if let Some(node) = rest.strip_prefix("pause/") {
                state.paused_nodes.insert(node.to_string());
            } else if rest == "halt" {
                state.halt = Some(Halt::parse(&pair.key, &pair.value));
            } else if let Some(node) = rest.strip_prefix("canaries/") {
                let text = String::from_utf8_lossy(&pair.value);
                if let Some(r) = Revision::parse(text.trim()) {
                    state.soaked.insert(node.to_string(), r);
                }
            }
        }
        state
    }
}

/// Writes (`on`) or deletes the pause flag, fleet-wide or for `node`.
pub async fn set_pause(
    client: &Client,
    keys: &Keys,
    node: Option<&str>,
    on: bool,
) -> Result<(), converge_consul::Error> {
    let key = RolloutKeys::new(keys).pause(node);
    if on {
        let body = serde_json::json!({ "at": unix_now() }).to_string();
        client.kv_put(&key, body.as_bytes(), None).await?;
    } else {
        client.kv_delete(&key, None).await?;
    }
    Ok(())
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(key: &str, value: &[u8]) -> KvPair {
        KvPair {
            key: key.into(),
            value: value.to_vec(),
            flags: 0,
            create_index: 1,
            modify_index: 1,
            session: None,
        }
    }

    fn keys() -> RolloutKeys {
        RolloutKeys::new(&Keys::new("converge").expect("prefix"))
    }

    #[test]
    fn a_halt_that_does_not_parse_halts_every_revision_and_says_why() {
        let rk = keys();
        let state = FleetState::new(
            &rk,
            vec![pair("converge/rollout/halt", b"{\"revision\": 12")],
            Reports::new(),
        );
        let halt = state.halt.expect("a corrupt halt still halts");
        assert!(halt.halts(&Revision::parse("b2").expect("rev")));
        assert!(halt.halts(&Revision::parse("c3").expect("rev")));
        assert!(
            halt.reason
                .starts_with("converge/rollout/halt does not parse as a halt ("),
            "{}",
            halt.reason
        );
    }

    #[test]
    fn a_halt_that_parses_halts_its_revision_only() {
        let rk = keys();
        let written = Halt {
            revision: Revision::parse("b2"),
            node: "lb2".into(),
            reason: "rejected".into(),
            at: 1,
        };
        let body = serde_json::to_vec(&written).expect("json");
        let state = FleetState::new(
            &rk,
            vec![
                pair("converge/rollout/halt", &body),
                pair("converge/rollout/pause/lb3", b"{}"),
            ],
            Reports::new(),
        );
        assert_eq!(state.halt.as_ref(), Some(&written));
        assert!(!written.halts(&Revision::parse("c3").expect("rev")));
        assert!(state.paused_nodes.contains("lb3") && !state.paused);
    }
}
