//! Reload actions against real child processes: shells that trap (or
//! ignore) signals, perl blocking one, keepalived reading a signalfd, and
//! a real HAProxy master signalled several times in a row.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use converge_model::ReloadAction;
use converge_programs::reload::{Limits, PauseScope, ReloadFailure};
use converge_programs::signal::disposition::{self, Disposition};
use converge_programs::signal::Program;
use converge_programs::ReloadOutcome;
use converge_testkit::haproxy::minimal_config;
use converge_testkit::process::pid_alive;
use converge_testkit::stranger::Stranger;
use converge_testkit::{wait, Child, Haproxy};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// [`converge_programs::reload::run`] for actions that are not PgBouncer's
/// console, which ignore the pause scope.
fn run(action: &ReloadAction, limits: Limits) -> Result<ReloadOutcome, ReloadFailure> {
    converge_programs::reload::run(action, limits, &PauseScope::All, None)
}

/// Deadline for anything a test waits for a process to do.
const DEADLINE: Duration = Duration::from_secs(10);

fn limits() -> Limits {
    Limits {
        timeout: Duration::from_secs(10),
        settle: Duration::from_millis(50),
        ready: Duration::from_secs(10),
    }
}

/// Limits for a process that is expected never to become ready.
fn short_ready() -> Limits {
    Limits {
        ready: Duration::from_millis(300),
        ..limits()
    }
}

/// Starts `sh -c SCRIPT` (stopped by pid on drop) and returns it with a
/// `signal` reload aimed at it through a pidfile in `dir`.
///
/// The shell starts with every signal at its default action: a POSIX shell
/// cannot trap a signal that was ignored when it started, and test runners
/// started under `nohup` or by a CI agent hand down an ignored SIGHUP.
fn shell(dir: &Path, script: &str, signal: &str) -> (Child, ReloadAction) {
    let mut sh = Command::new("env");
    sh.args(["--default-signal", "sh", "-c", script]);
    let child = Child::spawn("sh", &mut sh).expect("spawn sh");
    let action = pidfile_action(dir, child.pid(), signal);
    (child, action)
}

fn pidfile_action(dir: &Path, pid: u32, signal: &str) -> ReloadAction {
    let pidfile = dir.join("target.pid");
    std::fs::write(&pidfile, format!("{pid}\n")).expect("write pidfile");
    ReloadAction::Signal {
        pidfile,
        signal: signal.into(),
    }
}

fn wait_for_file(path: &Path) {
    wait::until(DEADLINE, &format!("{} to exist", path.display()), || {
        path.exists()
    })
    .expect("marker file");
}

fn lines_in(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |s| s.lines().count())
}

/// Whether `sig` is pending for `pid` (sent but not yet taken).
fn pending(pid: u32, sig: Signal) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let bit = 1u64 << (sig as i32 - 1);
    ["SigPnd:", "ShdPnd:"].iter().any(|field| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .is_some_and(|m| m & bit != 0)
    })
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
    // The shell handles SIGTERM by exiting; it stays our zombie until
    // waited for, which is what the zombie check is for. The settle
    // window is long because it ends as soon as the process dies.
    let (_child, term) = shell(
        dir.path(),
        "trap 'exit 0' TERM; while :; do sleep 0.05; done",
        "SIGTERM",
    );
    let limits = Limits {
        settle: DEADLINE,
        ..limits()
    };
    let err = run(&term, limits).expect_err("process died");
    assert!(err.detail.contains("exited after SIGTERM"), "{err:?}");
}

#[test]
fn a_signalled_process_that_survives_is_reloaded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ready = dir.path().join("ready");
    let hups = dir.path().join("hups");
    let script = format!(
        "trap 'echo hup >> {}' HUP; touch {}; while :; do sleep 0.05; done",
        hups.display(),
        ready.display()
    );
    let (mut child, hup) = shell(dir.path(), &script, "HUP");
    wait_for_file(&ready);
    assert_eq!(run(&hup, limits()), Ok(ReloadOutcome::Reloaded));
    wait::until(DEADLINE, "the HUP trap to run", || lines_in(&hups) == 1).expect("trap ran");
    assert!(child.is_running(), "the shell survived");
}

