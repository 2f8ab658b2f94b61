//! How the built binary writes its output: a reader that goes away early
//! and a program reading `--format json` both get what they expect.

mod common;

use std::process::{Output, Stdio};

use common::{assert_exit, stderr, stdout, Workspace};

/// Runs `converge ARGS` with a stdout pipe whose reading end is closed
/// before it starts, so every write fails with EPIPE (`… | head -0`).
fn with_closed_stdout(ws: &Workspace, args: &[&str]) -> Output {
    let (read, write) = nix::unistd::pipe().expect("pipe");
    drop(read);
    ws.command(args)
        .stdout(Stdio::from(write))
        .stderr(Stdio::piped())
        .output()
        .expect("run converge")
}

#[test]
fn a_closed_stdout_ends_output_quietly_and_keeps_the_exit_code() {
    let ws = Workspace::examples();
    for (args, code) in [
        (&["plan", "--node", "lb1"][..], 2),
        (&["plan", "--node", "lb1", "--format", "json"][..], 2),
        (&["apply", "--once", "--node", "lb1"][..], 0),
        (&["validate"][..], 0),
    ] {
        let out = with_closed_stdout(&ws, args);
        assert_exit(&out, code);
        assert!(
            !stderr(&out).contains("panicked"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    assert!(
        ws.root().join("etc/haproxy/haproxy.cfg").exists(),
        "apply must have committed"
    );
}

/// The manifests with a route to a backend that does not exist.
fn break_manifest(ws: &Workspace) {
    let m = ws
        .read("manifests/http.yaml")
        .replace("default_backend: redis", "default_backend: rediss");
    ws.write("manifests/http.yaml", &m);
}

#[test]
fn an_input_error_under_format_json_is_a_json_document_on_stdout() {
    let ws = Workspace::examples();
    break_manifest(&ws);
    for args in [
        &["plan", "--node", "lb1", "--format", "json"][..],
        &["apply", "--once", "--node", "lb1", "--format", "json"][..],
        &["validate", "--format", "json"][..],
    ] {
        let out = ws.converge(args);
        assert_exit(&out, 1);
        let doc: serde_json::Value = serde_json::from_str(&stdout(&out))
            .unwrap_or_else(|e| panic!("{args:?}: stdout is not JSON ({e}):\n{}", stdout(&out)));
        assert_eq!(doc["error"]["kind"], "manifest", "{args:?}: {doc}");
        let message = doc["error"]["message"].as_str().expect("message");
        assert!(
            message.contains("frontends.redis_in.default_backend"),
            "{args:?}: {message}"
        );
        assert!(stderr(&out).contains("default_backend"), "{}", stderr(&out));
    }
    let out = ws.converge(&["plan", "--node", "lb9", "--format", "json"]);
    assert_exit(&out, 1);
    let doc: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert!(doc["error"]["message"].as_str().is_some(), "{doc}");
}

#[test]
fn a_usage_error_under_format_json_is_a_json_document_on_stdout() {
    let ws = Workspace::examples();
    let out = ws.converge(&["plan", "--format", "json", "--bogus"]);
    assert_exit(&out, 1);
    let doc: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(doc["error"]["kind"], "usage", "{doc}");
    assert!(stderr(&out).contains("--bogus"), "{}", stderr(&out));
}
