//! HAProxy finds the Patroni primary itself, end to end: a real Patroni
//! cluster registering itself in a real Consul (service `postgres`, every
//! member on its own loopback address with the REST API on one shared
//! port, as on real hosts), `converge run --consul` rendering a TCP
//! backend of every member with `option httpchk OPTIONS /primary` and
//! `check port <REST port>`, and a real HAProxy on that file. A `psql`
//! through HAProxy's frontend lands on the primary (not in recovery),
//! before and after a planned switchover: HAProxy's own check moves the
//! traffic, not a catalog tag. One cluster for the whole file.

mod common;

use std::time::Duration;

use converge_testkit::consul::ConsulAgent;
use converge_testkit::patroni::PatroniCluster;
use converge_testkit::postgres::psql;
use converge_testkit::{free_port, wait};

/// Generous: Patroni's leader TTL, two cores shared with other suites.
const DEADLINE: Duration = Duration::from_secs(90);

/// One node whose HAProxy sends 127.0.0.1:`port` to the member of service
/// `postgres` whose REST API on `api` answers `OPTIONS /primary` with 200.
fn site(port: u16, api: u16) -> String {
    format!(
        "nodes:\n  lb1: {{}}\nhaproxy:\n  stats_socket: /run/haproxy/admin.sock\n\
         frontends:\n  pg_in:\n    mode: tcp\n    bind: [\"127.0.0.1:{port}\"]\n    default_backend: pg_primary\n\
         backends:\n  pg_primary:\n    mode: tcp\n    service: postgres\n    balance: first\n\
         \x20   include_critical: true\n\
         \x20   health_check: {{method: OPTIONS, path: /primary, expect_status: 200, port: {api}}}\n\
         \x20   server_options: [\"inter 500ms\", \"fall 2\", \"rise 1\", \"on-marked-down shutdown-sessions\"]\n\
         targets:\n  haproxy:\n    template: haproxy.cfg.tera\n    destination: /etc/haproxy/haproxy.cfg\n\
         \x20   validate: haproxy\n\
         \x20   reload:\n      signal: {{pidfile: /run/haproxy.pid, signal: SIGUSR2}}\n"
    )
}

/// Waits until a new connection through HAProxy's `port` lands on
/// `member` (by the address Patroni registered) and takes writes.
fn wait_routed(cluster: &PatroniCluster, port: u16, member: &str) {
    let host = cluster.host(member).expect("member address");
    let want = format!("{host}|false");
    let mut last = String::new();
    wait::until(DEADLINE, &format!("HAProxy to route to {member}"), || {
        let sql = "select host(inet_server_addr()) || '|' || pg_is_in_recovery()";
        last = psql(port, "app", "app", sql).unwrap_or_else(|e| e);
        last == want
    })
    .unwrap_or_else(|e| panic!("{e}; last answer: {last}\n{}", cluster.logs()));
}

#[test]
fn haproxy_routes_to_the_patroni_primary_by_its_rest_check_through_a_switchover() {
    let consul = ConsulAgent::start().expect("consul agent -dev");
    let mut cluster =
        PatroniCluster::start_on_own_addresses(&consul, "postgres").expect("patroni cluster");
    let members = cluster.members();
    let api = cluster.api_port(&members[0]).expect("REST API port");
    let port = free_port();
    let ws = common::Workspace::custom(&site(port, api), "services: {}\n");
    let daemon = ws.run_daemon_with_consul(&consul, &[]);

    // Every member Patroni registered is a server, checked on its REST API.
    let servers: Vec<String> = members
        .iter()
        .map(|m| {
            let host = cluster.host(m).expect("member address");
            let pg = cluster.pg_port(m).expect("member port");
            format!("{host}:{pg} check port {api} ")
        })
        .collect();
    ws.wait_file(
        "etc/haproxy/haproxy.cfg",
        DEADLINE,
        "every Patroni member rendered with its REST check",
        |c| c.contains("option httpchk OPTIONS /primary") && servers.iter().all(|s| c.contains(s)),
    );
    let mut haproxy = ws.start_haproxy();

    let first = cluster.wait_leader(None, DEADLINE).expect("a leader");
    wait_routed(&cluster, port, &first);

    // A planned switchover: Patroni's REST API moves `/primary`, HAProxy's
    // check follows it, with no change to the rendered file needed.
    let second = members
        .iter()
        .find(|m| **m != first)
        .expect("a second member")
        .clone();
    cluster.switchover(&second).expect("switchover");
    cluster
        .wait_leader(Some(&first), DEADLINE)
        .expect("the new leader");
    wait_routed(&cluster, port, &second);

    haproxy.stop();
    drop(daemon);
    cluster.stop();
}
