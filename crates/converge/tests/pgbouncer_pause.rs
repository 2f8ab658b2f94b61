//! While a database's primary is unclear, `converge run` PAUSEs it in a
//! real PgBouncer so clients wait, and RESUMEs it once the primary
//! resolves, when its limit runs out, at a clean shutdown, or — after a
//! SIGKILL — at the next start. Two real PostgreSQL clusters, a real
//! `consul agent -dev`, a real PgBouncer on the file converge renders.
//!
//! The unclear primary is a second `primary` registration: the stand-in
//! for the moment of a Patroni switchover when both members are tagged
//! primary and passing. Patroni cannot be made to hold that state on
//! demand, so the tests register it themselves, in Patroni's tag format.

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::pgbouncer::{site, waiting, workspace, Stack, DEADLINE};
use converge_testkit::{free_port, http, wait};

/// The manifest: both targets reload over the console's unix socket, with
/// no PAUSE of their own (so what resumes `app` is the daemon), pause an
/// unclear primary for at most `limit` seconds, and PgBouncer retries a
/// server login after half a second, as the example manifests set it: a
/// client that logs in while `app` is paused makes PgBouncer start a
/// server login that the pause cuts, which PgBouncer counts as a failed
/// login, and at the default 15 s the pool would wait that long after
/// the RESUME.
fn console_site(port: u16, limit: u64) -> String {
    let reload = format!(
        "    reload:\n      pgbouncer: {{host: /run/postgresql, port: {port}, user: converge, \
         unclear_primary_pause_secs: {limit}}}\n"
    );
    site(port, &reload).replace(
        "  default_pool_size: 5\n",
        "  default_pool_size: 5\n  settings: {server_login_retry: 0.5}\n",
    )
}

/// The daemon's stack on [`console_site`].
fn stack(limit: u64) -> Stack {
    let port = free_port();
    Stack::start_with(&console_site(port, limit), port, &[])
}

/// Whether PgBouncer holds `app` paused (`SHOW DATABASES`).
fn paused(s: &Stack) -> Option<bool> {
    let rows = s.pgbouncer().show("converge", "SHOW DATABASES").ok()?;
    let app = rows.iter().find(|r| r["name"] == "app")?;
    Some(app["paused"] == "1")
}

fn wait_paused(s: &Stack, want: bool, what: &str) {
    wait::until(DEADLINE, what, || paused(s) == Some(want))
        .unwrap_or_else(|e| panic!("{e}\n{}", s.diagnostics()));
}

/// The stand-in fault: B claims primary too, A still does.
fn second_claim(s: &Stack) {
    s.consul
        .register_service_with_ttl("pg-b", "postgres", s.b.port(), &["primary"])
        .expect("B claims primary");
}

/// A query through PgBouncer on its own thread: what it returned (the
/// port of the cluster it ran on) and how long it took.
fn query_in_background(s: &Stack) -> mpsc::Receiver<(Result<String, String>, Duration)> {
    let (sender, answer) = mpsc::channel();
    let port = s.pgbouncer().port();
    std::thread::spawn(move || {
        let started = Instant::now();
        let r = converge_testkit::postgres::psql(port, "app", "app", "select inet_server_port()");
        let _ = sender.send((r, started.elapsed()));
    });
    answer
}

