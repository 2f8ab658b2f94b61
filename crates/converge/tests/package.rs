//! The Debian package: built by `scripts/package-deb.sh` from the built
//! binary, installed into a scratch root with the real dpkg (never into
//! this machine's own root), run, verified and purged without a trace.

mod common;

use std::path::Path;
use std::process::Command;

use common::repo;

fn dpkg(root: &Path, args: &[&str]) -> std::process::Output {
    Command::new("dpkg")
        .arg(format!("--instdir={}", root.display()))
        .arg(format!(
            "--admindir={}",
            root.join("var/lib/dpkg").display()
        ))
        .args([
            "--force-script-chrootless",
            "--force-not-root",
            "--force-depends",
        ])
        .args(args)
        .output()
        .expect("dpkg")
}

fn files_under(dir: &Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p.display().to_string());
        }
    }
}

#[test]
fn the_package_installs_runs_verifies_and_purges_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let built = Command::new("bash")
        .arg(repo().join("scripts/package-deb.sh"))
        .env("CONVERGE_BIN", env!("CARGO_BIN_EXE_converge"))
        .env("OUT_DIR", dir.path().join("out"))
        .env("DEB_COMPRESS", "none")
        .output()
        .expect("package-deb.sh");
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let deb = String::from_utf8_lossy(&built.stdout).trim().to_string();

    let contents = Command::new("dpkg-deb")
        .args(["--contents", &deb])
        .output()
        .expect("dpkg-deb");
    let listing = String::from_utf8_lossy(&contents.stdout);
    for path in [
        "./usr/bin/converge",
        "./lib/systemd/system/converge.service",
        "./usr/share/man/man1/converge.1.gz",
        "./usr/share/man/man1/converge-plan.1.gz",
        "./usr/share/bash-completion/completions/converge",
        "./usr/share/zsh/vendor-completions/_converge",
        "./usr/share/fish/vendor_completions.d/converge.fish",
        "./etc/converge/repo/templates/haproxy.cfg.tera",
    ] {
        assert!(listing.contains(path), "{path} missing:\n{listing}");
    }

    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("var/lib/dpkg/info")).expect("admindir");
    std::fs::create_dir_all(root.join("var/lib/dpkg/updates")).expect("admindir");
    std::fs::write(root.join("var/lib/dpkg/status"), "").expect("status");
    let installed = dpkg(&root, &["-i", &deb]);
    assert!(
        installed.status.success(),
        "{}",
        String::from_utf8_lossy(&installed.stderr)
    );

    let version = Command::new(root.join("usr/bin/converge"))
        .arg("--version")
        .output()
        .expect("installed converge");
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("converge {}", env!("CARGO_PKG_VERSION"))
    );
    // The installed unit, pointed at the installed binary, with the
    // installed man pages.
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/converge.service"))
        .expect("installed unit")
        .replace(
            "/usr/bin/converge",
            &root.join("usr/bin/converge").display().to_string(),
        );
    let unit_path = dir.path().join("converge.service");
    std::fs::write(&unit_path, unit).expect("unit copy");
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit_path)
        .env("MANPATH", root.join("usr/share/man"))
        .output()
        .expect("systemd-analyze");
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );

    // A leftover state directory goes with the purge.
    std::fs::create_dir_all(root.join("var/lib/converge")).expect("state dir");
    std::fs::write(root.join("var/lib/converge/guard-baseline.json"), "{}").expect("state");
    let purged = dpkg(&root, &["--purge", "converge"]);
    assert!(
        purged.status.success(),
        "{}",
        String::from_utf8_lossy(&purged.stderr)
    );
    let mut left = Vec::new();
    files_under(&root, &mut left);
    left.retain(|p| !p.contains("/var/lib/dpkg/"));
    assert!(left.is_empty(), "left behind: {left:?}");
}
