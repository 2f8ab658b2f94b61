use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use converge_model::manifest::Validator;
use converge_model::ReloadAction;

use super::*;
use crate::list_backups;
use crate::testutil::{staged_in, tree, Fixture};

fn opts() -> ApplyOptions {
    ApplyOptions {
        lock_timeout: Duration::from_secs(10),
        reload_timeout: Duration::from_secs(10),
        signal_settle: Duration::from_millis(50),
        signal_ready_timeout: Duration::from_secs(5),
    }
}

fn sh(script: String) -> ReloadAction {
    ReloadAction::Command(vec!["sh".into(), "-c".into(), script])
}

/// A reload that appends a line to `counter` and fails while `dest`
/// contains `BROKEN`.
fn counting_reload(counter: &Path, dest: &Path) -> ReloadAction {
    sh(format!(
        "echo reload >> '{}'; ! grep -q BROKEN '{}'",
        counter.display(),
        dest.display()
    ))
}

fn count(counter: &Path) -> usize {
    std::fs::read_to_string(counter)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

fn outcome<'a>(r: &'a ApplyReport, bundle: &str) -> &'a Outcome {
    &r.bundle(bundle).expect("bundle in report").outcome
}

#[test]
fn apply_writes_with_the_mode_and_a_second_apply_touches_nothing() {
    let mut fx = Fixture::new();
    let counter = fx.path("/counter");
    let dest = fx.path("/etc/app/app.cfg");
    let f = fx.add("app", "/etc/app/app.cfg", "v1\n");
    f.mode = 0o640;
    f.reload = counting_reload(&counter, &dest);

    let r = apply(&fx.set, &opts()).expect("apply");
    assert!(r.ok(), "{r}");
    assert_eq!(
        outcome(&r, "app"),
        &Outcome::Applied {
            reload: ReloadOutcome::Reloaded
        }
    );
    assert_eq!(std::fs::read(&dest).expect("read"), b"v1\n");
    let meta = std::fs::metadata(&dest).expect("meta");
    assert_eq!(meta.mode() & 0o7777, 0o640);
    assert_eq!(count(&counter), 1);
    assert!(staged_in(dest.parent().expect("dir")).is_empty());

    let before = tree(fx.root());
    let r = apply(&fx.set, &opts()).expect("apply");
    assert_eq!(outcome(&r, "app"), &Outcome::Unchanged);
    assert!(r.ok() && !r.applied_any());
    let after = std::fs::metadata(&dest).expect("meta");
    assert_eq!(
        (after.ino(), after.mtime(), after.mtime_nsec()),
        (meta.ino(), meta.mtime(), meta.mtime_nsec())
    );
    assert_eq!(count(&counter), 1, "an unchanged bundle was reloaded");
    // Only the lock file's pid may have been rewritten.
    let lock = ApplyLock::path_for(&fx.set.layout).display().to_string();
    let strip = |t: Vec<String>| {
        t.into_iter()
            .filter(|l| !l.starts_with(&lock))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(tree(fx.root())), strip(before));
}

#[test]
fn a_rejected_candidate_leaves_the_live_file_and_no_temp_files() {
    let mut fx = Fixture::new();
    let counter = fx.path("/counter");
    let dest = fx.path("/etc/app.cfg");
    std::fs::create_dir_all(dest.parent().expect("dir")).expect("mkdir");
    std::fs::write(&dest, "old\n").expect("write");
    let f = fx.add("app", "/etc/app.cfg", "new\n");
    f.validate = Validator::Command(vec![
        "sh".into(),
        "-c".into(),
        "echo nope >&2; exit 3".into(),
    ]);
    f.reload = counting_reload(&counter, &dest);
    let before = std::fs::metadata(&dest).expect("meta").ino();

    let r = apply(&fx.set, &opts()).expect("apply");
    assert!(!r.ok());
    match outcome(&r, "app") {
        Outcome::Rejected { error } => assert!(
            error.contains("target app") && error.contains("kept the live files"),
            "{error}"
        ),
        other => panic!("expected rejection, got {other:?}"),
    }
    assert_eq!(std::fs::read(&dest).expect("read"), b"old\n");
    assert_eq!(std::fs::metadata(&dest).expect("meta").ino(), before);
    assert!(
        staged_in(dest.parent().expect("dir")).is_empty(),
        "temp files left behind"
    );
    assert_eq!(count(&counter), 0);
    assert!(list_backups(&fx.set.layout, "app")
        .expect("list")
        .is_empty());
}

