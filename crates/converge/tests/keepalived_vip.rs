//! End to end: two "LB nodes" in network namespaces on one segment (veth
//! pairs to a bridge in a third namespace, which is also a client), each
//! running the real keepalived on the config `converge apply` rendered
//! for it, and the VIP following priorities, failures and manifest changes.
//!
//! Each node has its own checkout of the manifests and its own `--root`
//! (a [`Workspace`] each), as two machines would. The nodes' `address` are
//! the veth addresses, so the rendered configs speak unicast VRRP to each
//! other; the VIP lives on the segment's subnet, which exists only inside
//! the test's namespaces. Where the VIP is gets checked two ways: the
//! address on each node's interface (`ip -n NS addr`), and which node a
//! client on the segment reaches at the VIP (its neighbour entry after a
//! TCP connection attempt is answered). The track script (node var
//! `haproxy_check`) is `/bin/test -e DIR/lbN-healthy`, a file the test
//! creates and deletes.
//!
//! At each step `converge status --format json` runs on both nodes, inside
//! each node's namespace (where its addresses are), and must report
//! keepalived's own state — MASTER, BACKUP, FAULT, or UNKNOWN once
//! keepalived is killed — apart from whether the node holds the VIP, which
//! a killed keepalived leaves behind.
//!
//! The VIP move time printed here is one sample; `vip_move_times` (ignored,
//! run on demand) takes many:
//!
//! ```text
//! cargo test -p converge --test keepalived_vip -- --ignored --nocapture vip_move_times
//! ```
//!
//! (`CONVERGE_VIP_MOVES=N` sets the number of kills, default 10.)

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::vrrp::{edge_vip, segment, start_keepalived, IFACE, KEEPALIVED_TARGET};
use common::{assert_exit, stdout, Workspace};
use converge_testkit::keepalived::Keepalived;
use converge_testkit::netns::{Lan, Netns};
use converge_testkit::wait;
use serde_json::Value;

/// Generous: the test asserts where the VIP goes, not how fast, on a
/// loaded two-core machine. VRRP itself needs about 3 × advert_int (1 s)
/// for a crash and 2 × the script interval (2 s) for a failing check.
const MOVE_DEADLINE: Duration = Duration::from_secs(60);

/// One node: its checkout and root, its health file, its keepalived.
struct Node {
    name: &'static str,
    /// Declared before `ws` so it stops before its files go away.
    keepalived: Option<Keepalived>,
    ws: Workspace,
    healthy: PathBuf,
}

impl Node {
    fn apply(&self) -> String {
        let out = self.ws.converge(&["apply", "--once", "--node", self.name]);
        assert_exit(&out, 0);
        stdout(&out)
    }

    fn config(&self) -> PathBuf {
        self.ws.root().join("etc/keepalived/keepalived.conf")
    }

    fn start(&mut self, ns: &Netns) {
        assert!(self.keepalived.is_none(), "{} already runs", self.name);
        let k = start_keepalived(ns, &self.ws.root(), self.name);
        self.keepalived = Some(k);
    }

    fn running(&mut self) -> &mut Keepalived {
        self.keepalived
            .as_mut()
            .unwrap_or_else(|| panic!("keepalived for {} is not running", self.name))
    }

    fn set_healthy(&self, healthy: bool) {
        if healthy {
            std::fs::write(&self.healthy, "").expect("create health file");
        } else {
            std::fs::remove_file(&self.healthy).expect("remove health file");
        }
    }

    fn log(&self) -> String {
        self.keepalived
            .as_ref()
            .map(Keepalived::log)
            .unwrap_or_default()
    }

    /// `converge status ARGS` for this node, run inside `ns`.
    fn status(&self, ns: &Netns, args: &[&str]) -> String {
        let mut all = vec!["status", "--node", self.name];
        all.extend_from_slice(args);
        let out = ns
            .enter(&self.ws.command(&all))
            .output()
            .expect("run converge status");
        // The VIP section is what these tests read; the exit code also
        // weighs the daemon and the other programs (1: could not ask one,
        // 3: something wrong), so it only has to be one `status` documents.
        assert!(
            matches!(out.status.code(), Some(0 | 1 | 3)),
            "{:?}\n{}",
            out.status,
            stdout(&out)
        );
        stdout(&out)
    }

