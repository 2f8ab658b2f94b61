//! The guard: a sudden loss of servers is held back, not applied.
//!
//! When a backend that has servers would have none (unless its manifest
//! says `allow_empty: true`), would drop below its `min_healthy` servers,
//! or would lose more than `max_drop_fraction` of them in one change, the
//! guard keeps that
//! backend's service at the instances of the last applied snapshot, so the
//! last good servers stay configured, and reports a [`Hold`]. The hold ends
//! by itself when the catalog recovers, or when an operator releases the
//! backend (then the current catalog is accepted once).
//!
//! Drop to zero is held by default because an empty answer is far more
//! often a broken source than a service that went away: a Consul agent
//! restarted with an empty catalog, a proxy answering `200 []`. Rendering
//! it would empty the backend, and a backend with no server fails every
//! request, where the last servers fail only the ones that are really down.
//!
//! A PgBouncer database that had a host and would have none is held the
//! same way (unless `allow_empty`): a Patroni switchover is two catalog
//! writes (demote, then promote), and the state in between — no primary at
//! all — would drop the database from PgBouncer and fail every client,
//! where keeping the last primary until the new one is tagged fails nothing
//! that was not already failing. The same holds for the replicas of a
//! `role: replica` entry.
//!
//! A database whose one primary would become several instances claiming
//! it is held too, whatever `allow_empty` says: during a Patroni
//! switchover the catalog briefly shows two passing `primary` instances,
//! and the render cannot pick one, so it would route to none — dropping
//! the database from PgBouncer and failing every client with `no such
//! database`. Held, it keeps its last primary until one instance clearly
//! is (design invariant 5).
//!
//! Working on the snapshot rather than on rendered text keeps the guard a
//! pure function, and lets every template see one consistent world.

pub mod baseline;

use std::collections::{BTreeMap, BTreeSet};

use converge_model::manifest::{Backend, Database, DbRole, PgbouncerSettings};
use converge_model::{identity, Catalog, Manifest, ServiceEntry};
use serde::{Deserialize, Serialize};

/// A change held back for one backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// Backend name (or database name, for a PgBouncer primary hold).
    pub backend: String,
    /// Its catalog service.
    pub service: String,
    /// Servers in the last applied snapshot.
    pub before: usize,
    /// Servers the new snapshot would leave.
    pub after: usize,
    /// Which rule held it.
    pub reason: String,
    /// The same, typed: what a caller branches on.
    #[serde(default)]
    pub kind: HoldKind,
}

/// Which rule a [`Hold`] comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldKind {
    /// A backend would lose servers (`allow_empty`, `min_healthy`,
    /// `max_drop_fraction`).
    #[default]
    Servers,
    /// A database that had a primary would have none.
    NoPrimary,
    /// A database that had one primary would have several claiming it.
    SeveralPrimaries {
        /// The claiming instances' names.
        claims: Vec<String>,
    },
    /// A replica database would have no replica.
    NoReplica,
}

impl HoldKind {
    /// Whether the hold keeps a database at its last primary because the
    /// catalog names none, or several: what PgBouncer's `PAUSE` covers.
    pub fn unclear_primary(&self) -> bool {
        matches!(self, Self::NoPrimary | Self::SeveralPrimaries { .. })
    }
}

/// The snapshot to render, and what was held back.
#[derive(Debug, Clone)]
pub struct Guarded {
    /// `new` with held services reverted to their last applied instances.
    pub catalog: Catalog,
    /// Holds, by backend name.
    pub holds: Vec<Hold>,
    /// Per held service, the entry `new` had for it (`None`: absent):
    /// what the render would have used without the hold.
    pub displaced: BTreeMap<String, Option<ServiceEntry>>,
}

