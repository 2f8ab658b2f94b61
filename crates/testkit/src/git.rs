//! Git in tests: the revision tests build work trees with the real `git`
//! program, as converge asks it.

use std::path::Path;
use std::process::Command;

/// `git ARGS` in `dir`, with an identity given on the command line (no
/// config file is written, the system's is ignored); its trimmed output.
/// Panics with Git's error on failure.
pub fn run(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=converge test"])
        .args(["-c", "user.email=test@example.invalid"])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
