//! The fleet on one machine: a Consul server agent, and for each of three
//! LB nodes its own Consul client agent joined to it and its own
//! `converge run --published` with its own `--root` and node name. The
//! nodes render a plain file (no program is reloaded); its validator, a
//! command, refuses the candidate on a node whose root holds a `REJECT`
//! file, which is how one node is made to reject what the others accept.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::fleet::{self, Node};
use common::{assert_exit, stdout, Workspace};
use converge_testkit::consul::{ConsulAgent, ConsulFleet};
use converge_testkit::{http, wait};

const NODES: [&str; 3] = ["lb1", "lb2", "lb3"];
const DEADLINE: Duration = Duration::from_secs(60);

/// The manifests: three nodes, one file target listing `web`'s servers.
fn site(note: &str) -> String {
    format!(
        "# {note}\nnodes:\n  lb1: {{}}\n  lb2: {{}}\n  lb3: {{}}\n\
         backends:\n  web:\n    service: web\n\
         targets:\n  app:\n    template: app.tera\n    destination: /etc/app/app.conf\n\
         \x20   validate: {{command: [\"sh\", \"-c\", \"test ! -e \\\"$(dirname \\\"$1\\\")/REJECT\\\"\", \"sh\", \"{{}}\"]}}\n\
         \x20   reload: none\n"
    )
}

const TEMPLATE: &str = "{{ node.name }}\n{% for be in backends %}{% for s in be.servers %}{{ s.endpoint }}\n{% endfor %}{% endfor %}";

impl Node {
    fn app(&self) -> String {
        std::fs::read_to_string(self.path("etc/app/app.conf")).unwrap_or_default()
    }

    /// `converge run --published` against `agent`.
    fn start(&mut self, agent: &ConsulAgent) {
        self.start_at(&agent.http_url(), None);
    }

    /// `converge run --published` against the agent at `url`, with
    /// `token` as its ACL token.
    fn start_at(&mut self, url: &str, token: Option<&str>) {
        self.run(url, DEADLINE, |cmd| {
            cmd.envs(token.map(|t| ("CONSUL_HTTP_TOKEN", t)));
        });
    }

    fn status(&self) -> serde_json::Value {
        serde_json::from_str(&http::get(self.listen, "/status").unwrap_or_default())
            .unwrap_or_default()
    }
}

/// Consul, the publisher's repository and three running nodes.
struct Fleet {
    consul: ConsulFleet,
    repo: Workspace,
    nodes: Vec<Node>,
}

impl Fleet {
    fn start() -> Self {
        let consul = ConsulFleet::start(&NODES).expect("consul server and client agents");
        let repo = repository(&consul.server);
        let mut fleet = Self {
            consul,
            repo,
            nodes: Vec::new(),
        };
        for (i, name) in NODES.iter().enumerate() {
            let mut node = Node::new(name);
            node.start(&fleet.consul.clients[i]);
            fleet.nodes.push(node);
        }
        fleet
    }

    /// `converge ARGS` against the server agent, from the repository.
    fn converge(&self, args: &[&str]) -> Output {
        fleet::converge(&self.repo, &self.consul.server, args)
    }

    /// Publishes the manifests with `note`; the revision.
    fn publish(&self, note: &str) -> String {
        self.repo.write("manifests/site.yaml", &site(note));
        self.repo
            .write("templates/app.tera", &format!("{TEMPLATE}# {note}\n"));
        fleet::publish(&self.repo, &self.consul.server, &["--publisher", "ci"])
    }

    fn wait(&self, revision: &str, timeout: &str) -> Output {
        fleet::fleet_wait(&self.repo, &self.consul.server, revision, timeout)
    }

    fn logs(&self) -> String {
        fleet::node_logs(&self.nodes)
    }

    /// The report of `node` and whether its session holds it.
    fn report(&self, node: &str) -> Option<(serde_json::Value, bool)> {
        let (value, session) = fleet::kv(&self.consul.server, &format!("converge/nodes/{node}"))?;
        let live = session.is_some_and(|s| !s.is_empty());
        Some((serde_json::from_slice(&value).ok()?, live))
    }

    /// The session holding `node`'s report, if any.
    fn session(&self, node: &str) -> Option<String> {
        let (_, body) = self
            .consul
            .server
            .get(&format!("/v1/kv/converge/nodes/{node}"))
            .ok()?;
        let entries: serde_json::Value = serde_json::from_str(&body).ok()?;
        entries[0]["Session"].as_str().map(str::to_string)
    }

    /// The index of the last write of `node`'s report.
    fn modify_index(&self, node: &str) -> u64 {
        let (_, body) = self
            .consul
            .server
            .get(&format!("/v1/kv/converge/nodes/{node}"))
            .expect("kv get");
        let entries: serde_json::Value = serde_json::from_str(&body).expect("json");
        entries[0]["ModifyIndex"].as_u64().expect("ModifyIndex")
    }

