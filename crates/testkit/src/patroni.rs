//! A real Patroni cluster per test file: two PostgreSQL 15 members on
//! loopback ports, a real Consul agent as their DCS.
//!
//! Each member is `patroni CONFIG` from the pinned venv that
//! `scripts/install-patroni.sh` builds (`$CONVERGE_PATRONI_BIN`, else
//! `target/patroni/bin/patroni` under the workspace), run as the `postgres`
//! user because PostgreSQL refuses root, with its uid set on the child so
//! the guard holds Patroni's own pid. Patroni starts and stops PostgreSQL
//! itself; the test kit never touches a member's server except to kill it
//! with its Patroni ([`PatroniCluster::kill_leader`], a node loss).
//!
//! Patroni registers the cluster in Consul by itself (`register_service:
//! true`): service `SCOPE`, ids `SCOPE/MEMBER`, tags `primary` + `master` or
//! `replica`, an HTTP check on its REST API's `/primary` or `/replica`.
//! Nothing here registers a Postgres instance by hand: tests of converge
//! see exactly what Patroni writes.
//!
//! The cluster is tuned for a test, not for production, and says so:
//! `ttl: 20` (the least Patroni accepts: it raises anything lower to 20;
//! with Consul it asks for a session TTL of half that, 10 s, Consul's
//! `session_ttl_min`, since Consul invalidates a session only after twice
//! its TTL), `loop_wait: 1`, a 1 s service check, durability off for speed (`fsync: off`, which survives the
//! process crashes tests cause, not a machine crash). Replication is
//! synchronous (`synchronous_mode: true`): a commit is acknowledged only
//! once the standby has it, so a kill -9 of the leader loses no
//! acknowledged write, and a test can check converge for the same
//! promise. Each member trusts loopback connections and gets a role and
//! database `app` (created on the first leader, replicated to the other).
//!
//! The cluster uses a [`ConsulAgent`] it is given, since converge watches
//! the same agent. Dropping the cluster stops the replicas, then the
//! leader (`SIGTERM`: Patroni stops its PostgreSQL), then kills any
//! server left running, by the pid in its `postmaster.pid`.

use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use serde_json::{json, Value};

use crate::consul::ConsulAgent;
use crate::postgres::{give_to_postgres, postgres_user, psql, BIN_DIR};
use crate::process::{pid_alive, pid_of, read_pidfile, Child};
use crate::{free_port, http, wait};

/// How long a cluster gets to elect a leader, and a replica to stream.
pub const START_DEADLINE: Duration = Duration::from_secs(120);

/// How long Patroni gets to stop its PostgreSQL on `SIGTERM`.
const GRACE: Duration = Duration::from_secs(30);

/// One member: its ports, its directory, its Patroni.
#[derive(Debug)]
struct Member {
    name: String,
    /// Loopback address its REST API and `connect_address` use.
    host: String,
    pg_port: u16,
    api_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Member {
    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("patroni.log")
    }

    /// The postmaster's pid, from its `postmaster.pid`, while it runs.
    fn postmaster(&self) -> Option<u32> {
        read_pidfile(&self.data_dir().join("postmaster.pid")).filter(|&p| pid_alive(p))
    }

    fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(Child::is_running)
    }
}

/// A running two-member Patroni cluster, stopped on drop.
#[derive(Debug)]
pub struct PatroniCluster {
    scope: String,
    members: Vec<Member>,
    consul_http: u16,
    // Last: the members' directories go after they stopped.
    dir: tempfile::TempDir,
}

/// Finds the patroni program: `$CONVERGE_PATRONI_BIN`, then
/// `target/patroni/bin/patroni` under the workspace.
///
/// # Errors
///
/// Neither exists; the message says how to install it.
pub fn patroni_binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("CONVERGE_PATRONI_BIN") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "CONVERGE_PATRONI_BIN={} is not a file",
                p.display()
            ))
        };
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/patroni/bin/patroni");
    if built.is_file() {
        return Ok(built);
    }
    Err(format!(
        "no patroni: CONVERGE_PATRONI_BIN is unset and {} does not exist; install it with \
         scripts/install-patroni.sh and set CONVERGE_PATRONI_BIN to the path it prints \
         (these tests need the real Patroni)",
        built.display()
    ))
}

impl PatroniCluster {
    /// Starts cluster `scope` with members `SCOPE-0` and `SCOPE-1` on
    /// `consul`: the first bootstraps and leads, then gets role and
    /// database `app`; the second joins as a synchronous standby. Returns
    /// once both are registered in Consul, the leader as `primary`.
    ///
    /// # Errors
    ///
    /// No patroni, a program failed, or the cluster did not form within
    /// [`START_DEADLINE`] (the message carries the members' logs).
    pub fn start(consul: &ConsulAgent, scope: &str) -> Result<Self, String> {
        Self::start_laid_out(consul, scope, false)
    }

