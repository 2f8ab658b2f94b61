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

use converge_consul::{Client, QueryOptions};
use serde::{Deserialize, Serialize};

use crate::fleet::NodeReport;
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
    /// The revision that failed.
    pub revision: Revision,
    /// Where.
    pub node: String,
    /// Why.
    pub reason: String,
    /// Unix time.
    pub at: u64,
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
    pub reports: BTreeMap<String, (NodeReport, bool)>,
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

/// Reads the rollout's keys and the node reports; returns the state and
/// the index of `<prefix>/rollout/` (for a blocking query on it).
pub async fn read(
    client: &Client,
    keys: &Keys,
    opts: &QueryOptions,
) -> Result<(FleetState, u64), converge_consul::Error> {
    let rk = RolloutKeys::new(keys);
    let rollout = client.kv_list(rk.prefix(), opts).await?;
    let index = rollout.meta.index;
    let mut state = FleetState::default();
    for pair in rollout.value {
        let Some(rest) = pair.key.strip_prefix(rk.prefix()) else {
            continue;
        };
        if rest == "pause" {
            state.paused = true;
        } else if let Some(node) = rest.strip_prefix("pause/") {
            state.paused_nodes.insert(node.to_string());
        } else if rest == "halt" {
            state.halt = serde_json::from_slice(&pair.value).ok();
        } else if let Some(node) = rest.strip_prefix("canaries/") {
            let text = String::from_utf8_lossy(&pair.value);
            if let Some(r) = Revision::parse(text.trim()) {
                state.soaked.insert(node.to_string(), r);
            }
        }
    }
    let nodes = client
        .kv_list(&keys.nodes(), &QueryOptions::default())
        .await?;
    for pair in nodes.value {
        if let Ok(report) = serde_json::from_slice::<NodeReport>(&pair.value) {
            state
                .reports
                .insert(report.node.clone(), (report, pair.session.is_some()));
        }
    }
    Ok((state, index))
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
