//! Telling a program to pick up committed files, and checking it did.
//!
//! - `Signal`: the pid comes from the pidfile. No pidfile, or no such
//!   process, means the program is not running: nothing needs a reload and
//!   that is not an error (the files are in place for its next start).
//!   Otherwise the signal is sent only once the process handles it (a
//!   handler in `SigCgt`, or a signalfd; see [`disposition`]), waiting up
//!   to a deadline for that: a program that has not installed its handler
//!   yet — HAProxy's master right after it starts or re-executes — would be
//!   killed by the signal or would drop it. Every signal waits, so the
//!   second of two quick reloads waits for the re-executed master too. If
//!   the deadline passes the signal is not sent and the reload fails, so
//!   the transaction rolls back. After the signal, the process must still
//!   be alive after a short settle window (a zombie counts as dead).
//! - `Command`: an argv run without a shell; `Shell`: `/bin/sh -c`. Both
//!   must exit 0 within a timeout, else the process group is killed by pid.
//!   Output goes to anonymous temp files rather than pipes, so a reload
//!   command that starts a daemon inheriting its stdio cannot hang us.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use converge_model::ReloadAction;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use serde::Serialize;

pub(crate) use crate::pgbouncer_admin::PauseScope;

pub mod disposition;

use disposition::Disposition;

/// What a reload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReloadOutcome {
    /// The action ran (or the signal was delivered) and succeeded.
    Reloaded,
    /// The signalled program is not running; the files wait for its start.
    NotRunning,
    /// The target's reload is `none`.
    NoAction,
    /// Only mode/owner changed; the program's input is the same.
    NotNeeded,
}

impl ReloadOutcome {
    /// The words used in text output.
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadOutcome::Reloaded => "reloaded",
            ReloadOutcome::NotRunning => "not running, no reload needed",
            ReloadOutcome::NoAction => "no reload configured",
            ReloadOutcome::NotNeeded => "metadata only, no reload needed",
        }
    }

    /// The more informative of two outcomes, for a bundle with several
    /// actions.
    pub(crate) fn merge(self, other: ReloadOutcome) -> ReloadOutcome {
        fn rank(o: ReloadOutcome) -> u8 {
            match o {
                ReloadOutcome::Reloaded => 3,
                ReloadOutcome::NotRunning => 2,
                ReloadOutcome::NoAction => 1,
                ReloadOutcome::NotNeeded => 0,
            }
        }
        if rank(other) > rank(self) {
            other
        } else {
            self
        }
    }
}

/// Why a reload failed (the caller adds the bundle name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The action as [`describe`] shows it.
    pub command: String,
    /// What went wrong, in words.
    pub detail: String,
    /// The command's standard error, trimmed (empty for signals).
    pub stderr: String,
    /// Nothing reached the program: it still runs what it ran before the
    /// commit, and asking again at once would fail the same way (a
    /// PgBouncer `PAUSE` that timed out on an open transaction).
    pub untouched: bool,
}

/// Limits for running reload actions.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long a reload command may run before its group is killed.
    pub timeout: Duration,
    /// How long a signalled process must stay alive to count as reloaded.
    pub settle: Duration,
    /// How long to wait for a process to handle a signal before sending it.
    pub ready: Duration,
}

/// The action as a person would read it.
pub fn describe(action: &ReloadAction) -> String {
    match action {
        ReloadAction::Signal { pidfile, signal } => {
            format!("{signal} → pid in {}", pidfile.display())
        }
        ReloadAction::Command(argv) => format!("run: {}", argv.join(" ")),
        ReloadAction::Shell(s) => format!("sh -c: {s}"),
        ReloadAction::Pgbouncer(a) => format!(
            "pgbouncer admin {}:{} as {}: {}",
            a.host,
            a.port,
            a.user,
            if a.pause {
                "PAUSE, RELOAD, RESUME"
            } else {
                "RELOAD"
            }
        ),
        ReloadAction::None => "none".into(),
    }
}

