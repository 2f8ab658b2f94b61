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

use converge_testkit::redis::{command, command_as, Redis};
use converge_testkit::{free_port, wait};

const DEADLINE: Duration = Duration::from_secs(30);

/// One node whose HAProxy sends 127.0.0.1:`port` to the instance of
/// service `redis` that says `role:master`.
fn site(port: u16) -> String {
    site_with(port, "")
}

/// [`site`] with `extra` YAML lines in the `redis` backend.
fn site_with(port: u16, extra: &str) -> String {
    format!(
        "nodes:\n  lb1: {{}}\nhaproxy:\n  stats_socket: /run/haproxy/admin.sock\n\
         frontends:\n  redis_in:\n    mode: tcp\n    bind: [\"127.0.0.1:{port}\"]\n    default_backend: redis\n\
         backends:\n  redis:\n    mode: tcp\n    service: redis\n    balance: first\n\
         \x20   tcp_check: redis_primary\n    include_critical: true\n{extra}\
         \x20   server_options: [\"inter 200ms\", \"fall 2\", \"rise 1\", \"on-marked-down shutdown-sessions\"]\n\
         targets:\n  haproxy:\n    template: haproxy.cfg.tera\n    destination: /etc/haproxy/haproxy.cfg\n\
         \x20   validate: haproxy\n"
    )
}

/// Waits until a `SET key value` through HAProxy's `port` is accepted
/// (a replica answers `-READONLY`), then reads it back through HAProxy.
fn wait_written(port: u16, key: &str, value: &str) {
    wait_written_as(port, None, key, value);
}

/// [`wait_written`] by a client that sends `AUTH password` first.
fn wait_written_as(port: u16, password: Option<&str>, key: &str, value: &str) {
    let mut last = String::new();
    wait::until(
        DEADLINE,
        &format!("SET {key} through HAProxy"),
        || match command_as(port, password, &["SET", key, value]) {
            Ok(_) => true,
            Err(e) => {
                last = e;
                false
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}; last error: {last}"));
    assert_eq!(
        command_as(port, password, &["GET", key]).as_deref(),
        Ok(value)
    );
}

#[test]
fn haproxy_routes_redis_writes_to_whichever_instance_is_master() {
    let mut a = Redis::primary().expect("redis primary");
    let mut b = Redis::replica_of(a.port()).expect("redis replica");
    let catalog = catalog(a.port(), b.port());
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

#[test]
fn a_redis_with_requirepass_is_checked_with_auth_and_the_password_never_shows() {
    const PASSWORD: &str = "s3cret-Check_pw";
    let mut a = Redis::primary_with_password(PASSWORD).expect("redis primary");
    let mut b = Redis::replica_with_password(a.port(), PASSWORD).expect("redis replica");
    let catalog = catalog(a.port(), b.port());
    let port = free_port();
    let site = site_with(port, "    tcp_check_password: {file: secrets/redis}\n");
    let ws = common::Workspace::custom(&site, &catalog);
    ws.write("manifests/secrets/redis", &format!("{PASSWORD}\n"));

    // Neither the plan nor the apply prints it; the file HAProxy reads has it.
    let plan = ws.converge(&["plan", "--node", "lb1"]);
    let apply = ws.converge(&["apply", "--once", "--node", "lb1"]);
    common::assert_exit(&apply, 0);
    for out in [&plan, &apply] {
        let text = format!("{}{}", common::stdout(out), common::stderr(out));
        assert!(!text.contains(PASSWORD), "{text}");
    }
    assert!(
        common::stdout(&plan).contains("tcp-check send AUTH"),
        "{}",
        common::stdout(&plan)
    );
    let config = ws.read("root/etc/haproxy/haproxy.cfg");
    assert!(
        config.contains(&format!("tcp-check send AUTH\\ {PASSWORD}\\r\\n")),
        "{config}"
    );
    let mut haproxy = ws.start_haproxy();

    // Only the check's AUTH lets HAProxy see `role:master`: without it,
    // every server answers `-NOAUTH` and is down.
    wait_written_as(port, Some(PASSWORD), "k", "before");
    b.promote().expect("promote the replica");
    a.follow(b.port()).expect("demote the old primary");
    wait_written_as(port, Some(PASSWORD), "k", "after");
    assert_eq!(b.command(&["GET", "k"]).as_deref(), Ok("after"));

    // A rotation: the diff shows the line changed, never either value.
    ws.write("manifests/secrets/redis", "n3w-Check_pw\n");
    let plan = ws.converge(&["plan", "--node", "lb1"]);
    let text = format!("{}{}", common::stdout(&plan), common::stderr(&plan));
    assert!(
        !text.contains(PASSWORD) && !text.contains("n3w-Check_pw"),
        "{text}"
    );
    assert!(text.contains("-    tcp-check send AUTH"), "{text}");

    // A password HAProxy's line cannot carry is refused where it is set,
    // without showing it.
    ws.write("manifests/secrets/redis", "has space\n");
    let plan = ws.converge(&["plan", "--node", "lb1"]);
    let text = format!("{}{}", common::stdout(&plan), common::stderr(&plan));
    assert!(
        text.contains("backends.redis.tcp_check_password") && !text.contains("has space"),
        "{text}"
    );
    assert_ne!(plan.status.code(), Some(0), "{text}");

    haproxy.stop();
    a.stop();
    b.stop();
}

/// The catalog file: `a` on `a_port` tagged primary, `b` on `b_port` a
/// replica (the tag is what the check makes irrelevant).
fn catalog(a_port: u16, b_port: u16) -> String {
    format!(
        "services:\n  redis:\n\
         \x20   - {{id: redis-a, node: a, address: 127.0.0.1, port: {a_port}, tags: [primary], health: passing}}\n\
         \x20   - {{id: redis-b, node: b, address: 127.0.0.1, port: {b_port}, tags: [replica], health: passing}}\n"
    )
}
