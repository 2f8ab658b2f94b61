//! A stranger: a process that is not the program a pidfile names, but
//! handles the signals a reload sends, as a pid reused after a crash may
//! be. It records every signal it handles, so a test can show that none
//! reached it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::process::Child;
use crate::wait;

/// The signals the stranger traps; `TERM` has the highest number, so the
/// shell runs its trap after any of the others pending with it.
const TRAPPED: &str = "HUP USR2 TERM";

/// A `sh` that traps `SIGHUP`, `SIGUSR2` and `SIGTERM`, each trap
/// appending the signal's name to a file; stopped with `SIGKILL` by pid on
/// drop (it survives `SIGTERM`).
#[derive(Debug)]
pub struct Stranger {
    child: Child,
    log: PathBuf,
}

impl Stranger {
    /// Starts it with its files in `dir`, once its traps are set.
    ///
    /// # Errors
    ///
    /// It could not be started, or did not set its traps within 10 s.
    pub fn start(dir: &Path) -> Result<Self, String> {
        let log = dir.join("stranger-handled");
        let ready = dir.join("stranger-ready");
        let script = format!(
            "for s in {TRAPPED}; do trap \"echo $s >> {log}\" $s; done; touch {ready}; \
             while :; do sleep 0.05; done",
            log = log.display(),
            ready = ready.display(),
        );
        // `--default-signal`: a test runner may hand down ignored signals.
        let child = Child::spawn(
            "stranger",
            Command::new("env").args(["--default-signal", "sh", "-c", &script]),
        )
        .map_err(|e| e.to_string())?
        .with_grace(Duration::ZERO);
        wait::until(Duration::from_secs(10), "the stranger's traps", || {
            ready.exists()
        })?;
        Ok(Self { child, log })
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// The signals it handled, one name a line, read once a `SIGTERM` sent
    /// now has been handled: anything sent before it has been too.
    ///
    /// # Errors
    ///
    /// It is gone, or did not handle the `SIGTERM` within 10 s.
    pub fn handled(&mut self) -> Result<String, String> {
        self.child.signal(Signal::SIGTERM)?;
        let read = || std::fs::read_to_string(&self.log).unwrap_or_default();
        wait::until(Duration::from_secs(10), "the stranger's TERM trap", || {
            read().contains("TERM")
        })?;
        if !self.child.is_running() {
            return Err("the stranger exited".to_string());
        }
        Ok(read().replace("TERM\n", ""))
    }
}
