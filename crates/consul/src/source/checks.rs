//! The checks watch's answer reduced to what matters for instance health,
//! and the diff of two such answers: which watched services to read again.
//!
//! Kept free of I/O so the rules (a changed check names its service, a
//! node check names every service with an instance on that node, a new or
//! removed check names its service) are tested on plain maps.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::client::HealthCheck;

use super::known::Known;

/// Key of a check: node and check id.
pub(super) type CheckKey = (String, String);
/// What matters of a check for instance health: service and status.
pub(super) type CheckView = HashMap<CheckKey, (String, String)>;

/// Services whose health or membership differ between two check views:
/// the service a changed check belongs to, or for a node check, every
/// known service with an instance on that node.
pub(super) fn changed_services(
    old: &CheckView,
    new: &CheckView,
    known: &BTreeMap<String, Known>,
) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut mark = |node: &str, service: &str| {
        if service.is_empty() {
            for (name, k) in known {
                if k.instances.iter().any(|i| i.node == node) {
                    out.insert(name.clone());
                }
            }
        } else {
            out.insert(service.to_string());
        }
    };
    for (key, value) in new {
        if old.get(key) != Some(value) {
            mark(&key.0, &value.0);
            if let Some(prev) = old.get(key) {
                mark(&key.0, &prev.0);
            }
        }
    }
    for (key, value) in old {
        if !new.contains_key(key) {
            mark(&key.0, &value.0);
        }
    }
    out
}

pub(super) fn check_view(checks: Vec<HealthCheck>) -> CheckView {
    checks
        .into_iter()
        .map(|c| ((c.node, c.check_id), (c.service_name, c.status)))
        .collect()
}
