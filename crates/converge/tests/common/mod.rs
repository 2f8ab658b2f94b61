//! Shared set-up for the end-to-end tests: a private copy of the example
//! repository per test, and a way to run the built `converge` binary in it.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use converge_testkit::backend::HttpBackend;
use converge_testkit::consul::ConsulAgent;
use converge_testkit::{http, Haproxy};

pub mod drill;
pub mod fleet;
pub mod pgbouncer;
pub mod vrrp;

/// A test's own copy of manifests, templates and catalog, plus a root.
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    /// Copies the shipped examples into a fresh temp dir.
    pub fn examples() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = repo();
        copy_dir(&repo.join("manifests"), &dir.path().join("manifests"));
        copy_dir(&repo.join("templates"), &dir.path().join("templates"));
        std::fs::copy(
            repo.join("examples/catalog.yaml"),
            dir.path().join("catalog.yaml"),
        )
        .expect("copy catalog");
        std::fs::create_dir_all(dir.path().join("root")).expect("root");
        Self { dir }
    }

    /// Shipped templates, with the given manifest and catalog text.
    pub fn custom(manifest: &str, catalog: &str) -> Self {
        let ws = Self::examples();
        std::fs::remove_dir_all(ws.path("manifests")).expect("clear manifests");
        ws.write("manifests/site.yaml", manifest);
        ws.write("catalog.yaml", catalog);
        ws
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn root(&self) -> PathBuf {
        self.path("root")
    }

    pub fn write(&self, rel: &str, text: &str) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).expect("read")
    }

    /// Runs `converge ARGS` with this workspace's inputs.
    pub fn converge(&self, args: &[&str]) -> Output {
        self.converge_env(args, &[])
    }

    /// A `converge ARGS` command reading this workspace's inputs, with the
    /// caller's environment cleaned of variables that would change it.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_converge"));
        cmd.args(args)
            .arg("--manifests")
            .arg(self.path("manifests"))
            .arg("--templates")
            .arg(self.path("templates"))
            .arg("--catalog")
            .arg(self.path("catalog.yaml"))
            .arg("--root")
            .arg(self.root())
            .env_remove("CONSUL_HTTP_ADDR")
            .env_remove("CONVERGE_FAILPOINT")
            .env_remove("RUST_LOG");
        cmd
    }

    /// Runs `converge ARGS` with extra environment variables.
    pub fn converge_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = self.command(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run converge")
    }

    /// Every file under the root with its bytes, for before/after checks.
    pub fn tree(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut out = BTreeMap::new();
        walk(&self.root(), &mut out);
        out
    }
}

fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.insert(p.clone(), std::fs::read(&p).unwrap_or_default());
        }
    }
}

/// A one-node site: an HTTP frontend on 127.0.0.1:`port` in front of
/// backend `web` (service `web`, with `backend_extra` YAML lines), and an
/// HAProxy target checked by `validate`, reloaded by SIGUSR2 to the pid in
/// `/run/haproxy.pid` when `reload` is set.
pub fn haproxy_site(port: u16, backend_extra: &str, validate: &str, reload: bool) -> String {
    let reload = if reload {
        "    reload:\n      signal: {pidfile: /run/haproxy.pid, signal: SIGUSR2}\n"
    } else {
        ""
    };
    format!(
        "nodes:\n  lb1: {{}}\nhaproxy:\n  stats_socket: /run/haproxy/admin.sock\n\
         frontends:\n  http_in:\n    bind: [\"127.0.0.1:{port}\"]\n    default_backend: web\n\
         backends:\n  web:\n    service: web\n{backend_extra}\
         targets:\n  haproxy:\n    template: haproxy.cfg.tera\n    destination: /etc/haproxy/haproxy.cfg\n\
         \x20   validate: {validate}\n{reload}"
    )
}