/// A query started while `app` is paused, once PgBouncer holds it.
fn held_query(s: &Stack) -> mpsc::Receiver<(Result<String, String>, Duration)> {
    let answer = query_in_background(s);
    wait::until(DEADLINE, "PgBouncer to hold the query", || {
        waiting(s.pgbouncer(), "app") > 0
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", s.diagnostics()));
    assert!(answer.try_recv().is_err(), "the query did not wait");
    answer
}

fn pause_state(s: &Stack) -> serde_json::Value {
    s.daemon.status()["pauses"]["app"]["state"].clone()
}

#[test]
fn an_unclear_primary_pauses_app_and_the_held_query_runs_on_the_resolved_primary() {
    let s = stack(90);
    assert_eq!(s.landing(), Ok(s.a.port()), "{}", s.diagnostics());

    second_claim(&s);
    wait_paused(&s, true, "converge to PAUSE app");
    assert_eq!(pause_state(&s), "paused", "{}", s.daemon.status());
    assert_eq!(s.daemon.metric("converge_pgbouncer_pauses_total"), 1.0);
    assert_eq!(s.daemon.metric("converge_pgbouncer_paused_databases"), 1.0);
    let text = common::stdout(&s.ws.converge(&[
        "status",
        "--node",
        "lb1",
        "--daemon",
        &format!("127.0.0.1:{}", s.daemon.listen),
    ]));
    assert!(
        text.contains("PAUSED app since") && text.contains("2 instances claim primary"),
        "{text}"
    );
    let held = held_query(&s);

    // Resolved: A gives the tag up, B alone is primary. The pass renders
    // `app` on B, reloads, and only then resumes.
    s.consul
        .register_service_with_ttl("pg-a", "postgres", s.a.port(), &["replica"])
        .expect("A steps down");
    let (answer, waited) = held.recv_timeout(DEADLINE).expect("the held query ends");
    assert_eq!(
        answer,
        Ok(s.b.port().to_string()),
        "waited {waited:?}\n{}",
        s.diagnostics()
    );
    assert_eq!(paused(&s), Some(false));
    wait::until(DEADLINE, "the status to drop the pause", || {
        pause_state(&s).is_null()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", s.daemon.status()));
    assert_eq!(s.daemon.metric("converge_pgbouncer_paused_databases"), 0.0);
    assert!(
        s.ws.daemon_log().contains("PgBouncer database RESUMED"),
        "{}",
        s.diagnostics()
    );
    // A drill's timeline shows both, in order.
    let page = http::get(s.daemon.listen, "/events?since=0").expect("events answer");
    let page: serde_json::Value = serde_json::from_str(&page).expect("events are JSON");
    let pauses: Vec<(&str, &str)> = page["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| Some((e["kind"].as_str()?, e["detail"].as_str()?)))
        .filter(|(k, _)| matches!(*k, "pause" | "resume"))
        .collect();
    assert_eq!(pauses, [("pause", "app"), ("resume", "app")], "{page}");
}

#[test]
fn a_pause_that_outlasts_its_limit_resumes_at_the_last_primary_and_says_so() {
    let s = stack(2);
    second_claim(&s);
    wait_paused(&s, true, "converge to PAUSE app");
    let held = held_query(&s);

    // Nobody resolves it: the limit does, at the last primary.
    let (answer, _) = held.recv_timeout(DEADLINE).expect("the held query ends");
    assert_eq!(answer, Ok(s.a.port().to_string()), "{}", s.diagnostics());
    assert_eq!(paused(&s), Some(false));
    wait::until(DEADLINE, "the status to say the pause timed out", || {
        pause_state(&s) == "timed_out"
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", s.daemon.status()));
    assert_eq!(
        s.daemon.metric("converge_pgbouncer_pause_timeouts_total"),
        1.0
    );
    assert!(
        s.ws.daemon_log().contains("PAUSE TIMED OUT"),
        "{}",
        s.diagnostics()
    );
    // Not paused again while the primary stays unclear.
    assert_eq!(s.landing(), Ok(s.a.port()), "{}", s.diagnostics());
    assert_eq!(s.daemon.metric("converge_pgbouncer_pauses_total"), 1.0);
}

#[test]
fn a_stopped_daemon_resumes_at_sigterm_and_a_killed_one_at_the_next_start() {
    let mut s = stack(90);
    let ledger = s.ws.root().join("var/lib/converge/pgbouncer-paused.json");
    second_claim(&s);
    wait_paused(&s, true, "converge to PAUSE app");
    assert!(
        std::fs::read_to_string(&ledger)
            .unwrap_or_default()
            .contains("\"app\""),
        "the pause is recorded"
    );

    // SIGTERM: the daemon resumes what it paused before it exits.
    let status = s.daemon.child.stop().expect("converge run exits");
    assert!(status.success(), "{status}\n{}", s.diagnostics());
    assert_eq!(paused(&s), Some(false), "{}", s.diagnostics());
    assert!(!std::fs::read_to_string(&ledger)
        .unwrap_or_default()
        .contains("\"app\""));

    // Started again into the same unclear primary, it pauses again; then
    // SIGKILL leaves `app` paused in PgBouncer, and recorded.
    s.daemon = s.ws.run_daemon_with_consul(&s.consul, &[]);
    wait_paused(&s, true, "the new daemon to PAUSE app");
    s.daemon
        .child
        .signal(nix::sys::signal::Signal::SIGKILL)
        .expect("SIGKILL");
    s.daemon.child.wait_exit(DEADLINE).expect("killed");
    assert_eq!(paused(&s), Some(true), "PgBouncer keeps the pause");
    let held = held_query(&s);

    // The primary resolves to A while no converge runs; nothing in the
    // catalog or the file changes for the next one, only the record says
    // `app` is paused.
    s.consul
        .register_service_with_ttl("pg-b", "postgres", s.b.port(), &["replica"])
        .expect("B steps down");
    s.daemon = s.ws.run_daemon_with_consul(&s.consul, &[]);
    let (answer, _) = held.recv_timeout(DEADLINE).expect("the held query ends");
    assert_eq!(answer, Ok(s.a.port().to_string()), "{}", s.diagnostics());
    assert_eq!(paused(&s), Some(false));
    assert!(
        s.ws.daemon_log()
            .contains("a converge that is gone had paused it"),
        "{}",
        s.diagnostics()
    );
}

#[test]
fn plan_says_it_would_pause_and_apply_once_that_it_did_not() {
    let one = "services:\n  postgres:\n\
               \x20   - {id: pg/a, node: db1, address: 127.0.0.1, port: 5432, tags: [primary], health: passing}\n\
               \x20   - {id: pg/b, node: db2, address: 127.0.0.1, port: 5433, tags: [replica], health: passing}\n";
    let both = one.replace("tags: [replica]", "tags: [primary]");
    let ws = workspace(&console_site(6432, 30), one);
    common::assert_exit(&ws.converge(&["apply", "--once", "--node", "lb1"]), 0);

    ws.write("catalog.yaml", &both);
    let out = ws.converge(&["plan", "--node", "lb1"]);
    common::assert_exit(&out, 2);
    let text = common::stdout(&out);
    assert!(
        text.contains(
            "would pause: app (2 instances claim primary: pg_2fa:db1, pg_2fb:db2), at most 30s"
        ),
        "{text}"
    );
    let out = ws.converge(&["plan", "--node", "lb1", "--format", "json"]);
    let doc: serde_json::Value = serde_json::from_str(&common::stdout(&out)).expect("plan json");
    assert_eq!(doc["would_pause"][0]["database"], "app", "{doc}");

    let out = ws.converge(&["apply", "--once", "--node", "lb1"]);
    common::assert_exit(&out, 3);
    let text = common::stdout(&out);
    assert!(
        text.contains("not paused: app (2 instances claim primary"),
        "{text}"
    );
    assert!(
        !ws.root()
            .join("var/lib/converge/pgbouncer-paused.json")
            .exists(),
        "apply --once records no pause"
    );
}
