//! Invariant 1: a kill -9 at any step of `apply` leaves every destination
//! holding the complete old or the complete new file, and the next run
//! converges and leaves no staged files behind.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};

use common::{assert_exit, stderr, stdout, Workspace};

const TARGETS: &[&str] = &[
    "etc/haproxy/haproxy.cfg",
    "etc/pgbouncer/pgbouncer.ini",
    "etc/pgbouncer/userlist.txt",
];

fn staged_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(staged_files(&p));
        } else if p.to_string_lossy().contains(".converge-stage") {
            out.push(p);
        }
    }
    out
}

#[test]
fn kill_9_at_every_step_leaves_old_or_new_files_and_the_next_run_converges() {
    // `rolled-back` lies on the failed-reload path, which this scenario does
    // not take; the apply crate's own crash tests cover it.
    let points = converge_apply::failpoint::POINTS
        .iter()
        .filter(|p| **p != "rolled-back");
    for failpoint in points {
        let ws = Workspace::examples();
        assert_exit(&ws.converge(&["apply", "--once", "--node", "lb1"]), 0);
        let old: Vec<Vec<u8>> = TARGETS
            .iter()
            .map(|t| std::fs::read(ws.root().join(t)).expect("old"))
            .collect();

        // Change every bundle: web loses a server, the primary moves, a
        // user's secret changes.
        let c = ws.read("catalog.yaml")
            .replace("tags: [primary]\n      meta: {patroni_role: primary", "tags: [replica]\n      meta: {patroni_role: replica")
            .replace("id: pg2\n      node: db2\n      address: 10.20.3.32\n      port: 5432\n      tags: [replica]", "id: pg2\n      node: db2\n      address: 10.20.3.32\n      port: 5432\n      tags: [primary]")
            .replace("    - {id: web-2,", "    - {id: web-2x,");
        ws.write("catalog.yaml", &c);
        ws.write(
            "manifests/secrets/converge.scram",
            "SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy\n",
        );

        let out = ws.converge_env(
            &["apply", "--once", "--node", "lb1"],
            &[("CONVERGE_FAILPOINT", failpoint)],
        );
        assert_eq!(
            out.status.signal(),
            Some(9),
            "failpoint {failpoint} did not kill the process\n{}\n{}",
            stdout(&out),
            stderr(&out)
        );
        let mid: Vec<Vec<u8>> = TARGETS
            .iter()
            .map(|t| std::fs::read(ws.root().join(t)).expect("mid"))
            .collect();

        let out = ws.converge(&["apply", "--once", "--node", "lb1"]);
        assert_exit(&out, 0);
        let new: Vec<Vec<u8>> = TARGETS
            .iter()
            .map(|t| std::fs::read(ws.root().join(t)).expect("new"))
            .collect();

        for (i, t) in TARGETS.iter().enumerate() {
            assert_ne!(old[i], new[i], "{t} should change in this scenario");
            assert!(
                mid[i] == old[i] || mid[i] == new[i],
                "after kill -9 at `{failpoint}`, {t} is neither the old nor the new file"
            );
        }
        assert_eq!(
            staged_files(&ws.root()),
            Vec::<PathBuf>::new(),
            "staged files left after `{failpoint}` + rerun"
        );
        assert_exit(&ws.converge(&["plan", "--node", "lb1"]), 0);
    }
}
