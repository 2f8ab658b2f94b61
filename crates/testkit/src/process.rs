//! Guards that stop the programs a test started, by pid, when dropped.
//!
//! [`Child`] owns a process this test spawned: on drop it sends `SIGTERM`,
//! waits up to a grace period for the process to exit, then sends `SIGKILL`,
//! and always reaps it, so no zombie and no stray program outlives a test
//! (panicking tests included, because drop runs during unwinding).
//!
//! [`Daemon`] is for a program that detached itself (for example
//! `haproxy -W -D`, whose master writes its pid to a pidfile and is
//! re-parented to init): it cannot be reaped by us, so "gone" means the pid
//! no longer exists or has become a zombie awaiting init.
//!
//! Nothing is ever looked up or killed by name.

use std::fs;
use std::io;
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::wait;

/// How long a program gets to exit after `SIGTERM` before `SIGKILL`.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);

/// A spawned process, terminated and reaped on drop.
#[derive(Debug)]
pub struct Child {
    inner: std::process::Child,
    name: String,
    grace: Duration,
    status: Option<ExitStatus>,
}

impl Child {
    /// Spawns `cmd`; `name` is used in messages.
    ///
    /// # Errors
    ///
    /// The spawn error, with the program name added.
    pub fn spawn(name: impl Into<String>, cmd: &mut Command) -> io::Result<Self> {
        let name = name.into();
        let inner = cmd
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot start {name}: {e}")))?;
        Ok(Self {
            inner,
            name,
            grace: DEFAULT_GRACE,
            status: None,
        })
    }

    /// Sets how long the process gets between `SIGTERM` and `SIGKILL`.
    #[must_use]
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.inner.id()
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The exit status if the process has exited (reaping it), else `None`.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Ok(Some(s)) = self.inner.try_wait() {
                self.status = Some(s);
            }
        }
        self.status
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// Sends `sig` to the process.
    ///
    /// # Errors
    ///
    /// When the process has already exited and been reaped (its pid may
    /// belong to someone else by now), or when `kill` fails.
    pub fn signal(&mut self, sig: Signal) -> Result<(), String> {
        if let Some(s) = self.try_status() {
            return Err(format!(
                "{} (pid {}) already exited: {s}",
                self.name,
                self.pid()
            ));
        }
        kill(pid_of(self.pid()), sig).map_err(|e| {
            format!(
                "cannot send {sig} to {} (pid {}): {e}",
                self.name,
                self.pid()
            )
        })
    }

    /// Waits up to `deadline` for the process to exit by itself.
    ///
    /// # Errors
    ///
    /// When it is still running at the deadline.
    pub fn wait_exit(&mut self, deadline: Duration) -> Result<ExitStatus, String> {
        let what = format!("{} (pid {}) to exit", self.name, self.pid());
        wait::until_some(deadline, &what, || self.try_status())
    }

    /// Stops the process now: `SIGTERM`, the grace period, then `SIGKILL`;
    /// returns how it ended. Idempotent.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        if let Some(s) = self.try_status() {
            return Some(s);
        }
        let _ = kill(pid_of(self.pid()), Signal::SIGTERM);
        if let Ok(s) = self.wait_exit(self.grace) {
            return Some(s);
        }
        let _ = kill(pid_of(self.pid()), Signal::SIGKILL);
        // SIGKILL cannot be caught, so a blocking wait ends promptly.
        self.status = self.inner.wait().ok();
        self.status
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A detached program known only by its pid, stopped on drop.
#[derive(Debug)]
pub struct Daemon {
    pid: u32,
    name: String,
    grace: Duration,
    stopped: bool,
}

impl Daemon {
    /// Guards the process whose pid `pidfile` holds, waiting up to
    /// `deadline` for the file to appear and name a live process.
    ///
    /// # Errors
    ///
    /// When the deadline passes first.
    pub fn from_pidfile(
        name: impl Into<String>,
        pidfile: &Path,
        deadline: Duration,
    ) -> Result<Self, String> {
        let name = name.into();
        let what = format!("{} to write a live pid to {}", name, pidfile.display());
        let pid = wait::until_some(deadline, &what, || {
            read_pidfile(pidfile).filter(|&pid| pid_alive(pid))
        })?;
        Ok(Self::from_pid(name, pid))
    }

    /// Guards `pid`.
    pub fn from_pid(name: impl Into<String>, pid: u32) -> Self {
        Self {
            pid,
            name: name.into(),
            grace: DEFAULT_GRACE,
            stopped: false,
        }
    }

    /// Sets how long the process gets between `SIGTERM` and `SIGKILL`.
    #[must_use]
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// True while the pid exists and is not a zombie.
    pub fn is_alive(&self) -> bool {
        !self.stopped && pid_alive(self.pid)
    }