/// A catalog whose service `web` has one passing instance on loopback per
/// port: `web-I` on node `appI`.
pub fn web_catalog(ports: &[u16]) -> String {
    let mut s = String::from("services:\n  web:\n");
    for (i, p) in ports.iter().enumerate() {
        s.push_str(&format!(
            "    - {{id: web-{i}, node: app{i}, address: 127.0.0.1, port: {p}, health: passing}}\n"
        ));
    }
    s
}

/// A [`haproxy_site`] checked by `haproxy -c` and reloaded by signal, with
/// [`web_catalog`]`(ports)`, applied once while HAProxy does not run yet
/// (so nothing needed a reload).
pub fn applied_haproxy_site(ports: &[u16]) -> Workspace {
    let ws = Workspace::custom(
        &haproxy_site(converge_testkit::free_port(), "", "haproxy", true),
        &web_catalog(ports),
    );
    let out = ws.converge(&["apply", "--once", "--node", "lb1"]);
    assert_exit(&out, 0);
    assert!(stdout(&out).contains("not running"), "{}", stdout(&out));
    ws
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).expect("copy");
        }
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts the exit code, printing both streams when it differs.
pub fn assert_exit(o: &Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "exit status\n--- stdout\n{}\n--- stderr\n{}",
        stdout(o),
        stderr(o)
    );
}

/// A `converge run` child process with its loopback status listener.
pub struct RunningDaemon {
    pub child: converge_testkit::Child,
    pub listen: u16,
}

impl Workspace {
    /// Starts `converge run` for node lb1 with this workspace's inputs.
    pub fn run_daemon(&self, extra: &[&str]) -> RunningDaemon {
        let (cmd, listen) = self.daemon_command(extra);
        self.spawn_daemon(cmd, listen)
    }

    /// [`run_daemon`](Self::run_daemon) as systemd starts a `Type=notify`
    /// service: `NOTIFY_SOCKET`, and a watchdog of `watchdog_usec` with
    /// `WATCHDOG_PID` naming the daemon's own pid (a shell that `exec`s
    /// the daemon knows it in advance).
    pub fn run_daemon_notify(&self, socket: &Path, watchdog_usec: u64) -> RunningDaemon {
        let (inner, listen) = self.daemon_command(&[]);
        let script = r#"export WATCHDOG_PID=$$; exec "$@""#;
        let mut cmd = wrapped(&["/bin/sh", "-c", script, "sh"], &[], &inner);
        cmd.env("NOTIFY_SOCKET", socket)
            .env("WATCHDOG_USEC", watchdog_usec.to_string());
        self.spawn_daemon(cmd, listen)
    }

    fn daemon_command(&self, extra: &[&str]) -> (Command, u16) {
        let (mut cmd, listen) = self.daemon_command_default_log(extra);
        cmd.env("RUST_LOG", "info");
        (cmd, listen)
    }

    /// `converge run` at the log level an operator gets by default.
    fn daemon_command_default_log(&self, extra: &[&str]) -> (Command, u16) {
        let listen = converge_testkit::free_port();
        let listen_at = format!("127.0.0.1:{listen}");
        let mut cmd = self.command(&["run", "--node", "lb1", "--listen", &listen_at]);
        cmd.args(extra);
        (cmd, listen)
    }

    /// [`run_daemon`](Self::run_daemon) with no `RUST_LOG`: the default
    /// log level.
    pub fn run_daemon_default_log(&self, extra: &[&str]) -> RunningDaemon {
        let (cmd, listen) = self.daemon_command_default_log(extra);
        self.spawn_daemon(cmd, listen)
    }