/// Runs one reload action; `pause` says which databases a PgBouncer
/// admin-console reload holds (other actions ignore it).
pub fn run(
    action: &ReloadAction,
    limits: Limits,
    pause: &PauseScope,
) -> Result<ReloadOutcome, Failure> {
    match action {
        ReloadAction::None => Ok(ReloadOutcome::NoAction),
        ReloadAction::Signal { pidfile, signal } => signal_pidfile(action, pidfile, signal, limits),
        ReloadAction::Pgbouncer(admin) => crate::pgbouncer_admin::reload(action, admin, pause),
        ReloadAction::Command(argv) => {
            let Some((prog, args)) = argv.split_first() else {
                return Err(Failure {
                    command: describe(action),
                    detail: "empty command".into(),
                    stderr: String::new(),
                    untouched: false,
                });
            };
            let mut cmd = Command::new(prog);
            cmd.args(args);
            run_command(action, cmd, limits.timeout).map(|()| ReloadOutcome::Reloaded)
        }
        ReloadAction::Shell(script) => {
            let mut cmd = Command::new("/bin/sh");
            cmd.arg("-c").arg(script);
            run_command(action, cmd, limits.timeout).map(|()| ReloadOutcome::Reloaded)
        }
    }
}

/// `SIGHUP`, `HUP` or `hup` → the signal.
pub(crate) fn parse_signal(name: &str) -> Option<Signal> {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&full).ok()
}

fn signal_pidfile(
    action: &ReloadAction,
    pidfile: &Path,
    signal: &str,
    limits: Limits,
) -> Result<ReloadOutcome, Failure> {
    let fail = |detail: String| Failure {
        command: describe(action),
        detail,
        stderr: String::new(),
        untouched: false,
    };
    let Some(sig) = parse_signal(signal) else {
        return Err(fail(format!("unknown signal `{signal}`")));
    };
    let text = match std::fs::read_to_string(pidfile) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(ReloadOutcome::NotRunning),
        Err(e) => return Err(fail(format!("cannot read {}: {e}", pidfile.display()))),
    };
    // HAProxy writes one pid per line; the first is the master.
    let Some(first) = text.split_whitespace().next() else {
        return Ok(ReloadOutcome::NotRunning);
    };
    let pid = match first.parse::<i32>() {
        Ok(p) if p > 1 => Pid::from_raw(p),
        _ => {
            return Err(fail(format!(
                "{} does not hold a process id",
                pidfile.display()
            )))
        }
    };
    if !alive(pid) {
        return Ok(ReloadOutcome::NotRunning);
    }
    match await_handler(pid, sig, limits.ready) {
        Ready::Yes => {}
        Ready::Gone => return Ok(ReloadOutcome::NotRunning),
        Ready::No(why) => return Err(fail(why)),
    }
    match kill(pid, sig) {
        Ok(()) => {}
        Err(nix::errno::Errno::ESRCH) => return Ok(ReloadOutcome::NotRunning),
        Err(e) => return Err(fail(format!("cannot send {sig} to pid {pid}: {e}"))),
    }
    let deadline = Instant::now() + limits.settle;
    loop {
        if !alive(pid) {
            return Err(fail(format!("pid {pid} exited after {sig}")));
        }
        if Instant::now() >= deadline {
            return Ok(ReloadOutcome::Reloaded);
        }
        std::thread::sleep(Duration::from_millis(10).min(limits.settle));
    }
}

/// How often a process's signal disposition is read while waiting.
const READY_POLL: Duration = Duration::from_millis(10);

/// Whether a process may be sent a signal.
#[derive(Debug)]
enum Ready {
    /// It handles the signal now.
    Yes,
    /// It exited while we waited.
    Gone,
    /// It did not handle the signal by the deadline; why, for the report.
    No(String),
}

/// Waits until `pid` handles `sig` (see [`disposition`]), polling until
/// `timeout` has passed; always reads at least once.
fn await_handler(pid: Pid, sig: Signal, timeout: Duration) -> Ready {
    let start = Instant::now();
    loop {
        let last = disposition::read(pid, sig);
        if let Ok(d) = last {
            if d.handles() {
                if start.elapsed() >= READY_POLL {
                    tracing::info!(
                        %pid,
                        signal = %sig,
                        waited_ms = start.elapsed().as_millis() as u64,
                        "waited for the process to handle the signal"
                    );
                }
                return Ready::Yes;
            }
        }
        // A zombie's /proc entry stays readable with empty masks.
        if !alive(pid) {
            return Ready::Gone;
        }
        let waited = start.elapsed();
        if waited >= timeout {
            return Ready::No(not_ready(pid, sig, last, waited));
        }
        std::thread::sleep(READY_POLL.min(timeout - waited));
    }
}

