//! The one way converge runs a child process.
//!
//! Every program converge starts goes through [`Running`]: validators
//! (`haproxy -c`, `keepalived -t`, the trial PgBouncer, a manifest's
//! command), reload commands, and `psql` for PgBouncer's console. One
//! runner, so every child gets the same guarantees: its own process group,
//! stdin from `/dev/null`, output on anonymous temp files (never pipes, so
//! a chatty program, or a daemon a reload command starts that inherits its
//! stdio, can never block on a full pipe or hang us), and a deadline.
//!
//! Exit is awaited in `poll(2)` on a pidfd with the deadline as timeout, so
//! converge learns of it the moment it happens (a validator's exit is on
//! the path of every change) and spends nothing meanwhile; on timeout the
//! whole group is killed with `SIGKILL` and reaped. When the program exits
//! by itself, anything it left running in its group is killed too (unless
//! [`Options::keep_group_on_exit`] says the leftovers are the point, as for
//! a reload command that starts the daemon), while the leader is still an
//! unreaped zombie (`waitid(WNOWAIT)`), so its pid, which is the group id,
//! cannot have been reused by then. Only ids we spawned are ever
//! signalled.
//!
//! Every child also dies with converge, `kill -9` included, and what a
//! crashed converge left running is reaped by the next run: see
//! [`lineage`] for how (a parent-death signal set through `setpriv`, a PID
//! namespace for children that change user, and a record of started
//! children checked by pid and start time).

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::process::{pidfd_open, PidfdFlags};

pub mod lineage;

/// How a [`run`] ended when it did not simply exit.
#[derive(Debug)]
pub enum RunError {
    /// The program could not be started, or its output not captured.
    Io(io::Error),
    /// Still running at the deadline; killed. Carries its output so far.
    TimedOut(String),
}

/// How a program is run, where the defaults fit a checker.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Capture standard error apart from standard output (read them with
    /// [`Running::stdout`] and [`Running::stderr`]) instead of both on one
    /// file in the order they were written.
    pub separate_stderr: bool,
    /// Leave what the program started in its group running once it has
    /// exited by itself: a reload command may start the daemon. A timeout
    /// kills the whole group all the same.
    pub keep_group_on_exit: bool,
    /// Run the program in its own PID namespace (as root), so that it and
    /// everything it starts die with converge even when it changes user;
    /// see [`lineage`]. The program sees itself as pid 2.
    pub pid_namespace: bool,
}

/// A started program.
pub struct Running {
    child: std::process::Child,
    /// Standard output, and standard error too unless `err` is set.
    out: File,
    err: Option<File>,
    keep_group_on_exit: bool,
    reaped: Option<ExitStatus>,
    record: Option<lineage::Record>,
}

impl Running {
    /// Starts `cmd` in a new process group with its output on one file.
    pub fn spawn(cmd: &mut Command) -> io::Result<Self> {
        Self::spawn_with(cmd, Options::default())
    }

    /// Starts `cmd` in a new process group as `options` say.
    pub fn spawn_with(cmd: &mut Command, options: Options) -> io::Result<Self> {
        let out = tempfile::tempfile()?;
        let err = if options.separate_stderr {
            Some(tempfile::tempfile()?)
        } else {
            None
        };
        let err_w = match &err {
            Some(e) => e.try_clone()?,
            None => out.try_clone()?,
        };
        static REAPED: std::sync::Once = std::sync::Once::new();
        REAPED.call_once(|| {
            lineage::reap_leftovers();
        });
        let child = lineage::wrap(cmd, options.pid_namespace)?
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(err_w)
            .process_group(0)
            .spawn()?;
        let record = lineage::Record::create(child.id(), !options.keep_group_on_exit);
        Ok(Self {
            child,
            out,
            err,
            keep_group_on_exit: options.keep_group_on_exit,
            reaped: None,
            record,
        })
    }

    /// The exit status once the program has exited (then reaped, with any
    /// leftovers in its group killed), `None` while it runs.
    pub fn poll(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.reaped.is_some() {
            return Ok(self.reaped);
        }
        let exited = waitid(
            Id::Pid(self.pid()),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT,
        )
        .map_err(io::Error::from)?;
        if matches!(exited, WaitStatus::StillAlive) {
            return Ok(None);
        }
        // The leader is a zombie we have not reaped: its pid (= the group
        // id) is still ours, so signalling the group is safe.
        if !self.keep_group_on_exit {
            let _ = killpg(self.pid(), Signal::SIGKILL);
        }
        self.reap().map(Some)
    }

