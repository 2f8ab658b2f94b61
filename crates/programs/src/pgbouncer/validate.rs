//! PgBouncer has no config-check flag, so the check starts the real binary
//! on the candidate and sees whether it comes up cleanly.
//!
//! A wrapper config in a private temp dir `%include`s the staged file and
//! then overrides, in a second `[pgbouncer]` section, everything that would
//! touch the live service: `listen_addr = 127.0.0.1`, `listen_port` = a
//! free port, `unix_socket_dir` and `pidfile` in the temp dir, `logfile`
//! empty and `syslog = 0` (so everything is logged to stderr, which we
//! capture). In PgBouncer 1.18 a key set again later in the same section
//! wins (verified: the candidate's `listen_addr` is not bound). Every
//! `[pgbouncer]` key whose value is the final destination of a bundle
//! sibling (`auth_file`, `auth_hba_file`, TLS files, ...) is overridden with
//! the sibling's staged path, so the candidate userlist is the one checked.
//!
//! `pgbouncer WRAPPER` then runs in the foreground. As root it refuses to
//! start without `-u`, so it gets `-u` with the target's owner, else
//! `postgres`, else `nobody`, and the temp dir is handed to that user (the
//! pidfile and socket are created after the switch; the config files
//! themselves, `auth_file` included, are read before it, as root). The
//! check ends when it accepts a TCP connection on the port and has logged
//! `listening on 127.0.0.1:PORT` (then it is stopped with `SIGTERM`), when
//! it exits, or at the deadline; a bind race on the port is retried.
//!
//! Verdict: exited = refused; came up but logged an `ERROR` or `FATAL` line
//! = refused (PgBouncer keeps running when it cannot open or parse
//! `auth_file`, and would then reject every login); came up cleanly =
//! accepted.
//!
//! Caught (1.18, verified): syntax errors, unknown sections and keys, bad
//! values (`pool_mode = sideways`, `default_pool_size = many`,
//! `auth_type = magic`), bad `[databases]` entries (unknown connection
//! parameter, bad `pool_mode=`), a missing or unreadable `auth_file`, an
//! `auth_file` that does not parse (`broken auth file`), TLS files that do
//! not load. Not caught: anything about the servers in `[databases]`
//! (hosts are resolved and connected only when a client logs in), and
//! `auth_hba_file`, which 1.18 does not report at startup even when it is
//! missing or garbage. `%include` lines inside the candidate read the live
//! files they name, not bundle siblings. Whether the node can bind the
//! candidate's own `listen_addr`/`listen_port` is not checked either: they
//! are overridden (on the node, an address it lacks only logs a `WARNING`
//! unless no address at all can be bound: `FATAL nowhere to listen on`).
//!
//! The check process is stopped by pid on every path out of this module,
//! and it runs in its own PID namespace
//! ([`Options::pid_namespace`](crate::process::Options)), so it dies with
//! converge even when converge is killed with `SIGKILL` mid-check: `-u`
//! makes it change user, which clears a parent-death signal, but not the
//! namespace's. PgBouncer sees its pid as 2, so the pidfile it writes in
//! the temp dir is not used. Failpoint `trial-up` (see
//! [`crate::failpoint`]) kills converge while it is up.

use std::fmt::Write as _;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::unistd::{chown, User};

use crate::check::{Candidate, CheckFailure, ValidateError, MAX_LINES};
use crate::failpoint;
use crate::process::{self, Options, Running};

/// How often a bind race on the free port is retried.
const ATTEMPTS: usize = 3;

/// How long PgBouncer gets to stop after `SIGTERM`.
const STOP_GRACE: Duration = Duration::from_secs(2);

