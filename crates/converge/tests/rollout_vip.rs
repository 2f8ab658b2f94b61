//! Rolling revisions out over a real HAProxy + keepalived pair while a
//! client keeps using the VIP: the pair may never be inside a reload
//! together, the BACKUP goes first, and the VIP must answer throughout.
//!
//! Two LB nodes in network namespaces on one segment ([`Lan`]), each with
//! the real HAProxy (master-worker) and keepalived started inside its
//! namespace on the configs converge rendered for it, and a Python
//! `http.server` on the namespace's loopback as the one server of backend
//! `web`. The Consul agents and the `converge run --published` daemons
//! stay in the machine's namespace, one client agent and one daemon per
//! node with its own `--root` (as in `rollout.rs`): the daemon reaches
//! its programs through files (pidfiles, stats socket, configs), which
//! every namespace sees, and signals them by pid, which namespaces do not
//! change. Each revision changes a response header of backend `web`, so
//! every revision reloads HAProxy on both nodes through converge's own
//! signal reload (`SIGUSR2` to the master, done once its new worker
//! answers). Twenty revisions go out back to back (lb1 then skips to the
//! last one lb2 took), then ten one at a time, each waited for, so the
//! node the VIP leads to reloads under the probe ten times more. A second
//! test publishes a revision whose keepalived track script fails on lb2
//! (the BACKUP, so it goes first): the health gate must see keepalived's
//! FAULT, roll lb2 back and halt before lb1 takes it. A third publishes
//! a revision that changes the VIP's `virtual_router_id`, so lb2, which
//! switches first, stops hearing lb1 and takes the VIP while lb1 still
//! holds it: the gate must see the VIP move against the priorities, roll
//! lb2 back (which gives the VIP back to lb1) and halt before lb1 takes
//! it.
//!
//! When each reload happened is read from the daemons' JSON logs: from
//! the `committed` event of the HAProxy target to the `reload` event of
//! its bundle, an interval that contains the reload. A probe in the
//! client namespace opens a new connection to the VIP every 20 ms for the
//! whole rollout and writes each outcome to a file; the failures it
//! counted are printed (`--nocapture`) for BENCHMARKS.md:
//!
//! ```text
//! cargo test -p converge --test rollout_vip -- --nocapture
//! ```

mod common;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, SystemTime};

use common::vrrp::{
    edge_vip, http_server, segment, start_keepalived, web_frontend, IFACE, KEEPALIVED_TARGET,
};
use common::{assert_exit, fleet, stdout, Workspace};
use converge_testkit::consul::ConsulFleet;
use converge_testkit::keepalived::Keepalived;
use converge_testkit::netns::Lan;
use converge_testkit::{wait, Child, Haproxy};

const NODES: [&str; 2] = ["lb1", "lb2"];
const DEADLINE: Duration = Duration::from_secs(90);
/// HAProxy's frontend port, on every address of a node (the VIP too).
const PORT: u16 = 8080;
/// The backend server's port, on each node's own loopback.
const WEB: u16 = 9000;
/// Revisions published back to back.
const REVISIONS: usize = 20;
/// Revisions then published one at a time, each waited for.
const PACED: usize = 10;

/// What a revision does besides its note.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Changes HAProxy's config only.
    Header,
    /// Also tracks a script that fails on lb2 (`/bin/false`), so lb2's
    /// keepalived goes to FAULT once it reloads; settles 8 s, longer than
    /// the script's two failures 2 s apart take.
    Fault,
    /// Gives the VIP another `virtual_router_id`: lb2 (the BACKUP, so it
    /// goes first) no longer hears lb1's adverts, which still carry the
    /// old one, and takes the VIP while lb1 holds it; settles 8 s, longer
    /// than keepalived's master-down interval (three adverts 1 s apart
    /// and the skew).
    Adverts,
}