    /// The VIP's entry in the keepalived section of `converge status`.
    fn vip_status(&self, ns: &Netns) -> Value {
        let out = self.status(ns, &["--format", "json"]);
        let doc: Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("{} status is not JSON ({e}):\n{out}", self.name));
        doc["keepalived"]["ok"][0].clone()
    }
}

/// Two nodes on one segment (a [`Lan`]: member 0 is lb1, member 1 is lb2,
/// and a client next to them). Fields drop in order: keepalived first (in
/// the nodes), the namespaces last.
struct Site {
    lb1: Node,
    lb2: Node,
    net: Lan,
    /// Health files (`lbN-healthy`), shared by both checkouts.
    checks: tempfile::TempDir,
    vip: String,
}

impl Site {
    /// Renders both nodes with priorities lb1 150 / lb2 100 and starts
    /// keepalived on each.
    fn up() -> Self {
        let net = segment();
        let checks = tempfile::tempdir().expect("tempdir");
        let vip = net.host(100);
        let node = |name: &'static str| {
            let healthy = checks.path().join(format!("{name}-healthy"));
            std::fs::write(&healthy, "").expect("health file");
            Node {
                name,
                keepalived: None,
                ws: Workspace::custom(&manifest(&net, checks.path(), 150, 100), "services: {}\n"),
                healthy,
            }
        };
        let mut site = Site {
            lb1: node("lb1"),
            lb2: node("lb2"),
            net,
            checks,
            vip,
        };
        for n in [&site.lb1, &site.lb2] {
            n.ws.write("manifests/secrets/vrrp.pass", "vrrp-s3\n");
            let out = n.apply();
            let conf = std::fs::read_to_string(n.config()).expect("rendered keepalived.conf");
            assert!(
                conf.contains(&format!("interface {IFACE}")) && conf.contains(&site.vip),
                "{}: {out}\n{conf}",
                n.name
            );
        }
        site.lb1.start(&site.net.members[0]);
        site.lb2.start(&site.net.members[1]);
        site
    }

    /// Rewrites both checkouts with new priorities and applies on both.
    fn set_priorities(&self, lb1: u8, lb2: u8) -> [String; 2] {
        let text = manifest(&self.net, self.checks.path(), lb1, lb2);
        [&self.lb1, &self.lb2].map(|n| {
            n.ws.write("manifests/site.yaml", &text);
            n.apply()
        })
    }

    fn on_a(&self) -> bool {
        self.net.members[0].has_address(IFACE, &self.vip)
    }

    fn on_b(&self) -> bool {
        self.net.members[1].has_address(IFACE, &self.vip)
    }

    /// True when the client's connection to the VIP is answered by lb2.
    fn client_reaches_b(&self) -> bool {
        // Nothing listens on the discard port: a refusal is an answer.
        self.net.answering(&self.vip, 9) == Some(1)
    }

    /// Waits until the VIP is on lb1 only (`true`) or on lb2 only, and
    /// the client reaches that node at the VIP.
    fn expect_on_lb1(&self, lb1: bool, why: &str) -> Duration {
        let want = if lb1 { 0 } else { 1 };
        self.expect(why, || {
            let held = if lb1 {
                self.on_a() && !self.on_b()
            } else {
                self.on_b() && !self.on_a()
            };
            held && self.net.answering(&self.vip, 9) == Some(want)
        })
    }

    /// Waits until `converge status` reports `(state, holds_vip)` for lb1
    /// and for lb2, and returns both VIP entries.
    fn expect_status(&self, want: [(&str, bool); 2], why: &str) -> [Value; 2] {
        let mut seen = [Value::Null, Value::Null];
        let reported = wait::until(MOVE_DEADLINE, why, || {
            seen = [
                self.lb1.vip_status(&self.net.members[0]),
                self.lb2.vip_status(&self.net.members[1]),
            ];
            seen.iter()
                .zip(want)
                .all(|(v, (state, holds))| v["state"] == state && v["holds_vip"] == holds)
        });
        if let Err(e) = reported {
            self.fail(&format!(
                "{e}\nconverge status: lb1 {:#}\nlb2 {:#}",
                seen[0], seen[1]
            ));
        }
        seen
    }

    fn expect(&self, why: &str, cond: impl FnMut() -> bool) -> Duration {
        let start = Instant::now();
        if let Err(e) = wait::until(MOVE_DEADLINE, why, cond) {
            self.fail(&e);
        }
        start.elapsed()
    }

    /// Panics with `what`, both nodes' addresses and keepalived logs.
    fn fail(&self, what: &str) -> ! {
        panic!(
            "{what}\nlb1 ({}): {:?}\nlb2 ({}): {:?}\n--- lb1 keepalived\n{}\n--- lb2 keepalived\n{}",
            self.net.members[0].name(),
            self.net.members[0].addresses(IFACE),
            self.net.members[1].name(),
            self.net.members[1].addresses(IFACE),
            self.lb1.log(),
            self.lb2.log()
        );
    }

    /// Crashes lb1's keepalived (both processes, by pid) and returns the
    /// times until the VIP is on lb2 and until the client reaches lb2 at
    /// the VIP. The dead lb1 keeps a stale copy of the VIP on its
    /// interface, as a crashed keepalived on a live node would.
    fn crash_lb1(&mut self) -> Move {
        let t0 = Instant::now();
        self.lb1.running().crash().expect("crash lb1's keepalived");
        let moved = self.observe_move(t0, "lb1's keepalived died");
        self.lb1.keepalived = None;
        moved
    }

    /// Stops lb1's keepalived in order (SIGTERM); times as for a crash.
    fn stop_lb1(&mut self) -> Move {
        let t0 = Instant::now();
        self.lb1
            .running()
            .terminate()
            .expect("SIGTERM lb1's keepalived");
        let moved = self.observe_move(t0, "lb1's keepalived stopped");
        self.lb1.running().stop().expect("stop lb1's keepalived");
        self.lb1.keepalived = None;
        moved
    }

    /// Polls both views from `t0`: the address on lb2, and the client
    /// reaching lb2 at the VIP, whichever comes first.
    fn observe_move(&self, t0: Instant, after: &str) -> Move {
        let (mut address, mut client) = (None, None);
        self.expect(&format!("the VIP to move to lb2 after {after}"), || {
            if address.is_none() && self.on_b() {
                address = Some(t0.elapsed());
            }
            if client.is_none() && self.client_reaches_b() {
                client = Some(t0.elapsed());
            }
            address.is_some() && client.is_some()
        });
        Move {
            address: address.unwrap_or_default(),
            client: client.unwrap_or_default(),
        }
    }
}