#[test]
fn a_stale_pidfile_naming_a_stranger_is_refused_and_the_stranger_not_signalled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut stranger = Stranger::start(dir.path()).expect("stranger");
    let usr2 = pidfile_action(dir.path(), stranger.pid(), "USR2");
    let pid = Pid::from_raw(i32::try_from(stranger.pid()).expect("pid"));
    assert_eq!(
        disposition::read(pid, Signal::SIGUSR2).expect("read"),
        Disposition::Caught,
        "the stranger handles SIGUSR2 (SigCgt), so only its identity can refuse it"
    );
    for (program, name) in [
        (Program::Haproxy, "haproxy"),
        (Program::Pgbouncer, "pgbouncer"),
    ] {
        let err = converge_programs::reload::run(&usr2, limits(), &PauseScope::All, Some(program))
            .expect_err("a stranger is no reload");
        assert!(
            err.detail.contains(&format!("not {name}")) && err.detail.contains("stale"),
            "{err:?}"
        );
    }
    assert_eq!(
        stranger.handled().expect("handled"),
        "",
        "the stranger was signalled"
    );
}

/// A real HAProxy master serving `a` from a config in `dir`, and `SIGUSR2`
/// through its pidfile.
fn real_haproxy(dir: &Path) -> (Haproxy, PathBuf, u16, ReloadAction) {
    let cfg = dir.join("haproxy.cfg");
    let port = converge_testkit::free_port();
    std::fs::write(&cfg, minimal_config(dir, port, &[("a", 9001)])).expect("write");
    let h = Haproxy::start(&cfg, &dir.join("haproxy.pid"), &dir.join("admin.sock"))
        .expect("haproxy starts");
    let usr2 = ReloadAction::Signal {
        pidfile: h.pidfile().to_path_buf(),
        signal: "SIGUSR2".into(),
    };
    (h, cfg, port, usr2)
}

#[test]
fn a_real_haproxy_master_is_recognised_and_its_new_worker_awaited() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (h, cfg, port, usr2) = real_haproxy(dir.path());
    std::fs::write(&cfg, minimal_config(dir.path(), port, &[("b", 9002)])).expect("write");
    let reloaded =
        converge_programs::reload::run(&usr2, limits(), &PauseScope::All, Some(Program::Haproxy));
    assert_eq!(
        reloaded,
        Ok(ReloadOutcome::Reloaded),
        "haproxy log:\n{}",
        h.log()
    );
    // Reloaded means a new worker runs, so it already loaded the new file.
    wait::until(DEADLINE, "the new worker to serve server b", || {
        h.try_command("show servers state be")
            .is_ok_and(|s| s.contains(" b 127.0.0.1 "))
    })
    .unwrap_or_else(|e| panic!("{e}; haproxy log:\n{}", h.log()));
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
    let err = run(
        &action,
        Limits {
            timeout: Duration::from_millis(300),
            settle: Duration::ZERO,
            ready: Duration::ZERO,
        },
    )
    .expect_err("timeout");
    assert!(err.detail.contains("timed out"), "{err:?}");
    // The whole process group went, grandchildren included.
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .expect("pidfile")
        .trim()
        .parse()
        .expect("pid");
    wait::until(DEADLINE, &format!("grandchild {pid} to be gone"), || {
        !pid_alive(pid)
    })
    .expect("the whole process group was killed");
}

#[test]
fn a_process_that_installs_its_handler_late_is_signalled_once_it_has() {
    let dir = tempfile::tempdir().expect("tempdir");
    let go = dir.path().join("go");
    let got = dir.path().join("got");
    // The shell installs its trap only once `go` exists; until then a
    // SIGUSR2 would end it (the default action).
    let script = format!(
        "while [ ! -e '{}' ]; do sleep 0.05; done; trap 'echo got >> {}' USR2; \
         while :; do sleep 0.05; done",
        go.display(),
        got.display()
    );
    let (mut child, usr2) = shell(dir.path(), &script, "SIGUSR2");
    let pid = Pid::from_raw(child.pid() as i32);
    assert_eq!(
        disposition::read(pid, Signal::SIGUSR2).expect("read /proc"),
        Disposition::Default
    );
    let reload = std::thread::spawn(move || run(&usr2, limits()));
    std::fs::write(&go, "").expect("write go");
    assert_eq!(
        reload.join().expect("reload thread"),
        Ok(ReloadOutcome::Reloaded)
    );
    wait::until(DEADLINE, "the USR2 trap to run", || lines_in(&got) == 1).expect("trap ran");
    assert!(child.is_running(), "the shell survived");
}