/// The manifests; `note` goes in a comment and in the header every
/// response carries, so each revision changes HAProxy's config.
fn site(net: &Lan, note: &str, kind: Kind) -> String {
    let (track, settle, checks) = match kind {
        Kind::Header => ("false", "200ms", ["", ""]),
        Kind::Adverts => ("false", "8s", ["", ""]),
        Kind::Fault => (
            "true",
            "8s",
            [", haproxy_check: /bin/true", ", haproxy_check: /bin/false"],
        ),
    };
    format!(
        "# {note}
nodes:
  lb1:
    address: {a}
    targets: [haproxy, keepalived]
    vars: {{vrrp_interface: {IFACE}{c1}}}
  lb2:
    address: {b}
    targets: [haproxy, keepalived]
    vars: {{vrrp_interface: {IFACE}{c2}}}
{vips}    track_haproxy: {track}
haproxy:
  stats_socket: /run/haproxy/admin.sock
{web}    extra: [\"http-response set-header X-Revision {note}\"]
rollout:
  settle: {settle}
targets:
  haproxy:
    template: haproxy.cfg.tera
    destination: /etc/haproxy/haproxy.cfg
    validate: haproxy
    reload:
      signal: {{pidfile: /run/haproxy.pid, signal: SIGUSR2}}
{KEEPALIVED_TARGET}",
        a = net.host(1),
        b = net.host(2),
        web = web_frontend(PORT),
        vips = edge_vip(net, if kind == Kind::Adverts { 54 } else { 53 }, 150, 100),
        c1 = checks[0],
        c2 = checks[1],
    )
}

/// Where one probe went: its outcome and when it was sent (ns since the
/// epoch), as the probe script writes them.
const PROBE: &str = r#"
import sys, time, urllib.request
url, out = sys.argv[1], sys.argv[2]
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
with open(out, "a", buffering=1) as f:
    while True:
        t = time.time_ns()
        try:
            with opener.open(url, timeout=1) as r:
                r.read()
                f.write("ok %d %s\n" % (t, r.headers.get("X-Revision", "")))
        except Exception as e:
            f.write("fail %d %r\n" % (t, e))
        time.sleep(0.02)
"#;

/// One reload of HAProxy on a node: start and end (ns since the epoch).
#[derive(Debug, Clone)]
struct Reload {
    node: &'static str,
    start: u128,
    end: u128,
}

/// One LB node. Fields drop in order: the daemon first, then HAProxy
/// and keepalived, then the backend server.
struct Node {
    name: &'static str,
    _daemon: Child,
    _haproxy: Option<Haproxy>,
    keepalived: Option<Keepalived>,
    _web: Child,
    root: tempfile::TempDir,
}

impl Node {
    fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }

    fn log(&self) -> String {
        fleet::daemon_log(self.root.path())
    }

    /// What keepalived logged since it started.
    fn vrrp_log(&self) -> String {
        self.keepalived
            .as_ref()
            .map(Keepalived::log)
            .unwrap_or_default()
    }

    /// HAProxy's reloads in the daemon's log, from the commit of its
    /// config to the end of the reload of that bundle.
    fn reloads(&self) -> Vec<Reload> {
        let mut open: Option<(String, u128)> = None;
        let mut done = Vec::new();
        for line in self.log().lines() {
            let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let fields = &event["fields"];
            let at = || epoch_ns(event["timestamp"].as_str().unwrap_or_default());
            match fields["message"].as_str() {
                Some("committed") if fields["target"] == "haproxy" => {
                    let bundle = fields["bundle"].as_str().unwrap_or_default().to_string();
                    open = Some((bundle, at()));
                }
                Some("reload") => {
                    let Some((bundle, start)) = open.take() else {
                        continue;
                    };
                    if fields["bundle"].as_str() == Some(bundle.as_str()) {
                        done.push(Reload {
                            node: self.name,
                            start,
                            end: at(),
                        });
                    } else {
                        open = Some((bundle, start));
                    }
                }
                _ => {}
            }
        }
        done
    }
}

/// An RFC 3339 timestamp of the log as ns since the epoch.
fn epoch_ns(stamp: &str) -> u128 {
    humantime::parse_rfc3339_weak(stamp)
        .unwrap_or_else(|e| panic!("log timestamp {stamp:?}: {e}"))
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after the epoch")
        .as_nanos()
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after the epoch")
        .as_nanos()
}

/// Consul, the publisher's repository, the segment and the two nodes
/// with their programs. Fields drop in order: nodes (daemons, programs)
/// before the namespaces and Consul.
struct Pair {
    nodes: Vec<Node>,
    repo: Workspace,
    consul: ConsulFleet,
    net: Lan,
}

