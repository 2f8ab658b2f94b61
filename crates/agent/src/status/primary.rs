//! Who is primary, for `converge status`: per database that follows a
//! primary, the instance the daemon's catalog calls primary beside the one
//! PgBouncer routes to, and what is wrong when they are not the same
//! healthy instance.
//!
//! The route is PgBouncer's own answer (`SHOW DATABASES`) when its console
//! can be asked, else what the daemon last rendered: a held database keeps
//! pointing at its last primary, and only the live route shows whether
//! that one is still alive.

use std::fmt;

use converge_model::Health;
use converge_programs::pgbouncer::console::DatabaseRoute;
use serde::Serialize;

use crate::daemon::primaries::{endpoint, DatabaseStatus, Member};

/// Where the route of a [`PrimaryCheck`] was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteSource {
    /// PgBouncer's `SHOW DATABASES`.
    Pgbouncer,
    /// The daemon's last render (PgBouncer could not be asked).
    Rendered,
}

/// What is wrong with a database's primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Problem {
    /// PgBouncer routes to another instance than the catalog's primary.
    RoutedNotPrimary,
    /// The routed instance is not passing in the catalog, or gone from it.
    RoutedDown,
    /// PgBouncer has no host for the database.
    NotRouted,
    /// No instance claims the primary role.
    NoPrimary,
    /// Several instances claim it.
    SeveralPrimaries,
    /// The guard keeps the database at its last primary.
    Held,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::RoutedNotPrimary => "ROUTED ≠ CONSUL PRIMARY",
            Self::RoutedDown => "ROUTED IS DOWN",
            Self::NotRouted => "NOT ROUTED",
            Self::NoPrimary => "NO PRIMARY IN CONSUL",
            Self::SeveralPrimaries => "SEVERAL PRIMARIES IN CONSUL",
            Self::Held => "HELD",
        })
    }
}

/// One database's primary, per the catalog and per PgBouncer.
#[derive(Debug, Clone, Serialize)]
pub struct PrimaryCheck {
    /// Database name (as clients name it).
    pub database: String,
    /// The instance the catalog calls primary, when exactly one does.
    pub consul_primary: Option<Member>,
    /// Every instance claiming the role.
    pub claims: Vec<Member>,
    /// `address:port` the database is routed to, `None` when it has none.
    pub routed: Option<String>,
    /// Where `routed` was read.
    pub route_source: RouteSource,
    /// The routed instance's health in the catalog, `None` when the
    /// catalog has no instance at that address and port.
    pub routed_health: Option<Health>,
    /// What is wrong; empty when PgBouncer routes to the one passing
    /// primary.
    pub problems: Vec<Problem>,
}

/// The checks of every primary-following database in the daemon's
/// `databases`, against PgBouncer's `live` routes when it answered.
pub fn checks<'a>(
    databases: impl IntoIterator<Item = (&'a String, &'a DatabaseStatus)>,
    live: Option<&[DatabaseRoute]>,
) -> Vec<PrimaryCheck> {
    databases
        .into_iter()
        .filter(|(_, d)| d.primary_role)
        .map(|(name, d)| check(name, d, live))
        .collect()
}

fn check(name: &str, d: &DatabaseStatus, live: Option<&[DatabaseRoute]>) -> PrimaryCheck {
    let (routed, route_source) = match live {
        Some(routes) => (
            routes
                .iter()
                .find(|r| r.name == name && !r.host.is_empty())
                .map(|r| {
                    let port = r.port.parse().unwrap_or(0);
                    endpoint(&r.host, port)
                }),
            RouteSource::Pgbouncer,
        ),
        None => (d.routed.first().cloned(), RouteSource::Rendered),
    };
    let routed_health = routed.as_ref().and_then(|r| {
        d.members
            .iter()
            .filter(|m| &m.endpoint() == r)
            .map(|m| m.health)
            .min()
    });
    let mut problems = Vec::new();
    match (&d.consul_primary, d.claims.len()) {
        (Some(p), _) if routed.as_ref().is_some_and(|r| *r != p.endpoint()) => {
            problems.push(Problem::RoutedNotPrimary)
        }
        (None, 0) => problems.push(Problem::NoPrimary),
        (None, _) => problems.push(Problem::SeveralPrimaries),
        _ => {}
    }
    match &routed {
        None => problems.push(Problem::NotRouted),
        Some(_) if routed_health != Some(Health::Passing) => problems.push(Problem::RoutedDown),
        Some(_) => {}
    }
    if d.held {
        problems.push(Problem::Held);
    }
    PrimaryCheck {
        database: name.to_string(),
        consul_primary: d.consul_primary.clone(),
        claims: d.claims.clone(),
        routed,
        route_source,
        routed_health,
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(port: u16, health: Health) -> Member {
        Member {
            name: format!("pg{port}:db"),
            address: "127.0.0.1".into(),
            port,
            health,
        }
    }

    fn route(port: u16) -> DatabaseRoute {
        DatabaseRoute {
            name: "app".into(),
            host: "127.0.0.1".into(),
            port: port.to_string(),
            database: "app".into(),
            paused: false,
        }
    }

    fn db(primary: Option<Member>, members: Vec<Member>) -> DatabaseStatus {
        DatabaseStatus {
            service: "postgres".into(),
            primary_role: true,
            claims: primary.iter().cloned().collect(),
            consul_primary: primary,
            members,
            routed: vec!["127.0.0.1:1".into()],
            held: false,
        }
    }

    #[test]
    fn routed_to_the_passing_primary_is_no_problem() {
        let d = db(
            Some(member(1, Health::Passing)),
            vec![member(1, Health::Passing)],
        );
        let c = check("app", &d, Some(&[route(1)]));
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        assert_eq!(c.routed_health, Some(Health::Passing));
    }

    #[test]
    fn routed_to_a_dead_old_primary_is_flagged_twice() {
        let d = db(
            Some(member(2, Health::Passing)),
            vec![member(1, Health::Critical), member(2, Health::Passing)],
        );
        let c = check("app", &d, Some(&[route(1)]));
        assert_eq!(c.problems, [Problem::RoutedNotPrimary, Problem::RoutedDown]);
    }

    #[test]
    fn a_route_to_an_instance_gone_from_the_catalog_is_down() {
        let d = db(
            Some(member(2, Health::Passing)),
            vec![member(2, Health::Passing)],
        );
        let c = check("app", &d, Some(&[route(1)]));
        assert_eq!(c.routed_health, None);
        assert!(c.problems.contains(&Problem::RoutedDown));
    }

    #[test]
    fn without_pgbouncer_the_rendered_route_is_judged() {
        let d = db(None, vec![member(1, Health::Passing)]);
        let c = check("app", &d, None);
        assert_eq!(c.route_source, RouteSource::Rendered);
        assert_eq!(c.problems, [Problem::NoPrimary]);
    }
}