    /// [`PatroniCluster::start`], with each member on its own loopback
    /// address (`127.0.0.2`, `127.0.0.3`) and one REST API port shared by
    /// all, as on real hosts where every member answers on 8008: what
    /// Patroni registers in Consul is then that address, and a check
    /// `port` in a manifest reaches every member's REST API. PostgreSQL
    /// listens on 127.0.0.1 too, so [`psql`] reaches each member by port.
    ///
    /// # Errors
    ///
    /// As [`PatroniCluster::start`].
    pub fn start_on_own_addresses(consul: &ConsulAgent, scope: &str) -> Result<Self, String> {
        Self::start_laid_out(consul, scope, true)
    }

    fn start_laid_out(consul: &ConsulAgent, scope: &str, own: bool) -> Result<Self, String> {
        let shared_api = free_port();
        let binary = patroni_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("converge-patroni-")
            .tempdir()
            .map_err(|e| format!("cannot create a temp dir: {e}"))?;
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("cannot chmod {}: {e}", dir.path().display()))?;
        let mut cluster = Self {
            scope: scope.to_string(),
            members: Vec::new(),
            consul_http: consul.ports().http,
            dir,
        };
        for i in 0..2 {
            let member_dir = cluster.dir.path().join(format!("m{i}"));
            fs::create_dir(&member_dir)
                .map_err(|e| format!("cannot create {}: {e}", member_dir.display()))?;
            fs::set_permissions(&member_dir, fs::Permissions::from_mode(0o700))
                .map_err(|e| format!("cannot chmod {}: {e}", member_dir.display()))?;
            give_to_postgres(&member_dir)?;
            cluster.members.push(Member {
                name: format!("{scope}-{i}"),
                host: if own {
                    format!("127.0.0.{}", 2 + i)
                } else {
                    "127.0.0.1".to_string()
                },
                pg_port: free_port(),
                api_port: if own { shared_api } else { free_port() },
                dir: member_dir,
                child: None,
            });
        }
        for i in 0..cluster.members.len() {
            cluster.write_config(i)?;
        }
        cluster.spawn(0, &binary)?;
        let first = cluster.members[0].name.clone();
        cluster
            .wait_consul_primary(consul, &first, START_DEADLINE)
            .map_err(|e| cluster.failure(&e))?;
        let port = cluster.members[0].pg_port;
        psql(port, "postgres", "postgres", "create role app login")?;
        psql(
            port,
            "postgres",
            "postgres",
            "create database app owner app",
        )?;
        cluster.spawn(1, &binary)?;
        let second = cluster.members[1].name.clone();
        wait::until(
            START_DEADLINE,
            &format!("{second} to be the sync standby"),
            || {
                cluster.is_sync_standby(&second)
                    && consul_roles(consul, scope).contains(&(
                        second.clone(),
                        "replica".into(),
                        true,
                    ))
            },
        )
        .map_err(|e| cluster.failure(&e))?;
        Ok(cluster)
    }

    /// The Consul service (and Patroni scope) name.
    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// The members' names, in start order.
    pub fn members(&self) -> Vec<String> {
        self.members.iter().map(|m| m.name.clone()).collect()
    }

    /// The PostgreSQL port of member `name`.
    pub fn pg_port(&self, name: &str) -> Option<u16> {
        self.member(name).map(|m| m.pg_port)
    }

    /// The REST API port of member `name`.
    pub fn api_port(&self, name: &str) -> Option<u16> {
        self.member(name).map(|m| m.api_port)
    }

    /// The loopback address member `name` registers and serves its REST
    /// API on.
    pub fn host(&self, name: &str) -> Option<String> {
        self.member(name).map(|m| m.host.clone())
    }

    fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }

    fn index(&self, name: &str) -> Result<usize, String> {
        self.members
            .iter()
            .position(|m| m.name == name)
            .ok_or_else(|| format!("no member {name} in cluster {}", self.scope))
    }

    fn write_config(&self, i: usize) -> Result<(), String> {
        let m = &self.members[i];
        let api = format!("{}:{}", m.host, m.api_port);
        let pg = format!("{}:{}", m.host, m.pg_port);
        let pg_listen = if m.host == "127.0.0.1" {
            pg.clone()
        } else {
            format!("127.0.0.1,{pg}")
        };
        let config = json!({
            "scope": self.scope,
            "name": m.name,
            "log": {"level": "INFO"},
            "restapi": {"listen": api, "connect_address": api},
            "consul": {
                "host": format!("127.0.0.1:{}", self.consul_http),
                "register_service": true,
                "service_check_interval": "1s",
            },
            "bootstrap": {
                "dcs": {
                    "ttl": 20,
                    "loop_wait": 1,
                    "retry_timeout": 4,
                    "synchronous_mode": true,
                    "postgresql": {
                        "use_pg_rewind": true,
                        "parameters": {
                            "fsync": "off",
                            "full_page_writes": "on",
                            "shared_buffers": "16MB",
                            "max_connections": 50,
                            "max_wal_senders": 5,
                            "max_replication_slots": 5,
                            "wal_keep_size": "64MB",
                        },
                    },
                },
                "initdb": [{"encoding": "UTF8"}, {"locale": "C"}, "no-sync"],
            },
            "postgresql": {
                "listen": pg_listen,
                "connect_address": pg,
                "data_dir": m.data_dir(),
                "bin_dir": BIN_DIR,
                "pgpass": m.dir.join("pgpass"),
                "basebackup": {"checkpoint": "fast"},
                "authentication": {
                    "superuser": {"username": "postgres", "password": "postgres"},
                    "replication": {"username": "replicator", "password": "replicator"},
                    "rewind": {"username": "postgres", "password": "postgres"},
                },
                "parameters": {
                    "unix_socket_directories": m.dir,
                    "logging_collector": "off",
                },
                "pg_hba": [
                    "local all all trust",
                    "host all all 127.0.0.0/8 trust",
                    "host replication all 127.0.0.0/8 trust",
                ],
                "remove_data_directory_on_rewind_failure": true,
                "remove_data_directory_on_diverged_timelines": true,
            },
        });
        // JSON is YAML: Patroni reads it as its YAML config.
        let path = m.dir.join("patroni.yml");
        let text = serde_json::to_string_pretty(&config).map_err(|e| e.to_string())?;
        fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        give_to_postgres(&path)
    }

    fn spawn(&mut self, i: usize, binary: &Path) -> Result<(), String> {
        let (uid, gid) = postgres_user()?;
        let m = &mut self.members[i];
        let log = File::options()
            .create(true)
            .append(true)
            .open(m.log_path())
            .map_err(|e| format!("cannot open {}: {e}", m.log_path().display()))?;
        let err = log
            .try_clone()
            .map_err(|e| format!("cannot duplicate a log handle: {e}"))?;
        let child = Child::spawn(
            format!("patroni {}", m.name),
            Command::new(binary)
                .arg(m.dir.join("patroni.yml"))
                .uid(uid)
                .gid(gid)
                .current_dir(&m.dir)
                .env("HOME", &m.dir)
                .env_remove("PGPASSWORD")
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(err),
        )
        .map_err(|e| e.to_string())?
        .with_grace(GRACE);
        m.child = Some(child);
        Ok(())
    }

    /// Starts member `name` again after [`PatroniCluster::kill_leader`] (it
    /// rejoins as a replica, rewound or cloned anew), and waits until it
    /// streams as the synchronous standby.
    ///
    /// # Errors
    ///
    /// It is still running, or does not stream within [`START_DEADLINE`].
    pub fn restart(&mut self, name: &str) -> Result<(), String> {
        let i = self.index(name)?;
        if self.members[i].running() {
            return Err(format!("{name} is still running"));
        }
        self.spawn(i, &patroni_binary()?)?;
        wait::until(
            START_DEADLINE,
            &format!("{name} to be the sync standby"),
            || self.is_sync_standby(name),
        )
        .map_err(|e| self.failure(&e))
    }

    /// Waits up to `deadline` until member `name` streams as the
    /// synchronous standby (after a switchover, the old leader must get
    /// there before a failover has a candidate).
    ///
    /// # Errors
    ///
    /// Not by the deadline (the message carries the members' logs).
    pub fn wait_sync_standby(&self, name: &str, deadline: Duration) -> Result<(), String> {
        wait::until(deadline, &format!("{name} to be the sync standby"), || {
            self.is_sync_standby(name)
        })
        .map_err(|e| self.failure(&e))
    }

    /// `GET /cluster` of the first member that answers: Patroni's view
    /// of every member.
    fn cluster_view(&self) -> Option<Value> {
        self.members.iter().find_map(|m| {
            http::request_at(&m.host, m.api_port, "GET", "/cluster")
                .and_then(|b| serde_json::from_str(&b).ok())
        })
    }

    /// The field `field` of member `name` in Patroni's cluster view.
    fn field(&self, name: &str, field: &str) -> Option<String> {
        let view = self.cluster_view()?;
        view["members"]
            .as_array()?
            .iter()
            .find(|m| m["name"] == name)
            .and_then(|m| m[field].as_str().map(str::to_string))
    }

    /// Whether member `name` streams as the synchronous standby: a
    /// switchover to it is allowed, and commits wait for it.
    fn is_sync_standby(&self, name: &str) -> bool {
        self.field(name, "state").as_deref() == Some("streaming")
            && self.field(name, "role").as_deref() == Some("sync_standby")
    }

    /// Whether member `name`'s REST API answers `GET /primary` with 200:
    /// its Patroni holds the leader lock and runs PostgreSQL as the
    /// primary (promoted).
    pub fn answers_primary(&self, name: &str) -> bool {
        self.member(name).is_some_and(|m| {
            matches!(
                http::exchange(
                    &m.host,
                    m.api_port,
                    "GET",
                    "/primary",
                    "",
                    Duration::from_secs(2)
                ),
                Ok((200, _))
            )
        })
    }

    /// The member Patroni calls leader, if one is running.
    pub fn leader(&self) -> Option<String> {
        let view = self.cluster_view()?;
        view["members"]
            .as_array()?
            .iter()
            .find(|m| m["role"] == "leader" && m["state"] == "running")
            .and_then(|m| m["name"].as_str().map(str::to_string))
    }

    /// Waits up to `deadline` for a running leader other than `not`, and
    /// returns its name.
    ///
    /// # Errors
    ///
    /// None by the deadline (the message carries the members' logs).
    pub fn wait_leader(&self, not: Option<&str>, deadline: Duration) -> Result<String, String> {
        let what = match not {
            Some(old) => format!("a leader other than {old}"),
            None => "a leader".to_string(),
        };
        wait::until_some(deadline, &what, || {
            self.leader().filter(|l| Some(l.as_str()) != not)
        })
        .map_err(|e| self.failure(&e))
    }

    /// The pids of member `name`'s Patroni and of its PostgreSQL
    /// postmaster, for a caller that takes the node down itself (a drill's
    /// fault command).
    pub fn pids(&self, name: &str) -> (Option<u32>, Option<u32>) {
        self.member(name)
            .map(|m| (m.child.as_ref().map(Child::pid), m.postmaster()))
            .unwrap_or((None, None))
    }

    /// Asks the leader for a planned switchover to `candidate` through
    /// Patroni's REST API (`POST /switchover`), which answers once done.
    ///
    /// # Errors
    ///
    /// No leader, or Patroni refused (its answer is in the message).
    pub fn switchover(&self, candidate: &str) -> Result<(), String> {
        let leader = self.leader().ok_or("no leader to switch over from")?;
        let m = self.member(&leader).ok_or("leader not a member")?;
        let body = json!({"leader": leader, "candidate": candidate}).to_string();
        match http::exchange(
            &m.host,
            m.api_port,
            "POST",
            "/switchover",
            &body,
            Duration::from_secs(60),
        )? {
            (200, _) => Ok(()),
            (status, answer) => Err(format!(
                "POST /switchover {leader} → {candidate}: HTTP {status}: {answer}"
            )),
        }
    }

    /// Kills the leader's node: `SIGKILL` to its Patroni, then to its
    /// PostgreSQL (by the pid in `postmaster.pid`), whose backends exit
    /// when they see their postmaster gone. Returns the member's name.
    ///
    /// # Errors
    ///
    /// No leader, or a kill failed.
    pub fn kill_leader(&mut self) -> Result<String, String> {
        let leader = self.leader().ok_or("no leader to kill")?;
        let i = self.index(&leader)?;
        let m = &mut self.members[i];
        let postmaster = m.postmaster();
        if let Some(child) = m.child.as_mut() {
            child.signal(Signal::SIGKILL)?;
            child.wait_exit(Duration::from_secs(10))?;
        }
        if let Some(pid) = postmaster {
            kill(pid_of(pid), Signal::SIGKILL)
                .map_err(|e| format!("cannot kill postgres {pid} of {leader}: {e}"))?;
            wait::until(
                Duration::from_secs(10),
                "the killed postmaster to go",
                || !pid_alive(pid),
            )?;
        }
        Ok(leader)
    }

    /// Waits up to `deadline` until Consul's health answer for the
    /// cluster's service has member `name` tagged `primary` with its
    /// checks passing.
    ///
    /// # Errors
    ///
    /// Not by the deadline (the message carries what Consul showed).
    pub fn wait_consul_primary(
        &self,
        consul: &ConsulAgent,
        name: &str,
        deadline: Duration,
    ) -> Result<(), String> {
        let want = (name.to_string(), "primary".to_string(), true);
        wait::until(deadline, &format!("Consul to show {name} primary"), || {
            consul_roles(consul, &self.scope).contains(&want)
        })
        .map_err(|e| format!("{e}; Consul shows {:?}", consul_roles(consul, &self.scope)))
    }

    /// The members' logs, for failure messages.
    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                let text = fs::read_to_string(m.log_path()).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(80)..].join("\n");
                format!("--- {} (patroni log tail)\n{tail}\n", m.name)
            })
            .collect()
    }

    fn failure(&self, e: &str) -> String {
        format!("{e}\n{}", self.logs())
    }

    /// Stops every member (replicas first, then the leader); idempotent.
    pub fn stop(&mut self) {
        let leader = self.leader();
        let mut order: Vec<usize> = (0..self.members.len()).collect();
        order.sort_by_key(|&i| Some(&self.members[i].name) == leader.as_ref());
        for i in order {
            let m = &mut self.members[i];
            let postmaster = m.postmaster();
            if let Some(mut child) = m.child.take() {
                child.stop();
            }
            // Patroni stops its server on SIGTERM; one it left behind (it
            // was killed, or ran out of grace) is killed by its own pid.
            if let Some(pid) = postmaster.filter(|&p| pid_alive(p)) {
                let _ = kill(pid_of(pid), Signal::SIGKILL);
                let _ = wait::until(GRACE, "postgres to exit", || !pid_alive(pid));
            }
        }
    }
}

