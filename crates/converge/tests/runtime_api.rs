//! Runtime-API slots end to end: a real `consul agent -dev`, a real HAProxy
//! in master-worker mode, HTTP backends on loopback and `converge run
//! --consul` as a child. Instances joining and failing in Consul reach
//! HAProxy with no reload (same worker, reload counter still, runtime-API
//! counter up), the file on disk keeps up so a later reload serves the
//! same set, and a structural change to the manifest still reloads. With
//! no slots, `plan` names each dynamic server `apply` adds or deletes, and
//! `apply --once` does just that, with no reload.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{
    assert_exit, haproxy_site, http_backends, register_web, stdout, web_catalog, RunningDaemon,
    Workspace,
};
use converge_testkit::backend::{get, HttpBackend};
use converge_testkit::consul::ConsulAgent;
use converge_testkit::{free_port, wait, Haproxy};

const DEADLINE: Duration = Duration::from_secs(20);

const OPT_IN: &str = "    runtime_api: {slots: 4}\n";

struct Stack {
    consul: ConsulAgent,
    backends: Vec<HttpBackend>,
    /// TTL check ids of web-1 and web-2.
    checks: Vec<String>,
    ws: Workspace,
    front: u16,
    daemon: RunningDaemon,
    haproxy: Haproxy,
}