/// How long a VIP move took, seen two ways.
#[derive(Debug, Clone, Copy)]
struct Move {
    /// Until the VIP is on lb2's interface.
    address: Duration,
    /// Until a client on the segment reaches lb2 at the VIP.
    client: Duration,
}

/// The site manifest: lb1 and lb2 on the segment, one unicast VIP with
/// the given priorities, a per-node track script, and the keepalived
/// target validated with `keepalived -t` and reloaded with SIGHUP.
fn manifest(net: &Lan, checks: &Path, lb1: u8, lb2: u8) -> String {
    let check = |n: &str| format!("/bin/test -e {}/{n}-healthy", checks.display());
    format!(
        "nodes:
  lb1:
    address: {a}
    vars:
      vrrp_interface: {IFACE}
      haproxy_check: {c1}
  lb2:
    address: {b}
    vars:
      vrrp_interface: {IFACE}
      haproxy_check: {c2}
{vips}    auth_pass: {{file: secrets/vrrp.pass}}
    track_haproxy: true
targets:
{KEEPALIVED_TARGET}",
        a = net.host(1),
        b = net.host(2),
        vips = edge_vip(net, 51, lb1, lb2),
        c1 = check("lb1"),
        c2 = check("lb2"),
    )
}

#[test]
fn vip_follows_priority_failures_and_manifest_changes() {
    let mut site = Site::up();

    // 1. The higher priority holds the VIP, and status says so from
    //    keepalived's own report.
    site.expect_on_lb1(true, "the VIP on lb1 (priority 150) only");
    let [lb1, lb2] = site.expect_status(
        [("MASTER", true), ("BACKUP", false)],
        "status: lb1 MASTER holding the VIP, lb2 BACKUP",
    );
    let lb1_pid = site.lb1.running().pid();
    assert_eq!(lb1["keepalived_pid"], lb1_pid, "{lb1:#}");
    assert_eq!(lb1["priority"], 150, "{lb1:#}");
    assert_eq!(lb2["priority"], 100, "{lb2:#}");
    for v in [&lb1, &lb2] {
        assert!(v["warning"].is_null() && v["state_note"].is_null(), "{v:#}");
    }

    // 2. lb1's keepalived dies: lb2 takes the VIP. lb1 keeps a stale copy
    //    of it, and its last report said MASTER; status must say neither.
    let moved = site.crash_lb1();
    println!(
        "keepalived VIP move after killing the MASTER (SIGKILL): on lb2's interface after \
         {:.3} s, a client reaches lb2 at the VIP after {:.3} s",
        moved.address.as_secs_f64(),
        moved.client.as_secs_f64()
    );
    let [lb1, _] = site.expect_status(
        [("UNKNOWN", true), ("MASTER", true)],
        "status: lb1 UNKNOWN with a stale VIP, lb2 MASTER",
    );
    assert!(lb1["keepalived_pid"].is_null(), "{lb1:#}");
    let note = lb1["state_note"].as_str().unwrap_or_default();
    assert!(note.contains("not running"), "{lb1:#}");
    let warning = lb1["warning"].as_str().unwrap_or_default();
    assert!(warning.starts_with("stale VIP"), "{lb1:#}");
    let text = site.lb1.status(&site.net.members[0], &[]);
    let row: Vec<&str> = text
        .lines()
        .find(|l| l.starts_with("edge "))
        .map(|l| l.split_whitespace().take(3).collect())
        .unwrap_or_default();
    assert_eq!(row, ["edge", "UNKNOWN", "yes"], "{text}");
    assert!(
        text.contains("keepalived NOT running") && text.contains("WARNING: stale VIP"),
        "{text}"
    );

    // 3. lb1 comes back and preempts (its start removes the stale VIP)...
    site.lb1.start(&site.net.members[0]);
    site.expect_on_lb1(true, "lb1 to take the VIP back after its restart");
    site.expect_status(
        [("MASTER", true), ("BACKUP", false)],
        "status: lb1 MASTER again after its restart, lb2 BACKUP",
    );
    // ... and gives it away when its track script fails: FAULT, which the
    // addresses alone would show as BACKUP.
    site.lb1.set_healthy(false);
    site.expect_on_lb1(false, "the VIP on lb2 once lb1's track script fails");
    assert!(
        site.lb1.log().contains("FAULT"),
        "lb1 should be in FAULT:\n{}",
        site.lb1.log()
    );
    site.expect_status(
        [("FAULT", false), ("MASTER", true)],
        "status: lb1 FAULT, lb2 MASTER",
    );
    site.lb1.set_healthy(true);
    site.expect_on_lb1(true, "lb1 to take the VIP back once its check passes");

    // 4. The manifests now prefer lb2; converge reloads both keepalived.
    let [out1, out2] = site.set_priorities(150, 200);
    for (n, out) in [(&site.lb1, &out1), (&site.lb2, &out2)] {
        assert!(out.contains("reloaded"), "{} apply output:\n{out}", n.name);
    }
    let conf2 = std::fs::read_to_string(site.lb2.config()).expect("lb2 config");
    assert!(conf2.contains("priority 200"), "{conf2}");
    site.expect_on_lb1(false, "the VIP on lb2 after its priority went to 200");
    let [_, lb2] = site.expect_status(
        [("BACKUP", false), ("MASTER", true)],
        "status: lb2 MASTER after the reload, lb1 BACKUP",
    );
    assert_eq!(lb2["priority"], 200, "{lb2:#}");
    for n in [&mut site.lb1, &mut site.lb2] {
        let name = n.name;
        assert!(
            n.running().is_running(),
            "{name}'s keepalived survived the reload"
        );
        assert!(n.log().contains("Reloading"), "{name}:\n{}", n.log());
    }
}

