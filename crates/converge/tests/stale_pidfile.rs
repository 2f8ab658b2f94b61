//! A stale pidfile: its pid now belongs to a stranger that handles the
//! reload signal. `apply` must not signal it, must report the reload as
//! failed and put the previous file back.

mod common;

use common::{applied_haproxy_site, stderr, stdout, web_catalog};
use converge_testkit::free_port;
use converge_testkit::stranger::Stranger;

#[test]
fn a_stranger_holding_the_pidfile_pid_is_not_signalled_and_the_files_roll_back() {
    let (p1, p2) = (free_port(), free_port());
    let ws = applied_haproxy_site(&[p1]);
    let root = ws.root();
    let cfg = root.join("etc/haproxy/haproxy.cfg");
    let before = std::fs::read(&cfg).expect("applied config");

    let mut stranger = Stranger::start(ws.dir.path()).expect("stranger");
    std::fs::create_dir_all(root.join("run")).expect("run dir");
    std::fs::write(
        root.join("run/haproxy.pid"),
        format!("{}\n", stranger.pid()),
    )
    .expect("stale pidfile");

    ws.write("catalog.yaml", &web_catalog(&[p1, p2]));
    let out = ws.converge(&["apply", "--once", "--node", "lb1"]);
    let text = format!("{}\n{}", stdout(&out), stderr(&out));
    assert_ne!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("not haproxy") && text.contains("stale"),
        "{text}"
    );
    assert!(!stdout(&out).contains("reloaded"), "{text}");
    assert_eq!(
        std::fs::read(&cfg).expect("config"),
        before,
        "the previous config was not put back\n{text}"
    );
    assert_eq!(
        stranger.handled().expect("handled"),
        "",
        "the stranger was signalled"
    );
}
