//! `converge run` end to end: a real `consul agent -dev`, a real HAProxy in
//! master-worker mode, small HTTP backends on loopback, and the daemon as a
//! child process — each scenario of the daemon's contract, observed through
//! real requests and the daemon's own status.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{haproxy_site, http_backends, register_web, RunningDaemon, Workspace};
use converge_testkit::backend::{get, HttpBackend};
use converge_testkit::consul::ConsulAgent;
use converge_testkit::{free_port, http, wait, Haproxy};
use nix::sys::signal::Signal;

const DEADLINE: Duration = Duration::from_secs(20);

/// Consul with three healthy `web` instances, HAProxy and the daemon.
struct Stack {
    consul: ConsulAgent,
    backends: Vec<HttpBackend>,
    checks: Vec<String>,
    ws: Workspace,
    front: u16,
    daemon: RunningDaemon,
    haproxy: Option<Haproxy>,
}

impl Stack {
    fn start(daemon_args: &[&str], validate: &str) -> Self {
        let consul = ConsulAgent::start().expect("consul agent -dev");
        let backends = http_backends(3);
        let checks = register_web(&consul, &backends);
        let front = free_port();
        let ws = Workspace::custom(
            &haproxy_site(front, "    min_healthy: 1\n", validate, true),
            "services: {}\n",
        );
        let daemon = ws.run_daemon_with_consul(&consul, daemon_args);
        let mut stack = Self {
            consul,
            backends,
            checks,
            ws,
            front,
            daemon,
            haproxy: None,
        };
        stack.wait_config(
            |cfg| cfg.matches("    server web-").count() == 3,
            "3 servers rendered",
        );
        stack.haproxy = Some(stack.ws.start_haproxy());
        stack
    }

    fn config(&self) -> String {
        std::fs::read_to_string(self.ws.root().join("etc/haproxy/haproxy.cfg")).unwrap_or_default()
    }

    fn wait_config(&self, cond: impl Fn(&str) -> bool, what: &str) {
        self.ws
            .wait_file("etc/haproxy/haproxy.cfg", DEADLINE, what, cond);
    }

    fn wait_status(&self, cond: impl Fn(&serde_json::Value) -> bool, what: &str) {
        wait::until(DEADLINE, what, || cond(&self.daemon.status())).unwrap_or_else(|e| {
            panic!(
                "{e}\nstatus: {}\ndaemon log:\n{}",
                self.daemon.status(),
                self.ws.daemon_log()
            )
        });
    }

    /// Backends reached by `n` requests through HAProxy.
    fn reached(&self, n: usize) -> BTreeSet<String> {
        (0..n).filter_map(|_| get(self.front)).collect()
    }