    /// Waits until the program exits or `deadline` (measured from `start`)
    /// passes.
    pub fn wait_until(
        &mut self,
        start: Instant,
        deadline: Duration,
    ) -> io::Result<Option<ExitStatus>> {
        if let Some(s) = self.poll()? {
            return Ok(Some(s));
        }
        // Unreaped, so the pid is still this child's: the pidfd names it.
        let pidfd = pidfd_open(
            rustix::process::Pid::from_child(&self.child),
            PidfdFlags::empty(),
        )?;
        loop {
            let elapsed = start.elapsed();
            if elapsed >= deadline {
                return self.poll();
            }
            let timeout = Timespec::try_from(deadline - elapsed).map_err(io::Error::other)?;
            let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
            match rustix::event::poll(&mut fds, Some(&timeout)) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
            if let Some(s) = self.poll()? {
                return Ok(Some(s));
            }
        }
    }

    /// Stops the program: `SIGTERM` to its group, up to `grace` to exit,
    /// then `SIGKILL`; always reaps.
    pub fn stop(&mut self, grace: Duration) -> io::Result<ExitStatus> {
        if let Some(s) = self.poll()? {
            return Ok(s);
        }
        let _ = killpg(self.pid(), Signal::SIGTERM);
        if let Some(s) = self.wait_until(Instant::now(), grace)? {
            return Ok(s);
        }
        self.kill()
    }

    /// `SIGKILL` to the group, then reaps.
    pub fn kill(&mut self) -> io::Result<ExitStatus> {
        if let Some(s) = self.poll()? {
            return Ok(s);
        }
        let _ = killpg(self.pid(), Signal::SIGKILL);
        self.reap()
    }

    /// Waits for the exited (or killed) child and forgets its record.
    fn reap(&mut self) -> io::Result<ExitStatus> {
        let s = self.child.wait()?;
        self.reaped = Some(s);
        if let Some(record) = self.record.take() {
            record.remove();
        }
        Ok(s)
    }

    /// At most `limit` bytes of what the program wrote to standard output
    /// (and standard error, unless captured apart), from the start.
    pub fn stdout(&mut self, limit: u64) -> io::Result<Vec<u8>> {
        read_back(&mut self.out, limit)
    }

    /// At most `limit` bytes of what the program wrote to standard error,
    /// when [`Options::separate_stderr`] captured it apart; else nothing.
    pub fn stderr(&mut self, limit: u64) -> io::Result<Vec<u8>> {
        match &mut self.err {
            Some(err) => read_back(err, limit),
            None => Ok(Vec::new()),
        }
    }

    /// Everything the program wrote so far (lossy UTF-8).
    pub fn output(&mut self) -> String {
        let mut bytes = Vec::new();
        let read = self
            .out
            .seek(SeekFrom::Start(0))
            .and_then(|_| self.out.read_to_end(&mut bytes));
        match read {
            Ok(_) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => format!("(could not read the program's output: {e})"),
        }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(i32::MAX))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.reaped.is_none() {
            let _ = self.kill();
        }
    }
}

/// At most `limit` bytes of `f` from its start.
pub fn read_back(f: &mut File, limit: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    f.seek(SeekFrom::Start(0))?;
    f.take(limit).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Runs `cmd` to completion or until `timeout`; returns its status and
/// combined output.
pub fn run(cmd: &mut Command, timeout: Duration) -> Result<(ExitStatus, String), RunError> {
    let start = Instant::now();
    let mut running = Running::spawn(cmd).map_err(RunError::Io)?;
    // From here on the time is the validator's own (its loading included):
    // the benchmark of converge's share takes this line as the boundary.
    tracing::debug!(program = %cmd.get_program().to_string_lossy(), "validator spawned");
    match running.wait_until(start, timeout).map_err(RunError::Io)? {
        Some(status) => Ok((status, running.output())),
        None => {
            running.kill().map_err(RunError::Io)?;
            Err(RunError::TimedOut(running.output()))
        }
    }
}

/// `cmd` as a person would type it: arguments quoted for a POSIX shell
/// when they need it.
pub fn display(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(quote)
        .collect::<Vec<_>>()
        .join(" ")
}

fn quote(arg: &OsStr) -> String {
    let s = arg.to_string_lossy();
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// At most `max` lines of `lines`, duplicates dropped (keepalived repeats
/// each message once per parsing process), with a count of what was left
/// out.
pub fn excerpt<'a>(lines: impl IntoIterator<Item = &'a str>, max: usize) -> String {
    let mut seen = std::collections::HashSet::new();
    let unique: Vec<&str> = lines
        .into_iter()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty() && seen.insert(*l))
        .collect();
    let mut out: Vec<String> = unique.iter().take(max).map(|l| (*l).to_string()).collect();
    if unique.len() > max {
        out.push(format!("... ({} more lines)", unique.len() - max));
    }
    out.join("\n")
}

/// Describes how a program ended: `exit status 1`, `killed by signal 9`.
pub fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => status.to_string(),
    }
}

/// `name` found on `PATH`, else in the sbin directories (which a non-root
/// user's `PATH` usually lacks, while Debian installs haproxy, keepalived,
/// pgbouncer and ip there); the bare name when found nowhere, so the spawn
/// error names it.
pub fn program(name: &str) -> std::path::PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(Into::into))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| name.into())
}
