//! A real keepalived (VRRP only) running inside a test's network namespace.
//!
//! [`Keepalived::start`] runs
//!
//! ```text
//! ip netns exec NS keepalived -n -l -D -G -P -f CONFIG -p PIDFILE
//!     -r STEM_vrrp.pid -c STEM_checkers.pid -b STEM_bfd.pid
//! ```
//!
//! as our child: `-n` keeps the parent in the foreground (so the guard can
//! reap it), `-l -D -G` send detailed logs to the console instead of
//! syslog, `-P` runs only the VRRP subsystem. Every pidfile is the
//! caller's, so several instances run side by side (keepalived refuses to
//! start when its pidfiles name a live process); `PIDFILE` is the one
//! converge's signal reloader reads, so a test passes the rooted path its
//! manifest names. `ip netns exec` `exec`s keepalived, so the child's pid is
//! keepalived's parent process. Output is appended to `STEM.log`.
//!
//! keepalived forks a VRRP child that holds the VIPs and sends the adverts;
//! it dies with its parent (parent-death signal), but gracefully: it first
//! advertises priority 0 and removes its VIPs, so the peer takes over at
//! once. [`Keepalived::stop`] is that orderly shutdown. [`Keepalived::crash`]
//! is a node dying instead: the parent is stopped (`SIGSTOP`, so it cannot
//! respawn the child), the VRRP child and then the parent get `SIGKILL`;
//! no last advert goes out and the VIPs stay on the interface, and the peer
//! only takes over when its master-down timer (3 × advert_int + skew)
//! expires.
//!
//! Readiness is "both pidfiles name live processes and the log shows the
//! instances entering a state (`Entering BACKUP STATE`, `MASTER` or
//! `FAULT`)".

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::netns::Netns;
use crate::process::{pid_alive, read_pidfile, Child};
use crate::wait;

/// How long [`Keepalived::start`] waits for keepalived to be ready.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A running keepalived parent and its VRRP child, stopped on drop.
#[derive(Debug)]
pub struct Keepalived {
    child: Child,
    /// `None` before readiness and once the child is known to be gone, so a
    /// pid the kernel may have handed to someone else is never signalled.
    vrrp_pid: Option<u32>,
    pidfile: PathBuf,
    log: PathBuf,
    log_offset: usize,
}

