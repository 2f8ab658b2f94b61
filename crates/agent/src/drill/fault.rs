//! The fault a drill injects, always one the operator names, and its undo.
//!
//! A command (with an optional undo command), a signal to a pid (`STOP` is
//! undone with `CONT`; `KILL` and `TERM` cannot be undone), a Consul
//! maintenance mode on a service instance (undone by turning it off), a
//! failed Consul TTL check (undone by passing it), or a planned Patroni
//! switchover through its REST API (nothing to undo: it is the change). The drill undoes a
//! reversible fault on every way out, an interrupt included.

use std::time::Duration;

use converge_consul::{CheckStatus, HealthQuery, QueryOptions};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde::Serialize;

use super::DrillError;

/// A fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// `sh -c RUN`, undone by `sh -c UNDO` when given.
    Command {
        /// The fault.
        run: String,
        /// Its undo.
        undo: Option<String>,
    },
    /// A signal to a process.
    Signal {
        /// The process.
        pid: i32,
        /// The signal.
        signal: Signal,
    },
    /// Consul maintenance mode for a service instance (by service id).
    ConsulMaintenance(String),
    /// A Consul TTL check set to critical (by check id).
    ConsulCheck(String),
    /// `POST /switchover` away from the current leader, on a Patroni
    /// member's REST API.
    PatroniSwitchover(reqwest::Url),
}

/// What the report says about the fault.
#[derive(Debug, Clone, Serialize)]
pub struct FaultRecord {
    /// The fault, in words.
    pub fault: String,
    /// Its undo, in words, if it has one.
    pub undo: Option<String>,
    /// `undone`, or the undo's error; absent when there is no undo.
    pub undo_result: Option<String>,
}

impl Fault {
    /// The fault in words.
    pub fn describe(&self) -> String {
        match self {
            Fault::Command { run, .. } => format!("command `{run}`"),
            Fault::Signal { pid, signal } => format!("{signal} to pid {pid}"),
            Fault::ConsulMaintenance(id) => format!("Consul maintenance mode on service `{id}`"),
            Fault::ConsulCheck(id) => format!("Consul check `{id}` set to critical"),
            Fault::PatroniSwitchover(url) => format!("Patroni switchover through {url}"),
        }
    }

    /// The undo in words, `None` when the fault cannot be undone.
    pub fn describe_undo(&self) -> Option<String> {
        match self {
            Fault::Command { undo, .. } => undo.as_ref().map(|u| format!("command `{u}`")),
            Fault::Signal { pid, signal } => {
                (*signal == Signal::SIGSTOP).then(|| format!("SIGCONT to pid {pid}"))
            }
            Fault::ConsulMaintenance(id) => Some(format!("maintenance off on `{id}`")),
            Fault::ConsulCheck(id) => Some(format!("Consul check `{id}` passed")),
            Fault::PatroniSwitchover(_) => None,
        }
    }

    /// Injects the fault.
    pub async fn inject(&self, consul: &Consul) -> Result<(), DrillError> {
        match self {
            Fault::Command { run, .. } => shell(run).await,
            Fault::Signal { pid, signal } => send(*pid, *signal),
            Fault::ConsulMaintenance(id) => consul.maintenance(id, true).await,
            Fault::ConsulCheck(id) => consul.check(id, CheckStatus::Fail).await,
            Fault::PatroniSwitchover(url) => switchover(url).await,
        }
    }

    /// Undoes it; `None` when there is nothing to undo.
    pub async fn undo(&self, consul: &Consul) -> Option<Result<(), DrillError>> {
        Some(match self {
            Fault::Command { undo: Some(u), .. } => shell(u).await,
            Fault::Command { undo: None, .. } => return None,
            Fault::Signal { pid, signal } if *signal == Signal::SIGSTOP => {
                send(*pid, Signal::SIGCONT)
            }
            Fault::Signal { .. } => return None,
            Fault::ConsulMaintenance(id) => consul.maintenance(id, false).await,
            Fault::ConsulCheck(id) => consul.check(id, CheckStatus::Pass).await,
            Fault::PatroniSwitchover(_) => return None,
        })
    }
}