#[test]
fn a_failed_reload_rolls_back_byte_for_byte_and_reloads_the_old_files() {
    let mut fx = Fixture::new();
    let counter = fx.path("/counter");
    let dest = fx.path("/etc/app.cfg");
    let old = "good config\n# with a comment\n";
    std::fs::create_dir_all(dest.parent().expect("dir")).expect("mkdir");
    std::fs::write(&dest, old).expect("write");
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let f = fx.add("app", "/etc/app.cfg", "BROKEN config\n");
    f.reload = counting_reload(&counter, &dest);

    let r = apply(&fx.set, &opts()).expect("apply");
    assert!(!r.ok());
    match outcome(&r, "app") {
        Outcome::RolledBack { error } => {
            assert!(error.contains("reload `run: sh -c"), "{error}");
            assert!(error.contains("exited with exit status: 1"), "{error}");
            assert!(
                error.contains("restored the previous files and reloaded them"),
                "{error}"
            );
        }
        other => panic!("expected rollback, got {other:?}"),
    }
    let rollback = r
        .bundle("app")
        .and_then(|b| b.rollback.as_ref())
        .expect("a rolled-back bundle says how");
    assert!(rollback.complete && rollback.failed_steps.is_empty());
    assert_eq!(rollback.reload, crate::RollbackReload::Reloaded);
    assert_eq!(r.incomplete_rollbacks(), 0);
    assert_eq!(std::fs::read_to_string(&dest).expect("read"), old);
    assert_eq!(
        std::fs::metadata(&dest).expect("meta").mode() & 0o7777,
        0o600
    );
    assert_eq!(
        count(&counter),
        2,
        "reload must run for the new and again for the old files"
    );
    assert!(staged_in(dest.parent().expect("dir")).is_empty());
}

#[test]
fn a_failed_reload_of_a_new_file_removes_it() {
    let mut fx = Fixture::new();
    let counter = fx.path("/counter");
    let dest = fx.path("/etc/new.cfg");
    fx.add("new", "/etc/new.cfg", "BROKEN\n").reload = counting_reload(&counter, &dest);
    let r = apply(&fx.set, &opts()).expect("apply");
    assert!(
        matches!(outcome(&r, "new"), Outcome::RolledBack { .. }),
        "{r}"
    );
    assert!(!dest.exists());
    assert_eq!(count(&counter), 2);
}

#[test]
fn one_rejected_member_keeps_the_whole_bundle_out() {
    let mut fx = Fixture::new();
    let counter = fx.path("/counter");
    let ini = fx.path("/etc/pgbouncer/pgbouncer.ini");
    let users = fx.path("/etc/pgbouncer/userlist.txt");
    std::fs::create_dir_all(ini.parent().expect("dir")).expect("mkdir");
    std::fs::write(&ini, "[databases]\nold\n").expect("write");
    std::fs::write(&users, "\"old\" \"x\"\n").expect("write");
    let reject_bad = Validator::Command(vec![
        "sh".into(),
        "-c".into(),
        "! grep -q BAD \"$1\"".into(),
        "check".into(),
        "{}".into(),
    ]);
    let f = fx.add(
        "pgbouncer",
        "/etc/pgbouncer/pgbouncer.ini",
        "[databases]\nnew\n",
    );
    f.bundle = "pgbouncer".into();
    f.validate = reject_bad.clone();
    f.reload = counting_reload(&counter, &ini);
    let f = fx.add(
        "pgbouncer_userlist",
        "/etc/pgbouncer/userlist.txt",
        "\"new\" BAD\n",
    );
    f.bundle = "pgbouncer".into();
    f.validate = reject_bad;
    f.reload = counting_reload(&counter, &ini);

    let r = apply(&fx.set, &opts()).expect("apply");
    assert_eq!(r.bundles.len(), 1);
    assert!(
        matches!(outcome(&r, "pgbouncer"), Outcome::Rejected { .. }),
        "{r}"
    );
    assert_eq!(
        std::fs::read_to_string(&ini).expect("ini"),
        "[databases]\nold\n"
    );
    assert_eq!(
        std::fs::read_to_string(&users).expect("users"),
        "\"old\" \"x\"\n"
    );
    assert!(staged_in(ini.parent().expect("dir")).is_empty());
    assert_eq!(count(&counter), 0);
}