impl Keepalived {
    // Long on purpose: keepalived's config, its start inside the namespace
    // and the wait for its pidfile, in the order they happen.
    /// Starts keepalived on `config` inside `ns`, writing its parent's pid
    /// to `pidfile`, and waits until it is ready (see the module docs).
    ///
    /// # Errors
    ///
    /// When it cannot be spawned, exits, or is not ready within
    /// [`DEADLINE`]; the message carries its log.
    pub fn start(ns: &Netns, config: &Path, pidfile: &Path) -> Result<Self, String> {
        let dir = pidfile
            .parent()
            .ok_or_else(|| format!("pidfile {} has no directory", pidfile.display()))?;
        fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let stem = pidfile
            .file_stem()
            .map_or_else(|| "keepalived".into(), |s| s.to_string_lossy().into_owned());
        let sibling = |suffix: &str| dir.join(format!("{stem}{suffix}"));
        let vrrp_pidfile = sibling("_vrrp.pid");
        let log = sibling(".log");
        // Pidfiles of an instance this test killed name dead (or, later,
        // reused) pids; they are ours, so start clean.
        for p in [pidfile, &vrrp_pidfile] {
            let _ = fs::remove_file(p);
        }
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| format!("cannot open keepalived log {}: {e}", log.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("cannot duplicate keepalived log handle: {e}"))?;
        let log_offset = fs::metadata(&log).map_or(0, |m| m.len() as usize);
        let mut cmd = ns.command("keepalived");
        cmd.args(["-n", "-l", "-D", "-G", "-P", "-f"])
            .arg(config)
            .arg("-p")
            .arg(pidfile)
            .arg("-r")
            .arg(&vrrp_pidfile)
            .arg("-c")
            .arg(sibling("_checkers.pid"))
            .arg("-b")
            .arg(sibling("_bfd.pid"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = Child::spawn(format!("keepalived in {}", ns.name()), &mut cmd)
            .map_err(|e| e.to_string())?;
        let mut k = Self {
            child,
            vrrp_pid: None,
            pidfile: pidfile.to_path_buf(),
            log,
            log_offset,
        };
        let what = format!("keepalived in {} to start its VRRP instances", ns.name());
        let ready = wait::until_some(DEADLINE, &what, || {
            if !k.child.is_running() {
                return Some(Err(format!(
                    "keepalived exited: {:?}",
                    k.child.try_status()
                )));
            }
            let parent = read_pidfile(pidfile).filter(|&p| pid_alive(p))?;
            let vrrp = read_pidfile(&vrrp_pidfile).filter(|&p| pid_alive(p))?;
            let log = k.log();
            let entered = [
                "Entering BACKUP STATE",
                "Entering MASTER STATE",
                "Entering FAULT STATE",
            ]
            .iter()
            .any(|s| log.contains(s));
            entered.then_some(Ok((parent, vrrp)))
        });
        match ready {
            Ok(Ok((parent, vrrp))) if parent == k.child.pid() => {
                k.vrrp_pid = Some(vrrp);
                Ok(k)
            }
            Ok(Ok((parent, _))) => Err(format!(
                "keepalived's pidfile names pid {parent}, not the spawned pid {}\n{}",
                k.child.pid(),
                k.log()
            )),
            Ok(Err(e)) | Err(e) => Err(format!("{e}\n--- keepalived log\n{}", k.log())),
        }
    }

    /// The parent's pid (the one in the pidfile, which converge signals).
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// The VRRP child's pid, while it is known to run.
    pub fn vrrp_pid(&self) -> Option<u32> {
        self.vrrp_pid
    }

    /// The pidfile given at start.
    pub fn pidfile(&self) -> &Path {
        &self.pidfile
    }

    /// What this instance has logged since it started.
    pub fn log(&self) -> String {
        let all = fs::read(&self.log).unwrap_or_default();
        String::from_utf8_lossy(all.get(self.log_offset..).unwrap_or_default()).into_owned()
    }

    /// True while the parent and the VRRP child both run.
    pub fn is_running(&mut self) -> bool {
        self.child.is_running() && self.vrrp_pid.is_some_and(pid_alive)
    }

    /// Kills the instance the way a dying node loses it: no last advert, the
    /// VIPs stay on the interface (see the module docs). Returns when both
    /// processes are gone.
    ///
    /// # Errors
    ///
    /// When a process is still alive after `SIGKILL`.
    pub fn crash(&mut self) -> Result<(), String> {
        if self.child.is_running() {
            let _ = kill(pid_of(self.child.pid()), Signal::SIGSTOP);
        }
        if let Some(vrrp) = self.vrrp_pid.filter(|&p| pid_alive(p)) {
            let _ = kill(pid_of(vrrp), Signal::SIGKILL);
        }
        let _ = self.child.signal(Signal::SIGKILL);
        self.child.wait_exit(Duration::from_secs(10))?;
        self.forget_vrrp_child(Duration::from_secs(10), false)
    }

    /// Sends `SIGTERM` to the parent and returns at once: the orderly
    /// shutdown of [`Keepalived::stop`] without waiting for it, so a caller
    /// can time what the peer does meanwhile. Call `stop` (or drop) after.
    ///
    /// # Errors
    ///
    /// When the parent has already exited or `kill` fails.
    pub fn terminate(&mut self) -> Result<(), String> {
        self.child.signal(Signal::SIGTERM)
    }

    /// Stops the instance in order (`SIGTERM` to the parent, which stops
    /// the VRRP child: priority-0 advert, VIPs removed), falling back to
    /// `SIGKILL` after the grace period. Idempotent.
    ///
    /// # Errors
    ///
    /// When the VRRP child outlives its parent by more than the grace
    /// period and a `SIGKILL`.
    pub fn stop(&mut self) -> Result<(), String> {
        self.child.stop();
        self.forget_vrrp_child(Duration::from_secs(5), true)
    }

    /// Waits for the VRRP child to be gone (`SIGKILL` after `grace` when
    /// `force`), then forgets its pid.
    fn forget_vrrp_child(&mut self, grace: Duration, force: bool) -> Result<(), String> {
        let Some(vrrp) = self.vrrp_pid else {
            return Ok(());
        };
        let what = format!("keepalived's VRRP child (pid {vrrp}) to exit");
        let mut gone = wait::until(grace, &what, || !pid_alive(vrrp));
        if gone.is_err() && force {
            let _ = kill(pid_of(vrrp), Signal::SIGKILL);
            gone = wait::until(grace, &what, || !pid_alive(vrrp));
        }
        if gone.is_ok() {
            self.vrrp_pid = None;
        }
        gone
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("testkit: {e}");
        }
    }
}

fn pid_of(pid: u32) -> Pid {
    Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX))
}