#[test]
fn a_process_that_never_handles_the_signal_is_not_signalled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Child::spawn("sleep", Command::new("sleep").arg("30")).expect("spawn sleep");
    let usr2 = pidfile_action(dir.path(), child.pid(), "SIGUSR2");
    let started = Instant::now();
    let err = run(&usr2, short_ready()).expect_err("sleep has no handler");
    assert!(started.elapsed() >= short_ready().ready);
    let expected = format!(
        "pid {} does not handle SIGUSR2 yet (SigCgt); not signalled",
        child.pid()
    );
    assert!(err.detail.contains(&expected), "{err:?}");
    assert!(child.is_running(), "sleep was killed");
    assert!(!pending(child.pid(), Signal::SIGUSR2));
}

#[test]
fn a_process_that_ignores_the_signal_is_not_signalled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ready = dir.path().join("ready");
    let script = format!(
        "trap '' USR2; touch '{}'; while :; do sleep 0.05; done",
        ready.display()
    );
    let (mut child, usr2) = shell(dir.path(), &script, "SIGUSR2");
    wait_for_file(&ready);
    let err = run(&usr2, short_ready()).expect_err("ignored");
    let expected = format!(
        "pid {} ignores SIGUSR2 (SigIgn); not signalled",
        child.pid()
    );
    assert!(err.detail.contains(&expected), "{err:?}");
    assert!(child.is_running());
}

#[test]
fn a_process_that_blocks_the_signal_is_signalled_only_once_it_unblocks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (got, ready, go) = (
        dir.path().join("got"),
        dir.path().join("ready"),
        dir.path().join("go"),
    );
    // A handler, but the signal blocked until `go` exists: what HAProxy's
    // master looks like while it handles one SIGUSR2, before it re-executes.
    let script = r#"
        use POSIX;
        my ($got, $ready, $go) = @ARGV;
        $SIG{USR2} = sub { open my $f, '>>', $got or die; print $f "got\n"; close $f };
        my $set = POSIX::SigSet->new(SIGUSR2);
        sigprocmask(SIG_BLOCK, $set) or die "block: $!";
        open my $r, '>', $ready or die; close $r;
        select(undef, undef, undef, 0.05) until -e $go;
        sigprocmask(SIG_UNBLOCK, $set) or die "unblock: $!";
        select(undef, undef, undef, 0.05) while 1;
    "#;
    let mut child = Child::spawn(
        "perl",
        Command::new("perl")
            .arg("-e")
            .arg(script)
            .args([&got, &ready, &go]),
    )
    .expect("spawn perl");
    let usr2 = pidfile_action(dir.path(), child.pid(), "SIGUSR2");
    wait_for_file(&ready);

    let err = run(&usr2, short_ready()).expect_err("blocked");
    let expected = format!(
        "pid {} blocks SIGUSR2 in every thread (SigBlk) and no signalfd reads it; not signalled",
        child.pid()
    );
    assert!(err.detail.contains(&expected), "{err:?}");
    assert!(
        !pending(child.pid(), Signal::SIGUSR2),
        "a refused signal must not have been sent"
    );

    let reload = std::thread::spawn(move || run(&usr2, limits()));
    std::fs::write(&go, "").expect("write go");
    assert_eq!(
        reload.join().expect("reload thread"),
        Ok(ReloadOutcome::Reloaded)
    );
    wait::until(DEADLINE, "the USR2 handler to run", || lines_in(&got) == 1).expect("handler ran");
    assert!(child.is_running());
}

