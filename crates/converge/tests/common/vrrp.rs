//! What the VRRP tests share (`keepalived_vip.rs`, `drill_vip.rs`,
//! `rollout_vip.rs`): the segment of two LB nodes in namespaces, what
//! runs in each (keepalived, a stand-in HTTP server), and the manifest's
//! VIP, frontend and keepalived target. Written once so that every test
//! sets up its pair the same way, and a change reaches them all.

use std::path::Path;
use std::process::Stdio;

use converge_testkit::keepalived::Keepalived;
use converge_testkit::netns::{Lan, Netns};
use converge_testkit::Child;

/// The name of each LB node's interface on the test segment.
pub const IFACE: &str = "vrrp0";

/// The test segment: a namespace for each of two LB nodes and one for the
/// client, joined by a bridge through their [`IFACE`] interfaces.
pub fn segment() -> Lan {
    Lan::new(IFACE, 2).expect("namespaces, veth pairs and a bridge (needs root)")
}

/// Starts keepalived in `ns` on the config the keepalived target rendered
/// under node `name`'s `root`, writing its pid where the target's reload
/// looks for it.
pub fn start_keepalived(ns: &Netns, root: &Path, name: &str) -> Keepalived {
    Keepalived::start(
        ns,
        &root.join("etc/keepalived/keepalived.conf"),
        &root.join("run/keepalived.pid"),
    )
    .unwrap_or_else(|e| panic!("keepalived on {name}: {e}"))
}

/// Python's `http.server` in node `name`'s namespace `ns`, serving `dir`
/// on `port` (of `bind`, or of every address), as the node's stand-in for
/// what it balances; its output is discarded.
pub fn http_server(ns: &Netns, name: &str, port: u16, bind: Option<&str>, dir: &Path) -> Child {
    let mut cmd = ns.command("python3");
    cmd.args(["-m", "http.server", &port.to_string()]);
    if let Some(bind) = bind {
        cmd.args(["--bind", bind]);
    }
    cmd.arg("--directory")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Child::spawn(format!("http.server on {name}"), &mut cmd).expect("http.server")
}

/// The manifest's `frontends:` and `backends:` sections for a VIP test:
/// frontend `http_in` on `port` of every address (the VIP too) sending
/// everything to backend `web` of service `web`. A test appends its own
/// further lines of `web` right after it.
pub fn web_frontend(port: u16) -> String {
    format!(
        "frontends:
  http_in:
    bind: [\":{port}\"]
    default_backend: web
backends:
  web:
    service: web
"
    )
}

/// The keepalived target as an entry of a manifest's `targets:` map (it
/// ends the manifest in each test): rendered mode 0640 since it may hold
/// the VRRP password, validated with `keepalived -t`, reloaded with SIGHUP
/// to the pid in its pidfile, and only on nodes that name their VRRP
/// interface.
pub const KEEPALIVED_TARGET: &str = "  keepalived:
    template: keepalived.conf.tera
    destination: /etc/keepalived/keepalived.conf
    mode: \"0640\"
    validate: keepalived
    reload:
      signal: {pidfile: /run/keepalived.pid, signal: SIGHUP}
    requires_vars: [vrrp_interface]
";

/// The manifest's `vips:` section: VIP `edge`, the segment's host 100,
/// on virtual router `router_id` (each test its own) with lb1 and lb2 at
/// priorities `lb1` and `lb2`, advertised every second by unicast to the
/// peer. A test appends its own further lines of `edge` (auth, tracking)
/// right after it.
pub fn edge_vip(net: &Lan, router_id: u8, lb1: u8, lb2: u8) -> String {
    format!(
        "vips:
  edge:
    virtual_router_id: {router_id}
    interface: eth0
    addresses: [{vip}/24]
    priorities: {{lb1: {lb1}, lb2: {lb2}}}
    advert_int: 1
    unicast: true
",
        vip = net.host(100),
    )
}