pub(crate) fn check(candidate: &Candidate<'_>, timeout: Duration) -> Result<(), ValidateError> {
    let start = Instant::now();
    let not_run = |command: String, why: String| {
        ValidateError::new(candidate, command, CheckFailure::NotRun, why)
    };
    let base_cmd = format!("pgbouncer (on {})", candidate.staged.display());
    let overrides = sibling_overrides(candidate);
    let paths = std::iter::once(candidate.staged).chain(overrides.iter().map(|(_, p)| p.as_path()));
    if let Some(path) = paths.into_iter().find(|p| has_line_break(p)) {
        return Err(not_run(
            base_cmd,
            format!("{} has a line break in its path", path.display()),
        ));
    }
    let user = run_as(candidate.file.owner.as_deref()).map_err(|e| not_run(base_cmd.clone(), e))?;
    let dir = private_dir(user.as_ref()).map_err(|e| not_run(base_cmd.clone(), e))?;
    let wrapper = dir.path().join("check.ini");

    for attempt in 1..=ATTEMPTS {
        let port = free_port().map_err(|e| not_run(base_cmd.clone(), e))?;
        let text = wrapper_text(candidate.staged, dir.path(), port, &overrides);
        fs::write(&wrapper, &text).map_err(|e| {
            not_run(
                base_cmd.clone(),
                format!("cannot write {}: {e}", wrapper.display()),
            )
        })?;
        let mut cmd = Command::new(process::program("pgbouncer"));
        if let Some(u) = &user {
            cmd.arg("-u").arg(&u.name);
        }
        cmd.arg(&wrapper).current_dir(dir.path());
        let shown = describe(&cmd, candidate.staged, port, &overrides);
        let options = Options {
            pid_namespace: true,
            ..Options::default()
        };
        let mut running = Running::spawn_with(&mut cmd, options)
            .map_err(|e| not_run(shown.clone(), e.to_string()))?;
        let outcome = await_up(&mut running, port, start, timeout)
            .map_err(|e| not_run(shown.clone(), e.to_string()))?;
        let output = running.output();
        if output.contains("Address already in use") && attempt < ATTEMPTS {
            continue;
        }
        let errors = relevant(&output, &wrapper);
        return match outcome {
            Outcome::Up if errors.is_empty() => Ok(()),
            Outcome::Up => Err(ValidateError::new(
                candidate,
                shown,
                CheckFailure::Rejected("it started, but logged errors".to_string()),
                errors,
            )),
            Outcome::Exited(how) => Err(ValidateError::new(
                candidate,
                shown,
                CheckFailure::Rejected(how),
                if errors.is_empty() {
                    process::excerpt(output.lines(), MAX_LINES)
                } else {
                    errors
                },
            )),
            Outcome::TimedOut => Err(ValidateError::new(
                candidate,
                shown,
                CheckFailure::TimedOut(timeout),
                process::excerpt(output.lines(), MAX_LINES),
            )),
        };
    }
    Err(not_run(
        base_cmd,
        format!("no free port after {ATTEMPTS} attempts"),
    ))
}

/// A path the wrapper config could not hold on one line.
fn has_line_break(path: &Path) -> bool {
    path.as_os_str()
        .as_bytes()
        .iter()
        .any(|b| matches!(b, b'\n' | b'\r'))
}

