//! Invariant 1 under real crashes: an apply killed with `SIGKILL` at each
//! failpoint leaves every target either the old or the new complete file,
//! and the next apply cleans up and converges (including a reload the
//! killed run owed).
//!
//! The crashing apply runs in a child process: this test binary re-runs
//! itself with `--ignored --exact crash_child` and the failpoint armed
//! through `CONVERGE_FAILPOINT`; `crash_child` is ignored in normal runs.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use converge_apply::{apply, ApplyOptions, ApplyReport, Outcome, ReloadOutcome};
use converge_model::manifest::Validator;
use converge_model::{Layout, ReloadAction, RenderedFile, RenderedSet};

const ROOT_ENV: &str = "CONVERGE_CRASHTEST_ROOT";
const VERSION_ENV: &str = "CONVERGE_CRASHTEST_VERSION";

/// Contents of a bundle member at `version`: large enough that a torn
/// write could not pass for a whole file.
fn contents(name: &str, version: &str) -> Vec<u8> {
    (0..2000)
        .map(|i| format!("{name} {version} line {i:05}\n"))
        .collect::<String>()
        .into_bytes()
}

/// Bundle `app`: `a.cfg` and `b.cfg`, reloaded by a command that counts
/// its runs and fails while `a.cfg` says `BROKEN`.
fn scenario(root: &Path, version: &str) -> RenderedSet {
    let layout = Layout::new(root);
    let a = layout.path("/etc/app/a.cfg");
    let reload = ReloadAction::Command(vec![
        "sh".into(),
        "-c".into(),
        format!(
            "echo reload >> '{}'; ! grep -q BROKEN '{}'",
            root.join("counter").display(),
            a.display()
        ),
    ]);
    let files = ["a", "b"]
        .into_iter()
        .map(|name| {
            let file = RenderedFile {
                target: format!("app_{name}"),
                destination: layout.path(&format!("/etc/app/{name}.cfg")),
                bytes: contents(name, version),
                mode: 0o640,
                owner: None,
                group: None,
                validate: Validator::None,
                reload: reload.clone(),
                bundle: "app".into(),
                secret: false,
                backups: 3,
            };
            (file.target.clone(), file)
        })
        .collect();
    RenderedSet {
        node: "lb1".into(),
        layout,
        files,
        rejections: Vec::new(),
        warnings: Vec::new(),
        secrets: Vec::new(),
    }
}

fn opts() -> ApplyOptions {
    ApplyOptions {
        // The killed child held the lock; the kernel must have dropped it.
        lock_timeout: Duration::from_secs(2),
        reload_timeout: Duration::from_secs(10),
        signal_settle: Duration::from_millis(50),
        signal_ready_timeout: Duration::from_secs(5),
    }
}

/// Runs in the child: apply `version` with the failpoint armed.
#[test]
#[ignore = "runs only as the child process of the crash tests"]
fn crash_child() {
    let root = std::env::var(ROOT_ENV).expect("run by the crash tests");
    let version = std::env::var(VERSION_ENV).expect("run by the crash tests");
    let report = apply(&scenario(Path::new(&root), &version), &opts());
    eprintln!("failpoint did not fire; apply returned {report:?}");
    std::process::exit(3);
}

