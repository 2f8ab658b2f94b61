//! `converge status`: one screen for the on-call engineer — what converge
//! last did on this node, which servers HAProxy is using right now, where
//! PgBouncer sends each database, and whether this node holds its VIPs.
//!
//! Every section is gathered on its own and carries its own error, so a
//! program that cannot be asked (HAProxy down, the daemon not running)
//! never hides what the others say. Nothing here changes anything.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};

use converge_apply::pgbouncer_admin::{show_databases, DatabaseRoute};
use converge_apply::LiveServer;
use converge_model::manifest::{PgbouncerAdmin, Reload, Validator};
use converge_model::{Layout, Manifests};
use serde::Serialize;

use crate::pipeline::hex_sha256;
use crate::status::Status;

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

/// One VRRP instance as this node holds it now.
#[derive(Debug, Serialize)]
pub struct VipLive {
    /// Instance name.
    pub name: String,
    /// Interface.
    pub interface: String,
    /// `MASTER` when every address is on this node, `BACKUP` when none,
    /// `PARTIAL` otherwise.
    pub state: &'static str,
    /// Addresses present on this node.
    pub held: Vec<String>,
    /// Addresses configured.
    pub addresses: Vec<String>,
    /// keepalived's pid, when its pidfile names a live process.
    pub keepalived_pid: Option<u32>,
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
    let haproxy = converge_apply::live_servers(&socket, Duration::from_secs(2)).into();
    let pidfile = desired
        .targets
        .values()
        .find_map(|t| match (&t.validate, &t.reload) {
            (Validator::Keepalived, Reload::Signal { pidfile, .. }) => Some(layout.path(pidfile)),
            _ => None,
        });
    let keepalived = vips(&desired, pidfile.as_deref()).into();
    let pgbouncer = console(&desired, layout)
        .and_then(|admin| show_databases(&admin))
        .into();
    Ok(NodeReport {
        node: node.to_string(),
        daemon: daemon_status,
        targets,
        haproxy,
        pgbouncer,
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

fn vips(
    desired: &converge_model::NodeDesired,
    pidfile: Option<&Path>,
) -> Result<Vec<VipLive>, String> {
    let output = Command::new("ip")
        .args(["-o", "addr", "show"])
        .output()
        .map_err(|e| format!("cannot run `ip -o addr show`: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "`ip -o addr show` failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let present = String::from_utf8_lossy(&output.stdout).into_owned();
    let local: Vec<&str> = present
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            f.find(|w| *w == "inet" || *w == "inet6")?;
            f.next()
        })
        .collect();
    let pid = pidfile
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|s| s.trim().parse::<u32>().ok())
        .filter(|pid| Path::new(&format!("/proc/{pid}")).exists());
    Ok(desired
        .vips
        .values()
        .map(|v| {
            let held: Vec<String> = v
                .vip
                .addresses
                .iter()
                .filter(|a| {
                    let ip = a.split('/').next().unwrap_or(a);
                    local.iter().any(|l| l.split('/').next() == Some(ip))
                })
                .cloned()
                .collect();
            VipLive {
                name: v.name.clone(),
                interface: v.node_interface.clone(),
                state: if held.is_empty() {
                    "BACKUP"
                } else if held.len() == v.vip.addresses.len() {
                    "MASTER"
                } else {
                    "PARTIAL"
                },
                held,
                addresses: v.vip.addresses.clone(),
                keepalived_pid: pid,
            }
        })
        .collect())
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
