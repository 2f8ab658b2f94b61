//! `converge status` with some of the programs it asks up and others not:
//! each section says what it found or why it could not, and one program's
//! failure hides nothing of what the others say.

mod common;

use std::collections::BTreeSet;

use common::{assert_exit, haproxy_site, http_backends, stdout, Workspace};
use converge_testkit::free_port;

#[test]
fn haproxy_up_pgbouncer_down_shows_the_servers_and_the_console_error() {
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
    assert_exit(&ws.converge(&["apply", "--once", "--node", "lb1"]), 0);
    let _haproxy = ws.start_haproxy();
    // No daemon either.
    let daemon = format!("127.0.0.1:{}", free_port());

    let out = ws.converge(&[
        "status", "--node", "lb1", "--daemon", &daemon, "--format", "json",
    ]);
    assert_exit(&out, 0);
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
    let console = doc["pgbouncer"]["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no PgBouncer error: {doc}"));
    assert!(console.contains("PgBouncer not reachable"), "{doc}");
    assert!(doc["daemon"]["error"].is_string(), "{doc}");
    assert!(doc["targets"][0]["sha256"].is_string(), "{doc}");

    let out = ws.converge(&["status", "--node", "lb1", "--daemon", &daemon]);
    assert_exit(&out, 0);
    let text = stdout(&out);
    let line = |server: &str| {
        text.lines()
            .any(|l| l.starts_with("web ") && l.contains(server))
    };
    assert!(line("web-1") && line("web-2"), "{text}");
    let pgbouncer = text
        .split_once("PGBOUNCER DATABASE")
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("no PgBouncer section: {text}"));
    assert!(pgbouncer.contains("PgBouncer not reachable"), "{text}");
}