#[test]
fn keepalived_reading_sighup_from_a_signalfd_is_reloaded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("keepalived.conf");
    std::fs::write(&conf, "global_defs {\n    router_id converge_test\n}\n").expect("write");
    let pidfile = dir.path().join("keepalived.pid");
    let log: PathBuf = dir.path().join("keepalived.log");
    let out = File::create(&log).expect("log");
    let err = out.try_clone().expect("log handle");
    let mut k = Child::spawn(
        "keepalived",
        Command::new("keepalived")
            .args([
                "--dont-fork",
                "--log-console",
                "--log-detail",
                "--no-syslog",
            ])
            .arg("--use-file")
            .arg(&conf)
            .arg("--pid")
            .arg(&pidfile)
            .arg("--vrrp_pid")
            .arg(dir.path().join("vrrp.pid"))
            .arg("--checkers_pid")
            .arg(dir.path().join("checkers.pid"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err),
    )
    .expect("spawn keepalived");
    wait::until(DEADLINE, "keepalived to write its pidfile", || {
        std::fs::read_to_string(&pidfile).is_ok_and(|s| s.trim() == k.pid().to_string())
    })
    .expect("pidfile");
    let hup = ReloadAction::Signal {
        pidfile,
        signal: "SIGHUP".into(),
    };
    assert_eq!(run(&hup, limits()), Ok(ReloadOutcome::Reloaded));
    let pid = Pid::from_raw(k.pid() as i32);
    assert_eq!(
        disposition::read(pid, Signal::SIGHUP).expect("read /proc"),
        Disposition::SignalFd,
        "keepalived 2.2 reads its signals from a signalfd"
    );
    wait::until(DEADLINE, "keepalived to log its reload", || {
        std::fs::read_to_string(&log).is_ok_and(|s| s.contains("Reloading"))
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    assert!(k.is_running());
}

/// Polls `cond` every millisecond until it holds, failing after
/// [`DEADLINE`]: for a state a process passes through in milliseconds.
fn until_soon(what: &str, mut cond: impl FnMut() -> bool) -> Result<(), String> {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() >= DEADLINE {
            return Err(format!("timed out after {DEADLINE:?} waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

#[test]
fn usr2_while_a_real_haproxy_master_re_executes_waits_and_takes_effect() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (h, cfg, port, usr2) = real_haproxy(dir.path());
    let master = h.master_pid();
    let limits = Limits {
        settle: Duration::ZERO,
        ..limits()
    };
    let count = |needle: &str| h.log().matches(needle).count();
    for (i, (name, p)) in [("b", 9002), ("c", 9003), ("d", 9004)]
        .into_iter()
        .enumerate()
    {
        std::fs::write(&cfg, minimal_config(dir.path(), port, &[(name, p)])).expect("write");
        assert_eq!(
            run(&usr2, limits),
            Ok(ReloadOutcome::Reloaded),
            "haproxy log:\n{}",
            h.log()
        );
        // The master logs this as it starts to re-execute, with SIGUSR2
        // blocked; the next signal goes out in that window (a signal sent
        // there, without waiting, is discarded by the new image).
        until_soon("the master to start its reload", || {
            count("Reloading HAProxy") == i + 1
        })
        .unwrap_or_else(|e| panic!("{e}; haproxy log:\n{}", h.log()));
    }
    wait::until(DEADLINE, "the third reload to load", || {
        count("Loading success.") == 4
    })
    .unwrap_or_else(|e| panic!("{e}; haproxy log:\n{}", h.log()));
    wait::until(DEADLINE, "haproxy to serve only server d", || {
        h.try_command("show servers state be")
            .is_ok_and(|s| s.contains(" d 127.0.0.1 ") && !s.contains(" c 127.0.0.1 "))
    })
    .unwrap_or_else(|e| panic!("{e}; haproxy log:\n{}", h.log()));
    assert_eq!(
        h.servers("be"),
        vec![("d".to_string(), "127.0.0.1:9004".to_string())]
    );
    assert!(pid_alive(master), "{}", h.log());
    assert_eq!(
        std::fs::read_to_string(h.pidfile())
            .expect("pidfile")
            .trim(),
        master.to_string()
    );
    assert!(!h.log().contains("Loading failure"), "{}", h.log());
}
