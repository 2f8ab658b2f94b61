//! Per-node desired state: the manifest seen from one node.
//!
//! Built only from a manifest that passed [`Manifests::validate`], so the
//! renderer can rely on every reference resolving. Secrets are resolved here
//! (the one place besides loading that reads files), so a missing secret is
//! a manifest error with a location rather than a render failure.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use crate::error::ManifestErrors;
use crate::load::Manifests;
use crate::locate::Segment;
use crate::manifest::{Manifest, Node, Target, Vip};
use crate::secret::Secret;

/// Characters a check password may hold besides letters and digits:
/// none of them has a meaning on an HAProxy config line (no space, quote,
/// backslash, `#` or `$`).
const CHECK_PASSWORD_PUNCTUATION: &str = "-_.~+=/@%:,!*^";

/// `secret` if HAProxy can take it as written on a `tcp-check send` line;
/// the error never shows the value.
fn check_line_safe(secret: Secret) -> Result<Secret, String> {
    let ok = !secret.expose().is_empty()
        && secret
            .expose()
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || CHECK_PASSWORD_PUNCTUATION.contains(c));
    if ok {
        Ok(secret)
    } else {
        Err(format!(
            "the password is empty or holds a character other than letters, digits and \
             `{CHECK_PASSWORD_PUNCTUATION}`, which HAProxy's check line cannot carry as written"
        ))
    }
}

/// One VRRP instance as this node runs it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeVip {
    /// Instance name.
    pub name: String,
    /// The manifest's definition.
    #[serde(flatten)]
    pub vip: Vip,
    /// This node's priority.
    pub priority: u8,
    /// `MASTER` on the highest-priority node, `BACKUP` elsewhere.
    pub initial_state: &'static str,
    /// Interface on this node (node var `vrrp_interface` overrides).
    pub node_interface: String,
    /// Other nodes' addresses, for unicast adverts, sorted.
    pub peers: Vec<String>,
}

/// Everything one node renders from.
#[derive(Debug, Clone)]
pub struct NodeDesired {
    /// Node name.
    pub name: String,
    /// The node's own definition.
    pub node: Node,
    /// The whole manifest (frontends, backends, databases are fleet-wide).
    pub manifest: Arc<Manifest>,
    /// Targets this node renders.
    pub targets: BTreeMap<String, Target>,
    /// VRRP instances this node takes part in.
    pub vips: BTreeMap<String, NodeVip>,
    /// Resolved secrets by field path (`vips.edge.auth_pass`,
    /// `pgbouncer.users.app`).
    pub secrets: BTreeMap<String, Secret>,
}

impl NodeDesired {
    /// Every secret value, for scrubbing diffs and logs.
    pub fn secret_values(&self) -> impl Iterator<Item = &str> {
        self.secrets.values().map(Secret::expose)
    }
}

impl Manifests {
    /// The desired state of node `name`. Call after [`Manifests::validate`].
    // Long on purpose: it resolves each part of a node's state (targets,
    // VIPs with their peers, secrets) in the order they depend on each
    // other, each step a few lines over one section.
    pub fn for_node(&self, name: &str) -> Result<NodeDesired, ManifestErrors> {
        let m = &self.manifest;
        let Some(node) = m.nodes.get(name) else {
            let known: Vec<&str> = m.nodes.keys().map(String::as_str).collect();
            return Err(ManifestErrors(vec![crate::error::unlocated(
                &self.dir,
                "nodes".into(),
                format!(
                    "node `{name}` is not defined; known nodes: {}",
                    known.join(", ")
                ),
            )]));
        };
        let targets: BTreeMap<String, Target> = self
            .node_targets(name)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut errors = Vec::new();
        let mut secrets = BTreeMap::new();
        let mut vips = BTreeMap::new();
        for (vname, vip) in &m.vips {
            let Some(&priority) = vip.priorities.get(name) else {
                continue;
            };
            let top = vip.priorities.values().copied().max().unwrap_or(priority);
            let mut peers: Vec<String> = vip
                .priorities
                .keys()
                .filter(|n| n.as_str() != name)
                .filter_map(|n| m.nodes.get(n).and_then(|n| n.address.clone()))
                .collect();
            peers.sort();
            let node_interface = node
                .vars
                .get("vrrp_interface")
                .and_then(|v| v.as_str())
                .unwrap_or(&vip.interface)
                .to_string();
            if let Some(r) = &vip.auth_pass {
                match r.resolve(&self.dir) {
                    Ok(s) => {
                        secrets.insert(format!("vips.{vname}.auth_pass"), s);
                    }
                    Err(e) => errors.push(self.error(
                        "vips",
                        vname,
                        &[Segment::Key("auth_pass".into())],
                        e,
                    )),
                }
            }
            vips.insert(
                vname.clone(),
                NodeVip {
                    name: vname.clone(),
                    vip: vip.clone(),
                    priority,
                    initial_state: if priority == top { "MASTER" } else { "BACKUP" },
                    node_interface,
                    peers,
                },
            );
        }
        for (bname, b) in &m.backends {
            let Some(r) = &b.tcp_check_password else {
                continue;
            };
            let at = [Segment::Key("tcp_check_password".into())];
            match r.resolve(&self.dir).and_then(check_line_safe) {
                Ok(s) => {
                    secrets.insert(format!("backends.{bname}.tcp_check_password"), s);
                }
                Err(e) => errors.push(self.error("backends", bname, &at, e)),
            }
        }
        for (user, r) in &m.pgbouncer.users {
            match r.resolve(&self.dir) {
                Ok(s) => {
                    secrets.insert(format!("pgbouncer.users.{user}"), s);
                }
                Err(e) => errors.push(self.settings_error("pgbouncer", &["users", user], e)),
            }
        }
        if !errors.is_empty() {
            return Err(ManifestErrors(errors));
        }
        Ok(NodeDesired {
            name: name.to_string(),
            node: node.clone(),
            manifest: Arc::new(m.clone()),
            targets,
            vips,
            secrets,
        })
    }
}
/// The rollout section (`crate::rollout`) as it applies to one node.
impl crate::manifest::Manifest {
    /// What the rollout section means for `node`.
    pub fn node_rollout(&self, node: &str) -> crate::rollout::NodeRollout {
        let r = &self.rollout;
        let mut locks: Vec<crate::rollout::Lock> = self
            .vips
            .iter()
            .filter(|(_, v)| v.priorities.len() > 1 && v.priorities.contains_key(node))
            .map(|(name, _)| crate::rollout::Lock::Vip(name.clone()))
            .chain(
                r.groups
                    .iter()
                    .filter(|(_, members)| members.iter().any(|m| m == node))
                    .map(|(name, _)| crate::rollout::Lock::Group(name.clone())),
            )
            .collect();
        locks.sort();
        let mut after: Vec<String> = self
            .vips
            .values()
            .filter(|v| {
                let mine = v.priorities.get(node);
                mine.is_some() && v.priorities.values().all(|p| Some(p) <= mine)
            })
            .flat_map(|v| v.priorities.keys().filter(|n| *n != node).cloned())
            .collect();
        after.sort();
        after.dedup();
        let canary = r.canary.iter().any(|c| c == node);
        crate::rollout::NodeRollout {
            locks,
            max_parallel: r.max_parallel,
            canary,
            wait_for_canaries: if canary { Vec::new() } else { r.canary.clone() },
            after,
            soak: r.soak.as_duration(),
            settle: r.settle.as_duration(),
            gate_timeout: r.gate_timeout.as_duration(),
        }
    }
}
