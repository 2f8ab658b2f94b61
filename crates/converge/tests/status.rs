//! `converge status` with some of the programs it asks up and others not:
//! each section says what it found or why it could not, one program's
//! failure hides nothing of what the others say, a program the node does
//! not run is not asked, and the exit code says whether the node serves
//! what it should (0), does not (3) or could not be checked (1).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::pgbouncer::{site, workspace};
use common::{assert_exit, haproxy_site, http_backends, stdout, Workspace};
use converge_testkit::pgbouncer::Pgbouncer;
use converge_testkit::{free_port, wait};

const DEADLINE: Duration = Duration::from_secs(60);

#[test]
fn haproxy_up_no_daemon_shows_the_servers_asks_no_pgbouncer_and_exits_1() {
    let backends = http_backends(2);
    let instances: String = backends
        .iter()
        .enumerate()
        .map(|(i, b)| {
            format!(
                "    - {{id: web-{n}, node: app{n}, address: 127.0.0.1, port: {}, \
                 health: passing}}\n",
                b.port(),
                n = i + 1
            )
        })
        .collect();
    // The site's PgBouncer settings name a console nobody serves.
    let site = haproxy_site(free_port(), "", "haproxy", true)
        + &format!(
            "pgbouncer:\n  listen_port: {}\n  admin_users: [converge]\n",
            free_port()
        );
    let ws = Workspace::custom(&site, &format!("services:\n  web:\n{instances}"));
    // The site has PgBouncer settings but no PgBouncer target.
    assert_exit(&ws.converge(&["apply", "--once", "--node", "lb1"]), 0);
    let _haproxy = ws.start_haproxy();
    // No daemon either.
    let daemon = format!("127.0.0.1:{}", free_port());

    let out = ws.converge(&[
        "status", "--node", "lb1", "--daemon", &daemon, "--format", "json",
    ]);
    // No daemon to ask: the node could not be fully checked.
    assert_exit(&out, 1);
    let doc: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("status json");
    let servers: BTreeSet<&str> = doc["haproxy"]["ok"]
        .as_array()
        .unwrap_or_else(|| panic!("no HAProxy servers: {doc}"))
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(
        servers,
        BTreeSet::from(["web-1:app1", "web-2:app2"]),
        "{doc}"
    );
    // No PgBouncer target on this node: PgBouncer is not asked.
    let absent = doc["pgbouncer"]["absent"]
        .as_str()
        .unwrap_or_else(|| panic!("PgBouncer asked: {doc}"));
    assert!(absent.contains("no PgBouncer target"), "{doc}");
    assert!(doc["daemon"]["error"].is_string(), "{doc}");
    assert!(doc["targets"][0]["sha256"].is_string(), "{doc}");

    let out = ws.converge(&["status", "--node", "lb1", "--daemon", &daemon]);
    assert_exit(&out, 1);
    let text = stdout(&out);
    let line = |server: &str| {
        text.lines()
            .any(|l| l.starts_with("web ") && l.contains(server))
    };
    assert!(line("web-1") && line("web-2"), "{text}");
    assert!(!text.contains("PgBouncer not reachable"), "{text}");
    assert!(text.contains("PGBOUNCER: no PgBouncer target"), "{text}");
    assert!(text.contains("daemon not reachable"), "{text}");
    // Where traffic goes: the frontend's default route to `web`.
    assert!(
        text.lines()
            .any(|l| l.starts_with("http_in ") && l.contains("(default)") && l.ends_with("→ web")),
        "{text}"
    );
}

/// `converge status --node lb1` against `daemon`, JSON and text.
fn status(ws: &Workspace, daemon: u16) -> (Option<i32>, serde_json::Value, String) {
    let daemon = format!("127.0.0.1:{daemon}");
    let args = ["status", "--node", "lb1", "--daemon", &daemon];
    let json = ws.converge(&[&args[..], &["--format", "json"]].concat());
    let doc = serde_json::from_str(&stdout(&json)).expect("status json");
    let text = ws.converge(&args);
    assert_eq!(json.status.code(), text.status.code(), "{}", stdout(&text));
    (text.status.code(), doc, stdout(&text))
}

