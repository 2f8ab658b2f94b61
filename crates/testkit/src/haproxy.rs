//! A real HAProxy in master-worker mode, driven over its runtime API.
//!
//! [`Haproxy::start`] runs `haproxy -W -p PIDFILE -f CONFIG` in the
//! foreground as our child: `-W` makes it a master process that reloads on
//! `SIGUSR2` (what converge's signal reloader sends to the pid in the
//! pidfile), and staying in the foreground (no `-D`) lets the guard reap
//! the master, which waits for its workers before it exits. The master's
//! output goes to `PIDFILE` with the extension `log` (appended), because
//! the master reports reload outcomes only there (`Loading success.` /
//! `Loading failure!`).
//!
//! The config must declare `stats socket STATS_SOCKET level admin`; the
//! socket answers one command per connection ([`Haproxy::command`]).
//! Readiness is "the master logged `Loading success.`, the stats socket
//! answers `show info`, and the master catches `SIGUSR2`" (its `SigCgt` in
//! `/proc/PID/status`). The log line and the socket are not enough: HAProxy
//! 2.6 logs `Loading success.` before the master has installed its signal
//! handlers. A `SIGUSR2` sent before that, on first start, kills the master
//! (default action); sent during the re-exec that a reload performs, it is
//! pending on a blocked mask and then discarded when the master sets the
//! signal to `SIG_IGN` on its way to installing the handler, so the reload
//! silently never happens. Both were observed with strace.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::netns::Netns;
use crate::process::Child;
use crate::wait;

/// How long [`Haproxy::start`] and [`Haproxy::reload`] wait for HAProxy.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// A running HAProxy master (and its worker), stopped on drop.
#[derive(Debug)]
pub struct Haproxy {
    child: Child,
    config: PathBuf,
    pidfile: PathBuf,
    stats_socket: PathBuf,
    log: PathBuf,
}

impl Haproxy {
    /// Starts HAProxy on `config` and waits until it serves.
    ///
    /// # Errors
    ///
    /// When HAProxy cannot be spawned, exits, or is not ready within
    /// [`DEADLINE`]; the message carries its output.
    pub fn start(config: &Path, pidfile: &Path, stats_socket: &Path) -> Result<Self, String> {
        Self::launch(Command::new("haproxy"), config, pidfile, stats_socket)
    }

    /// [`Haproxy::start`] inside `ns` (`ip netns exec`, which `exec`s
    /// HAProxy, so the guarded pid is still the master's): its binds are
    /// the namespace's addresses, while its pidfile, log and stats socket
    /// stay files every namespace sees.
    ///
    /// # Errors
    ///
    /// As [`Haproxy::start`].
    pub fn start_in(
        ns: &Netns,
        config: &Path,
        pidfile: &Path,
        stats_socket: &Path,
    ) -> Result<Self, String> {
        Self::launch(ns.command("haproxy"), config, pidfile, stats_socket)
    }