/// Applies the guard rules of every backend in `manifest`. With no
/// baseline (a node that never applied, see [`baseline`]) nothing is held:
/// there is nothing better to keep.
pub fn guard(
    manifest: &Manifest,
    last: Option<&Catalog>,
    new: Catalog,
    released: &BTreeSet<String>,
) -> Guarded {
    let Some(last) = last else {
        return Guarded {
            catalog: new,
            holds: Vec::new(),
            displaced: BTreeMap::new(),
        };
    };
    let mut holds: Vec<Hold> = manifest
        .backends
        .iter()
        .filter(|(name, _)| !released.contains(*name))
        .filter_map(|(name, b)| backend_hold(name, b, last, &new))
        .collect();
    // Held services go back to their last applied instances (entries
    // replaced in `new`, nothing copied whole).
    let mut catalog = new;
    let mut displaced = BTreeMap::new();
    for h in &holds {
        displaced.insert(h.service.clone(), catalog.service(&h.service).cloned());
        catalog = catalog.with_service(&h.service, last.service(&h.service).cloned());
    }
    // Databases are judged on the catalog as the backends left it, so a
    // service held for a backend is not held twice.
    for (name, d) in &manifest.databases {
        if released.contains(name) {
            continue;
        }
        if let Some(hold) = database_hold(name, d, &manifest.pgbouncer, last, &catalog) {
            displaced
                .entry(d.service.clone())
                .or_insert_with(|| catalog.service(&d.service).cloned());
            catalog = catalog.with_service(&d.service, last.service(&d.service).cloned());
            holds.push(hold);
        }
    }
    Guarded {
        catalog,
        holds,
        displaced,
    }
}

/// The hold of backend `name` going from `last` to `new`, if a rule holds it.
fn backend_hold(name: &str, b: &Backend, last: &Catalog, new: &Catalog) -> Option<Hold> {
    let count = |c: &Catalog| {
        c.service(&b.service)
            .map(|e| e.instances.iter().filter(|i| b.serves(i)).count())
            .unwrap_or(0)
    };
    let (before, after) = (count(last), count(new));
    if after >= before {
        return None;
    }
    let reason = if after == 0 && !b.allow_empty {
        format!("would leave no server of {before}; set allow_empty: true if that is meant")
    } else if after < b.min_healthy as usize {
        format!("would leave {after} of min_healthy {}", b.min_healthy)
    } else if (before - after) as f64 / before as f64 > b.max_drop_fraction {
        format!(
            "would remove {} of {before} servers, more than max_drop_fraction {}",
            before - after,
            b.max_drop_fraction
        )
    } else {
        return None;
    };
    Some(Hold {
        backend: name.to_string(),
        service: b.service.clone(),
        before,
        after,
        reason,
        kind: HoldKind::Servers,
    })
}

