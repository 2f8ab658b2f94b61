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

use common::drill::{report_of, Reports};
use common::pgbouncer::{site, workspace, SIGHUP};
use common::{assert_exit, stdout, RunningDaemon, Workspace};
use converge_testkit::consul::ConsulAgent;
use converge_testkit::patroni::PatroniCluster;
use converge_testkit::pgbouncer::Pgbouncer;
use converge_testkit::{free_port, wait};

/// Generous: Patroni's leader TTL, two cores shared with other suites.
const DEADLINE: Duration = Duration::from_secs(90);

struct Stack {
    consul: ConsulAgent,
    cluster: PatroniCluster,
    ws: Workspace,
    daemon: RunningDaemon,
    pgbouncer: Option<Pgbouncer>,
    reports: Reports,
}

impl Stack {
    fn start() -> Self {
        let consul = ConsulAgent::start().expect("consul agent -dev");
        let cluster = PatroniCluster::start(&consul, "postgres").expect("patroni cluster");
        let port = free_port();
        let site = site(port, SIGHUP).replace(
            "  default_pool_size: 5\n",
            "  default_pool_size: 5\n  settings: {server_login_retry: 0.5, \
             server_connect_timeout: 3, server_fast_close: true}\n",
        );
        let ws = workspace(&site, "services: {}\n");
        let daemon = ws.run_daemon_with_consul(&consul, &[]);
        let mut s = Self {
            consul,
            cluster,
            ws,
            daemon,
            pgbouncer: None,
            reports: Reports::new(),
        };
        let leader = s.leader(None);
        let pg = s.cluster.pg_port(&leader).expect("leader port");
        s.ws.wait_file(
            "etc/pgbouncer/pgbouncer.ini",
            DEADLINE,
            "app → the leader",
            |c| c.contains(&format!("app = host=127.0.0.1 port={pg} ")),
        );
        let config = s.ws.root().join("etc/pgbouncer/pgbouncer.ini");
        s.pgbouncer = Some(Pgbouncer::start(&config, port).expect("pgbouncer"));
        s.wait_writable();
        s
    }

    fn leader(&self, not: Option<&str>) -> String {
        self.cluster
            .wait_leader(not, DEADLINE)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Waits until a write through PgBouncer succeeds.
    fn wait_writable(&self) {
        let pgb = self.pgbouncer.as_ref().expect("pgbouncer");
        wait::until(DEADLINE, "a write through PgBouncer", || {
            pgb.sql("app", "app", "select txid_current() > 0") == Ok("t".into())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", self.ws.daemon_log()));
    }

    /// `kill -9` of `member`'s Patroni and PostgreSQL: its node dies.
    fn kill_command(&self, member: &str) -> String {
        let (patroni, postmaster) = self.cluster.pids(member);
        let pids: Vec<String> = [patroni, postmaster]
            .iter()
            .flatten()
            .map(u32::to_string)
            .collect();
        assert_eq!(pids.len(), 2, "both pids of {member}");
        format!("kill -9 {}", pids.join(" "))
    }

    fn drill(&self, scenario: &str, extra: &[&str]) -> std::process::Output {
        let consul = self.consul.http_url();
        let daemon = format!("127.0.0.1:{}", self.daemon.listen);
        let reports = self.reports.path().to_string_lossy().into_owned();
        let mut args = vec![
            "drill",
            "--scenario",
            scenario,
            "--consul",
            &consul,
            "--daemon",
            &daemon,
            "--report-dir",
            &reports,
            "--probe-timeout",
            "2s",
            "--timeout",
            "90s",
        ];
        args.extend_from_slice(extra);
        self.ws.command(&args).output().expect("run converge drill")
    }
}

#[test]
fn a_switchover_passes_and_a_killed_primary_passes_then_fails_a_tiny_budget() {
    let mut s = Stack::start();
    let first = s.leader(None);
    let api = format!(
        "http://127.0.0.1:{}",
        s.cluster.api_port(&first).expect("api port")
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
    s.cluster
        .wait_sync_standby(&first, DEADLINE)
        .unwrap_or_else(|e| panic!("{e}"));

    // The new leader's node dies: Patroni and PostgreSQL, kill -9. A
    // budget a Patroni failover meets: PASS.
    let out = s.drill(
        "primary-kill",
        &[
            "--fault-command",
            &s.kill_command(&second),
            "--rto-budget",
            "80s",
        ],
    );
    assert_exit(&out, 0);
    let (_, json) = report_of(&stdout(&out));
    assert_eq!(json["report"]["verdict"], "PASS", "{json:#}");
    assert_eq!(json["report"]["failure_observed"], true, "{json:#}");
    let third = s.leader(Some(&second));
    s.wait_writable();

    // The killed member back as the sync standby, and the leader killed
    // again against a budget no failover meets: FAIL.
    s.cluster.restart(&second).unwrap_or_else(|e| panic!("{e}"));
    let out = s.drill(
        "primary-kill",
        &[
            "--fault-command",
            &s.kill_command(&third),
            "--rto-budget",
            "1ms",
        ],
    );
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
