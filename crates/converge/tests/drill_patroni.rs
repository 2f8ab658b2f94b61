//! `converge drill` for the database scenarios, end to end: two PostgreSQL
//! 15 members under real Patroni with a real `consul agent -dev` as DCS
//! (Patroni registers the cluster itself), `converge run --consul`
//! rendering PgBouncer's database to the primary, and a real PgBouncer.
//! The drill's probe is a write through PgBouncer with `psql`.
//!
//! One cluster for the file: a planned switchover through Patroni's REST
//! API (PASS within a generous budget), then a kill -9 of the new leader's
//! Patroni and PostgreSQL within a budget a failover meets (PASS), and,
//! with the killed member back, of the leader after it against a budget
//! no failover meets (FAIL).
//! `CONVERGE_DRILL_KEEP=DIR` keeps the reports.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::drill::{self, report_of, Reports};
use common::pgbouncer::{PatroniNode, SIGHUP};
use common::{assert_exit, stdout};
use converge_testkit::pgbouncer::Pgbouncer;
use converge_testkit::wait;

/// Generous: Patroni's leader TTL, two cores shared with other suites.
const DEADLINE: Duration = Duration::from_secs(90);

struct Stack {
    node: PatroniNode,
    pgbouncer: Option<Pgbouncer>,
    reports: Reports,
}

impl Stack {
    fn start() -> Self {
        let node = PatroniNode::start(|_| SIGHUP.to_string());
        let port = node.port;
        let mut s = Self {
            node,
            pgbouncer: None,
            reports: Reports::new(),
        };
        let leader = s.leader(None);
        let pg = s.node.cluster.pg_port(&leader).expect("leader port");
        s.node.ws.wait_file(
            "etc/pgbouncer/pgbouncer.ini",
            DEADLINE,
            "app → the leader",
            |c| c.contains(&format!("app = host=127.0.0.1 port={pg} ")),
        );
        let config = s.node.ws.root().join("etc/pgbouncer/pgbouncer.ini");
        s.pgbouncer = Some(Pgbouncer::start(&config, port).expect("pgbouncer"));
        s.wait_writable();
        s
    }

    fn leader(&self, not: Option<&str>) -> String {
        self.node
            .cluster
            .wait_leader(not, DEADLINE)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Waits until a write through PgBouncer succeeds.
    fn wait_writable(&self) {
        let pgb = self.pgbouncer.as_ref().expect("pgbouncer");
        wait::until(DEADLINE, "a write through PgBouncer", || {
            pgb.sql("app", "app", "select txid_current() > 0") == Ok("t".into())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", self.node.ws.daemon_log()));
    }

    /// `kill -9` of `member`'s Patroni and PostgreSQL: its node dies.
    fn kill_command(&self, member: &str) -> String {
        let (patroni, postmaster) = self.node.cluster.pids(member);
        let pids: Vec<String> = [patroni, postmaster]
            .iter()
            .flatten()
            .map(u32::to_string)
            .collect();
        assert_eq!(pids.len(), 2, "both pids of {member}");
        format!("kill -9 {}", pids.join(" "))
    }

    /// A `primary-kill` drill whose fault is [`Stack::kill_command`] of
    /// `member`, against an RTO budget of `budget`.
    fn kill_primary(&self, member: &str, budget: &str) -> std::process::Output {
        let fault = self.kill_command(member);
        self.drill(
            "primary-kill",
            &["--fault-command", &fault, "--rto-budget", budget],
        )
    }

    fn drill(&self, scenario: &str, extra: &[&str]) -> std::process::Output {
        let mut args = vec!["--probe-timeout", "2s", "--timeout", "90s"];
        args.extend_from_slice(extra);
        drill::command(
            &self.node.ws,
            scenario,
            &self.node.consul,
            &self.node.daemon,
            &self.reports,
            &args,
        )
        .output()
        .expect("run converge drill")
    }
}

#[test]
fn a_switchover_passes_and_a_killed_primary_passes_then_fails_a_tiny_budget() {
    let mut s = Stack::start();
    let first = s.leader(None);
    let api = format!(
        "http://127.0.0.1:{}",
        s.node.cluster.api_port(&first).expect("api port")
    );

    let out = s.drill(
        "switchover",
        &["--patroni-switchover", &api, "--rto-budget", "60s"],
    );
    assert_exit(&out, 0);
    let (_, json) = report_of(&stdout(&out));
    let r = &json["report"];
    assert_eq!(r["verdict"], "PASS", "{json:#}");
    assert!(
        r["probe"]
            .as_str()
            .is_some_and(|p| p.contains("select txid_current()")),
        "{json:#}"
    );
    let second = s.leader(Some(&first));
    if r["failure_observed"] == true {
        let kinds: BTreeSet<&str> = r["events"]
            .as_array()
            .expect("events")
            .iter()
            .filter_map(|e| e["kind"].as_str())
            .collect();
        assert!(kinds.contains("reloaded"), "{kinds:?}\n{json:#}");
    }
    s.wait_writable();
    // The old leader is the synchronous standby again (the cluster runs
    // in synchronous mode: Patroni fails over to that member only).
    s.node
        .cluster
        .wait_sync_standby(&first, DEADLINE)
        .unwrap_or_else(|e| panic!("{e}"));

    // The new leader's node dies: Patroni and PostgreSQL, kill -9. A
    // budget a Patroni failover meets: PASS.
    let out = s.kill_primary(&second, "80s");
    assert_exit(&out, 0);
    let (_, json) = report_of(&stdout(&out));
    assert_eq!(json["report"]["verdict"], "PASS", "{json:#}");
    assert_eq!(json["report"]["failure_observed"], true, "{json:#}");
    let third = s.leader(Some(&second));
    s.wait_writable();

    // The killed member back as the sync standby, and the leader killed
    // again against a budget no failover meets: FAIL.
    s.node
        .cluster
        .restart(&second)
        .unwrap_or_else(|e| panic!("{e}"));
    let out = s.kill_primary(&third, "1ms");
    assert_exit(&out, 1);
    let (_, json) = report_of(&stdout(&out));
    assert_eq!(json["report"]["verdict"], "FAIL", "{json:#}");
    assert!(
        json["report"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("over the 1 ms budget")),
        "{json:#}"
    );
    assert_eq!(json["report"]["failure_observed"], true);
    s.leader(Some(&third));
}
