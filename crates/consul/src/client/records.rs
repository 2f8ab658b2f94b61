//! The records the client hands out for Consul data that converge's model
//! has no type for: a health check, a KV entry, the agent's identity.
//!
//! They are public, decoded and owned (a KV value is bytes, not base64), so
//! callers never see Consul's JSON; the JSON shapes stay private in
//! `wire`. Consul's check status is mapped to converge's
//! [`Health`] here, once, for both the checks watch and instance health.

use converge_model::Health;
use serde::Deserialize;

/// One health check, as `/v1/health/state/:state` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthCheck {
    /// Node the check runs on.
    pub node: String,
    /// Check id, unique per node.
    #[serde(rename = "CheckID")]
    pub check_id: String,
    /// `passing`, `warning` or `critical`.
    pub status: String,
    /// Service instance the check belongs to; empty for a node check.
    #[serde(rename = "ServiceID", default)]
    pub service_id: String,
    /// Service the check belongs to; empty for a node check.
    #[serde(default)]
    pub service_name: String,
    /// Raft index of the check's last change.
    #[serde(default)]
    pub modify_index: u64,
}

impl HealthCheck {
    /// The status as converge's [`Health`].
    pub fn health(&self) -> Health {
        status_health(&self.status)
    }
}

/// One KV entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvPair {
    /// Full key.
    pub key: String,
    /// Value bytes (decoded from Consul's base64).
    pub value: Vec<u8>,
    /// Opaque client flags.
    pub flags: u64,
    /// Index that created the key.
    pub create_index: u64,
    /// Index of the last write: the `cas` value for the next write.
    pub modify_index: u64,
    /// Session holding a lock on the key, if any.
    pub session: Option<String>,
}

/// What converge reads from `/v1/agent/self`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSelf {
    /// The agent's datacenter.
    pub datacenter: String,
    /// The agent's node name.
    pub node_name: String,
    /// Consul version.
    pub version: String,
    /// Whether the agent is a server.
    pub server: bool,
}

/// Consul's check status → converge's health. Anything unknown counts as
/// critical: an instance is never healthier than converge can tell.
pub(super) fn status_health(status: &str) -> Health {
    match status {
        "passing" => Health::Passing,
        "warning" => Health::Warning,
        _ => Health::Critical,
    }
}