fn postgres(primary: u16, other: u16) -> String {
    format!(
        "services:\n  postgres:\n\
         \x20   - {{id: pg1, node: db1, address: 127.0.0.1, port: {primary}, tags: [primary], \
         health: passing}}\n\
         \x20   - {{id: pg2, node: db2, address: 127.0.0.1, port: {other}, tags: [replica], \
         health: passing}}\n"
    )
}

/// A PgBouncer-only node (no HAProxy target) with the daemon following a
/// catalog file. PgBouncer is never reloaded (`reload` is unset), so when
/// the catalog moves the primary, the running PgBouncer keeps routing to
/// the old one: status must say so, and exit 3.
#[test]
fn a_routed_primary_that_is_not_consul_s_is_flagged_and_exits_3() {
    let (port, a, b) = (free_port(), free_port(), free_port());
    let ws = workspace(&site(port, ""), &postgres(a, b));
    assert_exit(&ws.converge(&["apply", "--once", "--node", "lb1"]), 0);
    let mut pgbouncer =
        Pgbouncer::start(&ws.root().join("etc/pgbouncer/pgbouncer.ini"), port).expect("pgbouncer");
    let daemon = ws.run_daemon(&[]);
    wait::until(DEADLINE, "the daemon to report app's primary", || {
        daemon.status()["databases"]["app"]["consul_primary"]["port"] == a
    })
    .unwrap_or_else(|e| panic!("{e}: {}\n{}", daemon.status(), ws.daemon_log()));

    let (code, doc, text) = status(&ws, daemon.listen);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.starts_with("node lb1\nserving what it should\n"),
        "{text}"
    );
    // No HAProxy target: no socket error, a one-line note instead.
    assert!(!text.contains("cannot ask HAProxy"), "{text}");
    assert!(
        text.contains("HAPROXY: no HAProxy target on this node"),
        "{text}"
    );
    assert!(doc["haproxy"]["absent"].is_string(), "{doc}");
    let check = &doc["primaries"]["ok"][0];
    assert_eq!(check["routed"], format!("127.0.0.1:{a}"), "{doc}");
    assert_eq!(check["route_source"], "pgbouncer", "{doc}");
    assert_eq!(check["problems"], serde_json::json!([]), "{doc}");

    // Consul moves the primary to pg2 and marks pg1 critical.
    ws.write(
        "catalog.yaml",
        &postgres(b, a)
            .replace("id: pg1", "id: pgX")
            .replace("id: pg2", "id: pg1")
            .replace("id: pgX", "id: pg2")
            .replace(
                "tags: [replica], health: passing",
                "tags: [replica], health: critical",
            ),
    );
    wait::until(DEADLINE, "the daemon to see pg2 as primary", || {
        daemon.status()["databases"]["app"]["consul_primary"]["port"] == b
    })
    .unwrap_or_else(|e| panic!("{e}: {}\n{}", daemon.status(), ws.daemon_log()));

    let (code, doc, text) = status(&ws, daemon.listen);
    assert_eq!(code, Some(3), "{text}");
    let check = &doc["primaries"]["ok"][0];
    assert_eq!(check["routed"], format!("127.0.0.1:{a}"), "{doc}");
    assert_eq!(check["consul_primary"]["port"], b, "{doc}");
    assert_eq!(
        check["problems"],
        serde_json::json!(["routed_not_primary", "routed_down"]),
        "{doc}"
    );
    assert!(text.contains("NOT SERVING WHAT IT SHOULD"), "{text}");
    assert!(text.contains("ROUTED ≠ CONSUL PRIMARY"), "{text}");
    assert!(
        text.contains(&format!("127.0.0.1:{a} (critical)")),
        "{text}"
    );
    pgbouncer.stop();
}