impl Stack {
    /// Three backends, the first two registered in Consul; HAProxy started
    /// on the config the daemon rendered.
    fn start() -> Self {
        let consul = ConsulAgent::start().expect("consul agent -dev");
        let backends = http_backends(3);
        let checks = register_web(&consul, &backends[..2]);
        let front = free_port();
        let ws = Workspace::custom(
            &haproxy_site(front, OPT_IN, "haproxy", true),
            "services: {}\n",
        );
        let daemon = ws.run_daemon_with_consul(&consul, &[]);
        let config = ws.root().join("etc/haproxy/haproxy.cfg");
        wait::until(DEADLINE, "4 slots, 2 of them in use", || {
            let c = std::fs::read_to_string(&config).unwrap_or_default();
            c.matches("    server web-s").count() == 4 && c.matches(" disabled\n").count() == 2
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", ws.daemon_log()));
        let haproxy = ws.start_haproxy();
        Self {
            consul,
            backends,
            checks,
            ws,
            front,
            daemon,
            haproxy,
        }
    }

    fn config(&self) -> String {
        std::fs::read_to_string(self.haproxy.config()).unwrap_or_default()
    }

    /// Waits until requests through `port` reach exactly `want`.
    fn wait_reached(&self, port: u16, want: &[&str]) {
        let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
        wait::until(DEADLINE, &format!("requests to reach {want:?}"), || {
            (0..9).filter_map(|_| get(port)).collect::<BTreeSet<_>>() == want
        })
        .unwrap_or_else(|e| {
            panic!(
                "{e}\nservers:\n{}\nconfig:\n{}\ndaemon log:\n{}",
                self.haproxy
                    .try_command("show servers state web")
                    .unwrap_or_default(),
                self.config(),
                self.ws.daemon_log()
            )
        });
    }

    fn wait_converged(&self) {
        wait::until(DEADLINE, "the daemon to converge", || {
            self.daemon.status()["converged"] == true
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", self.ws.daemon_log()));
    }

    fn reloads(&self) -> f64 {
        self.daemon.metric("converge_reloads_total")
    }

    fn runtime_updates(&self) -> f64 {
        self.daemon.metric("converge_runtime_api_updates_total")
    }
}

#[test]
fn instances_join_and_fail_without_a_reload_and_a_structural_change_still_reloads() {
    let s = Stack::start();
    s.wait_reached(s.front, &["b1", "b2"]);
    s.wait_converged();
    let worker = s.haproxy.worker_pid().expect("worker");
    let reloads = s.reloads();
    let updates = s.runtime_updates();

    // A third instance registers: a free slot gets its address.
    s.consul
        .register_service_with_ttl("web-3", "web", s.backends[2].port(), &[])
        .expect("register web-3");
    s.wait_reached(s.front, &["b1", "b2", "b3"]);
    wait::until(DEADLINE, "the update to be counted", || {
        s.runtime_updates() > updates
    })
    .expect("counted");

    // web-2's check fails: its slot goes to maintenance.
    s.consul.fail(&s.checks[1]).expect("fail web-2");
    s.wait_reached(s.front, &["b1", "b3"]);
    wait::until(DEADLINE, "the second update to be counted", || {
        s.runtime_updates() >= updates + 2.0
    })
    .expect("counted");
    s.wait_converged();

    assert_eq!(
        s.reloads(),
        reloads,
        "membership changes must not reload\n{}",
        s.ws.daemon_log()
    );
    assert_eq!(
        s.haproxy.worker_pid(),
        Some(worker),
        "the worker that served before still serves"
    );
    assert!(
        !s.haproxy.log().contains("Reloading"),
        "the master was reloaded:\n{}",
        s.haproxy.log()
    );
    // The file on disk says the same as the running HAProxy.
    let cfg = s.config();
    assert_eq!(cfg.matches("    server web-s").count(), 4, "{cfg}");
    assert_eq!(cfg.matches(" disabled\n").count(), 2, "{cfg}");
    assert!(
        !cfg.contains(&format!(":{} ", s.backends[1].port())),
        "web-2 is still in the file:\n{cfg}"
    );

    // A structural change: a second frontend. It reloads, and the new
    // worker, started from the file, serves the same set.
    let second = free_port();
    let site = haproxy_site(s.front, OPT_IN, "haproxy", true).replace(
        "frontends:\n",
        &format!(
            "frontends:\n  http_alt:\n    bind: [\"127.0.0.1:{second}\"]\n    default_backend: web\n"
        ),
    );
    s.ws.write("manifests/site.yaml", &site);
    wait::until(DEADLINE, "the structural change to reload", || {
        s.reloads() > reloads
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", s.ws.daemon_log()));
    assert_eq!(s.runtime_updates(), updates + 2.0);
    wait::until(DEADLINE, "a new worker", || {
        s.haproxy.worker_pid().is_some_and(|w| w != worker)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", s.haproxy.log()));
    s.wait_reached(second, &["b1", "b3"]);
    s.wait_reached(s.front, &["b1", "b3"]);
}

/// `converge plan`, then `converge apply --once`, on a changed catalog
/// file: what the plan says the runtime API does, and what the apply says.
fn plan_then_apply(ws: &Workspace, catalog: &str) -> (String, String) {
    ws.write("catalog.yaml", catalog);
    let plan = ws.converge(&["plan", "--node", "lb1"]);
    assert_exit(&plan, 2);
    let apply = ws.converge(&["apply", "--once", "--node", "lb1"]);
    assert_exit(&apply, 0);
    (stdout(&plan), stdout(&apply))
}

#[test]
fn with_no_slots_plan_names_the_dynamic_servers_apply_adds_and_deletes() {
    let backends = http_backends(2);
    let ports: Vec<u16> = backends.iter().map(HttpBackend::port).collect();
    let front = free_port();
    let ws = Workspace::custom(
        &haproxy_site(front, "    runtime_api: {slots: 0}\n", "haproxy", true),
        &web_catalog(&ports[..1]),
    );
    assert_exit(&ws.converge(&["apply", "--once", "--node", "lb1"]), 0);
    let haproxy = ws.start_haproxy();
    let reached = |want: &[&str]| {
        let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
        wait::until(DEADLINE, &format!("requests to reach {want:?}"), || {
            (0..6).filter_map(|_| get(front)).collect::<BTreeSet<_>>() == want
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", haproxy.command("show servers state web")));
    };
    reached(&["b1"]);
    let worker = haproxy.worker_pid();

    let (plan, apply) = plan_then_apply(&ws, &web_catalog(&ports));
    assert!(
        plan.contains("runtime    haproxy: add server web/web-1:app1\n"),
        "{plan}"
    );
    assert!(
        apply.contains("through the HAProxy runtime API, no reload"),
        "{apply}"
    );
    reached(&["b1", "b2"]);

    let without_web_0: String = web_catalog(&ports)
        .lines()
        .filter(|l| !l.contains("id: web-0,"))
        .map(|l| format!("{l}\n"))
        .collect();
    let (plan, apply) = plan_then_apply(&ws, &without_web_0);
    assert!(
        plan.contains("runtime    haproxy: del server web/web-0:app0\n"),
        "{plan}"
    );
    assert!(
        apply.contains("through the HAProxy runtime API, no reload"),
        "{apply}"
    );
    reached(&["b2"]);
    assert_eq!(haproxy.worker_pid(), worker, "no reload");
}