impl Pair {
    /// Everything up, the first revision applied on both nodes, HAProxy
    /// and keepalived running on it, and lb1 answering at the VIP.
    fn start() -> Self {
        let net = segment();
        let consul = ConsulFleet::start(&NODES).expect("consul server and client agents");
        consul
            .server
            .register_service("web-1", "web", WEB)
            .expect("register");
        let repo = Workspace::custom(&site(&net, "r0", Kind::Header), "services: {}\n");
        let mut pair = Self {
            nodes: Vec::new(),
            repo,
            consul,
            net,
        };
        for (i, name) in NODES.iter().enumerate() {
            let node = pair.node(i, name);
            pair.nodes.push(node);
        }
        let first = pair.publish("r0");
        assert_exit(&pair.wait(&first), 0);
        for (i, node) in pair.nodes.iter_mut().enumerate() {
            wait::until(DEADLINE, "web-1 in the rendered HAProxy config", || {
                std::fs::read_to_string(node.path("etc/haproxy/haproxy.cfg"))
                    .is_ok_and(|c| c.contains(&format!("127.0.0.1:{WEB}")))
            })
            .unwrap_or_else(|e| panic!("{e}\n{}", node.log()));
            let ns = &pair.net.members[i];
            std::fs::create_dir_all(node.path("run/haproxy")).expect("run dir");
            node._haproxy = Some(
                Haproxy::start_in(
                    ns,
                    &node.path("etc/haproxy/haproxy.cfg"),
                    &node.path("run/haproxy.pid"),
                    &node.path("run/haproxy/admin.sock"),
                )
                .unwrap_or_else(|e| panic!("haproxy on {}: {e}", node.name)),
            );
            node.keepalived = Some(start_keepalived(ns, node.root.path(), node.name));
        }
        pair.wait_served_by(0);
        pair
    }

    /// Node `i`: its backend server in its namespace and its daemon.
    fn node(&self, i: usize, name: &'static str) -> Node {
        let root = tempfile::tempdir().expect("root");
        let www = root.path().join("www");
        std::fs::create_dir_all(&www).expect("www");
        std::fs::write(www.join("name"), name).expect("www/name");
        let web = http_server(&self.net.members[i], name, WEB, Some("127.0.0.1"), &www);
        let listen = converge_testkit::free_port();
        let url = self.consul.clients[i].http_url();
        let mut cmd = fleet::run_published(name, &url, root.path(), listen);
        cmd.args(["--log-format", "json"]);
        let daemon = fleet::spawn(name, &mut cmd, root.path(), listen, DEADLINE);
        Node {
            name,
            _daemon: daemon,
            _haproxy: None,
            keepalived: None,
            _web: web,
            root,
        }
    }

    /// The body a request from the client to the VIP gets, if any.
    fn vip_get(&self, path: &str) -> Option<String> {
        let url = format!("http://{}:{PORT}{path}", self.net.host(100));
        self.net
            .client
            .run("curl", &["-sf", "--noproxy", "*", "--max-time", "1", &url])
            .ok()
    }

    /// Waits until the VIP leads to node `i` (its backend serves its
    /// name), as the VIP's priorities say it should.
    fn wait_served_by(&self, i: usize) {
        let name = NODES[i];
        wait::until(DEADLINE, &format!("{name} to answer at the VIP"), || {
            self.vip_get("/name").is_some_and(|b| b == name)
                && self.net.members[i].has_address(IFACE, &self.net.host(100))
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()));
    }

    fn converge(&self, args: &[&str]) -> Output {
        fleet::converge(&self.repo, &self.consul.server, args)
    }

    /// Publishes the manifests with `note`; the revision.
    fn publish(&self, note: &str) -> String {
        self.publish_kind(note, Kind::Header)
    }

    /// Publishes a revision of `kind` with `note`; the revision.
    fn publish_kind(&self, note: &str, kind: Kind) -> String {
        self.repo
            .write("manifests/site.yaml", &site(&self.net, note, kind));
        fleet::publish(&self.repo, &self.consul.server, &[])
    }

    fn wait(&self, revision: &str) -> Output {
        fleet::fleet_wait(&self.repo, &self.consul.server, revision, "120s")
    }

    fn logs(&self) -> String {
        fleet::daemon_logs(self.nodes.iter().map(|n| (n.name, n.root.path())))
    }

