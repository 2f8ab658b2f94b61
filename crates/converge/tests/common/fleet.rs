//! What the fleet tests share (`fleet.rs`, `rollout.rs`,
//! `rollout_vip.rs`): each LB node's `converge run --published` daemon
//! with its own root, and the publisher's side, `converge` run from the
//! repository against the Consul server agent. One copy, so that a change
//! to how a node's daemon is started or a revision is published reaches
//! every fleet test at once.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use base64::Engine;
use converge_testkit::consul::ConsulAgent;
use converge_testkit::{http, wait, Child};

use super::{assert_exit, stdout, Workspace};

/// One LB node of a fleet: its root and, while it runs, its daemon and
/// the port of its status listener. Each test adds what it reads of the
/// node (its rendered file, its status) in its own `impl Node`.
pub struct Node {
    pub name: &'static str,
    pub root: tempfile::TempDir,
    pub daemon: Option<Child>,
    pub listen: u16,
}

impl Node {
    /// Node `name` with an empty root and no daemon yet.
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            root: tempfile::tempdir().expect("root"),
            daemon: None,
            listen: 0,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }

    pub fn log(&self) -> String {
        daemon_log(self.root.path())
    }

    pub fn metric(&self, name: &str) -> f64 {
        metric(self.listen, name)
    }

    /// Starts the node's daemon, [`run_published`] against the agent at
    /// `consul` on a fresh port with what `setup` adds to the command,
    /// and waits up to `deadline` for it to answer; a daemon it ran before
    /// is stopped once the new one answers.
    pub fn run(&mut self, consul: &str, deadline: Duration, setup: impl FnOnce(&mut Command)) {
        self.listen = converge_testkit::free_port();
        let root = self.root.path();
        let mut cmd = run_published(self.name, consul, root, self.listen);
        setup(&mut cmd);
        self.daemon = Some(spawn(self.name, &mut cmd, root, self.listen, deadline));
    }
}

/// `converge run --published` for node `name` against the Consul agent at
/// `consul`: its root is `root`, its secrets and its log (`daemon.log`)
/// under it, its status listener on `listen`, a pass every second and
/// reports that outlive a dead daemon by ten. The caller's Consul
/// variables are removed so only `consul` is used; a test adds what it
/// needs (a token, the JSON log format, the reload's environment) before
/// [`spawn`].
pub fn run_published(name: &str, consul: &str, root: &Path, listen: u16) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_converge"));
    cmd.args(["run", "--published", "--node", name])
        .args(["--consul", consul])
        .arg("--root")
        .arg(root)
        .arg("--secrets")
        .arg(root.join("secrets"))
        .args(["--listen", &format!("127.0.0.1:{listen}")])
        .args(["--resync", "1s", "--report-ttl", "10s"])
        .env_remove("CONSUL_HTTP_ADDR")
        .env_remove("CONSUL_HTTP_TOKEN")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(root.join("daemon.log")).expect("log"));
    cmd
}

/// Starts `cmd` (from [`run_published`]) as node `name`'s daemon and
/// waits up to `deadline` until its status listener on `listen` answers,
/// so a test starts from a running daemon; panics with its log if it
/// never does.
pub fn spawn(name: &str, cmd: &mut Command, root: &Path, listen: u16, deadline: Duration) -> Child {
    let daemon = Child::spawn(format!("converge run {name}"), cmd).expect("spawn");
    wait::until(deadline, "the status listener", || {
        http::get(listen, "/health").is_some()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", daemon_log(root)));
    daemon
}

/// What the daemon whose root is `root` logged.
pub fn daemon_log(root: &Path) -> String {
    std::fs::read_to_string(root.join("daemon.log")).unwrap_or_default()
}

/// Every node's daemon log under its name, for a failure's message.
pub fn daemon_logs<'a>(nodes: impl IntoIterator<Item = (&'a str, &'a Path)>) -> String {
    nodes
        .into_iter()
        .map(|(name, root)| format!("--- {name}\n{}", daemon_log(root)))
        .collect()
}

/// [`daemon_logs`] of fleet nodes.
pub fn node_logs(nodes: &[Node]) -> String {
    daemon_logs(nodes.iter().map(|n| (n.name, n.root.path())))
}

/// The value of metric `name` on the daemon listening on `listen`; 0 when
/// it does not answer or has no such metric yet.
pub fn metric(listen: u16, name: &str) -> f64 {
    let text = http::get(listen, "/metrics").unwrap_or_default();
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == name).then(|| v.trim().parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// `converge ARGS` from the publisher's repository `repo` against the
/// server agent `server`.
pub fn converge(repo: &Workspace, server: &ConsulAgent, args: &[&str]) -> Output {
    let url = server.http_url();
    let mut all = args.to_vec();
    all.extend(["--consul", url.as_str()]);
    repo.converge(&all)
}

/// `converge publish EXTRA --format json` of what `repo` holds, which
/// must succeed; the revision it published.
pub fn publish(repo: &Workspace, server: &ConsulAgent, extra: &[&str]) -> String {
    let mut args = vec!["publish"];
    args.extend_from_slice(extra);
    args.extend(["--format", "json"]);
    let out = converge(repo, server, &args);
    assert_exit(&out, 0);
    let doc: serde_json::Value =
        serde_json::from_str(&stdout(&out)).unwrap_or_else(|e| panic!("{e}: {}", stdout(&out)));
    doc["revision"].as_str().expect("revision").to_string()
}

/// `converge fleet wait` for `revision`, giving up after `timeout`.
pub fn fleet_wait(repo: &Workspace, server: &ConsulAgent, revision: &str, timeout: &str) -> Output {
    converge(
        repo,
        server,
        &[
            "fleet",
            "wait",
            "--revision",
            revision,
            "--timeout",
            timeout,
        ],
    )
}

/// The value of KV key `key` on `server` and the session holding it, if
/// the key is there.
pub fn kv(server: &ConsulAgent, key: &str) -> Option<(Vec<u8>, Option<String>)> {
    let (status, body) = server.get(&format!("/v1/kv/{key}")).ok()?;
    if status != 200 {
        return None;
    }
    let entries: serde_json::Value = serde_json::from_str(&body).ok()?;
    let value = base64::engine::general_purpose::STANDARD
        .decode(entries[0]["Value"].as_str().unwrap_or_default())
        .ok()?;
    Some((value, entries[0]["Session"].as_str().map(str::to_string)))
}
