//! A real HAProxy in master-worker mode picks up what `apply` commits: the
//! new server set is live on its runtime API after one apply.

mod common;

use std::time::Duration;

use common::{applied_haproxy_site, assert_exit, stdout, web_catalog};
use converge_testkit::{free_port, wait, Haproxy};

#[test]
fn apply_reloads_a_running_haproxy_and_the_new_servers_are_live() {
    let (p1, p2) = (free_port(), free_port());
    let ws = applied_haproxy_site(&[p1]);
    let root = ws.root();

    std::fs::create_dir_all(root.join("run/haproxy")).expect("run dir");
    let haproxy = Haproxy::start(
        &root.join("etc/haproxy/haproxy.cfg"),
        &root.join("run/haproxy.pid"),
        &root.join("run/haproxy/admin.sock"),
    )
    .expect("haproxy starts on the applied config");
    assert_eq!(haproxy.servers("web").len(), 1);

    ws.write("catalog.yaml", &web_catalog(&[p1, p2]));
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
