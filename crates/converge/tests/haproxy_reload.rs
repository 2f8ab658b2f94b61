//! A real HAProxy in master-worker mode picks up what `apply` commits: the
//! new server set is live on its runtime API after one apply.

mod common;

use std::time::Duration;

use common::{assert_exit, haproxy_site, stdout, Workspace};
use converge_testkit::{free_port, wait, Haproxy};

fn catalog(ports: &[u16]) -> String {
    let mut s = String::from("services:\n  web:\n");
    for (i, p) in ports.iter().enumerate() {
        s.push_str(&format!(
            "    - {{id: web-{i}, node: app{i}, address: 127.0.0.1, port: {p}, health: passing}}\n"
        ));
    }
    s
}

#[test]
fn apply_reloads_a_running_haproxy_and_the_new_servers_are_live() {
    let (p1, p2) = (free_port(), free_port());
    let ws = Workspace::custom(
        &haproxy_site(free_port(), "", "haproxy", true),
        &catalog(&[p1]),
    );
    let root = ws.root();

    // First apply: nothing runs yet, so nothing needs a reload.
    let out = ws.converge(&["apply", "--once", "--node", "lb1"]);
    assert_exit(&out, 0);
    assert!(stdout(&out).contains("not running"), "{}", stdout(&out));

    std::fs::create_dir_all(root.join("run/haproxy")).expect("run dir");
    let haproxy = Haproxy::start(
        &root.join("etc/haproxy/haproxy.cfg"),
        &root.join("run/haproxy.pid"),
        &root.join("run/haproxy/admin.sock"),
    )
    .expect("haproxy starts on the applied config");
    assert_eq!(haproxy.servers("web").len(), 1);

    ws.write("catalog.yaml", &catalog(&[p1, p2]));
    let out = ws.converge(&["apply", "--once", "--node", "lb1"]);
    assert_exit(&out, 0);
    assert!(stdout(&out).contains("reloaded"), "{}", stdout(&out));

    wait::until(
        Duration::from_secs(10),
        "haproxy to serve web-0 and web-1",
        || {
            let servers = haproxy.servers("web");
            let names: Vec<&str> = servers.iter().map(|(n, _)| n.as_str()).collect();
            names == ["web-0:app0", "web-1:app1"]
        },
    )
    .unwrap_or_else(|e| panic!("{e}\nhaproxy log:\n{}", haproxy.log()));
}
