//! Which catalog instances may be rendered at all: every service the
//! manifest references is admitted once — an identity claimed by one
//! instance only, every value safe for its field — so a left-out instance
//! is reported once however many backends use its service.

use std::collections::BTreeMap;

use converge_model::{Catalog, Instance, NodeDesired, Rejection};

use crate::sanitize;

/// The admitted instances of every service the manifest references. Each
/// service is admitted once, so a left-out instance is reported once
/// however many backends use the service.
pub(super) fn admit_referenced<'a>(
    desired: &'a NodeDesired,
    catalog: &'a Catalog,
    rejections: &mut Vec<Rejection>,
) -> BTreeMap<&'a str, Vec<&'a Instance>> {
    let m = &desired.manifest;
    let mut safe: BTreeMap<&str, Vec<&Instance>> = BTreeMap::new();
    let referenced = m
        .backends
        .values()
        .map(|b| b.service.as_str())
        .chain(m.databases.values().map(|d| d.service.as_str()));
    for service in referenced {
        if safe.contains_key(service) {
            continue;
        }
        let instances = catalog
            .service(service)
            .map(|e| e.instances.as_slice())
            .unwrap_or_default();
        safe.insert(service, admitted(service, instances, rejections));
    }
    safe
}

/// The instances of `service` that may be rendered: each identity
/// (Consul node, service id) claimed by one instance only, and every value
/// safe for its field ([`sanitize`]). Two instances with one identity
/// cannot come from Consul, only from a hand-edited catalog file; which of
/// them is meant cannot be told, so both are left out and reported, and
/// the rest renders.
fn admitted<'a>(
    service: &str,
    instances: &'a [Instance],
    rejections: &mut Vec<Rejection>,
) -> Vec<&'a Instance> {
    let mut ok = Vec::with_capacity(instances.len());
    // Sorted by id, then node: equal identities are neighbours.
    for (k, inst) in instances.iter().enumerate() {
        let same = |other: &Instance| other.id == inst.id && other.node == inst.node;
        let duplicated =
            (k > 0 && same(&instances[k - 1])) || instances.get(k + 1).is_some_and(same);
        if duplicated {
            rejections.push(sanitize::rejection(
                service,
                inst,
                "id",
                &inst.id,
                "another instance of the service has the same node and id; each of them is left out",
            ));
            continue;
        }
        match sanitize::check(service, inst) {
            Ok(()) => ok.push(inst),
            Err(r) => rejections.push(*r),
        }
    }
    ok
}
