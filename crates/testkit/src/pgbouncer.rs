//! A real PgBouncer on a config the test (or converge) wrote.
//!
//! [`Pgbouncer::start`] runs `pgbouncer -u postgres CONFIG` in the
//! foreground as our child, so the guard holds the very pid PgBouncer
//! writes to its pidfile (it writes it in the foreground too, after
//! switching to the `postgres` user, which is why the pidfile and unix
//! socket directories must be writable by that user). PgBouncer re-reads
//! its config and auth file on `SIGHUP` or the admin console's `RELOAD` as
//! that user, so the files must be readable by it.
//!
//! Its output (PgBouncer logs to stderr in the foreground) goes to a file
//! beside the config with the extension `log`. Readiness is "logged
//! `process up` and accepts a TCP connection on the port": both are needed,
//! since the port may belong to someone else after a bind race.
//!
//! [`Pgbouncer::sql`] and [`Pgbouncer::admin`] run `psql` through it, the way an application
//! (or an operator on the admin console) would.

use std::fs::{self, OpenOptions};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::postgres::psql;
use crate::process::Child;
use crate::wait;

/// How long [`Pgbouncer::start`] waits for PgBouncer.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A running PgBouncer, stopped by pid on drop.
#[derive(Debug)]
pub struct Pgbouncer {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Pgbouncer {
    /// Starts PgBouncer on `config` (which must listen on
    /// 127.0.0.1:`port`) and waits until it accepts connections.
    ///
    /// # Errors
    ///
    /// When it cannot be spawned, exits, or is not ready within
    /// [`DEADLINE`]; the message carries its log.
    pub fn start(config: &Path, port: u16) -> Result<Self, String> {
        let log = config.with_extension("log");
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("cannot duplicate a log handle: {e}"))?;
        let offset = fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        let child = Child::spawn(
            "pgbouncer",
            Command::new("/usr/sbin/pgbouncer")
                .args(["-u", "postgres"])
                .arg(config)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err),
        )
        .map_err(|e| e.to_string())?;
        let mut p = Self { child, port, log };
        let what = format!("pgbouncer to come up on 127.0.0.1:{port}");
        let up = wait::until(DEADLINE, &what, || {
            !p.child.is_running()
                || (p.log_since(offset).contains("process up")
                    && TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok())
        });
        if !p.child.is_running() {
            return Err(format!(
                "pgbouncer exited on start:\n{}",
                p.log_since(offset)
            ));
        }
        up.map_err(|e| format!("{e}\n{}", p.log_since(offset)))?;
        Ok(p)
    }

    /// The pid (the one PgBouncer writes to its pidfile).
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// The TCP port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child.is_running()
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        self.log_since(0)
    }

    fn log_since(&self, offset: u64) -> String {
        let text = fs::read(&self.log).unwrap_or_default();
        let start = usize::try_from(offset).unwrap_or(0).min(text.len());
        String::from_utf8_lossy(&text[start..]).into_owned()
    }

    /// Runs `sql` as `user` in database `db` through PgBouncer.
    ///
    /// # Errors
    ///
    /// psql failed; the message carries its stderr.
    pub fn sql(&self, user: &str, db: &str, sql: &str) -> Result<String, String> {
        psql(self.port, user, db, sql)
    }

    /// Runs an admin-console command (`SHOW DATABASES`, `PAUSE`, ...) as
    /// `user`, who must be in the config's `admin_users`.
    ///
    /// # Errors
    ///
    /// psql failed; the message carries its stderr.
    pub fn admin(&self, user: &str, command: &str) -> Result<String, String> {
        psql(self.port, user, "pgbouncer", command)
    }

    /// Stops PgBouncer (`SIGTERM`, then `SIGKILL`); returns when it is gone.
    pub fn stop(&mut self) {
        self.child.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::{give_to_postgres, Postgres};
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn routes_to_a_real_postgres_and_stops_by_pid() {
        let pg = Postgres::start().expect("postgres");
        let dir = tempfile::tempdir().expect("tempdir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        give_to_postgres(dir.path()).expect("chown");
        let port = crate::free_port();
        let d = dir.path().display();
        let config = dir.path().join("pgbouncer.ini");
        fs::write(
            &config,
            format!(
                "[databases]\napp = host=127.0.0.1 port={pg} dbname=app\n\
                 [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
                 unix_socket_dir = {d}\npidfile = {d}/pgbouncer.pid\n\
                 auth_type = trust\nauth_file = {d}/userlist.txt\nadmin_users = admin\n",
                pg = pg.port()
            ),
        )
        .expect("config");
        fs::write(
            dir.path().join("userlist.txt"),
            "\"app\" \"\"\n\"admin\" \"\"\n",
        )
        .expect("userlist");
        let mut pgb = Pgbouncer::start(&config, port).expect("pgbouncer");
        let landed = pgb
            .sql("app", "app", "select inet_server_port()")
            .expect("query through pgbouncer");
        assert_eq!(landed, pg.port().to_string());
        let dbs = pgb.admin("admin", "show databases").expect("admin console");
        assert!(
            dbs.contains(&format!("app|127.0.0.1|{}|app", pg.port())),
            "{dbs}"
        );
        let pid = pgb.pid();
        assert_eq!(
            crate::process::read_pidfile(&dir.path().join("pgbouncer.pid")),
            Some(pid)
        );
        pgb.stop();
        assert!(!crate::process::pid_alive(pid));
    }
}