    /// The probe in the client namespace, appending to `out`, once its
    /// first request through the VIP got an answer, so what a test
    /// counts afterwards is measured against a VIP known to work.
    fn probe(&self, out: &Path) -> Child {
        let url = format!("http://{}:{PORT}/name", self.net.host(100));
        let mut cmd = self.net.client.command("python3");
        cmd.args(["-c", PROBE, &url])
            .arg(out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let probe = Child::spawn("the VIP probe", &mut cmd).expect("probe");
        wait::until(DEADLINE, "the probe's first answer", || {
            std::fs::read_to_string(out).is_ok_and(|t| t.starts_with("ok "))
        })
        .unwrap_or_else(|e| panic!("{e}"));
        probe
    }
}

/// Whether two reloads overlap in time.
fn overlap(a: &Reload, b: &Reload) -> bool {
    a.start < b.end && b.start < a.end
}

#[test]
fn twenty_revisions_reload_the_real_pair_one_node_at_a_time_backup_first_and_the_vip_never_fails() {
    let pair = Pair::start();
    let probes = tempfile::tempdir().expect("probe dir");
    let out = probes.path().join("probes");
    let mut probe = pair.probe(&out);
    let since = now_ns();
    let vrrp_before: Vec<usize> = pair.nodes.iter().map(|n| n.vrrp_log().len()).collect();

    let mut last = String::new();
    for i in 1..=REVISIONS {
        last = pair.publish(&format!("r{i}"));
    }
    assert_exit(&pair.wait(&last), 0);
    // Back to back, lb1 skips to the last revision lb2 took; one at a
    // time, the node the VIP leads to reloads under the probe each time.
    for i in 1..=PACED {
        last = pair.publish(&format!("p{i}"));
        assert_exit(&pair.wait(&last), 0);
    }
    let tail = format!("p{PACED}");
    wait::until(DEADLINE, "the last revision's header at the VIP", || {
        std::fs::read_to_string(&out)
            .is_ok_and(|t| t.lines().last().is_some_and(|l| l.ends_with(&tail)))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", pair.logs()));
    probe.stop();

    let text = std::fs::read_to_string(&out).expect("probes");
    let sent: Vec<(&str, u128, &str)> = text
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ' ');
            let (what, t, rest) = (f.next()?, f.next()?.parse().ok()?, f.next().unwrap_or(""));
            Some((what, t, rest))
        })
        .filter(|(_, t, _)| *t >= since)
        .collect();
    let failed: Vec<&(&str, u128, &str)> = sent.iter().filter(|p| p.0 != "ok").collect();
    let mut reloads: Vec<Reload> = pair
        .nodes
        .iter()
        .flat_map(Node::reloads)
        .filter(|r| r.start >= since)
        .collect();
    reloads.sort_by_key(|r| r.start);
    println!(
        "rollout_vip: {REVISIONS} revisions back to back then {PACED} one at a time, {} HAProxy reloads (lb1 {}, lb2 {}), \
         {} probes through the VIP over {:.1} s, {} failed",
        reloads.len(),
        reloads.iter().filter(|r| r.node == "lb1").count(),
        reloads.iter().filter(|r| r.node == "lb2").count(),
        sent.len(),
        (now_ns() - since) as f64 / 1e9,
        failed.len()
    );

    for name in NODES {
        assert!(
            reloads.iter().filter(|r| r.node == name).count() > PACED,
            "{name} reloaded HAProxy for every paced revision and for the burst: {reloads:?}\n{}",
            pair.logs()
        );
    }
    for (i, a) in reloads.iter().enumerate() {
        for b in &reloads[i + 1..] {
            assert!(
                a.node == b.node || !overlap(a, b),
                "lb1 and lb2 reloaded at once: {a:?} {b:?}\n{reloads:?}"
            );
        }
    }
    // The MASTER (lb1) only takes what the BACKUP (lb2) runs.
    assert_eq!(reloads[0].node, "lb2", "the BACKUP goes first: {reloads:?}");
    for w in reloads.windows(2) {
        assert!(
            !(w[0].node == "lb1" && w[1].node == "lb1"),
            "lb1 reloaded twice without lb2 between: {reloads:?}"
        );
    }
    assert!(
        failed.is_empty(),
        "{} of {} probes through the VIP failed: {failed:?}\n{reloads:?}",
        failed.len(),
        sent.len()
    );
    // The VIP stayed where the priorities put it, all along.
    for (node, before) in pair.nodes.iter().zip(vrrp_before) {
        let during = &node.vrrp_log()[before..];
        assert!(
            !during.contains("Entering"),
            "{}'s keepalived changed state during the rollout:\n{during}",
            node.name
        );
    }
    assert!(pair.net.members[0].has_address(IFACE, &pair.net.host(100)));
    assert!(!pair.net.members[1].has_address(IFACE, &pair.net.host(100)));
}

