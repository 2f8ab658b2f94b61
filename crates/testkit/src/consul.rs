//! A real `consul agent -dev` per test, on free loopback ports.
//!
//! Every listener (HTTP, DNS, serf LAN and WAN, server RPC, gRPC) gets its
//! own free port on 127.0.0.1; HTTPS and gRPC-TLS are disabled; the agent
//! binds, advertises and serves on loopback only, and its update check and
//! anonymous usage signature are turned off, so a test never sends a packet
//! off the machine. `-dev` keeps the Raft state in memory: a
//! [`ConsulAgent::restart`] brings the agent back on the same ports, config
//! and data dir with a fresh Raft log and a *lower* index, which is exactly
//! the "index went backwards" case clients must handle. The agent restores
//! the services registered through it, with their last check status, from
//! the data dir.
//!
//! [`ConsulAgent::start_with_acl`] enables ACLs with `default_policy =
//! "deny"` and a known initial management token, written to a config file
//! (never to the command line). [`ConsulAgent::create_token`] makes tokens
//! with narrower policies.
//!
//! The helpers talk to the agent with a tiny blocking HTTP/1.0 client over
//! `std::net`, so this module needs no async runtime. The agent is stopped
//! by pid when dropped (`SIGTERM`, then `SIGKILL`, then reaped).
//!
//! The binary is `$CONVERGE_CONSUL_BIN`, else `target/peers/bin/consul`
//! (built by `scripts/build-peers.sh`), else `consul` on `PATH`; if none
//! exists, starting fails with a message saying how to build it.
//!
//! The parts: `binary` finds the program, `files` writes its config and
//! certificates, `api` is the blocking client of its HTTP API, and
//! `connections` counts this process's connections to it, `synthetic`
//! fills it with a datacenter of external nodes. This file holds
//! [`ConsulAgent`]'s life: start, wait for a leader, stop, start again.

mod api;
mod binary;
mod connections;
mod files;
mod fleet;
mod synthetic;

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::ports::free_port;
use crate::process::Child;
use crate::wait;

pub use binary::consul_binary;
pub use connections::{open_connections_to, PeakConnections};
pub use fleet::ConsulFleet;
pub use synthetic::External;

/// How long an agent gets to elect itself leader.
pub const START_DEADLINE: Duration = Duration::from_secs(60);

/// The ports one agent listens on.
#[derive(Debug, Clone, Copy)]
pub struct ConsulPorts {
    /// HTTP API.
    pub http: u16,
    /// DNS.
    pub dns: u16,
    /// Serf LAN gossip.
    pub serf_lan: u16,
    /// Serf WAN gossip.
    pub serf_wan: u16,
    /// Server RPC.
    pub server: u16,
    /// gRPC (xDS).
    pub grpc: u16,
    /// HTTPS API (used only by [`ConsulAgent::start_with_tls`]).
    pub https: u16,
}

impl ConsulPorts {
    fn pick() -> Self {
        Self {
            http: free_port(),
            dns: free_port(),
            serf_lan: free_port(),
            serf_wan: free_port(),
            server: free_port(),
            grpc: free_port(),
            https: free_port(),
        }
    }
}

/// A running `consul agent -dev`, stopped on drop.
#[derive(Debug)]
pub struct ConsulAgent {
    binary: PathBuf,
    dir: tempfile::TempDir,
    ports: ConsulPorts,
    management_token: Option<String>,
    tls: bool,
    /// For a client agent: the server's serf LAN port and this node's name.
    client_of: Option<(u16, String)>,
    /// `limits.http_max_conns_per_client`, when not Consul's default.
    conn_limit: Option<u32>,
    child: Option<Child>,
}

impl ConsulAgent {
    /// Starts a dev agent without ACLs and waits until it has a leader.
    ///
    /// # Errors
    ///
    /// No binary, the agent exited, or no leader before [`START_DEADLINE`]
    /// (the message carries the end of the agent's log).
    pub fn start() -> Result<Self, String> {
        Self::launch(None, false, None)
    }

    /// Starts a dev agent with ACLs enabled, `default_policy = "deny"`,
    /// and a random initial management token ([`ConsulAgent::management_token`]).
    ///
    /// # Errors
    ///
    /// As [`ConsulAgent::start`], or the management token never became
    /// usable.
    pub fn start_with_acl() -> Result<Self, String> {
        Self::launch(Some(api::random_uuid()?), false, None)
    }