#[test]
fn a_bundle_commits_together_and_reloads_each_distinct_action_once() {
    let mut fx = Fixture::new();
    let counter = fx.path("/counter");
    let ini = fx.path("/etc/pgbouncer/pgbouncer.ini");
    let users = fx.path("/etc/pgbouncer/userlist.txt");
    for (t, abs, body) in [
        ("pgbouncer", "/etc/pgbouncer/pgbouncer.ini", "[databases]\n"),
        (
            "pgbouncer_userlist",
            "/etc/pgbouncer/userlist.txt",
            "\"app\" \"x\"\n",
        ),
    ] {
        let f = fx.add(t, abs, body);
        f.bundle = "pgbouncer".into();
        f.reload = counting_reload(&counter, &ini);
    }
    fx.file("pgbouncer_userlist").mode = 0o600;
    let r = apply(&fx.set, &opts()).expect("apply");
    let b = r.bundle("pgbouncer").expect("bundle");
    assert_eq!(b.targets, ["pgbouncer", "pgbouncer_userlist"]);
    assert_eq!(b.changed, ["pgbouncer", "pgbouncer_userlist"]);
    assert!(matches!(b.outcome, Outcome::Applied { .. }), "{r}");
    assert!(ini.exists() && users.exists());
    assert_eq!(
        std::fs::metadata(&users).expect("meta").mode() & 0o777,
        0o600
    );
    assert_eq!(count(&counter), 1, "the shared reload ran more than once");
}

#[test]
fn one_failing_bundle_does_not_stop_the_others() {
    let mut fx = Fixture::new();
    fx.add("a_bad", "/etc/a.cfg", "x\n").validate = Validator::Command(vec!["false".into()]);
    fx.add("b_good", "/etc/b.cfg", "y\n");
    let r = apply(&fx.set, &opts()).expect("apply");
    assert!(!r.ok());
    assert!(
        matches!(outcome(&r, "a_bad"), Outcome::Rejected { .. }),
        "{r}"
    );
    assert!(
        matches!(outcome(&r, "b_good"), Outcome::Applied { .. }),
        "{r}"
    );
    assert!(!fx.path("/etc/a.cfg").exists());
    assert!(fx.path("/etc/b.cfg").exists());
    let text = r.to_string();
    assert!(
        text.contains("REJECTED") && text.contains("1 applied"),
        "{text}"
    );
}

#[test]
fn backups_keep_only_the_newest_n() {
    let mut fx = Fixture::new();
    fx.add("app", "/etc/app.cfg", "").backups = 2;
    for v in 0..5 {
        fx.file("app").bytes = format!("v{v}\n").into_bytes();
        let r = apply(&fx.set, &opts()).expect("apply");
        assert!(r.ok(), "{r}");
    }
    let kept = list_backups(&fx.set.layout, "app").expect("list");
    let contents: Vec<String> = kept
        .iter()
        .map(|p| std::fs::read_to_string(p).expect("read"))
        .collect();
    assert_eq!(contents, ["v2\n", "v3\n"]);
    let name = kept[1]
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    assert!(
        name.ends_with(&crate::fsutil::sha256_hex(b"v3\n")[..8]),
        "{name}"
    );
}

#[test]
fn a_rejected_apply_keeps_the_backups_as_they_were_and_owes_no_reload() {
    let mut fx = Fixture::new();
    fx.add("app", "/etc/app.cfg", "").backups = 2;
    for v in 0..3 {
        fx.file("app").bytes = format!("v{v}\n").into_bytes();
        assert!(apply(&fx.set, &opts()).expect("apply").ok());
    }
    let before = list_backups(&fx.set.layout, "app").expect("list");
    assert_eq!(before.len(), 2);

    // Backups and the pending marker are written while the validator
    // runs; a rejection must take back exactly what this apply wrote.
    let f = fx.file("app");
    f.bytes = b"v3\n".to_vec();
    f.validate = Validator::Command(vec!["sh".into(), "-c".into(), "exit 1".into()]);
    let r = apply(&fx.set, &opts()).expect("apply");
    assert!(
        matches!(outcome(&r, "app"), Outcome::Rejected { .. }),
        "{r}"
    );
    assert_eq!(list_backups(&fx.set.layout, "app").expect("list"), before);
    assert!(!pending::is_pending(&fx.set.layout, "app"));

    // A reload an interrupted apply left owed stays owed.
    pending::mark(&fx.set.layout, "app", &["app".into()]).expect("mark");
    let r = apply(&fx.set, &opts()).expect("apply");
    assert!(
        matches!(outcome(&r, "app"), Outcome::Rejected { .. }),
        "{r}"
    );
    assert!(pending::is_pending(&fx.set.layout, "app"));
}

