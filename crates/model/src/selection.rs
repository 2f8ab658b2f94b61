//! The selection rules: which catalog instances serve a backend, and which
//! may take a PgBouncer database's role.
//!
//! The renderer builds server lines with them, the guard counts servers
//! with them and the daemon's status reports them, so they live here, next
//! to the types they read, and all three ask the same function: a guard
//! that counted by another rule than the render could hold a change the
//! render would not make, or let through one it would. Whether an
//! instance's values are safe to render is a separate question, answered
//! by the renderer's sanitizer.

use crate::catalog::{Health, Instance};
use crate::manifest::{Backend, DbRole, PgbouncerSettings};

impl Backend {
    /// Whether `inst` may serve this backend: passing (or warning, or any
    /// health, when the backend includes those) and carrying every
    /// required tag.
    pub fn serves(&self, inst: &Instance) -> bool {
        let healthy = self.include_critical
            || inst.health == Health::Passing
            || (self.include_warning && inst.health == Health::Warning);
        healthy && self.tags.iter().all(|t| inst.tags.contains(t))
    }
}

impl PgbouncerSettings {
    /// Whether `inst` may take `role` for a database: passing and carrying
    /// one of the role's tags.
    pub fn fills_role(&self, role: DbRole, inst: &Instance) -> bool {
        let tags = match role {
            DbRole::Primary => &self.primary_tags,
            DbRole::Replica => &self.replica_tags,
        };
        inst.health == Health::Passing && tags.iter().any(|t| inst.tags.contains(t))
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::Manifests;

    fn manifest() -> crate::Manifest {
        let text = "nodes: {lb1: {}}\nbackends:\n  web:\n    service: web\n    tags: [prod]\n  \
                    api:\n    service: api\n    include_warning: true\n  \
                    pg:\n    service: pg\n    tags: [db]\n    include_critical: true\n";
        Manifests::from_sources(Path::new("m"), &[(PathBuf::from("m.yaml"), text.into())])
            .expect("manifest")
            .manifest
    }

    fn inst(health: Health, tags: &[&str]) -> Instance {
        Instance {
            id: "i".into(),
            node: "n".into(),
            address: "10.0.0.1".into(),
            port: 80,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            meta: Default::default(),
            health,
        }
    }

    #[test]
    fn a_backend_takes_healthy_instances_with_every_required_tag() {
        let m = manifest();
        let (web, api) = (&m.backends["web"], &m.backends["api"]);
        assert!(web.serves(&inst(Health::Passing, &["prod", "x"])));
        assert!(!web.serves(&inst(Health::Passing, &["x"])), "tag missing");
        assert!(!web.serves(&inst(Health::Warning, &["prod"])), "warning");
        assert!(api.serves(&inst(Health::Warning, &[])), "include_warning");
        assert!(!api.serves(&inst(Health::Critical, &[])));
    }

    #[test]
    fn include_critical_lists_every_instance_with_the_tags_whatever_its_health() {
        let m = manifest();
        let pg = &m.backends["pg"];
        for health in [Health::Passing, Health::Warning, Health::Critical] {
            assert!(pg.serves(&inst(health, &["db"])), "{health:?}");
        }
        assert!(!pg.serves(&inst(Health::Critical, &[])), "tag missing");
    }

    #[test]
    fn a_role_needs_a_passing_instance_with_one_of_its_tags() {
        let p = manifest().pgbouncer;
        assert!(p.fills_role(DbRole::Primary, &inst(Health::Passing, &["master"])));
        assert!(p.fills_role(DbRole::Replica, &inst(Health::Passing, &["replica"])));
        assert!(!p.fills_role(DbRole::Primary, &inst(Health::Passing, &["replica"])));
        assert!(!p.fills_role(DbRole::Primary, &inst(Health::Warning, &["primary"])));
    }
}
