//! `converge status`: one screen for the on-call engineer — what converge
//! last did on this node, which servers HAProxy is using right now, where
//! PgBouncer sends each database and which of its settings wait for a
//! restart, and for each VRRP instance keepalived's own state and whether
//! this node holds the VIP.
//!
//! It answers three questions: who is primary (per database, the
//! instance the daemon's catalog names beside the one PgBouncer routes to,
//! the `primary` module), who is serving (HAProxy's live servers) and where traffic
//! goes (each frontend's routes to its backends, each database's host).
//! The [`Verdict`] says whether the node serves what it should, for a
//! monitoring check to act on.
//!
//! Every section is gathered on its own and carries its own error, so a
//! program that cannot be asked (HAProxy down, the daemon not running)
//! never hides what the others say. A program no target of this node
//! renders for is not asked at all: its section says so. Nothing here
//! changes anything.

use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use converge_model::manifest::{PgbouncerAdmin, Reload, Validator};
use converge_model::{Layout, Manifests};
use converge_programs::haproxy::runtime_api::{live_servers, LiveServer};
use converge_programs::pgbouncer::console::{
    pending_restart, show_databases, DatabaseRoute, PendingRestart,
};
use serde::Serialize;

use crate::daemon::board::{hex_sha256, Status};

mod primary;
mod verdict;

use crate::vrrp;
pub use crate::vrrp::{VipLive, VrrpState};
pub use primary::{PrimaryCheck, Problem, RouteSource};
pub use verdict::Verdict;

/// A section's content, or why it could not be gathered.
#[derive(Debug, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Section<T> {
    /// Gathered.
    Ok(T),
    /// Not gathered, and why.
    Error(String),
    /// Not asked: no target of this node is for that program.
    Absent(String),
}

impl<T> Section<T> {
    /// The content, when gathered.
    pub fn ok(&self) -> Option<&T> {
        match self {
            Section::Ok(v) => Some(v),
            _ => None,
        }
    }
}

impl<T> From<Result<T, String>> for Section<T> {
    fn from(r: Result<T, String>) -> Self {
        match r {
            Ok(v) => Section::Ok(v),
            Err(e) => Section::Error(e),
        }
    }
}

/// One target as it is on disk, with what the daemon knows of it.
#[derive(Debug, Serialize)]
pub struct TargetLive {
    /// Target name.
    pub target: String,
    /// Rooted destination.
    pub destination: PathBuf,
    /// SHA-256 of the live file, `None` when it does not exist.
    pub sha256: Option<String>,
    /// Modification time of the live file (Unix seconds).
    pub modified: Option<u64>,
    /// The daemon's last apply (Unix seconds), when it runs.
    pub last_apply: Option<u64>,
    /// The daemon's last error for this target.
    pub last_error: Option<String>,
}

/// Everything `converge status` shows.
#[derive(Debug, Serialize)]
pub struct NodeReport {
    /// Node name.
    pub node: String,
    /// The daemon's own status (its `/status`).
    pub daemon: Section<Status>,
    /// Targets as they are on disk.
    pub targets: Vec<TargetLive>,
    /// HAProxy's servers, from its admin socket.
    pub haproxy: Section<Vec<LiveServer>>,
    /// Where PgBouncer sends each database, from its admin console.
    pub pgbouncer: Section<Vec<DatabaseRoute>>,
    /// Restart-only PgBouncer settings whose value in the live file is
    /// not the one PgBouncer runs with: applied by a reload, they wait
    /// for a restart.
    pub pgbouncer_restart: Section<Vec<PendingRestart>>,
    /// This node's VRRP instances.
    pub keepalived: Section<Vec<VipLive>>,
    /// Per database that follows a primary: the catalog's primary and the
    /// one PgBouncer routes to.
    pub primaries: Section<Vec<PrimaryCheck>>,
    /// Each frontend's routes, in the order HAProxy tries them.
    pub traffic: Section<Vec<FrontendRoutes>>,
    /// Whether the node serves what it should, and if not why.
    pub verdict: Verdict,
}

/// Where one frontend sends requests.
#[derive(Debug, Serialize)]
pub struct FrontendRoutes {
    /// Frontend name.
    pub frontend: String,
    /// Its listen addresses.
    pub bind: Vec<String>,
    /// Routes, tried in order; the last one is the default backend.
    pub routes: Vec<RouteLine>,
}

/// One route of a frontend.
#[derive(Debug, Serialize)]
pub struct RouteLine {
    /// `Host` header it matches, if any.
    pub host: Option<String>,
    /// Path prefix it matches, if any.
    pub path_prefix: Option<String>,
    /// Backend it sends to.
    pub backend: String,
}

/// Whether a target of `desired` is validated by `validator`: the node
/// runs that program under converge.
fn renders_for(desired: &converge_model::NodeDesired, validator: &Validator) -> bool {
    desired.targets.values().any(|t| &t.validate == validator)
}

/// A section for `program`, gathered only when the node renders for it.
fn when_present<T>(present: bool, program: &str, f: impl FnOnce() -> Section<T>) -> Section<T> {
    if present {
        f()
    } else {
        Section::Absent(format!("no {program} target on this node"))
    }
}

