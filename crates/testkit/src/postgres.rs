//! A real PostgreSQL cluster per test: `initdb` into a temp dir, the
//! `postgres` server on a free loopback port, stopped by pid on drop.
//!
//! Tests run as root and PostgreSQL refuses to, so the data directory is
//! handed to the `postgres` user and every server-side program runs with
//! that uid (set on the child, no `su` wrapper between us and the pid we
//! stop). The cluster listens on `127.0.0.1` only, keeps its unix socket in
//! its own temp dir, and trusts every local and loopback connection: tests
//! need a server to route to, not an authentication setup. Durability is
//! switched off (`fsync = off`, `initdb --no-sync`) because a test cluster
//! never outlives its test, and the machine is slow enough already.
//!
//! [`Postgres::start`] creates a login role `app` owning a database `app`,
//! the pair the PgBouncer tests route. Readiness is "a `select 1` over TCP
//! answers", not the log: that is what a client needs.
//!
//! Stopping sends `SIGINT` (PostgreSQL's *fast* shutdown: clients such as
//! PgBouncer's pooled server connections are disconnected rather than
//! waited for, which `SIGTERM`'s *smart* shutdown would do), then the
//! [`Child`] guard's `SIGTERM`/`SIGKILL` path if it is still running.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::{chown, User};

use crate::process::Child;
use crate::{free_port, wait};

