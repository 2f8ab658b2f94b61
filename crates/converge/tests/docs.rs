//! Shell completions and man pages come from the CLI definition itself.

mod common;

use std::process::Command;

use common::{assert_exit, stdout};

fn converge(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_converge"))
        .args(args)
        .output()
        .expect("run converge")
}

#[test]
fn completion_scripts_parse_in_their_shell_and_know_every_command() {
    let out = converge(&["completions", "bash"]);
    assert_exit(&out, 0);
    let script = stdout(&out);
    for command in ["plan", "apply", "run", "status", "validate", "--release"] {
        assert!(script.contains(command), "bash completion lacks {command}");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("converge.bash");
    std::fs::write(&file, &script).expect("write");
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(&file)
        .output()
        .expect("bash -n");
    assert!(
        syntax.status.success(),
        "{}",
        String::from_utf8_lossy(&syntax.stderr)
    );
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let out = converge(&["completions", shell]);
        assert_exit(&out, 0);
        assert!(stdout(&out).contains("plan"), "{shell}");
    }
    assert_exit(&converge(&["completions", "tcsh"]), 1);
}

#[test]
fn man_pages_are_written_for_the_program_and_every_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_dir = dir.path().join("man1");
    let out = converge(&["man", "--out-dir", out_dir.to_str().expect("utf8")]);
    assert_exit(&out, 0);
    for page in [
        "converge",
        "converge-plan",
        "converge-apply",
        "converge-run",
        "converge-status",
        "converge-validate",
    ] {
        let text = std::fs::read_to_string(out_dir.join(format!("{page}.1")))
            .unwrap_or_else(|e| panic!("{page}.1: {e}"));
        assert!(text.contains(&format!(".TH {page} 1")), "{page}.1:\n{text}");
    }
    let plan = std::fs::read_to_string(out_dir.join("converge-plan.1")).expect("plan page");
    assert!(plan.contains("release"), "{plan}");
}
