//! PgBouncer's admin console as a reload action: `RELOAD`, and around it
//! `PAUSE` / `RESUME` when the manifest asks for them.
//!
//! With `pause`, a primary switch runs `PAUSE` (PgBouncer waits for every
//! open transaction to finish, then closes its server connections, and
//! holds new queries), `RELOAD` (the committed file, with the new host, is
//! read), `RESUME` (held queries go to the new host). A transaction open at
//! the switch therefore commits where it began, and no new transaction
//! starts on the new primary while one is still open on the old: the two
//! never take writes at once. Without `pause`, `RELOAD` alone moves new
//! server connections at once and closes old ones as they are released.
//!
//! `PAUSE` names only the databases the change moves (`PAUSE app`): their
//! `[databases]` entries differ between the live file and the candidate.
//! A long report on an unrelated pool neither delays the switch nor is
//! held by it, and a change that moves no database (a pool size) reloads
//! without pausing anything. Only when what moved is unknown (a reload an
//! interrupted apply left owed) does a bare `PAUSE` hold every database.
//! The switch takes as long as the longest open transaction on a moved
//! database, bounded by `timeout_secs`; past it PgBouncer is resumed and
//! the reload fails, so the transaction rolls the files back.
//!
//! The console is reached with `psql`, one process per command, each killed
//! by pid at the timeout. Why not a Rust client: the console speaks the
//! PostgreSQL protocol with whatever `auth_type` the node uses (trust,
//! peer over the unix socket, md5, SCRAM, certificates), and libpq through
//! `psql` handles all of them and `~/.pgpass`, where a protocol client in
//! converge would need its own SCRAM/TLS stack (the `postgres` crate and
//! its tokio tree) for four fixed commands. `psql` ships with the
//! PostgreSQL client package every PgBouncer node already has; a node
//! without it gets a reload error naming `psql`, never a silent skip.
//! PgBouncer keeps the pause state itself, so separate sessions for
//! `PAUSE`, `RELOAD` and `RESUME` behave as one.
//!
//! A console that refuses connections (no socket file, connection refused)
//! means PgBouncer is not running: like a signal to a missing pid, that is
//! [`ReloadOutcome::NotRunning`], and the files wait for its start.

use std::collections::BTreeSet;
use std::io::{Read, Seek, SeekFrom};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use converge_model::manifest::PgbouncerAdmin;
use converge_model::ReloadAction;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::reload::{describe, Failure, ReloadOutcome};

/// One admin command's result.
#[derive(Debug)]
enum Answer {
    /// The command's output (`psql -At`: one row a line, `|` between fields).
    Ok(String),
    /// The console could not be reached at all.
    Unreachable(String),
    Failed(String),
}

/// Which databases a `PAUSE` holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PauseScope {
    /// Every database (bare `PAUSE`): what the change moves is unknown.
    All,
    /// These databases; none means no `PAUSE` at all.
    Only(BTreeSet<String>),
}

impl PauseScope {
    /// The console's argument for each `PAUSE`/`RESUME`: `""` for all, else
    /// one database name each. A name the console's parser would not take
    /// as one word widens the pause to all databases.
    fn arguments(&self) -> Vec<String> {
        match self {
            Self::Only(dbs)
                if dbs
                    .iter()
                    .all(|d| d.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')) =>
            {
                dbs.iter().map(|d| format!(" {d}")).collect()
            }
            _ => vec![String::new()],
        }
    }
}

/// Runs the action: `[PAUSE …,] RELOAD[, RESUME …]`, pausing `scope`.
pub(crate) fn reload(
    action: &ReloadAction,
    admin: &PgbouncerAdmin,
    scope: &PauseScope,
) -> Result<ReloadOutcome, Failure> {
    let timeout = Duration::from_secs(admin.timeout_secs.max(1));
    let fail = |detail: String, stderr: String| Failure {
        command: describe(action),
        detail,
        stderr,
    };
    let paused: Vec<String> = if admin.pause {
        scope.arguments()
    } else {
        Vec::new()
    };
    let resume_all = || -> Vec<Answer> {
        paused
            .iter()
            .map(|db| command(admin, &format!("RESUME{db}"), timeout))
            .collect()
    };
    for db in &paused {
        let started = Instant::now();
        match command(admin, &format!("PAUSE{db}"), timeout) {
            Answer::Ok(_) => tracing::info!(
                database = if db.is_empty() { "(all)" } else { db.trim() },
                waited_ms = started.elapsed().as_millis() as u64,
                "pgbouncer paused for the reload"
            ),
            Answer::Unreachable(_) => return Ok(ReloadOutcome::NotRunning),
            Answer::Failed(e) => {
                // PAUSE may be half done (waiting on a transaction): undo
                // it and every one before it.
                let resumed = resume_all();
                return Err(fail(
                    format!("PAUSE{db} did not complete; resumed ({resumed:?}); not reloaded"),
                    e,
                ));
            }
        }
    }
    let reloaded = command(admin, "RELOAD", timeout);
    let resumed = (!paused.is_empty()).then(|| {
        let answers = resume_all();
        answers
            .into_iter()
            .find(|a| !matches!(a, Answer::Ok(_)))
            .unwrap_or(Answer::Ok(String::new()))
    });
    match (reloaded, resumed) {
        (Answer::Ok(_), None | Some(Answer::Ok(_))) => Ok(ReloadOutcome::Reloaded),
        (Answer::Unreachable(_), None) => Ok(ReloadOutcome::NotRunning),
        (Answer::Ok(_), Some(Answer::Unreachable(e) | Answer::Failed(e))) => Err(fail(
            "reloaded, but RESUME failed: PgBouncer may still hold queries".into(),
            e,
        )),
        (Answer::Unreachable(e) | Answer::Failed(e), resumed) => Err(fail(
            format!(
                "RELOAD failed{}",
                match resumed {
                    Some(Answer::Ok(_)) => "; resumed",
                    Some(_) => "; RESUME failed too: PgBouncer may still hold queries",
                    None => "",
                }
            ),
            e,
        )),
    }
}

/// Where PgBouncer sends one database now (`SHOW DATABASES`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DatabaseRoute {
    /// Database name clients connect to.
    pub name: String,
    /// Server host (or hosts), empty for the console itself.
    pub host: String,
    /// Server port.
    pub port: String,
    /// Database name on the server.
    pub database: String,
    /// Whether PgBouncer holds it paused.
    pub paused: bool,
}