impl Drop for PatroniCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What Consul's `/v1/health/service/SCOPE` shows: (member, role tag,
/// every check passing) per instance, the member taken from the
/// `SCOPE/MEMBER` id Patroni registers. Empty when Consul cannot be asked.
pub fn consul_roles(consul: &ConsulAgent, scope: &str) -> Vec<(String, String, bool)> {
    let Ok((200, body)) = consul.get(&format!("/v1/health/service/{scope}")) else {
        return Vec::new();
    };
    let Ok(Value::Array(entries)) = serde_json::from_str::<Value>(&body) else {
        return Vec::new();
    };
    let prefix = format!("{scope}/");
    entries
        .iter()
        .filter_map(|e| {
            let id = e["Service"]["ID"].as_str()?;
            let member = id.strip_prefix(&prefix)?.to_string();
            let tags = e["Service"]["Tags"].as_array()?;
            let role = ["primary", "replica", "standby-leader"]
                .into_iter()
                .find(|r| tags.iter().any(|t| t == r))?
                .to_string();
            let passing = e["Checks"]
                .as_array()?
                .iter()
                .all(|c| c["Status"] == "passing");
            Some((member, role, passing))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One cluster through both drills: a planned switchover moves the
    /// primary tag in Consul, a kill -9 of the leader moves it back, and
    /// every process is gone after drop.
    #[test]
    fn switchover_and_kill_move_the_primary_in_consul() {
        let consul = ConsulAgent::start().expect("consul");
        let mut c = PatroniCluster::start(&consul, "pgtk").expect("patroni cluster");
        let [first, second] = [0, 1].map(|i| c.members()[i].clone());
        assert_eq!(c.leader().as_deref(), Some(first.as_str()));
        let roles = consul_roles(&consul, "pgtk");
        assert!(
            roles.contains(&(first.clone(), "primary".into(), true)),
            "{roles:?}"
        );

        c.switchover(&second).expect("switchover");
        c.wait_consul_primary(&consul, &second, START_DEADLINE)
            .expect("second primary");
        c.wait_sync_standby(&first, START_DEADLINE)
            .expect("the old leader follows");

        let killed = c.kill_leader().expect("kill");
        assert_eq!(killed, second);
        let new = c
            .wait_leader(Some(&killed), START_DEADLINE)
            .expect("leader");
        assert_eq!(new, first);
        c.wait_consul_primary(&consul, &first, START_DEADLINE)
            .expect("first primary again");
        c.restart(&killed).expect("rejoin");

        let pids: Vec<u32> = c
            .members
            .iter()
            .filter_map(|m| m.child.as_ref().map(Child::pid))
            .chain(c.members.iter().filter_map(Member::postmaster))
            .collect();
        assert_eq!(pids.len(), 4, "two patronis, two postmasters");
        drop(c);
        for pid in pids {
            assert!(!pid_alive(pid), "{pid} still alive after drop");
        }
    }
}