    fn spawn_daemon(&self, mut cmd: Command, listen: u16) -> RunningDaemon {
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(self.path("daemon.log")).expect("log"));
        let child =
            converge_testkit::Child::spawn("converge run", &mut cmd).expect("spawn converge run");
        let d = RunningDaemon { child, listen };
        converge_testkit::wait::until(
            std::time::Duration::from_secs(15),
            "the status listener",
            || http::get(listen, "/health").is_some(),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", self.daemon_log()));
        d
    }

    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.path("daemon.log")).unwrap_or_default()
    }

    /// Starts `converge run` for node lb1 reading services from `consul`,
    /// with `extra` flags after `--consul URL`.
    pub fn run_daemon_with_consul(&self, consul: &ConsulAgent, extra: &[&str]) -> RunningDaemon {
        let url = consul.http_url();
        let mut args = vec!["--consul", url.as_str()];
        args.extend_from_slice(extra);
        self.run_daemon(&args)
    }

    /// Waits until the file at `rel` under the root (empty while absent)
    /// satisfies `cond`; on timeout, panics with the file and the daemon log.
    pub fn wait_file(
        &self,
        rel: &str,
        deadline: Duration,
        what: &str,
        cond: impl Fn(&str) -> bool,
    ) {
        let read = || std::fs::read_to_string(self.root().join(rel)).unwrap_or_default();
        converge_testkit::wait::until(deadline, what, || cond(&read())).unwrap_or_else(|e| {
            panic!(
                "{e}\nconfig:\n{}\ndaemon log:\n{}",
                read(),
                self.daemon_log()
            )
        });
    }

    /// HAProxy on the config [`haproxy_site`] renders, with the pidfile and
    /// stats socket that site names.
    pub fn start_haproxy(&self) -> Haproxy {
        let root = self.root();
        std::fs::create_dir_all(root.join("run/haproxy")).expect("run dir");
        Haproxy::start(
            &root.join("etc/haproxy/haproxy.cfg"),
            &root.join("run/haproxy.pid"),
            &root.join("run/haproxy/admin.sock"),
        )
        .expect("haproxy on the rendered config")
    }
}

/// HTTP backends answering with their names `b1`, `b2`, ... (`n` of them).
pub fn http_backends(n: usize) -> Vec<HttpBackend> {
    (1..=n)
        .map(|i| HttpBackend::start(&format!("b{i}")).expect("backend"))
        .collect()
}

/// Registers each of `backends` in `consul` as instance `web-N` of service
/// `web` with a TTL check; returns the check ids in the same order.
pub fn register_web(consul: &ConsulAgent, backends: &[HttpBackend]) -> Vec<String> {
    backends
        .iter()
        .enumerate()
        .map(|(i, b)| {
            consul
                .register_service_with_ttl(&format!("web-{}", i + 1), "web", b.port(), &[])
                .expect("register")
        })
        .collect()
}

impl RunningDaemon {
    pub fn status(&self) -> serde_json::Value {
        let body = http::get(self.listen, "/status").expect("status answers");
        serde_json::from_str(&body).expect("status is JSON")
    }

    /// A metric's value (0 when absent).
    pub fn metric(&self, name: &str) -> f64 {
        let text = http::get(self.listen, "/metrics").expect("metrics answer");
        text.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == name).then(|| v.trim().parse().ok()).flatten()
            })
            .unwrap_or(0.0)
    }
}

impl Workspace {
    /// Runs `converge ARGS` with the root bind-mounted read-only in a
    /// private mount namespace: tests run as root, whom file modes do not
    /// stop, but a read-only mount stops everyone.
    pub fn converge_read_only_root(&self, args: &[&str]) -> Output {
        const SCRIPT: &str = r#"root=$1; shift
mount --bind "$root" "$root" && mount -o remount,ro,bind "$root" && exec "$@""#;
        let unshare = [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            SCRIPT,
            "sh",
        ];
        wrapped(&unshare, &[self.root().as_os_str()], &self.command(args))
            .output()
            .expect("run converge under unshare")
    }
}

/// `inner` started through `wrapper` (a program and its arguments, ending
/// in a shell script that `exec`s `"$@"`), with `extra` arguments for the
/// script before `inner`'s program: the same program, arguments and
/// environment changes as `inner`.
fn wrapped(wrapper: &[&str], extra: &[&std::ffi::OsStr], inner: &Command) -> Command {
    let mut cmd = Command::new(wrapper[0]);
    cmd.args(&wrapper[1..])
        .args(extra)
        .arg(inner.get_program())
        .args(inner.get_args());
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd
}