    fn launch(
        mut haproxy: Command,
        config: &Path,
        pidfile: &Path,
        stats_socket: &Path,
    ) -> Result<Self, String> {
        let log = pidfile.with_extension("log");
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| format!("cannot open haproxy log {}: {e}", log.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("cannot duplicate haproxy log handle: {e}"))?;
        let offset = file_len(&log);
        let child = Child::spawn(
            "haproxy",
            haproxy
                .arg("-W")
                .arg("-p")
                .arg(pidfile)
                .arg("-f")
                .arg(config)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err),
        )
        .map_err(|e| e.to_string())?;
        let mut h = Self {
            child,
            config: config.to_path_buf(),
            pidfile: pidfile.to_path_buf(),
            stats_socket: stats_socket.to_path_buf(),
            log,
        };
        let what = format!(
            "haproxy (pid {}) to load {} and answer on {}",
            h.master_pid(),
            config.display(),
            stats_socket.display()
        );
        let ready = wait::until_some(DEADLINE, &what, || {
            if let Some(status) = h.child.try_status() {
                return Some(Err(format!("haproxy exited ({status})")));
            }
            let loaded = h.log_since(offset).contains("Loading success.");
            (loaded && h.try_command("show info").is_ok() && h.master_catches_sigusr2())
                .then_some(Ok(()))
        })
        .and_then(|r| r);
        match ready {
            Ok(()) => Ok(h),
            Err(e) => Err(format!("{e}; its output:\n{}", h.log_since(offset))),
        }
    }

    /// The master's pid (what the pidfile holds).
    pub fn master_pid(&self) -> u32 {
        self.child.pid()
    }

    /// The pid of the worker answering the stats socket.
    pub fn worker_pid(&self) -> Option<u32> {
        let info = self.try_command("show info").ok()?;
        info.lines()
            .find_map(|l| l.strip_prefix("Pid:"))
            .and_then(|p| p.trim().parse().ok())
    }

    /// The config file HAProxy was started on.
    pub fn config(&self) -> &Path {
        &self.config
    }

    /// The pidfile given with `-p`.
    pub fn pidfile(&self) -> &Path {
        &self.pidfile
    }

    /// The runtime API socket.
    pub fn stats_socket(&self) -> &Path {
        &self.stats_socket
    }

    /// Everything the master has written to its log.
    pub fn log(&self) -> String {
        self.log_since(0)
    }

    /// Sends one runtime API command (`show stat`, `show servers state`,
    /// `set server be/s1 state maint`, ...) and returns the full answer.
    ///
    /// # Panics
    ///
    /// When the socket cannot be reached; use [`Haproxy::try_command`] to
    /// handle that.
    pub fn command(&self, cmd: &str) -> String {
        self.try_command(cmd).unwrap_or_else(|e| {
            panic!(
                "haproxy runtime API `{cmd}` on {}: {e}",
                self.stats_socket.display()
            )
        })
    }

    /// Like [`Haproxy::command`], returning the I/O error instead.
    ///
    /// # Errors
    ///
    /// Connecting, writing or reading the socket failed.
    pub fn try_command(&self, cmd: &str) -> io::Result<String> {
        let mut s = UnixStream::connect(&self.stats_socket)?;
        s.set_read_timeout(Some(DEADLINE))?;
        s.set_write_timeout(Some(DEADLINE))?;
        s.write_all(cmd.as_bytes())?;
        s.write_all(b"\n")?;
        // Without `prompt`, HAProxy answers one command and closes.
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }

    /// `(server name, "addr:port")` of every server in `backend`, in
    /// HAProxy's order, parsed from `show servers state BACKEND`.
    ///
    /// # Panics
    ///
    /// When the backend does not exist or the answer cannot be parsed.
    pub fn servers(&self, backend: &str) -> Vec<(String, String)> {
        let answer = self.command(&format!("show servers state {backend}"));
        parse_servers_state(&answer).unwrap_or_else(|e| {
            panic!("haproxy `show servers state {backend}`: {e}; answer:\n{answer}")
        })
    }

    /// Sends `SIGUSR2` to the master and waits for the outcome.
    ///
    /// On success, also waits until a new worker answers the stats socket.
    ///
    /// # Errors
    ///
    /// The master logged `Loading failure!` (the message carries what it
    /// logged, including its `[ALERT]` lines; the old worker keeps
    /// serving), exited, or did neither within [`DEADLINE`].
    pub fn reload(&mut self) -> Result<(), String> {
        let old_worker = self.worker_pid();
        let offset = file_len(&self.log);
        self.child.signal(Signal::SIGUSR2)?;
        let what = format!("haproxy (pid {}) to reload", self.master_pid());
        let loaded = wait::until_some(DEADLINE, &what, || {
            if let Some(status) = self.child.try_status() {
                return Some(Err(format!("haproxy exited ({status})")));
            }
            let new = self.log_since(offset);
            if new.contains("Loading failure!") {
                Some(Err("haproxy refused the new config".to_string()))
            } else if new.contains("Loading success.") && self.master_catches_sigusr2() {
                Some(Ok(()))
            } else {
                None
            }
        })
        .and_then(|r| r);
        if let Err(e) = loaded {
            return Err(format!("{e}; its output:\n{}", self.log_since(offset)));
        }
        wait::until(
            DEADLINE,
            "a new haproxy worker on the stats socket",
            || matches!(self.worker_pid(), Some(p) if Some(p) != old_worker),
        )
    }

    /// Stops HAProxy now (the drop does the same).
    pub fn stop(&mut self) {
        self.child.stop();
    }

    /// True when the master has a handler for `SIGUSR2`, so a reload
    /// signal sent now is acted on (see the module docs).
    pub fn master_catches_sigusr2(&self) -> bool {
        caught_signals(self.master_pid())
            .is_some_and(|mask| mask & (1 << (Signal::SIGUSR2 as i32 - 1)) != 0)
    }

    fn log_since(&self, offset: u64) -> String {
        let bytes = fs::read(&self.log).unwrap_or_default();
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    }
}

