//! Rolling a revision out over a fleet on one machine: a Consul server
//! agent, a client agent per node, and `converge run --published` per
//! node with its own `--root`. lb1 and lb2 share a VRRP instance (lb1 has
//! the higher priority: the MASTER); lb3 stands alone. Each node renders
//! one file; its reload is a shell command that appends `<node> start
//! <ns>` and `<node> end <ns>` to one events file all nodes share (the
//! daemon's environment names the node and the file), sleeping between
//! the two, so the test sees every reload's interval. Its validator
//! refuses the candidate on a node whose root holds a `REJECT` file.
//! keepalived and HAProxy are not started per node: the reload command
//! stands in for them, since what is under test is when each node
//! reloads, not what the programs do.

mod common;

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use common::fleet::{self, Node};
use common::{assert_exit, stdout, Workspace};
use converge_testkit::consul::ConsulFleet;
use converge_testkit::wait;

const NODES: [&str; 3] = ["lb1", "lb2", "lb3"];
const DEADLINE: Duration = Duration::from_secs(90);

/// The VRRP instance lb1 and lb2 share.
const PAIR: &str = "vips:\n  front:\n    virtual_router_id: 51\n    interface: eth0\n    \
                    addresses: [10.0.0.10/24]\n    priorities: {lb1: 150, lb2: 100}\n";

/// The manifests, with `vips` as the vips section and `rollout` as the
/// rollout section's lines.
fn site(note: &str, vips: &str, rollout: &str) -> String {
    format!(
        "# {note}\nnodes:\n  lb1: {{}}\n  lb2: {{}}\n  lb3: {{}}\n{vips}\
         backends:\n  web:\n    service: web\n\
         rollout:\n{rollout}\
         targets:\n  app:\n    template: app.tera\n    destination: /etc/app/app.conf\n\
         \x20   validate: {{command: [\"sh\", \"-c\", \"test ! -e \\\"$(dirname \\\"$1\\\")/REJECT\\\"\", \"sh\", \"{{}}\"]}}\n\
         \x20   reload: {{shell: 'echo \"$NODE start $(date +%s%N)\" >> \"$EVENTS\"; sleep 0.2; echo \"$NODE end $(date +%s%N)\" >> \"$EVENTS\"'}}\n"
    )
}

const TEMPLATE: &str = "{{ node.name }}\n{% for be in backends %}{% for s in be.servers %}{{ s.endpoint }}\n{% endfor %}{% endfor %}";

/// One reload: node, start and end (ns).
#[derive(Debug, Clone)]
struct Reload {
    node: String,
    start: u128,
    end: u128,
}

impl Node {
    fn app(&self) -> Vec<u8> {
        std::fs::read(self.path("etc/app/app.conf")).unwrap_or_default()
    }
}

struct Fleet {
    consul: ConsulFleet,
    repo: Workspace,
    nodes: Vec<Node>,
    events: PathBuf,
    vips: &'static str,
    rollout: String,
    _dir: tempfile::TempDir,
}

impl Fleet {
    /// [`Fleet::start_with`] lb1 and lb2 sharing a VRRP instance.
    fn start(rollout: &str) -> Self {
        Self::start_with(PAIR, rollout)
    }

