//! Signals sent to a program found through its pidfile, and only once it
//! handles them.
//!
//! The pid comes from the pidfile. No pidfile, or no such process, means
//! the program is not running: nothing needs a reload and that is not an
//! error (the files are in place for its next start). Otherwise the signal
//! is sent only once the process handles it (a handler in `SigCgt`, or a
//! signalfd; see [`disposition`]), waiting up to a deadline for that: a
//! program that has not installed its handler yet — HAProxy's master right
//! after it starts or re-executes — would be killed by the signal or would
//! drop it. Every signal waits, so the second of two quick reloads waits
//! for the re-executed master too. If the deadline passes the signal is
//! not sent and the caller is told why. After the signal, the process must
//! still be alive after a short settle window (a zombie counts as dead).
//!
//! A pidfile can be stale, its pid reused by a stranger. When the caller
//! names the [`Program`] (from the target's validator), the process must
//! run that executable, and for HAProxy a new worker must appear after the
//! signal; see [`identity`]. The process is held by a pidfd from the first
//! check to the signal, so the pid cannot change hands in between.
//!
//! This is the one place converge signals a process it did not start, so
//! it is kept apart from the [`process`](crate::process) runner, which only
//! ever signals its own children.

use std::io;
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rustix::process::{pidfd_open, pidfd_send_signal, PidfdFlags};

pub mod disposition;
pub mod identity;

use disposition::Disposition;
pub use identity::Program;

/// What sending a signal through a pidfile did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// The process handled the signal and was still alive after the settle
    /// window.
    Delivered,
    /// No pidfile, an empty one, or no such (live) process.
    NotRunning,
}

/// How long to wait around a signal.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How long to wait for the process to handle the signal before
    /// giving up without sending it.
    pub ready: Duration,
    /// How long the process must stay alive after it to count as
    /// delivered.
    pub settle: Duration,
}

/// `SIGHUP`, `HUP` or `hup` → the signal.
pub fn parse(name: &str) -> Option<Signal> {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&full).ok()
}

/// Sends `signal` (a name [`parse`] reads) to the process whose pid is the
/// first word of `pidfile`, once it handles it and, when `program` is
/// known, only if it is that program; why not, in words.
pub fn send_to_pidfile(
    pidfile: &Path,
    signal: &str,
    timing: Timing,
    program: Option<Program>,
) -> Result<Sent, String> {
    let Some(sig) = parse(signal) else {
        return Err(format!("unknown signal `{signal}`"));
    };
    let text = match std::fs::read_to_string(pidfile) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Sent::NotRunning),
        Err(e) => return Err(format!("cannot read {}: {e}", pidfile.display())),
    };
    // HAProxy writes one pid per line; the first is the master.
    let Some(first) = text.split_whitespace().next() else {
        return Ok(Sent::NotRunning);
    };
    let pid = match first.parse::<i32>() {
        Ok(p) if p > 1 => Pid::from_raw(p),
        _ => return Err(format!("{} does not hold a process id", pidfile.display())),
    };
    if !alive(pid) {
        return Ok(Sent::NotRunning);
    }
    // From here the pidfd names this process, whatever becomes of the pid.
    let pidfd = match rustix::process::Pid::from_raw(pid.as_raw())
        .ok_or(rustix::io::Errno::SRCH)
        .and_then(|p| pidfd_open(p, PidfdFlags::empty()))
    {
        Ok(fd) => fd,
        Err(rustix::io::Errno::SRCH) => return Ok(Sent::NotRunning),
        Err(e) => return Err(format!("cannot open pid {pid}: {e}")),
    };
    if let Some(program) = program {
        identity::check(pid, program)?;
    }
    match await_handler(pid, sig, timing.ready) {
        Ready::Yes => {}
        Ready::Gone => return Ok(Sent::NotRunning),
        Ready::No(why) => return Err(why),
    }
    let new_worker = program == Some(Program::Haproxy) && sig == Signal::SIGUSR2;
    let workers = if new_worker {
        identity::children(pid)
    } else {
        Vec::new()
    };
    let rsig = rustix::process::Signal::from_named_raw(sig as i32)
        .ok_or_else(|| format!("cannot send {sig}: not a signal this system names"))?;
    match pidfd_send_signal(&pidfd, rsig) {
        Ok(()) => {}
        Err(rustix::io::Errno::SRCH) => return Ok(Sent::NotRunning),
        Err(e) => return Err(format!("cannot send {sig} to pid {pid}: {e}")),
    }
    let deadline = Instant::now() + timing.settle;
    loop {
        if !alive(pid) {
            return Err(format!("pid {pid} exited after {sig}"));
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(10).min(timing.settle));
    }
    if new_worker {
        identity::await_new_worker(pid, &workers, timing.ready)?;
    }
    Ok(Sent::Delivered)
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
pub fn alive(pid: Pid) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names_parse_with_or_without_prefix() {
        assert_eq!(parse("SIGUSR2"), Some(Signal::SIGUSR2));
        assert_eq!(parse("hup"), Some(Signal::SIGHUP));
        assert_eq!(parse("SIGBOGUS"), None);
    }
}