    /// Starts a dev agent that also serves HTTPS ([`ConsulAgent::https_url`])
    /// with certificates made by `consul tls` in the temp dir, requiring a
    /// client certificate signed by the same CA ([`ConsulAgent::tls_files`]).
    /// Plain HTTP stays on for the helpers.
    ///
    /// # Errors
    ///
    /// As [`ConsulAgent::start`], or `consul tls` failed.
    pub fn start_with_tls() -> Result<Self, String> {
        Self::launch(None, true, None)
    }

    fn launch(
        management_token: Option<String>,
        tls: bool,
        client_of: Option<(u16, String)>,
    ) -> Result<Self, String> {
        let binary = consul_binary()?;
        let mut last_err = String::new();
        // A free port can be taken between our probe and consul's bind;
        // a fresh set of ports is the fix, not a failed test.
        for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("converge-consul-")
                .tempdir()
                .map_err(|e| format!("cannot create a temp dir for consul: {e}"))?;
            let mut agent = Self {
                binary: binary.clone(),
                dir,
                ports: ConsulPorts::pick(),
                management_token: management_token.clone(),
                tls,
                client_of: client_of.clone(),
                conn_limit: None,
                child: None,
            };
            if tls {
                agent.make_certificates()?;
            }
            agent.write_config()?;
            match agent.spawn_and_wait() {
                Ok(()) => return Ok(agent),
                Err(e) => last_err = e,
            }
        }
        Err(last_err)
    }

    /// `https://127.0.0.1:<https port>` of a TLS agent.
    pub fn https_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.ports.https)
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| format!("cannot open consul log: {e}"))?;
        let log2 = log
            .try_clone()
            .map_err(|e| format!("cannot clone consul log handle: {e}"))?;
        let mut cmd = Command::new(&self.binary);
        cmd.arg("agent");
        if self.client_of.is_none() {
            cmd.arg("-dev");
        }
        cmd.arg("-config-file")
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .env_remove("CONSUL_HTTP_TOKEN")
            .env_remove("CONSUL_HTTP_ADDR");
        let child = Child::spawn("consul agent", &mut cmd).map_err(|e| e.to_string())?;
        self.child = Some(child);
        let res = self.wait_ready();
        if res.is_err() {
            if let Some(mut c) = self.child.take() {
                c.stop();
            }
        }
        res
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let what = format!("consul on 127.0.0.1:{} to elect a leader", self.ports.http);
        let mut exited = None;
        let leader = wait::until(START_DEADLINE, &what, || {
            if let Some(c) = self.child.as_mut() {
                if let Some(s) = c.try_status() {
                    exited = Some(s);
                    return true;
                }
            }
            matches!(self.get("/v1/status/leader"), Ok((200, body)) if body.trim().len() > 2)
        });
        if let Some(status) = exited {
            return Err(format!(
                "consul exited during startup ({status}); log tail:\n{}",
                self.log_tail()
            ));
        }
        leader.map_err(|e| format!("{e}; log tail:\n{}", self.log_tail()))?;
        if self.management_token.is_some() {
            let what = "the ACL management token to become usable";
            wait::until(START_DEADLINE, what, || {
                matches!(self.get("/v1/acl/token/self"), Ok((200, _)))
            })
            .map_err(|e| format!("{e}; log tail:\n{}", self.log_tail()))?;
        }
        Ok(())
    }

    /// The last lines of the agent's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// `127.0.0.1:<http port>`.
    pub fn http_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.ports.http))
    }

    /// `http://127.0.0.1:<http port>`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.http_addr())
    }

    /// Every port the agent listens on.
    pub fn ports(&self) -> ConsulPorts {
        self.ports
    }

    /// The agent's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::pid)
    }

    /// The initial management token of an ACL agent.
    pub fn management_token(&self) -> Option<&str> {
        self.management_token.as_deref()
    }

    /// Stops the agent (the temp dir and ports are kept for
    /// [`ConsulAgent::start_again`]).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.stop();
        }
    }

    /// Starts a stopped agent again on the same ports and config, and waits
    /// for a leader. The Raft state starts afresh (lower index); services
    /// registered through this agent are restored from the data dir.
    ///
    /// # Errors
    ///
    /// As [`ConsulAgent::start`].
    pub fn start_again(&mut self) -> Result<(), String> {
        if self.child.is_some() {
            return Err("consul is still running; stop it first".into());
        }
        // The listening sockets of the old process may take a moment to be
        // released; retry a few times before giving up.
        let mut last = String::new();
        for _ in 0..5 {
            match self.spawn_and_wait() {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Stops and starts the agent (same ports, same config).
    ///
    /// # Errors
    ///
    /// As [`ConsulAgent::start_again`].
    pub fn restart(&mut self) -> Result<(), String> {
        self.stop();
        self.start_again()
    }
}

impl Drop for ConsulAgent {
    fn drop(&mut self) {
        self.stop();
    }
}
