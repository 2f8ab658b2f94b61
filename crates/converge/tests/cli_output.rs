//! How the built binary writes its output: a reader that goes away early
//! does not change what converge does or says in its exit code.

mod common;

use std::process::{Output, Stdio};

use common::{assert_exit, stderr, Workspace};

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
