//! A signal reload against a real HAProxy in master-worker mode: apply a
//! config with a changed backend and watch the runtime API serve it.

use std::path::PathBuf;
use std::time::Duration;

use converge_apply::{apply, ApplyOptions, Outcome, ReloadOutcome};
use converge_testkit::haproxy::minimal_config;
use converge_testkit::{free_port, wait, Haproxy};
use tempfile::TempDir;

mod common;
use common::set;

/// HAProxy started under a fresh root in the layout [`set`] writes to:
/// the root, its `run` directory (pidfile and stats socket), the frontend
/// port and the running HAProxy with backend `be` holding `servers`.
fn start(servers: &[(&str, u16)]) -> (TempDir, PathBuf, u16, Haproxy) {
    let root = tempfile::tempdir().expect("tempdir");
    let run = root.path().join("run");
    let etc = root.path().join("etc/haproxy");
    std::fs::create_dir_all(&run).expect("mkdir run");
    std::fs::create_dir_all(&etc).expect("mkdir etc");
    let port = free_port();
    let cfg = etc.join("haproxy.cfg");
    std::fs::write(&cfg, minimal_config(&run, port, servers)).expect("write");
    let h = Haproxy::start(&cfg, &run.join("haproxy.pid"), &run.join("admin.sock"))
        .expect("haproxy starts");
    (root, run, port, h)
}

/// `show stat` from whichever worker answers, if any does right now.
fn stat(h: &Haproxy) -> String {
    h.try_command("show stat").unwrap_or_default()
}

#[test]
fn a_changed_backend_is_live_after_apply_and_an_unchanged_one_is_not_reloaded() {
    let (root, run, port, h) = start(&[("a", 9001), ("b", 9002)]);
    let master = h.master_pid();
    let first_worker = h.worker_pid().expect("worker");

    let desired = set(root.path(), minimal_config(&run, port, &[("c", 9003)]));
    let report = apply(&desired, &ApplyOptions::default()).expect("apply");
    assert!(report.ok(), "{report}");
    assert_eq!(
        report.bundle("haproxy").expect("bundle").outcome,
        Outcome::Applied {
            reload: ReloadOutcome::Reloaded
        },
        "{report}"
    );
    wait::until(
        Duration::from_secs(10),
        "haproxy to serve backend be with only server c",
        || {
            let s = stat(&h);
            s.contains("be,c,") && !s.contains("be,a,") && !s.contains("be,b,")
        },
    )
    .unwrap_or_else(|e| panic!("{e}; haproxy log:\n{}", h.log()));
    assert_eq!(h.master_pid(), master);
    let second_worker = h.worker_pid().expect("worker");
    assert_ne!(second_worker, first_worker);

    // Same bytes again: no write and no SIGUSR2, so the worker stays.
    let report = apply(&desired, &ApplyOptions::default()).expect("apply");
    assert_eq!(
        report.bundle("haproxy").expect("bundle").outcome,
        Outcome::Unchanged
    );
    assert_eq!(h.worker_pid(), Some(second_worker));
    assert!(!h.log().contains("Loading failure"), "{}", h.log());
}

#[test]
fn two_applies_in_quick_succession_both_reach_the_master() {
    let (root, run, port, h) = start(&[("a", 9001)]);
    let master = h.master_pid();
    let count = |needle: &str| h.log().matches(needle).count();
    // No settle window, so the second apply signals while the master is
    // still re-executing for the first, unless the reloader waits until
    // the new image handles SIGUSR2 again.
    let opts = ApplyOptions {
        signal_settle: Duration::ZERO,
        ..ApplyOptions::default()
    };
    for (i, (name, p)) in [("b", 9002), ("c", 9003)].into_iter().enumerate() {
        let report = apply(
            &set(root.path(), minimal_config(&run, port, &[(name, p)])),
            &opts,
        )
        .expect("apply");
        assert!(report.ok(), "{report}\nhaproxy log:\n{}", h.log());
        wait::until(
            Duration::from_secs(10),
            "the master to start its reload",
            || count("Reloading HAProxy") == i + 1,
        )
        .unwrap_or_else(|e| panic!("{e}; haproxy log:\n{}", h.log()));
    }
    wait::until(Duration::from_secs(10), "both reloads to load", || {
        count("Loading success.") == 3
    })
    .unwrap_or_else(|e| panic!("{e}; haproxy log:\n{}", h.log()));
    wait::until(
        Duration::from_secs(10),
        "haproxy to serve backend be with only server c",
        || {
            let s = stat(&h);
            s.contains("be,c,") && !s.contains("be,b,") && !s.contains("be,a,")
        },
    )
    .unwrap_or_else(|e| panic!("{e}; haproxy log:\n{}", h.log()));
    assert_eq!(h.master_pid(), master);
    assert!(!h.log().contains("Loading failure"), "{}", h.log());
}