    fn reloads(&self) -> f64 {
        self.daemon.metric("converge_reloads_total")
    }
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn health_flip_reaches_haproxy_with_one_reload() {
    let s = Stack::start(&[], "haproxy");
    wait::until(DEADLINE, "requests to reach b1, b2 and b3", || {
        s.reached(6) == names(&["b1", "b2", "b3"])
    })
    .expect("all three serve");
    let before = s.reloads();

    s.consul.fail(&s.checks[1]).expect("fail web-2");
    wait::until(DEADLINE, "HAProxy to stop sending to b2", || {
        let seen = s.reached(9);
        seen == names(&["b1", "b3"])
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", s.ws.daemon_log()));
    // The pass that removed b2 finishes its reload bookkeeping after the
    // swap; wait for the count, then check it is exactly one.
    wait::until(DEADLINE, "the reload to be counted", || {
        s.reloads() > before
    })
    .expect("reload counted");
    assert_eq!(
        s.reloads() - before,
        1.0,
        "one health flip, one reload\n{}",
        s.ws.daemon_log()
    );
}

#[test]
fn flapping_inside_the_quiescence_window_reloads_at_most_once() {
    // A quiet time far above the gap between two check writes, so a slow
    // write on a loaded machine cannot split the burst in two.
    let s = Stack::start(&["--wait-min", "2s", "--wait-max", "10s"], "haproxy");
    s.wait_status(|st| st["converged"] == true, "converged");
    let before = s.reloads();
    // 19 flips in about a second, ending critical: the burst has a visible
    // end state to wait for.
    for i in 0..19 {
        if i % 2 == 0 {
            s.consul.fail(&s.checks[2]).expect("fail");
        } else {
            s.consul.pass(&s.checks[2]).expect("pass");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    s.wait_config(
        |c| !c.contains("server web-3:converge-test "),
        "web-3 to leave the config",
    );
    // The pass that wrote it counts its reload after the swap. Passes run
    // one at a time, so once a later pass has started, that one is done:
    // nudge one (a manifest rewritten with the same bytes) and wait for
    // it. It changes nothing, so it reloads nothing.
    let passes = s.daemon.metric("converge_reconciles_total");
    let site = s.ws.read("manifests/site.yaml");
    s.ws.write("manifests/site.yaml", &site);
    wait::until(DEADLINE, "a pass after the one that applied", || {
        s.daemon.metric("converge_reconciles_total") > passes
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", s.ws.daemon_log()));
    let reloads = s.reloads() - before;
    assert_eq!(reloads, 1.0, "one burst of flapping, one reload");
}

#[test]
fn consul_outage_keeps_serving_and_reports_degraded_then_recovers() {
    let mut s = Stack::start(&[], "haproxy");
    let cfg = s.config();
    s.consul.stop();
    s.wait_status(
        |st| !st["source_error"].is_null(),
        "the daemon to report the source degraded",
    );
    assert_eq!(s.config(), cfg, "an outage must not change the config");
    assert_eq!(
        s.reached(6),
        names(&["b1", "b2", "b3"]),
        "HAProxy keeps serving the last set"
    );

    s.consul.start_again().expect("consul back");
    for (i, b) in s.backends.iter().enumerate() {
        // The agent restores its registrations from its data dir with TTL
        // checks critical; register again and pass them, as a restarted
        // application would.
        let check = s
            .consul
            .register_service_with_ttl(&format!("web-{}", i + 1), "web", b.port(), &[])
            .expect("re-register");
        s.consul.pass(&check).expect("pass");
    }
    s.wait_status(
        |st| st["source_error"].is_null() && st["converged"] == true,
        "recovery",
    );
    // The watch is live again: a change made after the outage reaches
    // HAProxy.
    s.consul.fail(&s.checks[1]).expect("fail web-2");
    s.wait_config(
        |c| !c.contains("server web-2:converge-test "),
        "a change after the outage to apply",
    );
    wait::until(DEADLINE, "HAProxy to stop sending to b2", || {
        s.reached(9) == names(&["b1", "b3"])
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", s.ws.daemon_log()));
}

#[test]
fn losing_every_instance_below_min_healthy_is_held() {
    // The three deregistrations land in one quiescence window, so the
    // guard sees 3 → 0 at once rather than three single losses.
    let s = Stack::start(&["--wait-min", "2s", "--wait-max", "10s"], "haproxy");
    s.wait_status(|st| st["converged"] == true, "converged");
    let cfg = s.config();
    for i in 1..=3 {
        s.consul
            .deregister(&format!("web-{i}"))
            .expect("deregister");
    }
    s.wait_status(
        |st| !st["backends"]["web"]["held"].is_null(),
        "the hold to show in status",
    );
    assert!(s.daemon.metric("converge_guard_holds_total") >= 1.0);
    assert_eq!(s.config(), cfg, "held: the old servers stay configured");
    assert_eq!(s.reached(6), names(&["b1", "b2", "b3"]));

    // An operator accepts the empty backend.
    assert!(http::request(s.daemon.listen, "POST", "/release/web").is_some());
    s.wait_config(
        |c| !c.contains("server web-"),
        "the released change to apply",
    );
}

#[test]
fn a_broken_template_keeps_the_last_config_serving_until_fixed() {
    let s = Stack::start(&[], "haproxy");
    let cfg = s.config();
    let good = s.ws.read("templates/haproxy.cfg.tera");
    s.ws.write(
        "templates/haproxy.cfg.tera",
        &good.replace("{{ haproxy.maxconn }}", "{{ haproxy.maxconn"),
    );
    s.wait_status(
        |st| {
            st["input_error"]
                .as_str()
                .is_some_and(|e| e.contains("haproxy.cfg.tera:"))
        },
        "the template error with its file:line",
    );
    assert_eq!(s.config(), cfg, "a broken template writes nothing");
    assert_eq!(s.reached(6), names(&["b1", "b2", "b3"]), "still serving");

    // The previous templates stay in force: catalog changes still apply
    // through them while the edit is broken.
    s.consul.fail(&s.checks[0]).expect("fail web-1");
    s.wait_config(
        |c| !c.contains("server web-1:converge-test "),
        "web-1 to leave the config, rendered by the last good template",
    );
    assert_eq!(
        s.config(),
        cfg.replace(
            &cfg.lines()
                .find(|l| l.contains("server web-1:converge-test "))
                .map(|l| format!("{l}\n"))
                .expect("web-1 line"),
            ""
        ),
        "only web-1's line changed"
    );
    wait::until(DEADLINE, "HAProxy to stop sending to b1", || {
        s.reached(9) == names(&["b2", "b3"])
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", s.ws.daemon_log()));

    // The fixed edit goes live.
    s.ws.write(
        "templates/haproxy.cfg.tera",
        &good.replace(
            "{{ haproxy.maxconn }}",
            "{{ haproxy.maxconn }}\n    # edited",
        ),
    );
    s.wait_config(
        |c| c.contains("    # edited\n"),
        "the fixed template to go live",
    );
    s.wait_status(|st| st["input_error"].is_null(), "the error to clear");
    assert_eq!(s.reached(6), names(&["b2", "b3"]));
}

#[test]
fn sigterm_during_an_apply_finishes_it_and_leaves_no_staged_files() {
    // A validator that takes a second, so SIGTERM lands mid-apply.
    let s = Stack::start(
        &[],
        "{command: [/bin/sh, -c, \"sleep 1; haproxy -c -f {}\"]}",
    );
    let old = s.config();
    let dir = s.ws.root().join("etc/haproxy");
    s.consul.fail(&s.checks[0]).expect("fail web-1");
    wait::until(DEADLINE, "a staged candidate", || {
        std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().contains(".converge-stage"))
            })
            .unwrap_or(false)
    })
    .expect("apply in flight");
    let mut daemon = s.daemon;
    daemon.child.signal(Signal::SIGTERM).expect("SIGTERM");
    let status = daemon.child.wait_exit(DEADLINE).expect("daemon exits");
    assert!(status.success(), "clean exit: {status:?}");
    let left: Vec<_> = std::fs::read_dir(&dir)
        .expect("dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".converge-stage"))
        .collect();
    assert!(left.is_empty(), "staged files left: {left:?}");
    // The apply in flight was finished, not dropped: the new config is
    // live, complete.
    let now = std::fs::read_to_string(dir.join("haproxy.cfg")).expect("config");
    assert_ne!(now, old, "the apply in flight was abandoned");
    assert!(!now.contains("server web-1:converge-test "), "{now}");
    assert!(
        now.ends_with('\n')
            && now.contains("server web-2:converge-test ")
            && now.contains("server web-3:converge-test "),
        "config complete: {now}"
    );
}

#[test]
fn status_shows_the_daemon_the_targets_and_the_live_servers() {
    let s = Stack::start(&[], "haproxy");
    s.wait_status(|st| st["converged"] == true, "converged");
    let daemon = format!("127.0.0.1:{}", s.daemon.listen);
    let out = s.ws.converge(&[
        "status", "--node", "lb1", "--daemon", &daemon, "--format", "json",
    ]);
    common::assert_exit(&out, 0);
    let doc: serde_json::Value = serde_json::from_str(&common::stdout(&out)).expect("json");
    assert_eq!(doc["daemon"]["ok"]["converged"], true, "{doc}");
    let revision = doc["daemon"]["ok"]["revision"]
        .as_str()
        .unwrap_or_else(|| panic!("the revision the node runs: {doc}"))
        .to_string();
    assert!(doc["targets"][0]["sha256"].is_string(), "{doc}");
    let servers: BTreeSet<String> = doc["haproxy"]["ok"]
        .as_array()
        .expect("haproxy servers")
        .iter()
        .map(|s| s["name"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        servers,
        names(&[
            "web-1:converge-test",
            "web-2:converge-test",
            "web-3:converge-test"
        ]),
        "{doc}"
    );

    let text = common::stdout(
        &s.ws
            .converge(&["status", "--node", "lb1", "--daemon", &daemon]),
    );
    assert!(
        text.contains(&format!("daemon: converged; revision {revision};"))
            && text.contains("web-2"),
        "{text}"
    );
}