/// A minimal master-worker config: the stats socket `STATS_DIR/admin.sock`
/// at admin level, a TCP frontend `fe` on `127.0.0.1:PORT`, and a backend
/// `be` holding `servers` as `(name, port)` on loopback, in that order.
pub fn minimal_config(stats_dir: &Path, port: u16, servers: &[(&str, u16)]) -> String {
    let mut cfg = format!(
        "global\n    stats socket {}/admin.sock mode 600 level admin\n\
         defaults\n    mode tcp\n    timeout connect 1s\n    timeout client 5s\n    timeout server 5s\n\
         frontend fe\n    bind 127.0.0.1:{port}\n    default_backend be\n\
         backend be\n",
        stats_dir.display()
    );
    for (name, p) in servers {
        cfg.push_str(&format!("    server {name} 127.0.0.1:{p}\n"));
    }
    cfg
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The `SigCgt` mask of `pid` (bit N-1 set = signal N has a handler).
fn caught_signals(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("SigCgt:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// Parses `show servers state` output (format version 1), locating the
/// columns by the names in its `#` header line.
fn parse_servers_state(answer: &str) -> Result<Vec<(String, String)>, String> {
    let mut lines = answer.lines();
    let header = lines
        .by_ref()
        .find_map(|l| l.strip_prefix("# "))
        .ok_or("no `# be_id ...` header line")?;
    let cols: Vec<&str> = header.split_whitespace().collect();
    let col = |name: &str| {
        cols.iter()
            .position(|c| *c == name)
            .ok_or(format!("no `{name}` column"))
    };
    let (name, addr, port) = (col("srv_name")?, col("srv_addr")?, col("srv_port")?);
    let mut out = Vec::new();
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let get = |i: usize| f.get(i).copied().ok_or(format!("short line `{line}`"));
        out.push((
            get(name)?.to_string(),
            format!("{}:{}", get(addr)?, get(port)?),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::free_port;
    use crate::process::pid_alive;

    #[test]
    fn parses_servers_state() {
        let answer = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state \
            srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result \
            srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id \
            srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr \
            srv_agent_port\n3 be 1 s1 127.0.0.1 2 0 1 1 0 1 0 2 0 0 0 0 - 9001 - 0 0 - - 0\n\n";
        assert_eq!(
            parse_servers_state(answer),
            Ok(vec![("s1".to_string(), "127.0.0.1:9001".to_string())])
        );
        assert!(parse_servers_state("Can't find backend.\n").is_err());
    }

    #[test]
    fn start_query_reload_and_stop_a_real_haproxy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("haproxy.cfg");
        let port_fe = free_port();
        fs::write(
            &cfg,
            minimal_config(dir.path(), port_fe, &[("a", 9001), ("b", 9002)]),
        )
        .expect("write");
        let mut h = Haproxy::start(
            &cfg,
            &dir.path().join("haproxy.pid"),
            &dir.path().join("admin.sock"),
        )
        .expect("haproxy starts");
        assert_eq!(
            crate::process::read_pidfile(h.pidfile()),
            Some(h.master_pid()),
            "pidfile holds the master pid"
        );
        assert_eq!(
            h.servers("be"),
            vec![
                ("a".to_string(), "127.0.0.1:9001".to_string()),
                ("b".to_string(), "127.0.0.1:9002".to_string())
            ]
        );
        assert!(h.command("show stat").contains("be,a,"));

        let first_worker = h.worker_pid().expect("worker pid");
        fs::write(&cfg, minimal_config(dir.path(), port_fe, &[("c", 9003)])).expect("write");
        h.reload().expect("reload succeeds");
        assert_eq!(
            h.servers("be"),
            vec![("c".to_string(), "127.0.0.1:9003".to_string())]
        );
        let mut second_worker = h.worker_pid().expect("worker pid");
        assert_ne!(first_worker, second_worker);
        // Back-to-back reloads: each waits until the re-executed master
        // handles SIGUSR2 again, so none is lost.
        for (i, port) in [9004u16, 9005, 9006].into_iter().enumerate() {
            let name = format!("s{i}");
            fs::write(&cfg, minimal_config(dir.path(), port_fe, &[(&name, port)])).expect("write");
            h.reload().expect("back-to-back reload succeeds");
            assert_eq!(h.servers("be"), vec![(name, format!("127.0.0.1:{port}"))]);
            let w = h.worker_pid().expect("worker pid");
            assert_ne!(w, second_worker);
            second_worker = w;
        }

        fs::write(&cfg, "frontend broken\n    no_such_keyword\n").expect("write");
        let err = h.reload().expect_err("a broken config is refused");
        assert!(err.contains("no_such_keyword"), "{err}");
        assert_eq!(
            h.worker_pid(),
            Some(second_worker),
            "the old worker keeps serving"
        );

        let master = h.master_pid();
        drop(h);
        assert!(!pid_alive(master), "master {master} survived the drop");
        wait::until(Duration::from_secs(5), "the worker to exit", || {
            !pid_alive(second_worker)
        })
        .expect("worker gone");
    }

    #[test]
    fn a_config_haproxy_refuses_is_reported_with_its_output() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("haproxy.cfg");
        fs::write(&cfg, "frontend broken\n    no_such_keyword\n").expect("write");
        let err = Haproxy::start(
            &cfg,
            &dir.path().join("haproxy.pid"),
            &dir.path().join("admin.sock"),
        )
        .expect_err("haproxy refuses");
        assert!(err.contains("no_such_keyword"), "{err}");
    }
}
