//! Catalog snapshots: which instances of which services exist, with their
//! health.
//!
//! A [`Catalog`] is immutable and canonical: services in a `BTreeMap`,
//! instances sorted by `(id, node, address, port)`, tags sorted. Two
//! snapshots of the same world are therefore equal and render identical
//! bytes. The catalog file (`examples/catalog.yaml`, the embedded default)
//! and the Consul source both produce this type.
//!
//! Strings here are *raw*: whatever the catalog said. Deciding whether a
//! value is safe to place in a config file is the renderer's job, because
//! the rule depends on the output format.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::error::ManifestErrors;
use crate::load::parse_typed;

/// Aggregated health of one instance (worst of its checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// All checks pass.
    Passing,
    /// At least one check warns, none fails.
    Warning,
    /// At least one check fails.
    Critical,
}

/// One registered instance of a service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Instance {
    /// Service instance id, unique within the service.
    pub id: String,
    /// Catalog node the instance runs on.
    pub node: String,
    /// IP address or host name.
    pub address: String,
    /// Port.
    pub port: u16,
    /// Tags, sorted.
    #[serde(default)]
    pub tags: BTreeSet<String>,
    /// Free-form metadata.
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    /// Aggregated check status.
    pub health: Health,
}

/// How current a service's instances are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "state")]
pub enum Freshness {
    /// Read successfully in the latest round.
    Fresh,
    /// The latest read failed; the instances are the last good ones.
    Stale {
        /// When the last good read happened.
        since: SystemTime,
        /// Why the latest read failed.
        error: String,
    },
}

/// One service in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceEntry {
    /// Instances, sorted.
    pub instances: Vec<Instance>,
    /// Whether these are current or carried over from an earlier read.
    pub freshness: Freshness,
}

/// An immutable, canonical snapshot of the catalog.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Catalog {
    services: BTreeMap<String, ServiceEntry>,
    /// Source index (Consul's `X-Consul-Index`; 0 for a file).
    pub index: u64,
}

impl Catalog {
    /// Builds a canonical snapshot from services and their instances.
    pub fn new(index: u64, services: BTreeMap<String, ServiceEntry>) -> Self {
        let services = services
            .into_iter()
            .map(|(name, mut entry)| {
                entry.instances.sort();
                entry.instances.dedup();
                (name, entry)
            })
            .collect();
        Self { services, index }
    }

    /// Builds a snapshot in which every service is fresh.
    pub fn fresh(index: u64, services: BTreeMap<String, Vec<Instance>>) -> Self {
        Self::new(
            index,
            services
                .into_iter()
                .map(|(k, instances)| {
                    (
                        k,
                        ServiceEntry {
                            instances,
                            freshness: Freshness::Fresh,
                        },
                    )
                })
                .collect(),
        )
    }

    /// A service, if the catalog knows it.
    pub fn service(&self, name: &str) -> Option<&ServiceEntry> {
        self.services.get(name)
    }

    /// This snapshot with `name`'s entry replaced (or removed with `None`);
    /// how a guard keeps a service's last good instances in force.
    pub fn with_service(mut self, name: &str, entry: Option<ServiceEntry>) -> Self {
        match entry {
            Some(mut e) => {
                e.instances.sort();
                self.services.insert(name.to_string(), e);
            }
            None => {
                self.services.remove(name);
            }
        }
        self
    }

    /// Every service, in name order.
    pub fn services(&self) -> &BTreeMap<String, ServiceEntry> {
        &self.services
    }

    /// Reads a catalog file: `services: {name: [instance, ...]}`.
    /// Errors carry `file:line:column` and the field path.
    pub fn load_file(path: &Path) -> Result<Self, ManifestErrors> {
        let text = crate::bounds::read(path, "catalog").map_err(|e| ManifestErrors(vec![e]))?;
        Self::parse(path, &text)
    }

    /// Parses catalog file text; `path` is used in error messages.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ManifestErrors> {
        let file: CatalogFile = parse_typed(path, text, "catalog")?;
        Ok(Self::fresh(0, file.services))
    }
}

/// The catalog file's top level.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    #[serde(default)]
    services: BTreeMap<String, Vec<Instance>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_are_sorted_so_equal_worlds_are_equal() {
        let a = "services:\n  web:\n    - {id: b, node: n, address: 10.0.0.2, port: 80, health: passing}\n    - {id: a, node: n, address: 10.0.0.1, port: 80, health: passing}\n";
        let b = "services:\n  web:\n    - {id: a, node: n, address: 10.0.0.1, port: 80, health: passing}\n    - {id: b, node: n, address: 10.0.0.2, port: 80, health: passing}\n";
        let ca = Catalog::parse(Path::new("a.yaml"), a).expect("parse a");
        let cb = Catalog::parse(Path::new("b.yaml"), b).expect("parse b");
        assert_eq!(ca, cb);
        let web = ca.service("web").expect("web");
        assert_eq!(web.instances[0].id, "a");
    }

    #[test]
    fn bad_port_is_reported_with_line_and_path() {
        let text = "services:\n  web:\n    - id: a\n      node: n\n      address: 10.0.0.1\n      port: eighty\n      health: passing\n";
        let err = Catalog::parse(Path::new("cat.yaml"), text).expect_err("must fail");
        let msg = err.to_string();
        assert!(msg.starts_with("cat.yaml:6:"), "{msg}");
        assert!(msg.contains("services.web[0].port"), "{msg}");
    }
}