/// The frontends of the manifest, with their routes and default backend.
fn traffic(manifest: &converge_model::Manifest) -> Vec<FrontendRoutes> {
    manifest
        .frontends
        .iter()
        .map(|(name, f)| FrontendRoutes {
            frontend: name.clone(),
            bind: f.bind.clone(),
            routes: f
                .routes
                .iter()
                .map(|r| RouteLine {
                    host: r.host.clone(),
                    path_prefix: r.path_prefix.clone(),
                    backend: r.backend.clone(),
                })
                .chain(std::iter::once(RouteLine {
                    host: None,
                    path_prefix: None,
                    backend: f.default_backend.clone(),
                }))
                .collect(),
        })
        .collect()
}

/// Gathers the report for `node`, asking the daemon at `daemon`.
pub async fn gather(
    manifests: &Manifests,
    node: &str,
    layout: &Layout,
    daemon: &str,
) -> Result<NodeReport, crate::AgentError> {
    let desired = manifests
        .for_node(node)
        .map_err(crate::AgentError::Manifest)?;
    let daemon_status: Section<Status> = ask_daemon(daemon).await.into();
    let known = daemon_status.ok();
    let targets = desired
        .targets
        .iter()
        .map(|(name, t)| {
            let destination = layout.path(&t.destination);
            let bytes = std::fs::read(&destination).ok();
            let daemon_view = known.and_then(|s| s.targets.get(name));
            TargetLive {
                target: name.clone(),
                sha256: bytes.as_deref().map(hex_sha256),
                modified: std::fs::metadata(&destination)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map(|d| d.as_secs()),
                last_apply: daemon_view.and_then(|d| d.last_apply),
                last_error: daemon_view.and_then(|d| d.last_error.clone()),
                destination,
            }
        })
        .collect();
    let has_haproxy = renders_for(&desired, &Validator::Haproxy);
    let has_pgbouncer = renders_for(&desired, &Validator::Pgbouncer);
    let socket = layout.path(&desired.manifest.haproxy.stats_socket);
    let haproxy = when_present(has_haproxy, "HAProxy", || {
        live_servers(&socket, None, Duration::from_secs(2)).into()
    });
    let traffic = when_present(has_haproxy, "HAProxy", || {
        Section::Ok(traffic(&desired.manifest))
    });
    let keepalived = when_present(
        renders_for(&desired, &Validator::Keepalived),
        "keepalived",
        || vrrp::vips(&desired, layout).into(),
    );
    let admin = console(&desired, layout);
    let pgbouncer: Section<Vec<DatabaseRoute>> = when_present(has_pgbouncer, "PgBouncer", || {
        admin.clone().and_then(|a| show_databases(&a)).into()
    });
    let pgbouncer_restart = when_present(has_pgbouncer, "PgBouncer", || {
        admin
            .and_then(|a| pending_restart(&a, &pgbouncer_ini(&desired, layout)?))
            .into()
    });
    let primaries = when_present(has_pgbouncer, "PgBouncer", || match &daemon_status {
        Section::Ok(s) => Section::Ok(primary::checks(
            &s.databases,
            pgbouncer.ok().map(Vec::as_slice),
        )),
        _ => Section::Error(
            "the daemon could not be asked: which instance the catalog calls primary is unknown"
                .into(),
        ),
    });
    let mut report = NodeReport {
        node: node.to_string(),
        daemon: daemon_status,
        targets,
        haproxy,
        pgbouncer,
        pgbouncer_restart,
        keepalived,
        primaries,
        traffic,
        verdict: Verdict::default(),
    };
    report.verdict = Verdict::of(&report);
    Ok(report)
}

/// How to reach PgBouncer's console: the manifest's admin reload settings
/// when a target has them, else the unix socket of `pgbouncer` settings as
/// its first admin user.
fn console(
    desired: &converge_model::NodeDesired,
    layout: &Layout,
) -> Result<PgbouncerAdmin, String> {
    let from_target = desired.targets.values().find_map(|t| match &t.reload {
        Reload::Pgbouncer(admin) => Some(admin.clone()),
        _ => None,
    });
    let settings = &desired.manifest.pgbouncer;
    let admin = match from_target {
        Some(a) => a,
        None => PgbouncerAdmin {
            host: "/run/postgresql".into(),
            port: settings.listen_port,
            user: settings
                .admin_users
                .first()
                .cloned()
                .ok_or("no pgbouncer.admin_users in the manifests to ask the console as")?,
            pause: false,
            timeout_secs: 5,
            unclear_primary_pause_secs: 0,
        },
    };
    Ok(admin.under(layout))
}

/// The live file of the one target validated with `pgbouncer`: the
/// PgBouncer configuration converge renders.
fn pgbouncer_ini(
    desired: &converge_model::NodeDesired,
    layout: &Layout,
) -> Result<Vec<u8>, String> {
    let files: Vec<(&String, PathBuf)> = desired
        .targets
        .iter()
        .filter(|(_, t)| t.validate == Validator::Pgbouncer)
        .map(|(name, t)| (name, layout.path(&t.destination)))
        .collect();
    match files.as_slice() {
        [(_, path)] => {
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
        }
        [] => Err("no target is validated with `pgbouncer`: no file to compare with".into()),
        several => Err(format!(
            "targets {} are all validated with `pgbouncer`; which one the console's \
             PgBouncer runs is unknown",
            several
                .iter()
                .map(|(name, _)| name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// `GET /status` from the daemon's loopback listener.
async fn ask_daemon(addr: &str) -> Result<Status, String> {
    let url = format!("http://{addr}/status");
    let answer = reqwest::Client::new()
        .get(&url)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| format!("daemon not reachable at {addr}: {e}"))?;
    answer
        .json::<Status>()
        .await
        .map_err(|e| format!("daemon at {addr}: bad /status document: {e}"))
}
