//! `scripts/demo.sh`, the README's first command, run with the built
//! binary: traffic goes through a real HAProxy, moves off a backend the
//! catalog file marks critical and back, through the runtime API, and the
//! demo stops everything it started.

mod common;

use std::process::Command;

use common::{assert_exit, repo, stdout};

#[test]
fn the_demo_moves_traffic_and_leaves_nothing_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let demo = dir.path().join("demo");
    let out = Command::new("bash")
        .arg(repo().join("scripts/demo.sh"))
        .env("CONVERGE_BIN", env!("CARGO_BIN_EXE_converge"))
        .env("DEMO_DIR", &demo)
        .output()
        .expect("run the demo");
    assert_exit(&out, 0);
    let text = stdout(&out);
    let after = |heading: &str| {
        text.split(heading)
            .nth(1)
            .and_then(|rest| rest.lines().nth(1))
            .unwrap_or_else(|| panic!("no `{heading}` section:\n{text}"))
            .to_string()
    };
    let all = after("backend that answered):");
    for b in ["b1", "b2", "b3"] {
        assert!(all.contains(b), "{all}\n{text}");
    }
    let without = after("turns critical in the catalog file");
    assert!(!without.contains("b2") && without.contains("b1"), "{text}");
    assert!(after("passes again").contains("b2"), "{text}");
    assert!(
        text.contains("applied through the HAProxy runtime API, no reload"),
        "{text}"
    );
    // Everything the demo started is gone: nothing holds its root.
    let left = Command::new("pgrep")
        .args(["-f", demo.to_str().expect("utf8")])
        .output()
        .expect("pgrep");
    assert!(
        left.stdout.is_empty(),
        "still running: {}",
        String::from_utf8_lossy(&left.stdout)
    );
}