#[test]
fn a_held_lock_makes_apply_fail_after_the_timeout_naming_the_lock() {
    let mut fx = Fixture::new();
    fx.add("app", "/etc/app.cfg", "x\n");
    let path = ApplyLock::path_for(&fx.set.layout);
    let _held = ApplyLock::acquire(&path, Duration::ZERO).expect("lock");
    let started = Instant::now();
    let err = apply(
        &fx.set,
        &ApplyOptions {
            lock_timeout: Duration::from_millis(300),
            ..opts()
        },
    )
    .expect_err("lock is held");
    assert!(started.elapsed() >= Duration::from_millis(300));
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(
        msg.contains(&format!("pid {}", std::process::id())),
        "{msg}"
    );
    assert!(!fx.path("/etc/app.cfg").exists());
}

#[test]
fn stale_staged_files_are_removed_even_when_nothing_changed() {
    let mut fx = Fixture::new();
    fx.add("app", "/etc/app.cfg", "x\n");
    apply(&fx.set, &opts()).expect("first apply");
    let dir = fx.path("/etc");
    let stale = dir.join(".app.cfg.converge-stage.99999.AbCd1234");
    let unrelated = dir.join(".app.cfg.swp");
    std::fs::write(&stale, "half").expect("write");
    std::fs::write(&unrelated, "keep").expect("write");
    let r = apply(&fx.set, &opts()).expect("apply");
    assert_eq!(outcome(&r, "app"), &Outcome::Unchanged);
    assert!(!stale.exists());
    assert!(unrelated.exists());
}

#[test]
fn mode_drift_is_fixed_in_place_without_a_reload() {
    let mut fx = Fixture::new();
    let counter = fx.path("/counter");
    let dest = fx.path("/etc/userlist.txt");
    let f = fx.add("users", "/etc/userlist.txt", "\"a\" \"b\"\n");
    f.mode = 0o600;
    f.reload = counting_reload(&counter, &dest);
    apply(&fx.set, &opts()).expect("apply");
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let ino = std::fs::metadata(&dest).expect("meta").ino();
    let r = apply(&fx.set, &opts()).expect("apply");
    assert_eq!(
        outcome(&r, "users"),
        &Outcome::Applied {
            reload: ReloadOutcome::NotNeeded
        }
    );
    let meta = std::fs::metadata(&dest).expect("meta");
    assert_eq!(meta.mode() & 0o7777, 0o600);
    assert_eq!(meta.ino(), ino);
    assert_eq!(count(&counter), 1);
}

#[test]
fn a_signal_reload_with_no_running_program_is_not_an_error() {
    let mut fx = Fixture::new();
    let pidfile = fx.path("/run/app.pid");
    fx.add("app", "/etc/app.cfg", "x\n").reload = ReloadAction::Signal {
        pidfile,
        signal: "SIGHUP".into(),
    };
    let r = apply(&fx.set, &opts()).expect("apply");
    assert!(r.ok());
    assert_eq!(
        outcome(&r, "app"),
        &Outcome::Applied {
            reload: ReloadOutcome::NotRunning
        }
    );
    assert!(r.to_string().contains("not running"), "{r}");
}

#[test]
fn secrets_in_program_output_are_redacted_from_the_report() {
    let mut fx = Fixture::new();
    fx.secret("hunter2");
    fx.add("app", "/etc/app.cfg", "auth hunter2\n").reload =
        sh("echo 'bad line: auth hunter2' >&2; exit 1".into());
    let r = apply(&fx.set, &opts()).expect("apply");
    let json = serde_json::to_string(&r).expect("json");
    for out in [r.to_string(), json] {
        assert!(!out.contains("hunter2"), "{out}");
        assert!(out.contains("bad line: auth ********"), "{out}");
    }
}

#[test]
fn the_report_serializes_with_a_status_tag() {
    let mut fx = Fixture::new();
    fx.add("app", "/etc/app.cfg", "x\n");
    let r = apply(&fx.set, &opts()).expect("apply");
    let v = serde_json::to_value(&r).expect("json");
    assert_eq!(v["node"], "lb1");
    assert_eq!(v["bundles"][0]["outcome"]["status"], "applied");
    assert_eq!(v["bundles"][0]["outcome"]["reload"], "no_action");
}
