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
//! (or an operator on the admin console) would; [`Pgbouncer::show`] reads
//! a console `SHOW` by column name. [`trust_config`] writes a config for a
//! test that needs no converge-rendered one.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::net::{Ipv4Addr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::postgres::{give_to_postgres, psql, psql_command};
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

    /// Runs an admin-console `SHOW …` as `user` and returns its rows, each
    /// a map from column name to value.
    ///
    /// # Errors
    ///
    /// psql failed; the message carries its stderr.
    pub fn show(&self, user: &str, what: &str) -> Result<Vec<BTreeMap<String, String>>, String> {
        let out = psql_command(self.port, user, "pgbouncer")
            .args(["-A", "-z", "-P", "footer=off", "-c", what])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run psql: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "`{what}` as {user} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap_or_default().split('\0').collect();
        Ok(lines
            .map(|l| {
                header
                    .iter()
                    .map(|h| h.to_string())
                    .zip(l.split('\0').map(str::to_string))
                    .collect()
            })
            .collect())
    }

    /// Stops PgBouncer (`SIGTERM`, then `SIGKILL`); returns when it is gone.
    pub fn stop(&mut self) {
        self.child.stop();
    }
}

/// Writes `pgbouncer.ini` in `dir` for 127.0.0.1:`port`, its unix socket
/// and pidfile in `dir`, with `databases` as the `[databases]` section
/// (`name = host=… port=… dbname=…` lines), trust authentication for users
/// `app` and `admin`, and `admin` as the console's admin; hands `dir` to
/// the `postgres` user PgBouncer runs as. Returns the config's path.
///
/// # Errors
///
/// A file cannot be written or `dir` cannot be handed over.
pub fn trust_config(dir: &Path, port: u16, databases: &str) -> Result<PathBuf, String> {
    let fail = |e: std::io::Error| format!("cannot write into {}: {e}", dir.display());
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).map_err(fail)?;
    give_to_postgres(dir)?;
    let d = dir.display();
    let config = dir.join("pgbouncer.ini");
    fs::write(
        &config,
        format!(
            "[databases]\n{databases}\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
             unix_socket_dir = {d}\npidfile = {d}/pgbouncer.pid\n\
             auth_type = trust\nauth_file = {d}/userlist.txt\nadmin_users = admin\n"
        ),
    )
    .map_err(fail)?;
    fs::write(dir.join("userlist.txt"), "\"app\" \"\"\n\"admin\" \"\"\n").map_err(fail)?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::Postgres;

    #[test]
    fn routes_to_a_real_postgres_and_stops_by_pid() {
        let pg = Postgres::start().expect("postgres");
        let dir = tempfile::tempdir().expect("tempdir");
        let port = crate::free_port();
        let databases = format!("app = host=127.0.0.1 port={} dbname=app\n", pg.port());
        let config = trust_config(dir.path(), port, &databases).expect("config");
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
        let rows = pgb.show("admin", "SHOW DATABASES").expect("show databases");
        let app = rows.iter().find(|r| r["name"] == "app").expect("app row");
        assert_eq!(app["port"], pg.port().to_string());
        assert_eq!(app["paused"], "0");
        let pid = pgb.pid();
        assert_eq!(
            crate::process::read_pidfile(&dir.path().join("pgbouncer.pid")),
            Some(pid)
        );
        pgb.stop();
        assert!(!crate::process::pid_alive(pid));
    }
}
