//! Consul's JSON shapes, kept private: the public API speaks converge's
//! model types and the `records`.
//!
//! Each shape takes only the fields converge uses, with `null` and absent
//! lists read as empty, and is turned into the public type by one function
//! that refuses what the model cannot hold (a port outside `u16`, a value
//! that is not base64) with a message naming the instance or key.

use std::collections::BTreeMap;

use base64::Engine as _;
use converge_model::{Health, Instance};
use serde::Deserialize;

use super::records::status_health;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct HealthEntry {
    pub node: Node,
    pub service: Service,
    #[serde(default)]
    pub checks: Option<Vec<Check>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct Node {
    pub node: String,
    #[serde(default)]
    pub address: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct Service {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub meta: Option<BTreeMap<String, String>>,
    pub port: i64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct Check {
    pub status: String,
}

impl HealthEntry {
    pub(super) fn into_instance(self) -> Result<Instance, String> {
        let port = u16::try_from(self.service.port).map_err(|_| {
            format!(
                "service instance {:?} on node {:?} has port {}, outside 0..=65535",
                self.service.id, self.node.node, self.service.port
            )
        })?;
        let address = if self.service.address.is_empty() {
            self.node.address
        } else {
            self.service.address
        };
        let health = self
            .checks
            .unwrap_or_default()
            .iter()
            .map(|c| status_health(&c.status))
            .max()
            .unwrap_or(Health::Passing);
        Ok(Instance {
            id: self.service.id,
            node: self.node.node,
            address,
            port,
            tags: self.service.tags.unwrap_or_default().into_iter().collect(),
            meta: self.service.meta.unwrap_or_default(),
            health,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct KvPair {
    pub key: String,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub flags: u64,
    #[serde(default)]
    pub create_index: u64,
    #[serde(default)]
    pub modify_index: u64,
    #[serde(default)]
    pub session: Option<String>,
}

impl KvPair {
    pub(super) fn decode(self) -> Result<super::records::KvPair, String> {
        let value = match self.value {
            Some(v) => base64::engine::general_purpose::STANDARD
                .decode(v.as_bytes())
                .map_err(|e| format!("value of key {:?} is not base64: {e}", self.key))?,
            None => Vec::new(),
        };
        Ok(super::records::KvPair {
            key: self.key,
            value,
            flags: self.flags,
            create_index: self.create_index,
            modify_index: self.modify_index,
            session: self.session.filter(|s| !s.is_empty()),
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct AgentSelf {
    pub config: AgentConfig,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct AgentConfig {
    pub datacenter: String,
    pub node_name: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub server: bool,
}
