//! Telling a program to pick up committed files: the manifest's reload
//! actions, one function that runs any of them.
//!
//! - `Signal`: through the pidfile, once the process handles it, and only
//!   if it is the program the target's validator names (see [`signal`]).
//! - `Command`: an argv run without a shell; `Shell`: `/bin/sh -c`. Both
//!   go through the [`process`](crate::process) runner and must exit 0
//!   within a timeout, else the process group is killed. What they leave
//!   running in their group when they exit by themselves is left alone: a
//!   reload command may start the daemon.
//! - `Pgbouncer`: the admin console (see
//!   [`pgbouncer::console`](crate::pgbouncer::console)).
//!
//! The outcome is typed ([`ReloadOutcome`], [`ReloadFailure`]) so the
//! transaction can tell "not running" from "reloaded" and a failure that
//! never reached the program from one that did.

use std::process::Command;
use std::time::{Duration, Instant};

use converge_model::ReloadAction;
use serde::Serialize;

pub use crate::pgbouncer::console::PauseScope;
use crate::pgbouncer::console::{self, ConsoleReload};
use crate::process::{Options, Running};
use crate::signal::{self, Program, Sent};

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
    pub fn merge(self, other: ReloadOutcome) -> ReloadOutcome {
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
pub struct ReloadFailure {
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
/// admin-console reload holds, and `program` which program a signal's
/// pidfile must name (other actions ignore them).
pub fn run(
    action: &ReloadAction,
    limits: Limits,
    pause: &PauseScope,
    program: Option<Program>,
) -> Result<ReloadOutcome, ReloadFailure> {
    match action {
        ReloadAction::None => Ok(ReloadOutcome::NoAction),
        ReloadAction::Signal { pidfile, signal } => {
            let timing = signal::Timing {
                ready: limits.ready,
                settle: limits.settle,
            };
            match signal::send_to_pidfile(pidfile, signal, timing, program) {
                Ok(Sent::Delivered) => Ok(ReloadOutcome::Reloaded),
                Ok(Sent::NotRunning) => Ok(ReloadOutcome::NotRunning),
                Err(detail) => Err(ReloadFailure {
                    command: describe(action),
                    detail,
                    stderr: String::new(),
                    untouched: false,
                }),
            }
        }
        ReloadAction::Pgbouncer(admin) => match console::reload(admin, pause) {
            Ok(ConsoleReload::Reloaded) => Ok(ReloadOutcome::Reloaded),
            Ok(ConsoleReload::NotRunning) => Ok(ReloadOutcome::NotRunning),
            Err(e) => Err(ReloadFailure {
                command: describe(action),
                detail: e.detail,
                stderr: e.stderr,
                untouched: e.untouched,
            }),
        },
        ReloadAction::Command(argv) => {
            let Some((prog, args)) = argv.split_first() else {
                return Err(ReloadFailure {
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

/// Most of a program's output an error message carries.
const OUTPUT_LIMIT: usize = 4096;

/// Runs a reload command to a zero exit within `timeout`.
fn run_command(
    action: &ReloadAction,
    mut cmd: Command,
    timeout: Duration,
) -> Result<(), ReloadFailure> {
    let fail = |detail: String, stderr: String| ReloadFailure {
        command: describe(action),
        detail,
        stderr,
        untouched: false,
    };
    let options = Options {
        separate_stderr: true,
        keep_group_on_exit: true,
        ..Options::default()
    };
    let start = Instant::now();
    let mut child = Running::spawn_with(&mut cmd, options)
        .map_err(|e| fail(format!("cannot start: {e}"), String::new()))?;
    let status = match child.wait_until(start, timeout) {
        Ok(Some(status)) => status,
        Ok(None) => {
            let _ = child.kill();
            return Err(fail(
                format!(
                    "timed out after {:.1}s and was killed",
                    timeout.as_secs_f64()
                ),
                collect_output(&mut child),
            ));
        }
        Err(e) => {
            let _ = child.kill();
            return Err(fail(format!("cannot wait: {e}"), String::new()));
        }
    };
    if status.success() {
        Ok(())
    } else {
        Err(fail(
            format!("exited with {status}"),
            collect_output(&mut child),
        ))
    }
}

/// Stderr then stdout, trimmed and truncated.
fn collect_output(child: &mut Running) -> String {
    let text = |bytes: std::io::Result<Vec<u8>>| {
        String::from_utf8_lossy(&bytes.unwrap_or_default())
            .trim()
            .to_string()
    };
    let e = text(child.stderr(OUTPUT_LIMIT as u64));
    let o = text(child.stdout(OUTPUT_LIMIT as u64));
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