    /// Sends `sig` to the process.
    ///
    /// # Errors
    ///
    /// When the process is gone or `kill` fails.
    pub fn signal(&self, sig: Signal) -> Result<(), String> {
        if !self.is_alive() {
            return Err(format!("{} (pid {}) is not running", self.name, self.pid));
        }
        kill(pid_of(self.pid), sig)
            .map_err(|e| format!("cannot send {sig} to {} (pid {}): {e}", self.name, self.pid))
    }

    /// Stops the process: `SIGTERM`, the grace period, then `SIGKILL`.
    ///
    /// # Errors
    ///
    /// When it is still alive after `SIGKILL` and a further grace period.
    pub fn stop(&mut self) -> Result<(), String> {
        if self.stopped {
            return Ok(());
        }
        let what = format!("{} (pid {}) to exit", self.name, self.pid);
        if pid_alive(self.pid) {
            let _ = kill(pid_of(self.pid), Signal::SIGTERM);
            if wait::until(self.grace, &what, || !pid_alive(self.pid)).is_err() {
                let _ = kill(pid_of(self.pid), Signal::SIGKILL);
                wait::until(self.grace, &what, || !pid_alive(self.pid))?;
            }
        }
        self.stopped = true;
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("testkit: {e}");
        }
    }
}

/// The pid in `path`, if it holds one.
pub fn read_pidfile(path: &Path) -> Option<u32> {
    fs::read_to_string(path)
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
        .filter(|&pid| pid > 0 && i32::try_from(pid).is_ok())
}

/// True when `pid` names a process that is neither gone nor a zombie.
pub fn pid_alive(pid: u32) -> bool {
    match kill(pid_of(pid), None) {
        Ok(()) | Err(Errno::EPERM) => !is_zombie(pid),
        Err(_) => false,
    }
}

fn is_zombie(pid: u32) -> bool {
    // /proc/PID/stat is `pid (comm) STATE ...`; comm may contain spaces
    // and parentheses, so the state is the field after the last `)`.
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

pub(crate) fn pid_of(pid: u32) -> Pid {
    // Pids come from the kernel (spawn or a pidfile checked above), so they
    // fit in i32; saturating keeps a bad value from becoming -1 (= all).
    Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Stdio;

    fn sleeper() -> Child {
        Child::spawn(
            "sleep",
            Command::new("sleep").arg("600").stdin(Stdio::null()),
        )
        .expect("spawn sleep")
    }

    #[test]
    fn drop_terminates_and_reaps() {
        let child = sleeper();
        let pid = child.pid();
        assert!(pid_alive(pid));
        drop(child);
        assert!(!pid_alive(pid), "pid {pid} still alive after drop");
    }

    #[test]
    fn a_process_ignoring_sigterm_is_killed_after_the_grace_period() {
        let mut child = Child::spawn(
            "stubborn sh",
            Command::new("/bin/sh")
                .args(["-c", "trap '' TERM; echo ready; exec sleep 600"])
                .stdout(Stdio::piped()),
        )
        .expect("spawn sh")
        .with_grace(Duration::from_millis(200));
        // Wait until the trap is installed (the shell printed "ready").
        let mut out = child.inner.stdout.take().expect("piped stdout");
        let mut buf = [0u8; 6];
        io::Read::read_exact(&mut out, &mut buf).expect("read ready");
        let status = child.stop().expect("reaped");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(Signal::SIGKILL as i32), "{status}");
    }

    #[test]
    fn daemon_guard_stops_by_pidfile() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pidfile = dir.path().join("d.pid");
        // A shell that backgrounds a sleeper, records its pid and exits:
        // the sleeper is re-parented away from us, like a daemon.
        let mut launcher = Child::spawn(
            "launcher",
            Command::new("/bin/sh")
                .args([
                    "-c",
                    "sleep 600 </dev/null >/dev/null 2>&1 & echo $! > \"$1\"",
                    "sh",
                ])
                .arg(&pidfile),
        )
        .expect("spawn launcher");
        launcher
            .wait_exit(Duration::from_secs(5))
            .expect("launcher exits");
        let daemon =
            Daemon::from_pidfile("sleep daemon", &pidfile, Duration::from_secs(5)).expect("pid");
        let pid = daemon.pid();
        assert!(daemon.is_alive());
        drop(daemon);
        assert!(!pid_alive(pid), "daemon pid {pid} still alive after drop");
    }

    #[test]
    fn pidfile_parsing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("x.pid");
        fs::write(&p, "1234\n").expect("write");
        assert_eq!(read_pidfile(&p), Some(1234));
        fs::write(&p, "garbage").expect("write");
        assert_eq!(read_pidfile(&p), None);
        fs::write(&p, "0").expect("write");
        assert_eq!(read_pidfile(&p), None);
        assert_eq!(read_pidfile(&dir.path().join("missing")), None);
    }
}