#[test]
fn a_revision_that_puts_the_backups_keepalived_in_fault_fails_its_gate_and_never_reaches_the_master(
) {
    let pair = Pair::start();
    let probes = tempfile::tempdir().expect("probe dir");
    let out = probes.path().join("probes");
    let mut probe = pair.probe(&out);
    let since = now_ns();
    let lb1_before = pair.nodes[0].vrrp_log().len();

    pair.publish_kind("bad", Kind::Fault);
    let status = wait::until_some(DEADLINE, "the halt", || {
        let text = stdout(&pair.converge(&["fleet", "status"]));
        text.contains("halted at lb2").then_some(text)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", pair.logs()));
    assert!(
        status.contains("VRRP instance edge was BACKUP before the switch and is FAULT after it"),
        "{status}"
    );
    assert!(
        pair.nodes[1].vrrp_log().contains("Entering FAULT STATE"),
        "{}",
        pair.nodes[1].vrrp_log()
    );
    // lb2 switched back and its pass put the config without the failing
    // track script back; lb1 never took the revision.
    let tracked = |n: &Node| {
        std::fs::read_to_string(n.path("etc/keepalived/keepalived.conf"))
            .unwrap_or_default()
            .contains("chk_haproxy")
    };
    wait::until(DEADLINE, "lb2's keepalived config rolled back", || {
        !tracked(&pair.nodes[1])
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", pair.logs()));
    assert!(!tracked(&pair.nodes[0]), "lb1 took the failing revision");
    probe.stop();

    let text = std::fs::read_to_string(&out).expect("probes");
    let sent: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.split(' ')
                .nth(1)
                .and_then(|t| t.parse::<u128>().ok())
                .is_some_and(|t| t >= since)
        })
        .collect();
    let failed: Vec<&&str> = sent.iter().filter(|l| !l.starts_with("ok ")).collect();
    println!(
        "rollout_vip fault: {} probes through the VIP, {} failed",
        sent.len(),
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:?}");
    let during = &pair.nodes[0].vrrp_log()[lb1_before..];
    assert!(!during.contains("Entering"), "lb1 kept the VIP:\n{during}");
}

#[test]
fn a_revision_that_lets_the_backup_take_the_vip_fails_its_gate_and_never_reaches_the_master() {
    let pair = Pair::start();
    let router_id = |n: &Node, id: u8| {
        std::fs::read_to_string(n.path("etc/keepalived/keepalived.conf"))
            .unwrap_or_default()
            .contains(&format!("virtual_router_id {id}\n"))
    };
    let lb2_before = pair.nodes[1].vrrp_log().len();

    pair.publish_kind("split", Kind::Adverts);
    let status = wait::until_some(DEADLINE, "the halt", || {
        let text = stdout(&pair.converge(&["fleet", "status"]));
        text.contains("halted at lb2").then_some(text)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", pair.logs()));
    assert!(
        status.contains(
            "VRRP instance edge was BACKUP before the switch and is MASTER after it \
             (priorities lb1 150, lb2 100): the reload took the VIP though lb2's priority 100 \
             is not the highest"
        ),
        "{status}"
    );
    let during = &pair.nodes[1].vrrp_log()[lb2_before..];
    assert!(during.contains("Entering MASTER STATE"), "{during}");
    // lb2 switched back to the old router id, which gives the VIP back to
    // lb1; lb1 never took the revision.
    wait::until(DEADLINE, "lb2's keepalived config rolled back", || {
        router_id(&pair.nodes[1], 53)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", pair.logs()));
    assert!(router_id(&pair.nodes[0], 53), "lb1 took the revision");
    wait::until(DEADLINE, "lb2 to give the VIP up", || {
        !pair.net.members[1].has_address(IFACE, &pair.net.host(100))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", pair.nodes[1].vrrp_log()));
    pair.wait_served_by(0);
}
