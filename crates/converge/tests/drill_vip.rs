//! `converge drill --scenario lb-kill` end to end: two LB nodes in network
//! namespaces on one segment, each running the real keepalived on the
//! config `converge apply` rendered for it and an HTTP server answering
//! on every address of the node (Python's `http.server`, each its own
//! process), and the drill in the client namespace next to them, probing
//! the VIP on the frontend's port as the manifests give them. The fault
//! is SIGTERM to the keepalived that holds the VIP: it gives the VIP up,
//! the peer takes it, and the probes follow.

mod common;

use std::process::Output;
use std::time::Duration;

use common::drill::{report_of, Reports};
use common::vrrp::{
    edge_vip, http_server, segment, start_keepalived, web_frontend, IFACE, KEEPALIVED_TARGET,
};
use common::{assert_exit, stderr, stdout, Workspace};
use converge_testkit::keepalived::Keepalived;
use converge_testkit::netns::Lan;
use converge_testkit::{wait, Child};

const DEADLINE: Duration = Duration::from_secs(60);
const PORT: u16 = 8080;

/// Both nodes' manifest: VIP `edge` (lb1 150, lb2 100) and the HTTP
/// frontend the drill probes it on. No HAProxy runs here (the HTTP
/// servers stand in for it), so keepalived does not track one: the fault
/// is keepalived's own.
fn manifest(net: &Lan) -> String {
    format!(
        "nodes:
  lb1:
    address: {a}
    targets: [keepalived]
    vars: {{vrrp_interface: {IFACE}}}
  lb2:
    address: {b}
    targets: [keepalived]
    vars: {{vrrp_interface: {IFACE}}}
{vips}    auth_pass: {{file: secrets/vrrp.pass}}
    track_haproxy: false
{web}    allow_empty: true
targets:
{KEEPALIVED_TARGET}",
        a = net.host(1),
        b = net.host(2),
        web = web_frontend(PORT),
        vips = edge_vip(net, 52, 150, 100),
    )
}

/// One node: its checkout, its HTTP server, its keepalived (declared
/// first, so it stops first).
struct Node {
    keepalived: Option<Keepalived>,
    _web: Child,
    ws: Workspace,
}

struct Site {
    lb1: Node,
    lb2: Node,
    net: Lan,
    reports: Reports,
}

impl Site {
    fn up() -> Self {
        let net = segment();
        let node = |i: usize, name: &str| {
            let ws = Workspace::custom(&manifest(&net), "services: {}\n");
            ws.write("manifests/secrets/vrrp.pass", "vrrp-s3\n");
            ws.write(&format!("www/{name}"), name);
            let out = ws.converge(&["apply", "--once", "--node", name]);
            assert_exit(&out, 0);
            let ns = &net.members[i];
            let web = http_server(ns, name, PORT, None, &ws.path("www"));
            let keepalived = start_keepalived(ns, &ws.root(), name);
            Node {
                keepalived: Some(keepalived),
                _web: web,
                ws,
            }
        };
        let site = Site {
            lb1: node(0, "lb1"),
            lb2: node(1, "lb2"),
            net,
            reports: Reports::new(),
        };
        site.wait_served_by("lb1");
        site
    }

    /// Waits until a request from the client to the VIP is answered by
    /// `name`.
    fn wait_served_by(&self, name: &str) {
        let url = format!("http://{}:{PORT}/{name}", self.net.host(100));
        wait::until(DEADLINE, &format!("{name} to answer at the VIP"), || {
            self.net
                .client
                .run("curl", &["-sf", "--max-time", "1", &url])
                .is_ok_and(|body| body == name)
        })
        .unwrap_or_else(|e| panic!("{e}"));
    }

    /// `converge drill --scenario lb-kill` in the client namespace, with
    /// lb1's checkout; the fault SIGTERMs lb1's keepalived.
    fn drill(&self, budget: &str) -> Output {
        self.drill_with(budget, &[])
    }

    /// [`Site::drill`] with more flags.
    fn drill_with(&self, budget: &str, extra: &[&str]) -> Output {
        let pid = self.lb1.keepalived.as_ref().expect("lb1 keepalived").pid();
        let fault = format!("kill -TERM {pid}");
        let reports = self.reports.path().to_string_lossy().into_owned();
        let args = [
            "drill",
            "--scenario",
            "lb-kill",
            "--no-daemon",
            "--fault-command",
            &fault,
            "--rto-budget",
            budget,
            "--timeout",
            "30s",
            "--interval",
            "50ms",
            "--probe-timeout",
            "500ms",
            "--report-dir",
            &reports,
        ];
        let mut cmd = self.lb1.ws.command(&args);
        cmd.args(extra);
        self.net
            .client
            .enter(&cmd)
            .output()
            .expect("run converge drill")
    }

    /// Starts lb1's keepalived again; it takes the VIP back (priority).
    fn restart_lb1(&mut self) {
        let mut old = self.lb1.keepalived.take().expect("lb1 keepalived");
        old.stop().expect("stop lb1 keepalived");
        drop(old);
        let root = self.lb1.ws.root();
        self.lb1.keepalived = Some(start_keepalived(&self.net.members[0], &root, "lb1"));
        self.wait_served_by("lb1");
    }
}

#[test]
fn lb_kill_moves_the_vip_within_budget_and_fails_a_tiny_one() {
    let mut site = Site::up();

    let out = site.drill_with("30s", &["--backend", "web"]);
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("--backend is for backend-kill, not lb-kill"),
        "{}",
        stderr(&out)
    );
    assert!(
        site.lb1
            .keepalived
            .as_mut()
            .is_some_and(Keepalived::is_running),
        "a refused drill injects nothing"
    );

    let out = site.drill("30s");
    assert_exit(&out, 0);
    let (dir, json) = report_of(&stdout(&out));
    let r = &json["report"];
    assert_eq!(r["verdict"], "PASS", "{json:#}");
    assert_eq!(
        r["failure_observed"], true,
        "probes to the VIP failed while it moved"
    );
    let vip = site.net.host(100);
    assert!(
        r["probe"]
            .as_str()
            .is_some_and(|p| p.contains(&format!("http://{vip}:{PORT}/"))),
        "the probe goes to the VIP on the frontend's port: {json:#}"
    );
    assert!(dir.join("timeline.svg").exists());
    assert!(
        json["split"].is_null() && r["recovered_by"] == "keepalived",
        "keepalived moved the VIP; converge has no share to split: {json:#}"
    );
    site.wait_served_by("lb2");
    assert!(
        site.net.members[1].has_address(IFACE, &vip)
            && site
                .lb2
                .keepalived
                .as_mut()
                .is_some_and(Keepalived::is_running),
        "lb2's keepalived took the VIP"
    );
    let lb1 = site.lb1.keepalived.as_mut().expect("lb1 keepalived");
    wait::until(DEADLINE, "the fault to stop lb1's keepalived", || {
        !lb1.is_running()
    })
    .unwrap_or_else(|e| panic!("{e}"));

    site.restart_lb1();
    let out = site.drill("1ms");
    assert_exit(&out, 1);
    let (_, json) = report_of(&stdout(&out));
    assert_eq!(json["report"]["verdict"], "FAIL", "{json:#}");
    assert_eq!(json["report"]["failure_observed"], true, "{json:#}");
    assert!(
        json["report"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("over the 1 ms budget")),
        "{json:#}"
    );
}
