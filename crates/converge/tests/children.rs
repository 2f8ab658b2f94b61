//! Invariant 8: every child converge starts dies with it, and what a killed
//! run left running is reaped by the next run, never a stranger.
//!
//! Each run gets its own `TMPDIR`, where the trial PgBouncer's private dir
//! and the record of started children live, so the processes a test looks
//! for are its own.

mod common;

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::Workspace;
use converge_programs::process::lineage::{record_dir_in, start_time};
use converge_testkit::wait;

/// Pids of the processes whose command line names a file under `dir`.
fn processes_under(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                .unwrap_or(false)
        })
        .filter(|pid| !is_zombie(*pid))
        .collect()
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| Some(s.rsplit_once(')')?.1.split_whitespace().next()? == "Z"))
        .unwrap_or(true)
}

/// Kills, by pid, whatever a failed assertion would otherwise leak.
struct Leftovers(Vec<u32>);

impl Drop for Leftovers {
    fn drop(&mut self) {
        for pid in &self.0 {
            if let Ok(raw) = i32::try_from(*pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(raw),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// Runs converge with `args`, killed with `SIGKILL` while the trial
/// PgBouncer is up, and checks nothing it started outlives it.
fn killed_during_the_trial_start_leaves_no_pgbouncer(args: &[&str]) {
    let ws = Workspace::examples();
    let tmp = ws.path("tmp");
    std::fs::create_dir_all(&tmp).expect("tmp");
    let mut cmd = ws.command(args);
    cmd.env("TMPDIR", &tmp)
        .env(converge_apply::failpoint::ENV, "trial-up")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut converge = cmd.spawn().expect("start converge");
    let status = wait_exit(&mut converge, Duration::from_secs(60));
    assert_eq!(
        status.signal(),
        Some(9),
        "converge {args:?} was not killed at the trial start: {status:?}"
    );
    // The trial's private dir is left behind by the kill: proof that the
    // trial PgBouncer ran under this TMPDIR.
    let trial_dirs = std::fs::read_dir(&tmp)
        .expect("read tmp")
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("converge-pgbouncer-check-")
        })
        .count();
    assert_eq!(trial_dirs, 1, "one trial start ran");
    let mut guard = Leftovers(processes_under(&tmp));
    let gone = wait::until(
        Duration::from_secs(10),
        "every process converge started to die with it",
        || {
            guard.0 = processes_under(&tmp);
            guard.0.is_empty()
        },
    );
    assert!(
        gone.is_ok(),
        "still running after converge {args:?} was killed: {:?}",
        guard
            .0
            .iter()
            .map(|p| std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .unwrap_or_default())
            .collect::<Vec<_>>()
    );
}

/// Waits for `child` to exit, killing it (by its pid) at the deadline.
fn wait_exit(child: &mut Child, deadline: Duration) -> std::process::ExitStatus {
    let mut status = None;
    let ok = wait::until(deadline, "converge to exit", || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    if ok.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    status.expect("converge exited within the deadline")
}

#[test]
fn kill_9_of_apply_during_the_pgbouncer_trial_start_leaves_no_pgbouncer() {
    killed_during_the_trial_start_leaves_no_pgbouncer(&["apply", "--once", "--node", "lb1"]);
}

#[test]
fn kill_9_of_validate_during_the_pgbouncer_trial_start_leaves_no_pgbouncer() {
    killed_during_the_trial_start_leaves_no_pgbouncer(&["validate"]);
}

/// A process of the test's own, in its own process group.
fn sleeper() -> (Child, u64) {
    let child = Command::new("sleep")
        .arg("300")
        .process_group(0)
        .spawn()
        .expect("start sleep");
    let start = start_time(child.id()).expect("start time");
    (child, start)
}

#[test]
fn the_next_run_reaps_a_recorded_leftover_and_spares_a_reused_pid() {
    let ws = Workspace::examples();
    let tmp = ws.path("tmp");
    let records = record_dir_in(&tmp);
    std::fs::create_dir_all(&records).expect("record dir");
    std::fs::set_permissions(
        &records,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .expect("chmod");

    // A converge run that is gone: a process that has exited.
    let (mut owner, owner_start) = sleeper();
    let owner_pid = owner.id();
    owner.kill().expect("kill owner");
    owner.wait().expect("reap owner");

    // Its leftover child, and a stranger now holding a recorded pid (its
    // start time differs from the record's).
    let (mut leftover, leftover_start) = sleeper();
    let (mut stranger, stranger_start) = sleeper();
    let leftover_record = records.join(format!(
        "{owner_pid}-{owner_start}-{}-{leftover_start}-group",
        leftover.id()
    ));
    let stranger_record = records.join(format!(
        "{owner_pid}-{owner_start}-{}-{}-group",
        stranger.id(),
        stranger_start + 1
    ));
    std::fs::write(&leftover_record, "").expect("record");
    std::fs::write(&stranger_record, "").expect("record");

    let out = ws.converge_env(
        &["apply", "--once", "--node", "lb1"],
        &[("TMPDIR", &tmp.to_string_lossy())],
    );
    common::assert_exit(&out, 0);

    let mut reaped = None;
    let killed = wait::until(Duration::from_secs(10), "the leftover to be killed", || {
        reaped = leftover.try_wait().ok().flatten();
        reaped.is_some()
    });
    let stranger_alive = stranger.try_wait().ok().flatten().is_none();
    let _ = leftover.kill();
    let _ = leftover.wait();
    let _ = stranger.kill();
    let _ = stranger.wait();
    assert!(killed.is_ok(), "the next run did not reap the leftover");
    assert_eq!(reaped.and_then(|s| s.signal()), Some(9));
    assert!(
        stranger_alive,
        "a process whose start time differs was killed"
    );
    assert!(!leftover_record.exists() && !stranger_record.exists());
}
