//! Extra config lines from the manifests (`haproxy.global_extra`,
//! `defaults_extra`, a backend's `extra`, `keepalived.global_defs`) reach
//! the rendered files and the real programs check them; a line that would
//! break out of itself is refused at its manifest line.

mod common;

use common::{assert_exit, stdout, Workspace};

/// The example repository with extra lines in every place that takes them.
fn with_extras(global: &str) -> Workspace {
    let ws = Workspace::examples();
    let http = ws.read("manifests/http.yaml").replacen(
        "  httpclient_ssl_verify: none\n",
        &format!(
            "  httpclient_ssl_verify: none\n  global_extra: [\"{global}\"]\n  \
             defaults_extra: [\"timeout http-request 7s\"]\n"
        ),
        1,
    );
    let http = http.replacen(
        "    service: web\n",
        "    service: web\n    extra: [\"http-request set-header X-Converge lb\"]\n",
        1,
    );
    ws.write("manifests/http.yaml", &http);
    ws.write(
        "manifests/keepalived.yaml",
        "keepalived:\n  global_defs: [\"vrrp_garp_master_delay 2\"]\n",
    );
    ws
}

#[test]
fn extra_lines_are_rendered_and_accepted_by_the_real_programs() {
    let ws = with_extras("tune.bufsize 32768");
    let out = ws.converge(&["validate", "--only", "lb1"]);
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("ok    lb1 haproxy"),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("ok    lb1 keepalived"),
        "{}",
        stdout(&out)
    );
    let out = ws.converge(&["apply", "--once", "--node", "lb1"]);
    assert_exit(&out, 0);
    let cfg = std::fs::read_to_string(ws.root().join("etc/haproxy/haproxy.cfg")).expect("cfg");
    let global = cfg.split("\ndefaults\n").next().expect("global");
    assert!(global.contains("\n    tune.bufsize 32768\n"), "{cfg}");
    let defaults = cfg.split("\ndefaults\n").nth(1).expect("defaults");
    assert!(
        defaults.contains("\n    timeout http-request 7s\n"),
        "{cfg}"
    );
    let web = cfg.split("\nbackend web\n").nth(1).expect("backend web");
    assert!(
        web.contains("\n    http-request set-header X-Converge lb\n"),
        "{cfg}"
    );
    let ka = std::fs::read_to_string(ws.root().join("etc/keepalived/keepalived.conf")).expect("ka");
    let defs = ka
        .split("global_defs {")
        .nth(1)
        .and_then(|r| r.split('}').next())
        .expect("defs");
    assert!(defs.contains("\n    vrrp_garp_master_delay 2\n"), "{ka}");
}

#[test]
fn a_line_the_program_refuses_is_a_rejected_candidate_and_the_live_file_stays() {
    let ws = Workspace::examples();
    assert_exit(&ws.converge(&["apply", "--once", "--node", "lb1"]), 0);
    let live = ws.tree();
    let bad = with_extras("no-such-keyword 1");
    // Same root: copy the live files into the new workspace's root.
    for (path, bytes) in &live {
        let rel = path.strip_prefix(ws.root()).expect("under root");
        let dest = bad.root().join(rel);
        std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
        std::fs::write(dest, bytes).expect("copy");
    }
    let before = std::fs::read(bad.root().join("etc/haproxy/haproxy.cfg")).expect("live");
    let out = bad.converge(&["apply", "--once", "--node", "lb1"]);
    assert_exit(&out, 1);
    assert!(stdout(&out).contains("no-such-keyword"), "{}", stdout(&out));
    let after = std::fs::read(bad.root().join("etc/haproxy/haproxy.cfg")).expect("live");
    assert_eq!(after, before, "the live file is untouched");
}

#[test]
fn a_line_with_a_line_break_is_refused_where_it_was_written() {
    let ws = Workspace::examples();
    ws.write(
        "manifests/keepalived.yaml",
        "keepalived:\n  global_defs:\n    - \"x\\n}\\nvrrp_instance evil {\"\n",
    );
    let out = ws.converge(&["plan", "--node", "lb1"]);
    assert_exit(&out, 1);
    let err = common::stderr(&out);
    assert!(err.contains("keepalived.yaml:3:"), "{err}");
    assert!(err.contains("keepalived.global_defs[0]"), "{err}");
    assert!(err.contains("one line"), "{err}");
}