/// Why `pid` was not sent `sig`, from the last reading of its disposition.
fn not_ready(pid: Pid, sig: Signal, last: io::Result<Disposition>, waited: Duration) -> String {
    let what = match last {
        Ok(Disposition::Default) => format!(
            "pid {pid} does not handle {sig} yet (SigCgt); not signalled, \
             since with no handler it would end the process or be lost"
        ),
        Ok(Disposition::Ignored) => {
            format!("pid {pid} ignores {sig} (SigIgn); not signalled, since it would be lost")
        }
        Ok(Disposition::Blocked) => format!(
            "pid {pid} blocks {sig} in every thread (SigBlk) and no signalfd reads it; \
             not signalled, since it could be discarded"
        ),
        // Not reached: a disposition that handles the signal ends the wait.
        Ok(d @ (Disposition::Caught | Disposition::SignalFd)) => {
            format!("pid {pid} changed its handling of {sig} ({d:?}); not signalled")
        }
        Err(e) => format!(
            "cannot tell whether pid {pid} handles {sig} (/proc/{pid}/status: {e}); not signalled"
        ),
    };
    format!("{what} (waited {:.1}s)", waited.as_secs_f64())
}

/// Whether `pid` is a live (not zombie) process.
pub(crate) fn alive(pid: Pid) -> bool {
    match kill(pid, None) {
        Ok(()) | Err(nix::errno::Errno::EPERM) => {}
        Err(_) => return false,
    }
    // A zombie still answers signal 0; its state in /proc/PID/stat is `Z`.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| state != "Z" && state != "X"),
        Err(_) => true,
    }
}

/// Most of a program's output an error message carries.
const OUTPUT_LIMIT: usize = 4096;

fn run_command(action: &ReloadAction, mut cmd: Command, timeout: Duration) -> Result<(), Failure> {
    let fail = |detail: String, stderr: String| Failure {
        command: describe(action),
        detail,
        stderr,
        untouched: false,
    };
    let (out, err) = match (tempfile::tempfile(), tempfile::tempfile()) {
        (Ok(o), Ok(e)) => (o, e),
        (Err(e), _) | (_, Err(e)) => {
            return Err(fail(
                format!("cannot create output file: {e}"),
                String::new(),
            ))
        }
    };
    let (out_w, err_w) = match (out.try_clone(), err.try_clone()) {
        (Ok(o), Ok(e)) => (o, e),
        (Err(e), _) | (_, Err(e)) => {
            return Err(fail(
                format!("cannot create output file: {e}"),
                String::new(),
            ))
        }
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out_w))
        .stderr(Stdio::from(err_w))
        .process_group(0);
    let mut child = cmd
        .spawn()
        .map_err(|e| fail(format!("cannot start: {e}"), String::new()))?;
    let pid = Pid::from_raw(child.id() as i32);
    let deadline = Instant::now() + timeout;
    let status: ExitStatus = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => {
                let _ = killpg(pid, Signal::SIGKILL);
                let _ = child.wait();
                return Err(fail(format!("cannot wait: {e}"), String::new()));
            }
        }
        if Instant::now() >= deadline {
            let _ = killpg(pid, Signal::SIGKILL);
            let _ = child.wait();
            return Err(fail(
                format!(
                    "timed out after {:.1}s and was killed",
                    timeout.as_secs_f64()
                ),
                collect_output(out, err),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    if status.success() {
        Ok(())
    } else {
        Err(fail(
            format!("exited with {status}"),
            collect_output(out, err),
        ))
    }
}

/// Stderr then stdout, trimmed and truncated.
fn collect_output(mut out: File, mut err: File) -> String {
    let read = |f: &mut File| {
        let mut buf = Vec::new();
        let _ = f.seek(SeekFrom::Start(0));
        let _ = f.take(OUTPUT_LIMIT as u64).read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).trim().to_string()
    };
    let e = read(&mut err);
    let o = read(&mut out);
    let mut text = match (e.is_empty(), o.is_empty()) {
        (false, false) => format!("{e}\n{o}"),
        (false, true) => e,
        (true, false) => o,
        (true, true) => String::new(),
    };
    if text.len() > OUTPUT_LIMIT {
        let mut cut = OUTPUT_LIMIT;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str(" …");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names_parse_with_or_without_prefix() {
        assert_eq!(parse_signal("SIGUSR2"), Some(Signal::SIGUSR2));
        assert_eq!(parse_signal("hup"), Some(Signal::SIGHUP));
        assert_eq!(parse_signal("SIGBOGUS"), None);
    }
}