/// Waits for the trial PgBouncer on `port` to accept a connection and log
/// that it listens (then stops it), to exit, or to reach the deadline
/// `timeout` after `start` (then kills it).
fn await_up(
    running: &mut Running,
    port: u16,
    start: Instant,
    timeout: Duration,
) -> std::io::Result<Outcome> {
    let listening = format!("listening on 127.0.0.1:{port}");
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut pause = Duration::from_millis(2);
    loop {
        if let Some(status) = running.poll()? {
            return Ok(Outcome::Exited(process::describe(status)));
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            && running.output().contains(&listening)
        {
            failpoint::hit("trial-up");
            running.stop(STOP_GRACE)?;
            return Ok(Outcome::Up);
        }
        let elapsed = start.elapsed();
        if elapsed >= timeout {
            running.kill()?;
            return Ok(Outcome::TimedOut);
        }
        std::thread::sleep(pause.min(timeout - elapsed));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

enum Outcome {
    Up,
    Exited(String),
    TimedOut,
}

/// `(key, staged sibling)` for each `[pgbouncer]` key whose value is the
/// final destination of a bundle sibling.
fn sibling_overrides(candidate: &Candidate<'_>) -> Vec<(String, PathBuf)> {
    let text = String::from_utf8_lossy(&candidate.file.bytes);
    let mut section = String::new();
    let mut out: Vec<(String, PathBuf)> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with([';', '#']) || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_ascii_lowercase();
            continue;
        }
        if section != "pgbouncer" {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let (key, value) = (key.trim().to_ascii_lowercase(), value.trim());
        if value.is_empty() {
            continue;
        }
        let sibling = candidate
            .siblings
            .iter()
            .find(|(dest, staged)| dest == Path::new(value) && staged != Path::new(value));
        if let Some((_, staged)) = sibling {
            // The last setting of a key is the one PgBouncer uses.
            out.retain(|(k, _)| *k != key);
            out.push((key, staged.clone()));
        }
    }
    out
}

fn wrapper_text(staged: &Path, dir: &Path, port: u16, overrides: &[(String, PathBuf)]) -> String {
    let mut text = format!(
        ";; converge's PgBouncer check: the candidate, moved off the live\n\
         ;; listener, socket, pidfile and log.\n\
         %include {}\n\
         [pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {port}\n\
         unix_socket_dir = {dir}\n\
         pidfile = {dir}/pgbouncer.pid\n\
         logfile =\n\
         syslog = 0\n",
        staged.display(),
        dir = dir.display(),
    );
    for (key, path) in overrides {
        let _ = writeln!(text, "{key} = {}", path.display());
    }
    text
}

fn describe(cmd: &Command, staged: &Path, port: u16, overrides: &[(String, PathBuf)]) -> String {
    let mut s = format!(
        "{} (wrapper: %include {}, listen 127.0.0.1:{port}",
        process::display(cmd),
        staged.display()
    );
    for (key, path) in overrides {
        let _ = write!(s, ", {key} = {}", path.display());
    }
    s.push(')');
    s
}

/// The `ERROR` and `FATAL` lines, without timestamp and pid, leaving out
/// the ones about the wrapper itself.
fn relevant(output: &str, wrapper: &Path) -> String {
    let wrapper = wrapper.to_string_lossy();
    let lines = output
        .lines()
        .filter(|l| !l.contains(wrapper.as_ref()))
        .map(|l| l.split_once("] ").map_or(l, |(_, rest)| rest))
        .filter(|l| l.starts_with("ERROR ") || l.starts_with("FATAL "));
    process::excerpt(lines, MAX_LINES)
}

/// The user PgBouncer runs as: `None` when we are not root (it runs as
/// us); else the target's owner when that is an existing non-root user,
/// else `postgres`, else `nobody`.
fn run_as(owner: Option<&str>) -> Result<Option<User>, String> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    for name in owner.into_iter().chain(["postgres", "nobody"]) {
        if let Ok(Some(u)) = User::from_name(name) {
            if !u.uid.is_root() {
                return Ok(Some(u));
            }
        }
    }
    Err(
        "running as root, PgBouncer needs -u USER, and neither the target's owner, \
         `postgres` nor `nobody` is an existing non-root user"
            .to_string(),
    )
}

fn private_dir(user: Option<&User>) -> Result<tempfile::TempDir, String> {
    let dir = tempfile::Builder::new()
        .prefix("converge-pgbouncer-check-")
        .tempdir()
        .map_err(|e| format!("cannot create a temp dir: {e}"))?;
    let fail = |e: &dyn std::fmt::Display| format!("cannot prepare {}: {e}", dir.path().display());
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).map_err(|e| fail(&e))?;
    if let Some(u) = user {
        chown(dir.path(), Some(u.uid), Some(u.gid)).map_err(|e| fail(&e))?;
    }
    Ok(dir)
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("cannot find a free loopback port: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_lines_lose_timestamps_and_wrapper_noise() {
        let out = "2026-11-21 23:57:58.830 UTC [26609] ERROR invalid pool mode: sideways\n\
                   2026-11-21 23:57:58.830 UTC [26609] ERROR error processing include file in configuration (/tmp/x/check.ini:1), stopping loading\n\
                   2026-11-21 23:57:58.830 UTC [26609] LOG kernel file descriptor limit\n\
                   2026-11-21 23:57:58.830 UTC [26609] FATAL cannot load config file\n";
        assert_eq!(
            relevant(out, Path::new("/tmp/x/check.ini")),
            "ERROR invalid pool mode: sideways\nFATAL cannot load config file"
        );
    }
}