fn summary(label: &str, moves: &[Move]) {
    for (view, pick) in [
        (
            "VIP on lb2's interface",
            (|m: &Move| m.address) as fn(&Move) -> Duration,
        ),
        ("client reaches lb2 at the VIP", |m: &Move| m.client),
    ] {
        let mut samples: Vec<Duration> = moves.iter().map(pick).collect();
        samples.sort();
        let secs = |d: Duration| d.as_secs_f64();
        let p50 = samples[samples.len() / 2];
        let p90 = samples[(samples.len() * 9 / 10).min(samples.len() - 1)];
        println!(
            "{label}, {view}: n={} min {:.3} s, p50 {:.3} s, p90 {:.3} s, max {:.3} s",
            samples.len(),
            secs(samples[0]),
            secs(p50),
            secs(p90),
            secs(samples[samples.len() - 1])
        );
    }
}

/// VIP move time over repeated kills of the MASTER's keepalived: SIGKILL
/// (a dying node: the backup waits for its master-down timer) and an
/// orderly stop (priority-0 advert: the backup takes over at once); over
/// repeated failures of the MASTER's track script; and over priority
/// changes in the manifests applied by converge on both nodes.
#[test]
#[ignore = "benchmark: run on demand, see the module docs"]
fn vip_move_times() {
    let n: usize = std::env::var("CONVERGE_VIP_MOVES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
        .max(1);
    let mut site = Site::up();
    site.expect_on_lb1(true, "the VIP on lb1 (priority 150) only");
    let mut crashed = Vec::with_capacity(n);
    let mut stopped = Vec::with_capacity(n);
    let mut failed = Vec::with_capacity(n);
    let mut reprioritized = Vec::with_capacity(n);
    let mut applies = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        site.set_priorities(150, 200);
        applies.push(t0.elapsed());
        reprioritized.push(site.observe_move(t0, "the manifests preferred lb2"));
        site.set_priorities(150, 100);
        site.expect_on_lb1(
            true,
            "lb1 to take the VIP back once the manifests prefer it",
        );

        let t0 = Instant::now();
        site.lb1.set_healthy(false);
        failed.push(site.observe_move(t0, "lb1's track script failed"));
        site.lb1.set_healthy(true);
        site.expect_on_lb1(true, "lb1 to take the VIP back once its check passes");

        crashed.push(site.crash_lb1());
        site.lb1.start(&site.net.members[0]);
        site.expect_on_lb1(true, "lb1 to take the VIP back after its restart");
        stopped.push(site.stop_lb1());
        site.lb1.start(&site.net.members[0]);
        site.expect_on_lb1(true, "lb1 to take the VIP back after its restart");
    }
    summary(
        "VIP move after SIGKILL of the MASTER's keepalived",
        &crashed,
    );
    summary("VIP move after orderly stop (SIGTERM)", &stopped);
    summary("VIP move after lb1's track script starts failing", &failed);
    applies.sort();
    println!(
        "converge apply --once on lb1 then lb2 (render, keepalived -t, commit, SIGHUP): \
         p50 {:.3} s, max {:.3} s",
        applies[applies.len() / 2].as_secs_f64(),
        applies[applies.len() - 1].as_secs_f64()
    );
    summary(
        "VIP move after the manifests give lb2 priority 200 (from the edit, both applies included)",
        &reprioritized,
    );
}
