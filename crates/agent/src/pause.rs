//! Which PgBouncer databases to `PAUSE` while their primary is unclear:
//! a decision of the one [`pass`](crate::pass), carried out by the daemon.
//!
//! The guard keeps a database whose catalog names no primary, or several,
//! at its last primary, so it never leaves `pgbouncer.ini`. That spares
//! clients `no such database`, but not the last primary's trouble: after
//! a kill -9 they fail on `server login has been failing`, and during a
//! switchover they may write to a primary that is being demoted. With the
//! admin console configured (a target reloading with `pgbouncer:`), the
//! pass also decides to pause each such database: PgBouncer holds new
//! queries until converge `RESUME`s it, after the `RELOAD` that points it
//! at the resolved primary. `unclear_primary_pause_secs` bounds the wait
//! (past it the daemon resumes at the last primary and says so); `0`
//! turns pausing off.
//!
//! Only `converge run` pauses. `plan` prints the decision (`would pause`),
//! and `apply --once` prints it as not carried out: it exits right after
//! its transaction, and a pause nobody stays to resume would hold every
//! query of the database until an operator noticed. The daemon's side —
//! the record of what it paused ([`ledger`]), the timeout, resuming at
//! start and at shutdown — is `daemon::pauses`.

pub mod ledger;

use std::fmt;

use converge_model::manifest::{PgbouncerAdmin, Reload};
use converge_model::{Layout, NodeDesired};
use serde::Serialize;

use crate::guard::{Hold, HoldKind};

/// One database to keep paused while its primary is unclear.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pause {
    /// Database name, as clients name it.
    pub database: String,
    /// Why, in a few words (`2 instances claim primary: a, b`).
    pub reason: String,
    /// The longest the pause may last, in seconds.
    pub limit_secs: u64,
    /// The console that pauses it, its socket directory under the root.
    #[serde(skip)]
    pub console: PgbouncerAdmin,
}

impl fmt::Display for Pause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}), at most {}s",
            self.database, self.reason, self.limit_secs
        )
    }
}

/// The pauses `holds` call for on the node `desired`, consoles under
/// `layout`: one per database held for an unclear primary, when a target
/// reloads PgBouncer over its console with `unclear_primary_pause_secs`
/// above 0.
pub fn decide(desired: &NodeDesired, layout: &Layout, holds: &[Hold]) -> Vec<Pause> {
    let Some(console) = desired.targets.values().find_map(|t| match &t.reload {
        Reload::Pgbouncer(admin) if admin.unclear_primary_pause_secs > 0 => Some(admin),
        _ => None,
    }) else {
        return Vec::new();
    };
    holds
        .iter()
        .filter(|h| desired.manifest.databases.contains_key(&h.backend))
        .filter_map(|h| {
            let reason = match &h.kind {
                HoldKind::NoPrimary => "no instance is primary".to_string(),
                HoldKind::SeveralPrimaries { claims } => {
                    format!(
                        "{} instances claim primary: {}",
                        claims.len(),
                        claims.join(", ")
                    )
                }
                HoldKind::Servers | HoldKind::NoReplica => return None,
            };
            Some(Pause {
                database: h.backend.clone(),
                reason,
                limit_secs: console.unclear_primary_pause_secs,
                console: console.under(layout),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use converge_model::Manifests;

    use super::*;

    fn desired(reload: &str) -> NodeDesired {
        let text = format!(
            "nodes: {{lb1: {{}}}}\ndatabases:\n  app:\n    service: postgres\n  \
             ro:\n    service: postgres\n    role: replica\n\
             targets:\n  pgbouncer:\n    template: pgbouncer.ini.tera\n    \
             destination: /etc/pgbouncer/pgbouncer.ini\n    validate: none\n    \
             reload: {reload}\n"
        );
        Manifests::from_sources(Path::new("m"), &[(PathBuf::from("m.yaml"), text)])
            .expect("manifest")
            .for_node("lb1")
            .expect("lb1")
    }

    fn hold(backend: &str, kind: HoldKind) -> Hold {
        Hold {
            backend: backend.into(),
            service: "postgres".into(),
            before: 1,
            after: 2,
            reason: "held".into(),
            kind,
        }
    }

    #[test]
    fn an_unclear_primary_is_paused_over_the_console_under_the_root() {
        let d = desired("{pgbouncer: {host: /run/postgresql, port: 6432, user: converge}}");
        let holds = [
            hold(
                "app",
                HoldKind::SeveralPrimaries {
                    claims: vec!["a".into(), "b".into()],
                },
            ),
            hold("ro", HoldKind::NoReplica),
            hold("web", HoldKind::Servers),
        ];
        let pauses = decide(&d, &Layout::new("/srv"), &holds);
        assert_eq!(pauses.len(), 1, "{pauses:?}");
        assert_eq!(
            pauses[0].to_string(),
            "app (2 instances claim primary: a, b), at most 60s"
        );
        assert_eq!(pauses[0].console.host, "/srv/run/postgresql");
        let gone = decide(&d, &Layout::new("/"), &[hold("app", HoldKind::NoPrimary)]);
        assert_eq!(gone[0].reason, "no instance is primary");
    }

    #[test]
    fn without_a_console_or_with_a_zero_limit_nothing_is_paused() {
        let holds = [hold("app", HoldKind::NoPrimary)];
        for reload in [
            "none",
            "{pgbouncer: {port: 6432, user: converge, unclear_primary_pause_secs: 0}}",
        ] {
            assert!(decide(&desired(reload), &Layout::new("/"), &holds).is_empty());
        }
    }
}
