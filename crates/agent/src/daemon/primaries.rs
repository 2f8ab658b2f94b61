//! Who is primary, per PgBouncer database: the instance the catalog calls
//! primary, and the one the last pass rendered, for `/status`.
//!
//! The two are read from different catalogs on purpose. The catalog as
//! read says what Consul believes now; the catalog as rendered (the guard
//! may have kept a database at its last primary) says where PgBouncer was
//! told to go. `converge status` compares both with the route PgBouncer
//! reports, so a held database pointing at a dead primary is visible as
//! such. Both sides use [`PgbouncerSettings::fills_role`], the rule the
//! render and the guard use.
//!
//! [`PgbouncerSettings::fills_role`]: converge_model::manifest::PgbouncerSettings::fills_role

use std::collections::BTreeMap;

use converge_model::manifest::DbRole;
use converge_model::{identity, Catalog, Health, Instance, Manifest};
use serde::{Deserialize, Serialize};

use crate::guard::Hold;

/// One catalog instance of a database's service, as status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The instance's derived name (`identity::name`).
    pub name: String,
    /// Its address.
    pub address: String,
    /// Its port.
    pub port: u16,
    /// Its health in the catalog.
    pub health: Health,
}

impl Member {
    fn of(inst: &Instance) -> Self {
        Self {
            name: identity::name(inst),
            address: inst.address.clone(),
            port: inst.port,
            health: inst.health,
        }
    }

    /// `address:port`.
    pub fn endpoint(&self) -> String {
        endpoint(&self.address, self.port)
    }
}

/// `address:port`, bracketing an IPv6 address.
pub fn endpoint(address: &str, port: u16) -> String {
    if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

/// One database: what the catalog says and what was rendered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseStatus {
    /// Its catalog service.
    pub service: String,
    /// `true` when it follows the primary, `false` for replicas.
    pub primary_role: bool,
    /// The one instance the catalog as read calls primary; `None` when
    /// none or several do (see `claims`).
    pub consul_primary: Option<Member>,
    /// Every instance of the catalog as read that claims the role.
    pub claims: Vec<Member>,
    /// Every instance of the service in the catalog as read, with its
    /// health: what a route PgBouncer reports is judged against.
    pub members: Vec<Member>,
    /// The hosts the last pass rendered (`address:port`).
    pub routed: Vec<String>,
    /// The guard kept this database at its last hosts.
    pub held: bool,
}

/// The databases of `manifest` as the catalog read (`seen`) shows them.
pub fn seen(manifest: &Manifest, catalog: &Catalog) -> BTreeMap<String, DatabaseStatus> {
    let settings = &manifest.pgbouncer;
    manifest
        .databases
        .iter()
        .map(|(name, d)| {
            let instances = catalog
                .service(&d.service)
                .map(|e| e.instances.as_slice())
                .unwrap_or_default();
            let claims: Vec<Member> = instances
                .iter()
                .filter(|i| settings.fills_role(d.role, i))
                .map(Member::of)
                .collect();
            let primary_role = d.role == DbRole::Primary;
            let consul_primary = match claims.as_slice() {
                [one] if primary_role => Some(one.clone()),
                _ => None,
            };
            let status = DatabaseStatus {
                service: d.service.clone(),
                primary_role,
                consul_primary,
                claims,
                members: instances.iter().map(Member::of).collect(),
                routed: Vec::new(),
                held: false,
            };
            (name.clone(), status)
        })
        .collect()
}

/// Fills in what the pass rendered from `accepted` (the catalog after the
/// guard) and which databases it held.
pub fn rendered(
    databases: &mut BTreeMap<String, DatabaseStatus>,
    manifest: &Manifest,
    accepted: &Catalog,
    holds: &[Hold],
) {
    let settings = &manifest.pgbouncer;
    for (name, status) in databases.iter_mut() {
        let Some(d) = manifest.databases.get(name) else {
            continue;
        };
        let chosen: Vec<&Instance> = accepted
            .service(&d.service)
            .map(|e| e.instances.as_slice())
            .unwrap_or_default()
            .iter()
            .filter(|i| settings.fills_role(d.role, i))
            .collect();
        // Several claims render no primary (the render's rule).
        status.routed = if d.role == DbRole::Primary && chosen.len() > 1 {
            Vec::new()
        } else {
            chosen
                .iter()
                .map(|i| endpoint(&i.address, i.port))
                .collect()
        };
        status.held = holds.iter().any(|h| &h.backend == name);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    use converge_model::{Catalog, Health, Instance, Manifests};

    use super::*;

    fn pg(id: &str, port: u16, tag: &str, health: Health) -> Instance {
        Instance {
            id: id.into(),
            node: "db".into(),
            address: "127.0.0.1".into(),
            port,
            tags: [tag.to_string()].into(),
            meta: Default::default(),
            health,
        }
    }

    fn manifest() -> Manifest {
        let text = "nodes: {lb1: {}}\ndatabases:\n  app:\n    service: postgres\n";
        Manifests::from_sources(Path::new("m"), &[(PathBuf::from("m.yaml"), text.into())])
            .expect("manifest")
            .manifest
    }

    fn catalog(instances: Vec<Instance>) -> Catalog {
        Catalog::fresh(1, BTreeMap::from([("postgres".to_string(), instances)]))
    }

    #[test]
    fn a_held_database_shows_consul_s_new_primary_beside_the_one_it_kept() {
        let m = manifest();
        let now = catalog(vec![
            pg("a", 1, "replica", Health::Critical),
            pg("b", 2, "primary", Health::Passing),
        ]);
        let kept = catalog(vec![pg("a", 1, "primary", Health::Passing)]);
        let hold = Hold {
            backend: "app".into(),
            service: "postgres".into(),
            before: 1,
            after: 1,
            reason: "test".into(),
            kind: crate::guard::HoldKind::NoPrimary,
        };
        let mut dbs = seen(&m, &now);
        rendered(&mut dbs, &m, &kept, &[hold]);
        let app = &dbs["app"];
        assert_eq!(
            app.consul_primary.as_ref().map(Member::endpoint),
            Some("127.0.0.1:2".to_string())
        );
        assert_eq!(app.routed, vec!["127.0.0.1:1".to_string()]);
        assert!(app.held);
        assert_eq!(app.members.len(), 2);
    }

    #[test]
    fn two_claims_name_no_primary_and_list_both() {
        let m = manifest();
        let now = catalog(vec![
            pg("a", 1, "primary", Health::Passing),
            pg("b", 2, "primary", Health::Passing),
        ]);
        let mut dbs = seen(&m, &now);
        rendered(&mut dbs, &m, &now, &[]);
        assert_eq!(dbs["app"].consul_primary, None);
        assert_eq!(dbs["app"].claims.len(), 2);
        assert!(dbs["app"].routed.is_empty());
    }
}
