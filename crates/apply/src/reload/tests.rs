//! Reload actions against real child processes.

use super::*;

fn limits() -> Limits {
    Limits {
        timeout: Duration::from_secs(10),
        settle: Duration::from_millis(50),
    }
}

#[test]
fn signal_names_parse_with_or_without_prefix() {
    assert_eq!(parse_signal("SIGUSR2"), Some(Signal::SIGUSR2));
    assert_eq!(parse_signal("hup"), Some(Signal::SIGHUP));
    assert_eq!(parse_signal("SIGBOGUS"), None);
}

#[test]
fn missing_pidfile_or_dead_pid_is_not_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pidfile = dir.path().join("x.pid");
    let action = ReloadAction::Signal {
        pidfile: pidfile.clone(),
        signal: "SIGHUP".into(),
    };
    assert_eq!(run(&action, limits()), Ok(ReloadOutcome::NotRunning));

    // A process that has exited and been reaped.
    let mut child = Command::new("true").spawn().expect("spawn true");
    let pid = child.id();
    child.wait().expect("wait");
    std::fs::write(&pidfile, format!("{pid}\n")).expect("write pidfile");
    assert_eq!(run(&action, limits()), Ok(ReloadOutcome::NotRunning));
}

#[test]
fn garbage_in_pidfile_is_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pidfile = dir.path().join("x.pid");
    std::fs::write(&pidfile, "not-a-pid\n").expect("write");
    let action = ReloadAction::Signal {
        pidfile: pidfile.clone(),
        signal: "SIGHUP".into(),
    };
    let err = run(&action, limits()).expect_err("garbage pid");
    assert!(err.detail.contains("x.pid"), "{err:?}");
}

#[test]
fn a_signalled_process_that_dies_is_a_failure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pidfile = dir.path().join("sleep.pid");
    // `sleep` dies of SIGTERM; it stays our zombie until waited for,
    // which is what the zombie check is for.
    let mut child = Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("spawn sleep");
    std::fs::write(&pidfile, format!("{}\n", child.id())).expect("write pidfile");
    let term = ReloadAction::Signal {
        pidfile: pidfile.clone(),
        signal: "SIGTERM".into(),
    };
    let err = run(&term, limits()).expect_err("process died");
    assert!(err.detail.contains("exited after SIGTERM"), "{err:?}");
    child.wait().expect("reap");
}

#[test]
fn a_signalled_process_that_survives_is_reloaded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pidfile = dir.path().join("sh.pid");
    let ready = dir.path().join("ready");
    let hups = dir.path().join("hups");
    let script = format!(
        "trap 'echo hup >> {}' HUP; touch {}; while :; do sleep 0.05; done",
        hups.display(),
        ready.display()
    );
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .spawn()
        .expect("spawn sh");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "shell never became ready");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::fs::write(&pidfile, format!("{}\n", child.id())).expect("write pidfile");
    let hup = ReloadAction::Signal {
        pidfile,
        signal: "HUP".into(),
    };
    assert_eq!(run(&hup, limits()), Ok(ReloadOutcome::Reloaded));
    while !std::fs::read_to_string(&hups).is_ok_and(|s| s.contains("hup")) {
        assert!(Instant::now() < deadline, "trap never ran");
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
    child.wait().expect("reap");
}

#[test]
fn a_failing_command_carries_status_and_stderr() {
    let action = ReloadAction::Command(vec![
        "sh".into(),
        "-c".into(),
        "echo boom >&2; exit 3".into(),
    ]);
    let err = run(&action, limits()).expect_err("exit 3");
    assert!(err.detail.contains("exit status: 3"), "{err:?}");
    assert_eq!(err.stderr, "boom");
    assert_eq!(err.command, "run: sh -c echo boom >&2; exit 3");
}

#[test]
fn shell_runs_through_sh() {
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("ran");
    let action = ReloadAction::Shell(format!("echo yes > {}", marker.display()));
    assert_eq!(run(&action, limits()), Ok(ReloadOutcome::Reloaded));
    assert_eq!(std::fs::read_to_string(marker).expect("marker"), "yes\n");
}

#[test]
fn a_hanging_command_is_killed_at_the_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pidfile = dir.path().join("child.pid");
    let action = ReloadAction::Shell(format!("sleep 30 & echo $! > {}; wait", pidfile.display()));
    let started = Instant::now();
    let err = run(
        &action,
        Limits {
            timeout: Duration::from_millis(300),
            settle: Duration::ZERO,
        },
    )
    .expect_err("timeout");
    assert!(err.detail.contains("timed out"), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // The whole process group went, grandchildren included.
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .expect("pidfile")
        .trim()
        .parse()
        .expect("pid");
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(Pid::from_raw(pid)) {
        assert!(Instant::now() < deadline, "grandchild {pid} survived");
        std::thread::sleep(Duration::from_millis(10));
    }
}