fn crash(root: &Path, point: &str, version: &str) {
    let exe = std::env::current_exe().expect("test binary path");
    let out = Command::new(exe)
        .args([
            "crash_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROOT_ENV, root)
        .env(VERSION_ENV, version)
        .env(converge_apply::failpoint::ENV, point)
        .output()
        .expect("run child");
    assert_eq!(
        out.status.signal(),
        Some(9),
        "child was not killed at failpoint {point}: {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn read(root: &Path, name: &str) -> Vec<u8> {
    std::fs::read(root.join(format!("etc/app/{name}.cfg"))).expect("read member")
}

/// Which version each member holds; panics on anything that is neither.
fn versions(root: &Path, candidates: &[&str]) -> [String; 2] {
    ["a", "b"].map(|name| {
        let bytes = read(root, name);
        candidates
            .iter()
            .find(|v| contents(name, v) == bytes)
            .map(|v| v.to_string())
            .unwrap_or_else(|| {
                panic!("{name}.cfg is neither of {candidates:?}: a torn or foreign file")
            })
    })
}

fn count(root: &Path) -> usize {
    std::fs::read_to_string(root.join("counter"))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

fn staged(root: &Path) -> Vec<String> {
    std::fs::read_dir(root.join("etc/app"))
        .expect("read_dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".converge-stage."))
        .collect()
}

fn outcome(r: &ApplyReport) -> &Outcome {
    &r.bundle("app").expect("bundle app").outcome
}

const RELOADED: Outcome = Outcome::Applied {
    reload: ReloadOutcome::Reloaded,
};

/// v1 applied normally, then a child applying `next` killed at `point`.
fn crashed(point: &str, next: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = apply(&scenario(dir.path(), "v1"), &opts()).expect("apply v1");
    assert_eq!(outcome(&r), &RELOADED, "{r}");
    assert_eq!(count(dir.path()), 1);
    crash(dir.path(), point, next);
    dir
}

/// After a crash before any rename: old files, leftovers; then converge.
fn before_commit(point: &str) {
    let dir = crashed(point, "v2");
    let root = dir.path();
    assert_eq!(versions(root, &["v1"]), ["v1", "v1"]);
    assert_eq!(count(root), 1, "nothing may reload before commit");
    assert!(
        !staged(root).is_empty(),
        "a killed run leaves its staged files"
    );

    let r = apply(&scenario(root, "v2"), &opts()).expect("apply after crash");
    assert_eq!(outcome(&r), &RELOADED, "{r}");
    assert_eq!(versions(root, &["v2"]), ["v2", "v2"]);
    assert!(
        staged(root).is_empty(),
        "stale staged files survived: {:?}",
        staged(root)
    );
    assert_eq!(count(root), 2);
}

#[test]
fn killed_after_staging_keeps_the_old_files() {
    before_commit("staged");
}

#[test]
fn killed_after_validating_keeps_the_old_files() {
    before_commit("validated");
}

#[test]
fn killed_after_backing_up_keeps_the_old_files() {
    before_commit("backed-up");
}

#[test]
fn killed_between_two_renames_leaves_whole_files_and_the_next_run_finishes() {
    let dir = crashed("committed-one", "v2");
    let root = dir.path();
    assert_eq!(versions(root, &["v1", "v2"]), ["v2", "v1"]);
    assert_eq!(count(root), 1);

    let r = apply(&scenario(root, "v2"), &opts()).expect("apply after crash");
    assert_eq!(outcome(&r), &RELOADED, "{r}");
    assert_eq!(r.bundle("app").expect("app").changed, ["app_b"]);
    assert_eq!(versions(root, &["v2"]), ["v2", "v2"]);
    assert!(staged(root).is_empty());
    assert_eq!(count(root), 2);
}

#[test]
fn killed_after_commit_the_next_run_runs_the_owed_reload() {
    let dir = crashed("committed", "v2");
    let root = dir.path();
    assert_eq!(versions(root, &["v2"]), ["v2", "v2"]);
    assert_eq!(count(root), 1, "killed before the reload");

    let set = scenario(root, "v2");
    let plan = converge_apply::plan(&set).expect("plan");
    assert_eq!(plan.pending_reloads, ["app"]);
    assert!(plan.has_changes(), "plan must show the owed reload");

    let r = apply(&set, &opts()).expect("apply after crash");
    assert_eq!(outcome(&r), &RELOADED, "{r}");
    assert_eq!(count(root), 2);
    let r = apply(&set, &opts()).expect("apply again");
    assert_eq!(outcome(&r), &Outcome::Unchanged, "{r}");
    assert_eq!(count(root), 2, "the owed reload ran twice");
}

#[test]
fn killed_after_reload_the_next_run_has_nothing_to_do() {
    let dir = crashed("reloaded", "v2");
    let root = dir.path();
    assert_eq!(versions(root, &["v2"]), ["v2", "v2"]);
    assert_eq!(count(root), 2);
    let r = apply(&scenario(root, "v2"), &opts()).expect("apply after crash");
    assert_eq!(outcome(&r), &Outcome::Unchanged, "{r}");
    assert_eq!(count(root), 2);
}

#[test]
fn killed_after_rolling_back_leaves_the_old_files_and_the_next_run_reloads_them() {
    let dir = crashed("rolled-back", "v2 BROKEN");
    let root = dir.path();
    assert_eq!(versions(root, &["v1"]), ["v1", "v1"]);
    assert_eq!(
        count(root),
        2,
        "the failed reload ran once, the old one not yet"
    );
    assert!(staged(root).is_empty());

    // Back to v1 desired: the files match, but the program was last told
    // to load the broken version, so the reload is owed.
    let r = apply(&scenario(root, "v1"), &opts()).expect("apply after crash");
    assert_eq!(outcome(&r), &RELOADED, "{r}");
    assert_eq!(count(root), 3);

    // The broken version again: rolled back and reloaded, in one run.
    let r = apply(&scenario(root, "v2 BROKEN"), &opts()).expect("apply broken");
    assert!(matches!(outcome(&r), Outcome::RolledBack { .. }), "{r}");
    assert_eq!(versions(root, &["v1"]), ["v1", "v1"]);
    assert_eq!(count(root), 5);
}