    /// Consul, the repository with `vips` and `rollout`, three daemons,
    /// and the first revision published and converged everywhere.
    fn start_with(vips: &'static str, rollout: &str) -> Self {
        let consul = ConsulFleet::start(&NODES).expect("consul server and client agents");
        consul
            .server
            .register_service("web-1", "web", 8081)
            .expect("register");
        let dir = tempfile::tempdir().expect("events dir");
        let repo = Workspace::custom(&site("first", vips, rollout), "services: {}\n");
        repo.write("templates/app.tera", TEMPLATE);
        let mut fleet = Self {
            consul,
            repo,
            nodes: Vec::new(),
            events: dir.path().join("events"),
            vips,
            rollout: rollout.to_string(),
            _dir: dir,
        };
        for (i, name) in NODES.iter().enumerate() {
            let mut node = Node::new(name);
            fleet.run(&mut node, i);
            fleet.nodes.push(node);
        }
        let first = fleet.publish("first");
        assert_exit(&fleet.wait(&first), 0);
        // A node may first render before its agent sees web-1, then
        // apply web-1 in a later pass: wait for the report of that pass,
        // written once its reload ended, so no reload of the start is
        // still running when a test begins recording.
        for n in &fleet.nodes {
            wait::until(DEADLINE, "web-1 applied on every node", || {
                let app = n.app();
                let Some((value, _)) = fleet.kv(&format!("converge/nodes/{}", n.name)) else {
                    return false;
                };
                let report: serde_json::Value = serde_json::from_slice(&value).unwrap_or_default();
                String::from_utf8_lossy(&app).contains(":8081")
                    && report["converged"] == true
                    && report["targets"]["app"]["sha256"].as_str() == Some(&sha256_hex(&app))
            })
            .unwrap_or_else(|e| panic!("{e}\n{}", n.log()));
        }
        fleet
    }

    /// `converge run --published` for `node` against its agent, with
    /// what its reload command reads: the node's name and the events file.
    fn run(&self, node: &mut Node, i: usize) {
        let url = self.consul.clients[i].http_url();
        let name = node.name;
        node.run(&url, DEADLINE, |cmd| {
            cmd.env("NODE", name).env("EVENTS", &self.events);
        });
    }

    fn converge(&self, args: &[&str]) -> Output {
        fleet::converge(&self.repo, &self.consul.server, args)
    }

    /// Publishes the manifests with `note`; the revision.
    fn publish(&self, note: &str) -> String {
        self.repo
            .write("manifests/site.yaml", &site(note, self.vips, &self.rollout));
        self.repo
            .write("templates/app.tera", &format!("{TEMPLATE}# {note}\n"));
        fleet::publish(&self.repo, &self.consul.server, &[])
    }

    fn wait(&self, revision: &str) -> Output {
        fleet::fleet_wait(&self.repo, &self.consul.server, revision, "120s")
    }

    fn logs(&self) -> String {
        fleet::node_logs(&self.nodes)
    }