    fn wait_report(&self, node: &str, what: &str, cond: impl Fn(&serde_json::Value, bool) -> bool) {
        wait::until(DEADLINE, what, || {
            self.report(node).is_some_and(|(r, live)| cond(&r, live))
        })
        .unwrap_or_else(|e| panic!("{e}\nreport: {:?}\n{}", self.report(node), self.logs()));
    }
}

/// `web-1` registered in `consul`, and the publisher's repository with
/// the first manifests and the node's template.
fn repository(consul: &ConsulAgent) -> Workspace {
    consul
        .register_service("web-1", "web", 8081)
        .expect("register");
    let repo = Workspace::custom(&site("first"), "services: {}\n");
    repo.write("templates/app.tera", TEMPLATE);
    repo
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_str(&stdout(out)).unwrap_or_else(|e| panic!("{e}: {}", stdout(out)))
}

#[test]
fn publish_reaches_every_node_a_straggler_is_named_rollback_drift_and_a_dead_node() {
    let mut fleet = Fleet::start();
    let first = fleet.publish("first");
    let out = fleet.wait(&first, "60s");
    assert_exit(&out, 0);
    for n in &fleet.nodes {
        assert!(n.app().starts_with(n.name), "{}", n.app());
        let (report, live) = fleet.report(n.name).expect("report");
        assert!(live, "{report}");
        assert_eq!(
            report["revision"].as_str(),
            Some(first.as_str()),
            "{report}"
        );
        let outcome = report["targets"]["app"]["outcome"].as_str();
        assert!(matches!(outcome, Some("applied" | "unchanged")), "{report}");
        assert!(report["catalog_index"].as_u64() > Some(0), "{report}");
    }
    // Idle, passes go on (--resync 1s) but the report is not rewritten.
    let lb1 = &fleet.nodes[0];
    fleet.wait_report("lb1", "lb1 settled", |r, _| {
        r["targets"]["app"]["outcome"] == "unchanged"
    });
    let index = fleet.modify_index("lb1");
    let passes = lb1.metric("converge_reconciles_total");
    wait::until(DEADLINE, "three more passes", || {
        lb1.metric("converge_reconciles_total") >= passes + 3.0
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lb1.log()));
    assert_eq!(fleet.modify_index("lb1"), index, "no write while idle");

    let out = fleet.converge(&["fleet", "status", "--format", "json"]);
    assert_exit(&out, 0);
    let doc = json(&out);
    assert_eq!(doc["nodes_from"].as_str(), Some("manifests"), "{doc}");
    assert_eq!(doc["nodes"].as_array().map(Vec::len), Some(3), "{doc}");

    // lb3 rejects the next revision: its gate fails, it goes back to the
    // first revision and halts the rollout; `fleet wait` names it, with why.
    std::fs::write(fleet.nodes[2].path("etc/app/REJECT"), "").expect("REJECT");
    let second = fleet.publish("second");
    let out = fleet.wait(&second, "20s");
    assert_exit(&out, 2);
    let text = stdout(&out);
    assert!(
        text.contains("not converged: lb3") && text.contains("app"),
        "{text}"
    );
    fleet.wait_report("lb3", "lb3 reports the rejection, rolled back", |r, _| {
        r["revision"].as_str() == Some(first.as_str())
            && r["desired"].as_str() == Some(second.as_str())
            && r["error"]
                .as_str()
                .is_some_and(|e| e.contains("rolled back to") || e.contains("halted at lb3"))
    });
    let out = fleet.converge(&["fleet", "status"]);
    assert_exit(&out, 2);
    assert!(
        stdout(&out).contains("halted at lb3: revision"),
        "{}",
        stdout(&out)
    );

    // Rollback: every node back on the first revision, lb3 included.
    let out = fleet.converge(&["publish", "--rollback"]);
    assert_exit(&out, 0);
    assert_exit(&fleet.wait(&first, "60s"), 0);
    assert!(
        fleet.nodes[2].app().starts_with("lb3"),
        "{}",
        fleet.nodes[2].app()
    );

    // Drift: a hand edit is put back, reported and counted.
    let lb1 = &fleet.nodes[0];
    let before = lb1.app();
    std::fs::write(lb1.path("etc/app/app.conf"), "edited by hand\n").expect("edit");
    wait::until(DEADLINE, "the edit put back", || lb1.app() == before)
        .unwrap_or_else(|e| panic!("{e}\n{}", lb1.log()));
    fleet.wait_report("lb1", "lb1 reports drift", |r, _| {
        r["targets"]["app"]["last_drift"].is_u64()
    });
    assert!(lb1.metric("converge_drift_corrections_total") >= 1.0);
    let out = fleet.converge(&["fleet", "status"]);
    assert_exit(&out, 0);
    assert!(
        stdout(&out)
            .lines()
            .any(|l| l.starts_with("lb1") && l.ends_with("app")),
        "{}",
        stdout(&out)
    );

    // A killed node's report goes stale once its session expires.
    let mut lb2 = fleet.nodes[1].daemon.take().expect("lb2 runs");
    lb2.signal(nix::sys::signal::Signal::SIGKILL).expect("kill");
    let _ = lb2.wait_exit(DEADLINE);
    fleet.wait_report("lb2", "lb2's report goes stale", |_, live| !live);
    let out = fleet.converge(&["fleet", "status", "--format", "json"]);
    assert_exit(&out, 2);
    let doc = json(&out);
    let lb2 = doc["nodes"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["node"] == "lb2"))
        .cloned();
    assert_eq!(lb2.map(|n| n["alive"].clone()), Some(false.into()), "{doc}");

    // lb1 killed and started again takes its live session back.
    let session = fleet.session("lb1");
    assert!(session.is_some());
    let index = fleet.modify_index("lb1");
    let mut lb1 = fleet.nodes[0].daemon.take().expect("lb1 runs");
    lb1.signal(nix::sys::signal::Signal::SIGKILL).expect("kill");
    let _ = lb1.wait_exit(DEADLINE);
    fleet.nodes[0].start(&fleet.consul.clients[0]);
    wait::until(DEADLINE, "lb1's report written again", || {
        fleet.modify_index("lb1") > index
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", fleet.nodes[0].log()));
    assert_eq!(fleet.session("lb1"), session, "{}", fleet.nodes[0].log());
    fleet.consul.client(1).stop();
}

#[test]
fn a_corrupt_bundle_is_refused_everywhere_and_a_restart_without_consul_keeps_the_revision() {
    let mut fleet = Fleet::start();
    let first = fleet.publish("first");
    assert_exit(&fleet.wait(&first, "60s"), 0);

    // A bundle altered in KV (written by hand: no publisher writes a
    // bundle that does not match its checksum).
    let out = fleet.converge(&["publish", "--format", "json"]);
    let mut desired = json(&out);
    desired["revision"] = "bad0001".into();
    desired["published_at"] = "2026-01-01T00:00:00Z".into();
    desired["publisher"] = "ci".into();
    desired["history"] = serde_json::json!([]);
    fleet
        .consul
        .server
        .kv_put("converge/bundles/bad0001", "not the bundle")
        .expect("corrupt bundle");
    fleet
        .consul
        .server
        .kv_put("converge/desired", &desired.to_string())
        .expect("desired");
    for n in NODES {
        fleet.wait_report(n, "the corrupt bundle reported", |r, live| {
            live && r["desired"] == "bad0001"
                && r["revision"].as_str() == Some(first.as_str())
                && r["converged"] == false
                && r["error"].as_str().is_some_and(|e| e.contains("checksum"))
        });
    }
    let out = fleet.converge(&["fleet", "status"]);
    assert_exit(&out, 2);
    assert!(stdout(&out).contains("checksum"), "{}", stdout(&out));
    for n in &fleet.nodes {
        assert!(n.app().starts_with(n.name), "live files kept: {}", n.app());
    }

    // lb1 restarts while its Consul agent is down: it comes up on the
    // revision on its disk, its files untouched.
    let before = fleet.nodes[0].app();
    fleet.nodes[0].daemon.take().expect("lb1 runs").stop();
    fleet.consul.client(0).stop();
    let agent_url = fleet.consul.clients[0].http_url();
    let lb1 = &mut fleet.nodes[0];
    lb1.start_at(&agent_url, None);
    wait::until(DEADLINE, "lb1 names its revision from disk", || {
        lb1.status()["revision"].as_str() == Some(first.as_str())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", lb1.status(), lb1.log()));
    assert!(
        lb1.status()["published"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot read")),
        "{}",
        lb1.status()
    );
    assert_eq!(lb1.app(), before);
    fleet.consul.client(0).start_again().expect("agent back");
    fleet.wait_report("lb1", "lb1 reports again", |r, live| {
        live && r["revision"].as_str() == Some(first.as_str()) && r["desired"] == "bad0001"
    });
}

/// The node's minimal policy, as the README documents it for node `lb1`
/// whose Consul agent is `converge-test` (the dev agent's name).
const NODE_POLICY: &str = r#"key_prefix "converge/" { policy = "read" }
key "converge/nodes/lb1" { policy = "write" }
key_prefix "converge/rollout/" { policy = "write" }
session "converge-test" { policy = "write" }
service_prefix "" { policy = "read" }
node_prefix "" { policy = "read" }"#;

#[test]
fn the_documented_node_policy_is_enough_and_without_session_rights_no_report_is_written() {
    let consul = ConsulAgent::start_with_acl().expect("consul with ACLs, default deny");
    let repo = repository(&consul);
    let url = consul.http_url();
    let management = consul.management_token().expect("token").to_string();
    let out = repo.converge_env(
        &["publish", "--consul", &url, "--format", "json"],
        &[("CONSUL_HTTP_TOKEN", management.as_str())],
    );
    assert_exit(&out, 0);
    let revision = json(&out)["revision"]
        .as_str()
        .expect("revision")
        .to_string();
    let report = |node: &str| {
        consul
            .get(&format!("/v1/kv/converge/nodes/{node}"))
            .map(|(s, _)| s)
    };

    // Without session rights the node follows, but cannot report.
    let mut lb1 = Node::new("lb1");
    let no_session = consul
        .create_token(&NODE_POLICY.replace(r#"session "converge-test" { policy = "write" }"#, ""))
        .expect("token");
    lb1.start_at(&url, Some(&no_session));
    wait::until(DEADLINE, "lb1 on the published revision", || {
        lb1.status()["revision"].as_str() == Some(revision.as_str())
            && lb1.status()["converged"] == true
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lb1.log()));
    wait::until(DEADLINE, "the refusal logged", || {
        lb1.log().contains("cannot write the node report")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lb1.log()));
    assert_eq!(report("lb1"), Ok(404));
    lb1.daemon.take().expect("runs").stop();

    let token = consul.create_token(NODE_POLICY).expect("token");
    lb1.start_at(&url, Some(&token));
    wait::until(DEADLINE, "lb1's report", || report("lb1") == Ok(200))
        .unwrap_or_else(|e| panic!("{e}\n{}", lb1.log()));
    // Reading the fleet needs read on the prefix, nothing more.
    let reader = consul
        .create_token(r#"key_prefix "converge/" { policy = "read" }"#)
        .expect("token");
    let out = repo.converge_env(
        &[
            "fleet",
            "wait",
            "--consul",
            &url,
            "--timeout",
            "5s",
            "--revision",
            &revision,
        ],
        &[("CONSUL_HTTP_TOKEN", reader.as_str())],
    );
    // lb2 and lb3 never ran: they are the stragglers, lb1 is not.
    assert_exit(&out, 2);
    assert!(
        !stdout(&out).contains("not converged: lb1"),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("not converged: lb2: no report"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn plan_and_apply_once_take_the_published_revision_and_fleet_status_says_when_consul_is_down() {
    let mut consul = ConsulAgent::start().expect("consul agent -dev");
    let repo = repository(&consul);
    let url = consul.http_url();
    let out = repo.converge(&["publish", "--consul", &url, "--format", "json"]);
    assert_exit(&out, 0);
    let revision = json(&out)["revision"]
        .as_str()
        .expect("revision")
        .to_string();
    // The repository's own files change afterwards: --published ignores them.
    repo.write("templates/app.tera", "not what was published\n");

    let root = tempfile::tempdir().expect("root");
    let node = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_converge"));
        cmd.args(args)
            .args(["--published", "--node", "lb2", "--consul", &url])
            .arg("--root")
            .arg(root.path())
            .env_remove("CONSUL_HTTP_ADDR")
            .env_remove("CONSUL_HTTP_TOKEN");
        cmd.output().expect("converge")
    };
    let out = node(&["plan", "--format", "json"]);
    assert_exit(&out, 2);
    let plan = json(&out);
    assert_eq!(plan["revision"].as_str(), Some(revision.as_str()), "{plan}");
    // A plan changes nothing on the node: the revision is not taken.
    let current = root.path().join("var/lib/converge/published/current");
    assert!(!current.exists(), "plan switched the node's revision");
    let out = node(&["apply", "--once"]);
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains(&format!("revision {revision}")),
        "{}",
        stdout(&out)
    );
    let app = std::fs::read_to_string(root.path().join("etc/app/app.conf")).expect("applied");
    assert!(app.starts_with("lb2"), "{app}");
    assert_exit(&node(&["plan"]), 0);

    // No reports yet: nobody converged. Consul gone: it cannot ask.
    let out = repo.converge(&["fleet", "status", "--consul", &url]);
    assert_exit(&out, 2);
    assert!(
        stdout(&out).contains("not converged: lb1: no report"),
        "{}",
        stdout(&out)
    );
    consul.stop();
    let out = repo.converge(&["fleet", "status", "--consul", &url, "--format", "json"]);
    assert_exit(&out, 1);
    let out = node(&["apply", "--once"]);
    assert_exit(&out, 1);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--published"),
        "{:?}",
        out
    );
}
