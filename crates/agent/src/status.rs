//! `converge status`: one screen for the on-call engineer — what converge
//! last did on this node, which servers HAProxy is using right now, where
//! PgBouncer sends each database and which of its settings wait for a
//! restart, and for each VRRP instance keepalived's own state and whether
//! this node holds the VIP.
//!
//! Every section is gathered on its own and carries its own error, so a
//! program that cannot be asked (HAProxy down, the daemon not running)
//! never hides what the others say. Nothing here changes anything.

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

mod vrrp;

pub use vrrp::{VipLive, VrrpState};

/// A section's content, or why it could not be gathered.
#[derive(Debug, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Section<T> {
    /// Gathered.
    Ok(T),
    /// Not gathered, and why.
    Error(String),
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
    let known = match &daemon_status {
        Section::Ok(s) => Some(s),
        Section::Error(_) => None,
    };
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
    let socket = layout.path(&desired.manifest.haproxy.stats_socket);
    let haproxy = live_servers(&socket, Duration::from_secs(2)).into();
    let keepalived = vrrp::vips(&desired, layout).into();
    let admin = console(&desired, layout);
    let pgbouncer = admin.clone().and_then(|a| show_databases(&a)).into();
    let pgbouncer_restart = admin
        .and_then(|a| pending_restart(&a, &pgbouncer_ini(&desired, layout)?))
        .into();
    Ok(NodeReport {
        node: node.to_string(),
        daemon: daemon_status,
        targets,
        haproxy,
        pgbouncer,
        pgbouncer_restart,
        keepalived,
    })
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
    let mut admin = match from_target {
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
        },
    };
    if admin.host.starts_with('/') {
        admin.host = layout.path(&admin.host).display().to_string();
    }
    Ok(admin)
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