    /// Every reload so far, in start order; the file is then emptied.
    fn take_reloads(&self) -> Vec<Reload> {
        let text = std::fs::read_to_string(&self.events).unwrap_or_default();
        std::fs::write(&self.events, "").expect("empty the events");
        let mut open: Vec<(String, u128)> = Vec::new();
        let mut done = Vec::new();
        for line in text.lines() {
            let mut f = line.split(' ');
            let (Some(node), Some(what), Some(t)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            let t: u128 = t.parse().expect("ns");
            match what {
                "start" => open.push((node.to_string(), t)),
                _ => {
                    // A reload in flight when the file was last emptied.
                    let Some(i) = open.iter().position(|(n, _)| n == node) else {
                        continue;
                    };
                    let (node, start) = open.remove(i);
                    done.push(Reload {
                        node,
                        start,
                        end: t,
                    });
                }
            }
        }
        done.sort_by_key(|r| r.start);
        done
    }

    /// The value of a KV key, if present.
    fn kv(&self, key: &str) -> Option<(Vec<u8>, Option<String>)> {
        fleet::kv(&self.consul.server, key)
    }

    fn revision_of(&self, node: &str) -> Option<String> {
        let (value, _) = self.kv(&format!("converge/nodes/{node}"))?;
        let report: serde_json::Value = serde_json::from_slice(&value).ok()?;
        report["revision"].as_str().map(str::to_string)
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether two reloads overlap in time.
fn overlap(a: &Reload, b: &Reload) -> bool {
    a.start < b.end && b.start < a.end
}

#[test]
fn back_to_back_revisions_never_reload_both_nodes_of_a_pair_at_once_and_the_backup_goes_first() {
    let fleet = Fleet::start("  settle: 200ms\n");
    fleet.take_reloads();
    let mut last = String::new();
    for i in 0..20 {
        last = fleet.publish(&format!("revision {i}"));
    }
    let out = fleet.wait(&last);
    assert_exit(&out, 0);
    let reloads = fleet.take_reloads();
    let pair: Vec<&Reload> = reloads.iter().filter(|r| r.node != "lb3").collect();
    assert!(
        pair.iter().any(|r| r.node == "lb1"),
        "{reloads:?}\n{}",
        fleet.logs()
    );
    for (i, a) in pair.iter().enumerate() {
        for b in &pair[i + 1..] {
            assert!(
                a.node == b.node || !overlap(a, b),
                "lb1 and lb2 reloaded at once: {a:?} {b:?}\n{reloads:?}"
            );
        }
    }
    // The MASTER (lb1) only takes what the BACKUP (lb2) runs: each of its
    // reloads follows one of lb2's, never two of its own in a row.
    assert_eq!(
        pair.first().map(|r| r.node.as_str()),
        Some("lb2"),
        "{pair:?}\n{}",
        fleet.logs()
    );
    for w in pair.windows(2) {
        assert!(
            !(w[0].node == "lb1" && w[1].node == "lb1"),
            "lb1 reloaded twice without lb2 between: {pair:?}"
        );
    }
    // lb3, in no group, went at its own pace, overlapping the pair.
    assert!(reloads.iter().any(|r| r.node == "lb3"), "{reloads:?}");
}

#[test]
fn a_canary_that_rejects_halts_the_rest_and_one_that_passes_lets_them_follow_after_its_soak() {
    let fleet = Fleet::start("  canary: [lb2]\n  soak: 2s\n  settle: 200ms\n");
    let before: Vec<Vec<u8>> = fleet.nodes.iter().map(Node::app).collect();
    std::fs::write(fleet.nodes[1].path("etc/app/REJECT"), "").expect("REJECT");
    fleet.take_reloads();
    let bad = fleet.publish("bad");
    wait::until(DEADLINE, "the halt", || {
        fleet.kv("converge/rollout/halt").is_some()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", fleet.logs()));
    let out = fleet.converge(&["fleet", "status"]);
    assert_exit(&out, 2);
    assert!(
        stdout(&out).contains("halted at lb2: revision"),
        "{}",
        stdout(&out)
    );
    // The others keep passing (--resync 1s) and never take it.
    let lb1 = &fleet.nodes[0];
    let passes = lb1.metric("converge_reconciles_total");
    wait::until(DEADLINE, "three more passes on lb1", || {
        lb1.metric("converge_reconciles_total") >= passes + 3.0
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lb1.log()));
    for i in [0, 2] {
        assert_eq!(
            fleet.nodes[i].app(),
            before[i],
            "{} untouched",
            fleet.nodes[i].name
        );
        assert_ne!(
            fleet.revision_of(fleet.nodes[i].name).as_deref(),
            Some(bad.as_str())
        );
    }
    assert_eq!(fleet.nodes[1].app(), before[1], "the canary rolled back");

    // A new publication resumes; the canary passes, the others follow
    // only after its soak.
    std::fs::remove_file(fleet.nodes[1].path("etc/app/REJECT")).expect("unREJECT");
    fleet.take_reloads();
    let good = fleet.publish("good");
    assert_exit(&fleet.wait(&good), 0);
    let reloads = fleet.take_reloads();
    let canary = reloads
        .iter()
        .find(|r| r.node == "lb2")
        .expect("lb2 reloaded");
    for r in reloads.iter().filter(|r| r.node != "lb2") {
        assert!(
            r.start >= canary.end + 2_000_000_000,
            "{} reloaded before the canary's 2 s soak: {reloads:?}",
            r.node
        );
    }
    let out = fleet.converge(&["fleet", "status"]);
    assert_exit(&out, 0);
    assert!(!stdout(&out).contains("halted"), "{}", stdout(&out));
}

#[test]
fn a_node_killed_holding_the_lock_releases_it_and_a_paused_node_still_takes_catalog_changes() {
    // The gate holds the lock 30 s: long enough to kill its holder.
    let mut fleet = Fleet::start("  settle: 30s\n");
    let lock = "converge/rollout/locks/vip/front";
    wait::until(DEADLINE, "the first rollout's lock released", || {
        fleet.kv(lock).is_some_and(|(_, session)| session.is_none())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", fleet.logs()));
    let next = fleet.publish("next");
    let holder = wait::until_some(DEADLINE, "a holder of the pair's lock", || {
        let (value, session) = fleet.kv(lock)?;
        session?;
        let v: serde_json::Value = serde_json::from_slice(&value).ok()?;
        v["node"].as_str().map(str::to_string)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", fleet.logs()));
    assert_eq!(holder, "lb2", "the BACKUP goes first");
    let mut daemon = fleet.nodes[1].daemon.take().expect("lb2 runs");
    daemon
        .signal(nix::sys::signal::Signal::SIGKILL)
        .expect("kill");
    let _ = daemon.wait_exit(DEADLINE);
    // Consul invalidates lb2's sessions (TTL 10 s); lb1 then takes the
    // lock, and does not wait for a BACKUP that is gone.
    wait::until(DEADLINE, "lb1 on the next revision", || {
        fleet.revision_of("lb1").as_deref() == Some(next.as_str())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", fleet.logs()));

    // Pause lb3: a new revision does not reach it, a catalog change does.
    assert_exit(&fleet.converge(&["fleet", "pause", "--node", "lb3"]), 0);
    let lb3 = &fleet.nodes[2];
    let on = fleet.revision_of("lb3").expect("lb3's revision");
    let paused = fleet.publish("paused");
    wait::until(DEADLINE, "lb3 says it is paused", || {
        lb3.metric("converge_rollout_paused") == 1.0
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lb3.log()));
    fleet
        .consul
        .server
        .register_service("web-2", "web", 8082)
        .expect("register");
    wait::until(DEADLINE, "the catalog change on lb3", || {
        String::from_utf8_lossy(&lb3.app()).contains(":8082")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lb3.log()));
    assert_eq!(fleet.revision_of("lb3"), Some(on));
    let out = fleet.converge(&["fleet", "status"]);
    assert!(stdout(&out).contains("paused: lb3"), "{}", stdout(&out));
    assert_exit(&fleet.converge(&["fleet", "resume", "--node", "lb3"]), 0);
    wait::until(DEADLINE, "lb3 on the paused revision once resumed", || {
        fleet.revision_of("lb3").as_deref() == Some(paused.as_str())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lb3.log()));
}

#[test]
fn max_parallel_one_keeps_every_reload_of_the_fleet_apart() {
    let fleet = Fleet::start("  max_parallel: 1\n  settle: 200ms\n");
    fleet.take_reloads();
    let mut last = String::new();
    for i in 0..5 {
        last = fleet.publish(&format!("revision {i}"));
    }
    assert_exit(&fleet.wait(&last), 0);
    let reloads = fleet.take_reloads();
    assert!(
        reloads.iter().any(|r| r.node == "lb3"),
        "{reloads:?}\n{}",
        fleet.logs()
    );
    for (i, a) in reloads.iter().enumerate() {
        for b in &reloads[i + 1..] {
            assert!(
                a.node == b.node || !overlap(a, b),
                "two nodes reloaded at once under max_parallel 1: {a:?} {b:?}\n{reloads:?}"
            );
        }
    }
    // Every switch released its slot: nobody holds the semaphore now.
    let (value, _) = fleet
        .kv("converge/rollout/semaphore/.lock")
        .expect("the semaphore's lock key");
    let slots: serde_json::Value = serde_json::from_slice(&value).expect("json");
    assert_eq!(
        slots["holders"],
        serde_json::json!([]),
        "{slots}\n{}",
        fleet.logs()
    );
}

#[test]
fn a_named_group_never_reloads_two_of_its_nodes_at_once_and_holds_no_one_else() {
    // No VRRP instance: the group alone keeps lb1 and lb2 apart.
    let fleet = Fleet::start_with("", "  groups:\n    pool: [lb1, lb2]\n  settle: 200ms\n");
    fleet.take_reloads();
    let mut last = String::new();
    for i in 0..20 {
        last = fleet.publish(&format!("revision {i}"));
    }
    assert_exit(&fleet.wait(&last), 0);
    let reloads = fleet.take_reloads();
    let pool: Vec<&Reload> = reloads.iter().filter(|r| r.node != "lb3").collect();
    for (i, a) in pool.iter().enumerate() {
        for b in &pool[i + 1..] {
            assert!(
                a.node == b.node || !overlap(a, b),
                "lb1 and lb2 of group pool reloaded at once: {a:?} {b:?}\n{reloads:?}"
            );
        }
    }
    for node in NODES {
        assert!(
            reloads.iter().any(|r| r.node == node),
            "{node} never reloaded: {reloads:?}\n{}",
            fleet.logs()
        );
    }
    // lb3, in no group, never waited for a lock: the group held only its
    // members.
    let lb3 = fleet.nodes[2].log();
    assert!(!lb3.contains("waiting for lock"), "{lb3}");
    // The members took the group's lock, and released it.
    let (_, session) = fleet
        .kv("converge/rollout/locks/group/pool")
        .unwrap_or_else(|| panic!("the group's lock was never taken\n{}", fleet.logs()));
    assert_eq!(session, None, "{}", fleet.logs());
}

#[test]
fn a_paused_fleet_takes_no_new_revision_until_resumed_nor_while_the_halt_key_is_corrupt() {
    let fleet = Fleet::start("  settle: 200ms\n");
    let before: Vec<Vec<u8>> = fleet.nodes.iter().map(Node::app).collect();
    let on: Vec<Option<String>> = NODES.iter().map(|n| fleet.revision_of(n)).collect();
    assert_exit(&fleet.converge(&["fleet", "pause"]), 0);
    let next = fleet.publish("while paused");
    for n in &fleet.nodes {
        wait::until(DEADLINE, "every node says it is paused", || {
            n.metric("converge_rollout_paused") == 1.0
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", n.log()));
    }
    for (i, n) in fleet.nodes.iter().enumerate() {
        assert_eq!(fleet.revision_of(n.name), on[i], "{} took it", n.name);
        assert_eq!(n.app(), before[i], "{} untouched", n.name);
    }
    let out = fleet.converge(&["fleet", "status"]);
    assert_exit(&out, 2);
    assert!(
        stdout(&out).contains("paused: the whole fleet takes no new revision"),
        "{}",
        stdout(&out)
    );
    assert_exit(&fleet.converge(&["fleet", "resume"]), 0);
    assert_exit(&fleet.wait(&next), 0);
    let out = fleet.converge(&["fleet", "status"]);
    assert_exit(&out, 0);
    assert!(!stdout(&out).contains("paused"), "{}", stdout(&out));

    // A halt key that does not parse halts every revision (fail closed).
    fleet
        .consul
        .server
        .kv_put("converge/rollout/halt", "{\"revision\": 12")
        .expect("corrupt halt");
    let halted = fleet.publish("behind a corrupt halt");
    for n in &fleet.nodes {
        wait::until(DEADLINE, "every node reports the corrupt halt", || {
            fleet
                .kv(&format!("converge/nodes/{}", n.name))
                .and_then(|(v, _)| serde_json::from_slice::<serde_json::Value>(&v).ok())
                .and_then(|r| r["error"].as_str().map(str::to_string))
                .is_some_and(|e| e.contains("converge/rollout/halt does not parse as a halt"))
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", n.log()));
        assert_eq!(fleet.revision_of(n.name).as_deref(), Some(next.as_str()));
    }
    let out = fleet.converge(&["fleet", "status"]);
    assert_exit(&out, 2);
    assert!(
        stdout(&out).contains(
            "halted at an unknown node: converge/rollout/halt does not parse as a halt ("
        ) && stdout(&out).contains("(every revision)"),
        "{}",
        stdout(&out)
    );
    assert_ne!(fleet.revision_of("lb1").as_deref(), Some(halted.as_str()));
}
