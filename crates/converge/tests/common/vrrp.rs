//! What the VRRP tests' manifests share (`keepalived_vip.rs`,
//! `drill_vip.rs`, `rollout_vip.rs`): the VIP on the test segment and the
//! keepalived target, written once so that every test renders, validates
//! and reloads keepalived the same way, and a change to either reaches
//! them all.

use converge_testkit::netns::Lan;

/// The name of each LB node's interface on the test segment.
pub const IFACE: &str = "vrrp0";

/// The test segment: a namespace for each of two LB nodes and one for the
/// client, joined by a bridge through their [`IFACE`] interfaces.
pub fn segment() -> Lan {
    Lan::new(IFACE, 2).expect("namespaces, veth pairs and a bridge (needs root)")
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
