//! HAProxy finds the Redis primary itself, end to end: a real
//! `redis-server` primary and replica on loopback, a catalog whose tags go
//! stale at the failover (nothing rewrites them, as nothing does when
//! Sentinel fails over), the example's `tcp_check: redis_primary` backend
//! listing every instance, and a real HAProxy on the file converge
//! renders. `SET`/`GET` through HAProxy reach the primary before and after
//! a failover done as Sentinel does it: `REPLICAOF NO ONE` on the replica,
//! `REPLICAOF` the new primary on the old one.

mod common;

use std::time::Duration;

use converge_testkit::redis::{command, Redis};
use converge_testkit::{free_port, wait};

const DEADLINE: Duration = Duration::from_secs(30);

/// One node whose HAProxy sends 127.0.0.1:`port` to the instance of
/// service `redis` that says `role:master`.
fn site(port: u16) -> String {
    format!(
        "nodes:\n  lb1: {{}}\nhaproxy:\n  stats_socket: /run/haproxy/admin.sock\n\
         frontends:\n  redis_in:\n    mode: tcp\n    bind: [\"127.0.0.1:{port}\"]\n    default_backend: redis\n\
         backends:\n  redis:\n    mode: tcp\n    service: redis\n    balance: first\n\
         \x20   tcp_check: redis_primary\n    include_critical: true\n\
         \x20   server_options: [\"inter 200ms\", \"fall 2\", \"rise 1\", \"on-marked-down shutdown-sessions\"]\n\
         targets:\n  haproxy:\n    template: haproxy.cfg.tera\n    destination: /etc/haproxy/haproxy.cfg\n\
         \x20   validate: haproxy\n"
    )
}

/// Waits until a `SET key value` through HAProxy's `port` is accepted
/// (a replica answers `-READONLY`), then reads it back through HAProxy.
fn wait_written(port: u16, key: &str, value: &str) {
    let mut last = String::new();
    wait::until(
        DEADLINE,
        &format!("SET {key} through HAProxy"),
        || match command(port, &["SET", key, value]) {
            Ok(_) => true,
            Err(e) => {
                last = e;
                false
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}; last error: {last}"));
    assert_eq!(command(port, &["GET", key]).as_deref(), Ok(value));
}

#[test]
fn haproxy_routes_redis_writes_to_whichever_instance_is_master() {
    let mut a = Redis::primary().expect("redis primary");
    let mut b = Redis::replica_of(a.port()).expect("redis replica");
    let catalog = format!(
        "services:\n  redis:\n\
         \x20   - {{id: redis-a, node: a, address: 127.0.0.1, port: {}, tags: [primary], health: passing}}\n\
         \x20   - {{id: redis-b, node: b, address: 127.0.0.1, port: {}, tags: [replica], health: passing}}\n",
        a.port(),
        b.port()
    );
    let port = free_port();
    let ws = common::Workspace::custom(&site(port), &catalog);
    common::assert_exit(&ws.converge(&["apply", "--once", "--node", "lb1"]), 0);
    let config = ws.read("root/etc/haproxy/haproxy.cfg");
    assert!(
        config.contains("tcp-check expect string role:master"),
        "{config}"
    );
    let mut haproxy = ws.start_haproxy();

    wait_written(port, "k", "before");
    assert_eq!(command(a.port(), &["GET", "k"]).as_deref(), Ok("before"));

    // The failover Sentinel would make; the catalog's tags now lie.
    b.promote().expect("promote the replica");
    a.follow(b.port()).expect("demote the old primary");
    assert_eq!(a.role().as_deref(), Some("slave"), "{}", a.log());

    wait_written(port, "k", "after");
    assert_eq!(command(b.port(), &["GET", "k"]).as_deref(), Ok("after"));

    haproxy.stop();
    a.stop();
    b.stop();
}