/// Runs `sh -c script`; an error carries its exit status and stderr.
async fn shell(script: &str) -> Result<(), DrillError> {
    let script = script.to_string();
    let out = tokio::task::spawn_blocking({
        let script = script.clone();
        move || {
            std::process::Command::new("sh")
                .arg("-c")
                .arg(&script)
                .output()
        }
    })
    .await
    .map_err(|e| DrillError::Fault(format!("`{script}`: {e}")))?
    .map_err(|e| DrillError::Fault(format!("`{script}`: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    Err(DrillError::Fault(format!(
        "`{script}` exited with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

/// Asks Patroni at `base` for the leader (`GET /cluster`), then for a
/// switchover away from it (`POST /switchover`); Patroni picks the
/// candidate.
async fn switchover(base: &reqwest::Url) -> Result<(), DrillError> {
    let fail = |what: &str, e: &dyn std::fmt::Display| DrillError::Fault(format!("{what}: {e}"));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| fail("HTTP client", &e))?;
    let cluster = base.join("/cluster").map_err(|e| fail("URL", &e))?;
    let members: serde_json::Value = client
        .get(cluster.clone())
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| fail(&format!("GET {cluster}"), &e))?
        .json()
        .await
        .map_err(|e| fail(&format!("GET {cluster}"), &e))?;
    let leader = members["members"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["role"] == "leader")
        .and_then(|m| m["name"].as_str())
        .ok_or_else(|| {
            DrillError::Refused(format!("GET {cluster}: no leader to switch over from"))
        })?;
    let url = base.join("/switchover").map_err(|e| fail("URL", &e))?;
    let answer = client
        .post(url.clone())
        .json(&serde_json::json!({ "leader": leader }))
        .send()
        .await
        .map_err(|e| fail(&format!("POST {url}"), &e))?;
    let status = answer.status();
    let body = answer.text().await.unwrap_or_default();
    if status.is_success() {
        return Ok(());
    }
    Err(DrillError::Fault(format!(
        "POST {url}: {status}: {}",
        body.trim()
    )))
}

fn send(pid: i32, signal: Signal) -> Result<(), DrillError> {
    nix::sys::signal::kill(Pid::from_raw(pid), signal)
        .map_err(|e| DrillError::Fault(format!("{signal} to pid {pid}: {e}")))
}

/// The Consul agent's HTTP API, as much of it as faults need: the same
/// [`converge_consul::Client`] `converge run` reads the catalog with, so
/// the global `--consul-*` flags (token file, TLS, namespace) apply to a
/// drill too.
#[derive(Clone)]
pub struct Consul {
    client: converge_consul::Client,
}

impl std::fmt::Debug for Consul {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consul")
            .field("address", self.client.address())
            .finish_non_exhaustive()
    }
}

/// What a fault leaves in Consul beside its change, for whoever looks.
const NOTE: &str = "converge drill";

impl Consul {
    /// The agent `config` names.
    pub fn new(config: converge_consul::Config) -> Result<Self, DrillError> {
        let client = converge_consul::Client::new(config)
            .map_err(|e| DrillError::Usage(format!("Consul: {e}")))?;
        Ok(Self { client })
    }

    /// The agent's address, for the safety check.
    pub fn url(&self) -> &reqwest::Url {
        self.client.address()
    }

    fn failed(what: String) -> impl FnOnce(converge_consul::Error) -> DrillError {
        move |e| DrillError::Fault(format!("{what}: {e}"))
    }

    async fn maintenance(&self, id: &str, enable: bool) -> Result<(), DrillError> {
        self.client
            .agent_service_maintenance(id, enable, NOTE)
            .await
            .map_err(Self::failed(format!("maintenance mode of `{id}`")))
    }

    async fn check(&self, id: &str, status: CheckStatus) -> Result<(), DrillError> {
        self.client
            .agent_check_update(id, status, NOTE)
            .await
            .map_err(Self::failed(format!("check `{id}`")))
    }

    /// The id of the first passing instance of `service` Consul knows,
    /// for the local default fault.
    pub async fn first_passing(&self, service: &str) -> Result<String, DrillError> {
        let query = HealthQuery {
            passing_only: true,
            ..HealthQuery::default()
        };
        let answer = self
            .client
            .health_service(service, &query, &QueryOptions::default())
            .await
            .map_err(Self::failed(format!("passing instances of `{service}`")))?;
        let mut ids: Vec<String> = answer.value.into_iter().map(|i| i.id).collect();
        ids.sort();
        ids.into_iter().next().ok_or_else(|| {
            DrillError::Refused(format!(
                "service `{service}` has no passing instance in Consul"
            ))
        })
    }
}