/// Asks the console at `admin` where each database goes, for
/// `converge status`.
pub fn show_databases(admin: &PgbouncerAdmin) -> Result<Vec<DatabaseRoute>, String> {
    let timeout = Duration::from_secs(admin.timeout_secs.clamp(1, 10));
    let rows = match command(admin, "SHOW DATABASES", timeout) {
        Answer::Ok(rows) => rows,
        Answer::Unreachable(e) => return Err(format!("PgBouncer not reachable: {e}")),
        Answer::Failed(e) => return Err(e),
    };
    // Columns of 1.18: name|host|port|database|force_user|pool_size|
    // min_pool_size|reserve_pool|pool_mode|max_connections|
    // current_connections|paused|disabled
    Ok(rows
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            (f.len() >= 12 && f[0] != "pgbouncer").then(|| DatabaseRoute {
                name: f[0].to_string(),
                host: f[1].to_string(),
                port: f[2].to_string(),
                database: f[3].to_string(),
                paused: f[11] == "1",
            })
        })
        .collect())
}

/// Runs one console command with `psql`, killed by pid at `timeout`.
fn command(admin: &PgbouncerAdmin, sql: &str, timeout: Duration) -> Answer {
    let (mut out, mut err) = match (tempfile::tempfile(), tempfile::tempfile()) {
        (Ok(o), Ok(e)) => (o, e),
        (Err(e), _) | (_, Err(e)) => {
            return Answer::Failed(format!("cannot create a temp file: {e}"))
        }
    };
    let (out_w, err_w) = match (out.try_clone(), err.try_clone()) {
        (Ok(o), Ok(e)) => (o, e),
        (Err(e), _) | (_, Err(e)) => {
            return Answer::Failed(format!("cannot duplicate a file: {e}"))
        }
    };
    let connect = timeout.as_secs().clamp(2, 30).to_string();
    let spawned = Command::new("psql")
        .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-w"])
        .args(["-h", &admin.host, "-p", &admin.port.to_string()])
        .args(["-U", &admin.user, "-d", "pgbouncer", "-c", sql])
        .env("PGCONNECT_TIMEOUT", connect)
        .env("PGAPPNAME", "converge")
        .stdin(Stdio::null())
        .stdout(Stdio::from(out_w))
        .stderr(Stdio::from(err_w))
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return Answer::Failed(format!("cannot run psql for `{sql}`: {e}")),
    };
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            _ => {
                let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
                let _ = child.wait();
                return Answer::Failed(format!(
                    "`{sql}` did not answer within {:.0}s",
                    timeout.as_secs_f64()
                ));
            }
        }
    };
    let read = |f: &mut std::fs::File| {
        let mut s = String::new();
        let _ = f.seek(SeekFrom::Start(0));
        let _ = f.take(4096).read_to_string(&mut s);
        s.trim().to_string()
    };
    let stderr = read(&mut err);
    let stdout = read(&mut out);
    if status.success() {
        return Answer::Ok(stdout);
    }
    let text = format!("`{sql}`: {status}: {stderr}{stdout}");
    // psql exits 2 when it cannot connect; these two say nobody listens.
    if status.code() == Some(2)
        && (stderr.contains("No such file or directory") || stderr.contains("Connection refused"))
    {
        Answer::Unreachable(text)
    } else {
        Answer::Failed(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_names_each_moved_database_or_none_or_all() {
        let only = |names: &[&str]| PauseScope::Only(names.iter().map(|n| n.to_string()).collect());
        assert_eq!(only(&["app", "app_ro"]).arguments(), [" app", " app_ro"]);
        assert!(only(&[]).arguments().is_empty(), "nothing moved: no PAUSE");
        assert_eq!(PauseScope::All.arguments(), [""]);
        // A name the console would not read as one word pauses everything.
        assert_eq!(only(&["app", "odd name"]).arguments(), [""]);
    }
}
