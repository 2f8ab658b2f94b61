//! `converge run` on the embedded default — the catalog file, no Consul —
//! and the daemon's contract with its supervisor: file watches, the
//! periodic resync, JSON logs and the systemd notify protocol.

mod common;

use std::collections::BTreeSet;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::{haproxy_site, Workspace};
use converge_testkit::free_port;
use nix::sys::signal::Signal;

const DEADLINE: Duration = Duration::from_secs(20);
const CONFIG: &str = "etc/haproxy/haproxy.cfg";

fn catalog(ports: &[u16]) -> String {
    let instances: String = ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            format!(
                "    - {{id: web-{}, node: n, address: 127.0.0.1, port: {p}, health: passing}}\n",
                i + 1
            )
        })
        .collect();
    format!("services:\n  web:\n{instances}")
}

fn servers(cfg: &str) -> usize {
    cfg.matches("    server web-").count()
}

#[test]
fn the_file_catalog_is_watched_and_resync_repairs_what_no_watch_sees() {
    let ws = Workspace::custom(
        &haproxy_site(free_port(), "", "haproxy", false),
        &catalog(&[8001, 8002]),
    );
    // A resync far beyond the test: only the watch can see the edit.
    let daemon = ws.run_daemon(&["--resync", "1h", "--log-format", "json"]);
    ws.wait_file(CONFIG, DEADLINE, "two servers", |c| servers(c) == 2);
    ws.write("catalog.yaml", &catalog(&[8001, 8002, 8003]));
    ws.wait_file(CONFIG, DEADLINE, "the third server", |c| servers(c) == 3);

    // Every log line is one JSON object with a level and a message.
    let log = ws.daemon_log();
    assert!(log.lines().count() > 2, "{log}");
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
    drop(daemon);

    // Nothing watches the destination: once a daemon with a short resync
    // has finished its first pass (a second one started, passes run one
    // at a time), only the resync notices the file gone.
    let daemon = ws.run_daemon(&["--resync", "1s"]);
    converge_testkit::wait::until(DEADLINE, "the first pass to end", || {
        daemon.metric("converge_reconciles_total") >= 2.0
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", ws.daemon_log()));
    std::fs::remove_file(ws.root().join(CONFIG)).expect("remove the live file");
    ws.wait_file(CONFIG, DEADLINE, "the resync to restore the file", |c| {
        servers(c) == 3
    });
}

/// Datagrams from the daemon to a `NOTIFY_SOCKET` the test owns.
struct Notifications {
    socket: UnixDatagram,
    seen: Vec<String>,
}

impl Notifications {
    fn bind(path: &std::path::Path) -> Self {
        let socket = UnixDatagram::bind(path).expect("bind notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        Self {
            socket,
            seen: Vec::new(),
        }
    }

    /// Reads datagrams until one has a line `want`, or the deadline.
    fn until(&mut self, want: &str) -> Result<(), String> {
        let end = Instant::now() + DEADLINE;
        let mut buf = [0u8; 4096];
        while Instant::now() < end {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                let hit = msg.lines().any(|l| l == want);
                self.seen.push(msg);
                if hit {
                    return Ok(());
                }
            }
        }
        Err(format!(
            "no {want} within {DEADLINE:?}; got {:?}",
            self.seen
        ))
    }

    /// Takes every datagram already queued (the sender has exited).
    fn drain(&mut self) {
        self.socket.set_nonblocking(true).expect("nonblocking");
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.socket.recv(&mut buf) {
            self.seen
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
}

#[test]
fn systemd_hears_ready_reloading_watchdog_and_stopping_in_order() {
    // A validator that takes a second, so a pass can be in flight at SIGTERM.
    let ws = Workspace::custom(
        &haproxy_site(
            free_port(),
            "",
            "{command: [/bin/sh, -c, \"sleep 1; haproxy -c -f {}\"]}",
            false,
        ),
        &catalog(&[8001]),
    );
    let path = ws.path("notify.sock");
    let mut notes = Notifications::bind(&path);
    let mut daemon = ws.run_daemon_notify(&path, 400_000);

    notes.until("READY=1").expect("ready after the first pass");
    assert!(
        notes.seen.iter().any(|m| m.contains("STATUS=converged")),
        "{:?}",
        notes.seen
    );
    notes.until("WATCHDOG=1").expect("watchdog pings");

    daemon.child.signal(Signal::SIGHUP).expect("SIGHUP");
    notes.until("RELOADING=1").expect("reloading on SIGHUP");
    notes
        .until("READY=1")
        .expect("ready again after the reload");

    // SIGTERM while a pass is validating: that pass finishes, and must
    // not tell systemd the service is ready once it is stopping.
    ws.write("catalog.yaml", &catalog(&[8001, 8002]));
    let dir = ws.root().join("etc/haproxy");
    converge_testkit::wait::until(DEADLINE, "a staged candidate", || {
        std::fs::read_dir(&dir).is_ok_and(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().contains(".converge-stage"))
        })
    })
    .expect("a pass in flight");
    daemon.child.signal(Signal::SIGTERM).expect("SIGTERM");
    notes.until("STOPPING=1").expect("stopping on SIGTERM");
    let status = daemon.child.wait_exit(DEADLINE).expect("daemon exits");
    assert!(status.success(), "clean exit: {status:?}");
    ws.wait_file(CONFIG, DEADLINE, "the pass in flight to finish", |c| {
        servers(c) == 2
    });
    // Nothing may claim readiness after STOPPING.
    notes.drain();
    let after: BTreeSet<&str> = notes
        .seen
        .iter()
        .skip_while(|m| !m.lines().any(|l| l == "STOPPING=1"))
        .flat_map(|m| m.lines())
        .collect();
    assert!(!after.contains("READY=1"), "{:?}", notes.seen);
}

#[test]
fn the_default_log_level_says_each_apply_hold_and_recovery_once() {
    let ws = Workspace::custom(
        &haproxy_site(free_port(), "", "haproxy", false),
        &catalog(&[8001, 8002]),
    );
    let _daemon = ws.run_daemon_default_log(&[]);
    let logged = |what: &str, needle: &'static str| {
        converge_testkit::wait::until(DEADLINE, what, || ws.daemon_log().contains(needle))
            .unwrap_or_else(|e| panic!("{e}\n{}", ws.daemon_log()));
    };
    logged("the first apply", "applied");
    ws.write("catalog.yaml", "services:\n  web: []\n");
    logged("the hold", "change held");
    ws.write("catalog.yaml", &catalog(&[8001]));
    logged("the hold's end", "hold ended");
    let log = ws.daemon_log();
    assert_eq!(log.matches("change held").count(), 1, "{log}");
    assert!(!log.contains("DEBUG"), "{log}");
}
