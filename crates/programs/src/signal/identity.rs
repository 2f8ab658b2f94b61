//! Whether the pid in a pidfile is the program a target reloads, and
//! whether the program shows that a reload signal took effect.
//!
//! A pidfile outlives its process: after a crash, or a stop that left it
//! behind, its pid can be reused by anything, and a stranger that handles
//! `SIGHUP` or `SIGUSR2` would take the signal and pass every other check.
//! So when the target's validator names the program (`haproxy`,
//! `pgbouncer`, `keepalived`), the process's executable (`/proc/PID/exe`)
//! must be that program: its file name, or the same file as the binary the
//! validator runs. Otherwise nothing is signalled and the reload fails.
//!
//! After the signal, what the program can tell:
//! - HAProxy (master-worker, `SIGUSR2`): the master re-executes and forks
//!   new workers; a child of the master that was not there before the
//!   signal must appear within the deadline, else the reload failed (the
//!   master kept its old workers: the new config did not load).
//! - PgBouncer and keepalived by signal: only that the process is the
//!   program and survived the signal. PgBouncer's admin-console reload
//!   (`reload: {pgbouncer: ...}`) is the one that checks what PgBouncer
//!   runs afterwards.
//! - A target validated by a `command` or `none` names no program: its
//!   pid is not checked beyond handling the signal.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use converge_model::manifest::Validator;
use nix::unistd::Pid;

use crate::process::{self, lineage::start_time};

/// A program whose identity converge can check before signalling it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Program {
    /// `haproxy`.
    Haproxy,
    /// `pgbouncer`.
    Pgbouncer,
    /// `keepalived`.
    Keepalived,
}

impl Program {
    /// The program a target's validator runs, if it names one.
    pub fn of(validator: &Validator) -> Option<Program> {
        match validator {
            Validator::Haproxy => Some(Program::Haproxy),
            Validator::Pgbouncer => Some(Program::Pgbouncer),
            Validator::Keepalived => Some(Program::Keepalived),
            Validator::Command(_) | Validator::None => None,
        }
    }

    /// Its executable's file name.
    pub fn executable(self) -> &'static str {
        match self {
            Program::Haproxy => "haproxy",
            Program::Pgbouncer => "pgbouncer",
            Program::Keepalived => "keepalived",
        }
    }
}

/// `Ok` when `pid` runs `program`; why not, in words.
pub(super) fn check(pid: Pid, program: Program) -> Result<(), String> {
    let exe = fs::read_link(format!("/proc/{pid}/exe")).map_err(|e| {
        format!(
            "cannot tell which program pid {pid} runs (/proc/{pid}/exe: {e}); not signalled, \
             since it may not be {}",
            program.executable()
        )
    })?;
    if is(&exe, program) {
        Ok(())
    } else {
        Err(format!(
            "pid {pid} runs {}, not {}: the pidfile is stale (its pid now belongs to another \
             process); not signalled",
            exe.display(),
            program.executable()
        ))
    }
}

/// Whether the executable `exe` (as `/proc/PID/exe` shows it) is
/// `program`: the same file name, or the same file as the one the
/// validator runs. A binary replaced by a package upgrade reads as
/// `PATH (deleted)`.
fn is(exe: &Path, program: Program) -> bool {
    let text = exe.to_string_lossy();
    let exe = Path::new(text.strip_suffix(" (deleted)").unwrap_or(&text));
    let name = program.executable();
    exe.file_name().is_some_and(|n| n == name)
        || fs::canonicalize(process::program(name)).is_ok_and(|p| p == exe)
}

/// The children of `pid` as (pid, start time), read from `/proc`.
pub(super) fn children(pid: Pid) -> Vec<(u32, u64)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let parent = pid.as_raw().to_string();
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|s| Some(s.rsplit_once(')')?.1.split_whitespace().nth(1)? == parent))
                .unwrap_or(false)
        })
        .filter_map(|child| Some((child, start_time(child)?)))
        .collect()
}

/// Waits up to `timeout` for HAProxy's master `pid` to have a child that
/// is not one of `before`: a worker started by the reload.
pub(super) fn await_new_worker(
    pid: Pid,
    before: &[(u32, u64)],
    timeout: Duration,
) -> Result<(), String> {
    let start = Instant::now();
    loop {
        if children(pid).iter().any(|c| !before.contains(c)) {
            return Ok(());
        }
        let waited = start.elapsed();
        if waited >= timeout {
            return Err(format!(
                "HAProxy's master (pid {pid}) took the signal but started no new worker within \
                 {:.1}s: the reload did not take effect (HAProxy's log says why)",
                waited.as_secs_f64()
            ));
        }
        std::thread::sleep(Duration::from_millis(10).min(timeout - waited));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_is_known_by_file_name_even_after_an_upgrade() {
        assert!(is(Path::new("/usr/sbin/haproxy"), Program::Haproxy));
        assert!(is(
            Path::new("/usr/sbin/haproxy (deleted)"),
            Program::Haproxy
        ));
        assert!(is(Path::new("/opt/pgb/bin/pgbouncer"), Program::Pgbouncer));
        assert!(!is(Path::new("/usr/bin/dash"), Program::Haproxy));
        assert!(!is(Path::new("/usr/sbin/haproxy-old"), Program::Haproxy));
    }

    #[test]
    fn this_test_is_not_haproxy() {
        let me = Pid::this();
        let err = check(me, Program::Haproxy).expect_err("not haproxy");
        assert!(err.contains("not haproxy"), "{err}");
        assert!(Program::of(&Validator::None).is_none());
        assert_eq!(
            Program::of(&Validator::Keepalived).map(Program::executable),
            Some("keepalived")
        );
    }
}