/// Where Debian puts the PostgreSQL 15 server programs.
pub const BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// How long [`Postgres::start`] waits for the server to answer.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// A running PostgreSQL cluster in a temp dir.
#[derive(Debug)]
pub struct Postgres {
    // Field order: the server stops before its directory is removed.
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

/// The `postgres` user's uid and gid.
///
/// # Errors
///
/// When there is no such user on this machine.
pub fn postgres_user() -> Result<(u32, u32), String> {
    let user = User::from_name("postgres")
        .map_err(|e| format!("cannot look up user postgres: {e}"))?
        .ok_or("there is no `postgres` user (install the postgresql package)")?;
    Ok((user.uid.as_raw(), user.gid.as_raw()))
}

/// Makes `path` (a directory) owned by the `postgres` user.
///
/// # Errors
///
/// When the user is missing or `chown` fails.
pub fn give_to_postgres(path: &Path) -> Result<(), String> {
    let (uid, gid) = postgres_user()?;
    chown(path, Some(uid.into()), Some(gid.into()))
        .map_err(|e| format!("cannot chown {} to postgres: {e}", path.display()))
}

impl Postgres {
    /// Initialises a cluster with a role and database `app`, starts it on
    /// a free loopback port and waits until it answers queries.
    ///
    /// # Errors
    ///
    /// When a program cannot run or fails (the message carries its output
    /// and the server log), or the server does not answer within
    /// [`DEADLINE`].
    pub fn start() -> Result<Self, String> {
        let (uid, gid) = postgres_user()?;
        let dir = tempfile::Builder::new()
            .prefix("converge-pg-")
            .tempdir()
            .map_err(|e| format!("cannot create a temp dir: {e}"))?;
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("cannot chmod {}: {e}", dir.path().display()))?;
        give_to_postgres(dir.path())?;
        let data = dir.path().join("data");
        let out = Command::new(Path::new(BIN_DIR).join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"])
            .args(["--locale", "C"])
            .uid(uid)
            .gid(gid)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run initdb: {e}"))?;
        check("initdb", &out)?;
        let mut pg = Self {
            child: None,
            port: 0,
            dir,
        };
        // A port found free can be taken before the server binds it: retry.
        let mut last = String::new();
        for _ in 0..3 {
            match pg.spawn(uid, gid) {
                Ok(()) => {
                    pg.create_app()?;
                    return Ok(pg);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn spawn(&mut self, uid: u32, gid: u32) -> Result<(), String> {
        self.port = free_port();
        let log = self.log_path();
        let out =
            File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("cannot duplicate a log handle: {e}"))?;
        let socket_dir = self.dir.path().to_path_buf();
        let child = Child::spawn(
            "postgres",
            Command::new(Path::new(BIN_DIR).join("postgres"))
                .arg("-D")
                .arg(self.data_dir())
                .args(["-c", "listen_addresses=127.0.0.1"])
                .args(["-c", &format!("port={}", self.port)])
                .args([
                    "-c",
                    &format!("unix_socket_directories={}", socket_dir.display()),
                ])
                .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
                .args(["-c", "full_page_writes=off", "-c", "shared_buffers=16MB"])
                .args(["-c", "max_connections=50", "-c", "logging_collector=off"])
                .uid(uid)
                .gid(gid)
                .current_dir(self.dir.path())
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err),
        )
        .map_err(|e| e.to_string())?
        .with_grace(Duration::from_secs(10));
        self.child = Some(child);
        let what = format!("postgres on 127.0.0.1:{} to answer", self.port);
        let ready = wait::until(DEADLINE, &what, || {
            if !self.child.as_mut().is_some_and(Child::is_running) {
                return true;
            }
            self.sql("postgres", "postgres", "select 1").is_ok()
        });
        if !self.child.as_mut().is_some_and(Child::is_running) {
            self.child = None;
            return Err(format!("postgres exited on start:\n{}", self.log()));
        }
        ready.map_err(|e| format!("{e}\n{}", self.log()))
    }

    fn create_app(&self) -> Result<(), String> {
        self.sql("postgres", "postgres", "create role app login")?;
        self.sql("postgres", "postgres", "create database app owner app")?;
        Ok(())
    }

    /// The loopback port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::pid)
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Runs `sql` as `user` in `db` over TCP with `psql -Atc`, and returns
    /// its output, trimmed.
    ///
    /// # Errors
    ///
    /// psql failed; the message carries its stderr.
    pub fn sql(&self, user: &str, db: &str, sql: &str) -> Result<String, String> {
        psql(self.port, user, db, sql)
    }

    /// Stops the server (fast shutdown); idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if child.signal(Signal::SIGINT).is_ok() {
                let _ = child.wait_exit(Duration::from_secs(20));
            }
            child.stop();
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs `sql` with `psql -X -Atc` against 127.0.0.1:`port` as `user` in
/// `db`, with a 10 s connect timeout; returns stdout, trimmed.
///
/// # Errors
///
/// psql could not run or exited non-zero; the message carries its stderr.
pub fn psql(port: u16, user: &str, db: &str, sql: &str) -> Result<String, String> {
    let out = psql_command(port, user, db)
        .arg("-Atc")
        .arg(sql)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run psql: {e}"))?;
    check(
        &format!("psql -p {port} -U {user} -d {db} -c {sql:?}"),
        &out,
    )?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A `psql -X -v ON_ERROR_STOP=1` command for 127.0.0.1:`port`, `user`,
/// `db`, for callers that feed it a script on stdin.
pub fn psql_command(port: u16, user: &str, db: &str) -> Command {
    let mut cmd = Command::new("psql");
    cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-U", user, "-d", db])
        .env("PGCONNECT_TIMEOUT", "10")
        .env_remove("PGPASSWORD")
        .env_remove("PGSERVICE");
    cmd
}

/// A `psql` session fed one line at a time, for a transaction a test
/// holds open across something else (a PgBouncer `PAUSE`, a switch of
/// primary). Killed by pid and reaped on drop.
#[derive(Debug)]
pub struct Session {
    child: std::process::Child,
    input: Option<ChildStdin>,
    output: BufReader<ChildStdout>,
}

impl Session {
    /// Opens `psql -At` to 127.0.0.1:`port` as `user` in `db` (its stderr
    /// goes to the test's).
    ///
    /// # Errors
    ///
    /// psql cannot be started.
    pub fn open(port: u16, user: &str, db: &str) -> Result<Self, String> {
        let mut child = psql_command(port, user, db)
            .arg("-At")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot run psql: {e}"))?;
        let input = child.stdin.take();
        let output = child.stdout.take().ok_or("psql has no stdout")?;
        Ok(Self {
            child,
            input,
            output: BufReader::new(output),
        })
    }

    /// Sends one line of SQL and returns the next line of output, trimmed
    /// (empty when psql has exited, say after an error).
    ///
    /// # Errors
    ///
    /// The session was finished, or psql's pipes failed.
    pub fn query(&mut self, sql: &str) -> Result<String, String> {
        let input = self.input.as_mut().ok_or("the session is finished")?;
        writeln!(input, "{sql}")
            .and_then(|()| input.flush())
            .map_err(|e| format!("cannot write to psql: {e}"))?;
        let mut line = String::new();
        self.output
            .read_line(&mut line)
            .map_err(|e| format!("cannot read from psql: {e}"))?;
        Ok(line.trim().to_string())
    }

    /// Closes psql's stdin (it then exits) and waits up to `deadline` for
    /// its exit status.
    ///
    /// # Errors
    ///
    /// psql is still running at the deadline.
    pub fn finish(&mut self, deadline: Duration) -> Result<ExitStatus, String> {
        drop(self.input.take());
        wait::until_some(deadline, "the psql session to exit", || {
            self.child.try_wait().ok().flatten()
        })
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn check(what: &str, out: &Output) -> Result<(), String> {
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_answers_and_stops_by_pid() {
        let mut pg = Postgres::start().expect("postgres");
        let port = pg
            .sql("app", "app", "select inet_server_port()")
            .expect("query");
        assert_eq!(port, pg.port().to_string());
        let pid = pg.pid().expect("pid");
        pg.stop();
        assert!(
            !crate::process::pid_alive(pid),
            "postgres {pid} still alive"
        );
    }
}