/// The hold of database `name` going from `last` to `new`: one that had a
/// host for its role and would have none (unless it allows that), or one
/// that had one primary and would have several claiming it.
fn database_hold(
    name: &str,
    d: &Database,
    settings: &PgbouncerSettings,
    last: &Catalog,
    new: &Catalog,
) -> Option<Hold> {
    let hosts = |c: &Catalog| -> Vec<String> {
        c.service(&d.service)
            .map(|e| {
                e.instances
                    .iter()
                    .filter(|i| settings.fills_role(d.role, i))
                    .map(identity::name)
                    .collect()
            })
            .unwrap_or_default()
    };
    let (kept, claims) = (hosts(last), hosts(new));
    let (before, after) = (kept.len(), claims.len());
    let (reason, kind) = match d.role {
        // Two claims are a switchover in flight (Patroni shows the new
        // primary before the old one's tag or check catches up): routing
        // to either could be wrong and routing to none fails every client,
        // so the one primary of the last snapshot stays until one
        // instance clearly is.
        DbRole::Primary if after > 1 && before == 1 => (
            format!(
                "database {name}: {after} instances claim to be primary ({}); keeping the last \
                 one ({}) until one instance clearly is",
                claims.join(", "),
                kept.join(", ")
            ),
            HoldKind::SeveralPrimaries { claims },
        ),
        _ if d.allow_empty || before == 0 || after > 0 => return None,
        DbRole::Primary => (
            format!(
                "database {name} would have no primary; keeping the last one until a new one \
                 is tagged"
            ),
            HoldKind::NoPrimary,
        ),
        DbRole::Replica => (
            format!(
                "database {name} would have no replica; keeping the last ones until one is \
                 healthy"
            ),
            HoldKind::NoReplica,
        ),
    };
    Some(Hold {
        backend: name.to_string(),
        service: d.service.clone(),
        before,
        after,
        reason,
        kind,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    use converge_model::{Health, Instance, Manifests};

    use super::*;

    fn manifest(extra: &str) -> Manifest {
        let text = format!("nodes: {{lb1: {{}}}}\nbackends:\n  web:\n    service: web\n{extra}");
        Manifests::from_sources(Path::new("m"), &[(PathBuf::from("m.yaml"), text)])
            .expect("manifest")
            .manifest
    }

    fn catalog(healthy: usize, total: usize) -> Catalog {
        let instances = (0..total)
            .map(|i| Instance {
                id: format!("web-{i}"),
                node: "n".into(),
                address: format!("10.0.0.{}", i + 1),
                port: 80,
                tags: Default::default(),
                meta: Default::default(),
                health: if i < healthy {
                    Health::Passing
                } else {
                    Health::Critical
                },
            })
            .collect();
        Catalog::fresh(1, BTreeMap::from([("web".to_string(), instances)]))
    }

    #[test]
    fn dropping_below_min_healthy_is_held_with_the_old_instances() {
        let m = manifest("    min_healthy: 1\n");
        let last = catalog(3, 3);
        let g = guard(&m, Some(&last), catalog(0, 0), &BTreeSet::new());
        assert_eq!(g.holds.len(), 1);
        assert_eq!((g.holds[0].before, g.holds[0].after), (3, 0));
        assert_eq!(g.catalog.service("web"), last.service("web"));
    }

    #[test]
    fn two_backends_on_one_service_are_each_held_and_reported() {
        let text = "nodes: {lb1: {}}\nbackends:\n  web:\n    service: web\n    min_healthy: 1\n  \
                    web_canary:\n    service: web\n    min_healthy: 1\n";
        let m = Manifests::from_sources(
            Path::new("m"),
            &[(PathBuf::from("m.yaml"), text.to_string())],
        )
        .expect("manifest")
        .manifest;
        let last = catalog(3, 3);
        let g = guard(&m, Some(&last), catalog(0, 0), &BTreeSet::new());
        let held: Vec<&str> = g.holds.iter().map(|h| h.backend.as_str()).collect();
        assert_eq!(held, ["web", "web_canary"]);
        assert_eq!(g.catalog.service("web"), last.service("web"));
    }

    #[test]
    fn a_drop_above_the_fraction_is_held_and_a_small_one_passes() {
        let m = manifest("    max_drop_fraction: 0.5\n");
        let last = catalog(4, 4);
        let big = guard(&m, Some(&last), catalog(1, 4), &BTreeSet::new());
        assert_eq!(big.holds.len(), 1, "3 of 4 is more than half");
        let small = guard(&m, Some(&last), catalog(2, 4), &BTreeSet::new());
        assert!(small.holds.is_empty(), "2 of 4 is exactly half");
        assert_eq!(small.catalog, catalog(2, 4));
    }

    #[test]
    fn a_drop_to_zero_is_held_by_default_even_without_rules() {
        let m = manifest("");
        let last = catalog(3, 3);
        for empty in [catalog(0, 3), catalog(0, 0), Catalog::default()] {
            let g = guard(&m, Some(&last), empty, &BTreeSet::new());
            assert_eq!(g.holds.len(), 1);
            assert_eq!((g.holds[0].before, g.holds[0].after), (3, 0));
            assert!(
                g.holds[0].reason.contains("allow_empty"),
                "{}",
                g.holds[0].reason
            );
            assert_eq!(g.catalog.service("web"), last.service("web"));
        }
        let one_left = guard(&m, Some(&last), catalog(1, 3), &BTreeSet::new());
        assert!(one_left.holds.is_empty(), "no rule against 3 -> 1");
    }

    #[test]
    fn without_rules_with_allow_empty_or_after_release_the_change_goes_through() {
        let free = manifest("    allow_empty: true\n");
        let last = catalog(3, 3);
        assert!(guard(&free, Some(&last), catalog(0, 3), &BTreeSet::new())
            .holds
            .is_empty());
        let strict = manifest("    min_healthy: 2\n");
        let released = BTreeSet::from(["web".to_string()]);
        let g = guard(&strict, Some(&last), catalog(0, 3), &released);
        assert!(g.holds.is_empty());
        assert_eq!(g.catalog, catalog(0, 3));
    }

    fn postgres(primary: Option<usize>) -> Catalog {
        let instances = (0..2)
            .map(|i| Instance {
                id: format!("pg{i}"),
                node: "n".into(),
                address: format!("10.0.1.{}", i + 1),
                port: 5432,
                tags: [if primary == Some(i) {
                    "primary"
                } else {
                    "replica"
                }
                .to_string()]
                .into(),
                meta: Default::default(),
                health: Health::Passing,
            })
            .collect();
        Catalog::fresh(1, BTreeMap::from([("postgres".to_string(), instances)]))
    }

    #[test]
    fn a_database_losing_its_primary_keeps_the_last_one_until_a_new_one_is_tagged() {
        let text = "nodes: {lb1: {}}\ndatabases:\n  app:\n    service: postgres\n";
        let m = Manifests::from_sources(
            Path::new("m"),
            &[(PathBuf::from("m.yaml"), text.to_string())],
        )
        .expect("manifest")
        .manifest;
        let last = postgres(Some(0));
        let gap = guard(&m, Some(&last), postgres(None), &BTreeSet::new());
        assert_eq!(gap.holds.len(), 1, "demoted, nobody promoted yet");
        assert_eq!(gap.catalog.service("postgres"), last.service("postgres"));
        let promoted = guard(&m, Some(&last), postgres(Some(1)), &BTreeSet::new());
        assert!(promoted.holds.is_empty(), "a new primary goes through");
        let released = guard(
            &m,
            Some(&last),
            postgres(None),
            &BTreeSet::from(["app".to_string()]),
        );
        assert!(released.holds.is_empty());
    }

    #[test]
    fn two_instances_claiming_primary_keep_the_last_primary_until_one_clearly_is() {
        let m = |extra: &str| {
            let text =
                format!("nodes: {{lb1: {{}}}}\ndatabases:\n  app:\n    service: postgres\n{extra}");
            Manifests::from_sources(Path::new("m"), &[(PathBuf::from("m.yaml"), text)])
                .expect("manifest")
                .manifest
        };
        let last = postgres(Some(0));
        // The switchover in flight: pg1 promoted, pg0 still tagged primary.
        let both = {
            let mut e = last.service("postgres").expect("pg").clone();
            e.instances[1].tags = ["primary".to_string()].into();
            last.clone().with_service("postgres", Some(e))
        };
        for extra in ["", "    allow_empty: true\n"] {
            let g = guard(&m(extra), Some(&last), both.clone(), &BTreeSet::new());
            assert_eq!(g.holds.len(), 1, "{extra}");
            assert_eq!((g.holds[0].before, g.holds[0].after), (1, 2));
            assert!(
                g.holds[0]
                    .reason
                    .contains("2 instances claim to be primary"),
                "{}",
                g.holds[0].reason
            );
            assert_eq!(g.catalog.service("postgres"), last.service("postgres"));
        }
        // Resolved: the new primary alone goes through.
        let resolved = guard(&m(""), Some(&last), postgres(Some(1)), &BTreeSet::new());
        assert!(resolved.holds.is_empty());
        // Nothing clear to keep: no baseline, or an ambiguous one.
        assert!(guard(&m(""), None, both.clone(), &BTreeSet::new())
            .holds
            .is_empty());
        assert!(guard(&m(""), Some(&both), both.clone(), &BTreeSet::new())
            .holds
            .is_empty());
        // Released by an operator: the catalog as it is.
        let released = BTreeSet::from(["app".to_string()]);
        assert!(guard(&m(""), Some(&last), both, &released).holds.is_empty());
    }

    #[test]
    fn replicas_dropping_to_none_are_held_unless_allowed() {
        let text = |extra: &str| {
            format!("nodes: {{lb1: {{}}}}\ndatabases:\n  ro:\n    service: postgres\n    role: replica\n{extra}")
        };
        let m = |extra: &str| {
            Manifests::from_sources(Path::new("m"), &[(PathBuf::from("m.yaml"), text(extra))])
                .expect("manifest")
                .manifest
        };
        let last = postgres(Some(0));
        // Every instance turns primary-tagged: no replica left.
        let mut none = postgres(Some(0));
        for i in 0..2 {
            let mut e = none.service("postgres").expect("pg").clone();
            e.instances[i].tags = ["primary".to_string()].into();
            none = none.with_service("postgres", Some(e));
        }
        let held = guard(&m(""), Some(&last), none.clone(), &BTreeSet::new());
        assert_eq!(held.holds.len(), 1);
        assert!(
            held.holds[0].reason.contains("no replica"),
            "{:?}",
            held.holds
        );
        let allowed = guard(
            &m("    allow_empty: true\n"),
            Some(&last),
            none,
            &BTreeSet::new(),
        );
        assert!(allowed.holds.is_empty());
    }

    #[test]
    fn growth_and_the_first_reconcile_are_never_held() {
        let m = manifest("    min_healthy: 5\n");
        assert!(
            guard(&m, Some(&catalog(1, 3)), catalog(2, 3), &BTreeSet::new())
                .holds
                .is_empty()
        );
        assert!(guard(&m, None, catalog(0, 0), &BTreeSet::new())
            .holds
            .is_empty());
    }
}
