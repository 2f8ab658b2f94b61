//! The shipped systemd unit is valid and hardened: `systemd-analyze verify`
//! accepts it (with the built binary and its man pages where the package
//! puts them), and `systemd-analyze security` rates it below 5.0.
//!
//! This machine does not run systemd as PID 1, so the validators are not
//! exercised under the unit's restrictions here; the unit's comments say
//! which privilege each of them needs.

mod common;

use std::process::Command;

use common::repo;

/// The unit with `ExecStart` pointing at the built binary.
fn unit_in(dir: &std::path::Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(repo().join("examples/converge.service")).expect("unit");
    assert!(text.contains("ExecStart=/usr/bin/converge run"), "{text}");
    let built = text.replace("/usr/bin/converge", env!("CARGO_BIN_EXE_converge"));
    let path = dir.join("converge.service");
    std::fs::write(&path, built).expect("write unit");
    path
}

#[test]
fn the_unit_verifies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = unit_in(dir.path());
    // `Documentation=man:converge(1)`: the pages the package installs.
    let man = dir.path().join("man");
    let pages = Command::new(env!("CARGO_BIN_EXE_converge"))
        .args(["man", "--out-dir"])
        .arg(man.join("man1"))
        .status()
        .expect("converge man");
    assert!(pages.success());
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .env("MANPATH", &man)
        .output()
        .expect("systemd-analyze");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_unit_is_rated_ok_by_systemd_analyze_security() {
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = unit_in(dir.path());
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze");
    let text = String::from_utf8_lossy(&out.stdout);
    let exposure: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for converge.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    assert!(exposure < 5.0, "exposure {exposure}:\n{text}");
}
