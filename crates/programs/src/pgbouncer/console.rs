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
//! database, bounded by `timeout_secs` for all the `PAUSE`s together;
//! past it the reload fails, so the transaction rolls the files back.
//! Whatever ends the reload, every database a `PAUSE` was sent for is
//! `RESUME`d first: PgBouncer keeps a `PAUSE` in force after its `psql` is
//! killed, and a database left paused would hold every query until an
//! operator noticed.
//!
//! The console is reached with `psql`, one process per command, run by the
//! [`process`](crate::process) runner like every child, its group killed
//! at the timeout. Why not a Rust client: the console speaks the
//! PostgreSQL protocol with whatever `auth_type` the node uses (trust,
//! peer over the unix socket, md5, SCRAM, certificates), and libpq through
//! `psql` handles all of them and `~/.pgpass`, where a protocol client in
//! converge would need its own SCRAM/TLS stack (the `postgres` crate and
//! its tokio tree) for four fixed commands. `psql` ships with the
//! PostgreSQL client package every PgBouncer node already has; a node
//! without it gets a reload error naming `psql`, never a silent skip.
//! PgBouncer keeps the pause state itself, so separate sessions for
//! `PAUSE`, `RELOAD` and `RESUME` behave as one. Answers are read with
//! their header and found by column name, so a PgBouncer that adds columns
//! reads the same; an answer is read whole (up to a bound far beyond any
//! real `SHOW DATABASES`, past which it is an error, never a cut).
//!
//! A console that refuses connections (no socket file, connection refused)
//! means PgBouncer is not running: like a signal to a missing pid, that is
//! [`ConsoleReload::NotRunning`], and the files wait for its start.
//!
//! For `converge status` the same console is read, never changed:
//! `SHOW DATABASES` says where each database goes now, and `SHOW CONFIG`
//! which restart-only settings PgBouncer still runs with values other than
//! its file's ([`pending_restart`]). Those are the settings `plan` reports
//! as "needs restart" while the change is pending; once a reload has
//! applied the file, the plan compares equal files, and only the running
//! PgBouncer still tells the old value.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use converge_model::manifest::PgbouncerAdmin;

pub mod pause;

use super::ini::section;
use super::restart::PGBOUNCER_RESTART_ONLY;
use crate::process::{Options, Running};

/// One admin command's result.
#[derive(Debug)]
enum Answer {
    /// The command's output: a header line, then one row a line, a NUL
    /// byte between fields (`psql -A -z`: no value can hold a NUL).
    Ok(String),
    /// The console could not be reached at all.
    Unreachable(String),
    /// No answer within the timeout; `psql` was killed.
    TimedOut(String),
    Failed(String),
}

/// Which databases a `PAUSE` holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PauseScope {
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
            Self::Only(dbs) if dbs.iter().all(|d| pause::one_word(d).is_ok()) => {
                dbs.iter().map(|d| format!(" {d}")).collect()
            }
            _ => vec![String::new()],
        }
    }
}

/// What a console reload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleReload {
    /// `RELOAD` was answered.
    Reloaded,
    /// Nobody listens on the console: PgBouncer is not running.
    NotRunning,
}

/// Why a console reload failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleFailure {
    /// What failed, and whether what was paused was resumed.
    pub detail: String,
    /// PgBouncer's (or `psql`'s) words.
    pub stderr: String,
    /// `RELOAD` was never sent: PgBouncer still runs the files it ran
    /// before.
    pub untouched: bool,
}

/// Runs `[PAUSE …,] RELOAD[, RESUME …]`, pausing `scope`.
///
/// Every `PAUSE` sent is followed by its `RESUME` on every way out, the
/// failed one included: a `PAUSE` whose `psql` was killed at the timeout
/// stays in force inside PgBouncer, still waiting on the transaction.
pub fn reload(admin: &PgbouncerAdmin, scope: &PauseScope) -> Result<ConsoleReload, ConsoleFailure> {
    let timeout = Duration::from_secs(admin.timeout_secs.max(1));
    let databases: Vec<String> = if admin.pause {
        scope.arguments()
    } else {
        Vec::new()
    };
    // One deadline for all the PAUSEs: each database paused waits for the
    // next one's transactions, so the hold is bounded as a whole.
    let deadline = Instant::now() + timeout;
    let mut sent = 0;
    // An error says what failed, PgBouncer's words, and whether RELOAD
    // was never sent (so PgBouncer still runs the files it ran before).
    let step: Result<ConsoleReload, (String, String, bool)> = 'step: {
        for db in &databases {
            sent += 1;
            let started = Instant::now();
            let left = deadline.saturating_duration_since(started);
            match command(admin, &format!("PAUSE{db}"), left) {
                Answer::Ok(_) => tracing::info!(
                    database = if db.is_empty() { "(all)" } else { db.trim() },
                    waited_ms = started.elapsed().as_millis() as u64,
                    "pgbouncer paused for the reload"
                ),
                // Nothing is paused yet: nobody listens.
                Answer::Unreachable(_) if sent == 1 => return Ok(ConsoleReload::NotRunning),
                Answer::Unreachable(e) | Answer::TimedOut(e) | Answer::Failed(e) => {
                    break 'step Err((format!("PAUSE{db} did not complete; not reloaded"), e, true))
                }
            }
        }
        match command(admin, "RELOAD", timeout) {
            Answer::Ok(_) => Ok(ConsoleReload::Reloaded),
            Answer::Unreachable(_) if sent == 0 => Ok(ConsoleReload::NotRunning),
            Answer::Unreachable(e) | Answer::TimedOut(e) | Answer::Failed(e) => {
                Err(("RELOAD failed".into(), e, false))
            }
        }
    };
    let resumed = resume(admin, &databases[..sent], timeout);
    let fail = |detail: String, stderr: String, untouched: bool| ConsoleFailure {
        detail,
        stderr,
        untouched,
    };
    match (step, resumed) {
        (Ok(outcome), Ok(())) => Ok(outcome),
        (Ok(_), Err(e)) => Err(fail(
            "reloaded, but RESUME failed: PgBouncer may still hold queries".into(),
            e,
            false,
        )),
        (Err((what, e, untouched)), resumed) => {
            let after = match (sent, resumed) {
                (0, _) => String::new(),
                (_, Ok(())) => "; resumed".into(),
                (_, Err(r)) => {
                    format!("; RESUME failed too, PgBouncer may still hold queries: {r}")
                }
            };
            Err(fail(format!("{what}{after}"), e, untouched))
        }
    }
}

/// `RESUME`s each of `databases` (arguments as [`PauseScope::arguments`]
/// gives them), all of them even when one fails; the failures, if any.
fn resume(admin: &PgbouncerAdmin, databases: &[String], timeout: Duration) -> Result<(), String> {
    let failed: Vec<String> = databases
        .iter()
        .filter_map(|db| match command(admin, &format!("RESUME{db}"), timeout) {
            Answer::Ok(_) => None,
            Answer::Unreachable(e) | Answer::TimedOut(e) | Answer::Failed(e) => Some(e),
        })
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("; "))
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
    parse_databases(&show(admin, "SHOW DATABASES")?)
}

/// A restart-only setting whose value in the file differs from the one
/// the running PgBouncer uses: a restart, not a reload, applies it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PendingRestart {
    /// The `[pgbouncer]` key.
    pub key: String,
    /// The value PgBouncer runs with (`SHOW CONFIG`).
    pub running: String,
    /// The value a restart would take from the file.
    pub file: String,
    /// The file does not set the key: `file` is PgBouncer's default.
    pub default: bool,
}

/// The restart-only settings (the keys `plan` says "needs restart" for)
/// that the PgBouncer answering at `admin` runs with values other than
/// those its file `ini` gives, for `converge status`: what a change
/// applied by a reload left waiting for a restart.
///
/// Each key's value in the `[pgbouncer]` section, read as
/// `plan` reads it, is compared with `SHOW CONFIG`'s
/// `value`; a key the file does not set is compared with the `default`
/// column (PgBouncer 1.18 has it), and makes no claim when the console
/// has no such column or does not know the key. Numbers are compared as
/// numbers: the file's are read like C's `strtol` with base 0, as
/// PgBouncer reads them (`0x80` and `128` are equal, `0700` is octal),
/// and the console prints them in decimal, `unix_socket_mode` included
/// (`0700` shows as `448`); that mode is reported in octal, the other
/// numbers in decimal, text as written. Not compared:
///
/// - `user`: `pgbouncer -u USER` overrides the file's `user` (checked
///   with 1.18), and the command line is not visible here, so the two
///   differ with nothing a restart would change.
/// - a file with an `%include` line: the included file is not read, so
///   what the whole configuration sets is unknown; that is an error, not
///   an empty answer.
pub fn pending_restart(admin: &PgbouncerAdmin, ini: &[u8]) -> Result<Vec<PendingRestart>, String> {
    let ini = String::from_utf8_lossy(ini);
    if ini.lines().any(|l| l.trim_start().starts_with("%include")) {
        return Err(
            "the file has an %include line, which is not followed: restart-only \
             settings not compared"
                .into(),
        );
    }
    compare_config(&show(admin, "SHOW CONFIG")?, &ini)
}

/// [`pending_restart`] on `SHOW CONFIG`'s answer `text` and the file `ini`.
fn compare_config(text: &str, ini: &str) -> Result<Vec<PendingRestart>, String> {
    let table = Table::parse("SHOW CONFIG", text)?;
    let (key, value) = (table.column("key")?, table.column("value")?);
    let default = table.header.iter().position(|h| *h == "default");
    let file = section(ini, "pgbouncer", true);
    let mut pending = Vec::new();
    for name in PGBOUNCER_RESTART_ONLY {
        let Some(kind) = Kind::of(name) else {
            continue;
        };
        let Some(row) = table.rows.iter().find(|r| r[key] == *name) else {
            continue;
        };
        let (wanted, is_default) = match (file.get(*name), default) {
            (Some(v), _) => (v.as_str(), false),
            (None, Some(d)) => (row[d], true),
            (None, None) => continue,
        };
        let (running, wanted) = (kind.show(row[value]), kind.show(wanted));
        if running != wanted {
            pending.push(PendingRestart {
                key: name.to_string(),
                running,
                file: wanted,
                default: is_default,
            });
        }
    }
    Ok(pending)
}

/// How a restart-only value is compared and shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Number,
    /// A number shown in octal.
    Mode,
}

impl Kind {
    /// The kind of a restart-only key, `None` for one not compared.
    fn of(key: &str) -> Option<Self> {
        match key {
            "user" => None,
            "unix_socket_mode" => Some(Self::Mode),
            "disable_pqexec" | "listen_backlog" | "listen_port" | "pkt_buf" | "so_reuseport" => {
                Some(Self::Number)
            }
            _ => Some(Self::Text),
        }
    }

    /// `value` in one spelling per meaning; a number that does not read
    /// as one is kept as written.
    fn show(self, value: &str) -> String {
        match (self, c_integer(value)) {
            (Self::Number, Some(n)) => n.to_string(),
            (Self::Mode, Some(n)) => format!("{n:04o}"),
            _ => value.to_string(),
        }
    }
}

/// `text` read as C's `strtol(text, _, 0)` reads a whole unsigned
/// number: `0x` hexadecimal, a leading `0` octal, else decimal.
fn c_integer(text: &str) -> Option<u64> {
    let (digits, radix) = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => (hex, 16),
        None if text.len() > 1 && text.starts_with('0') => (&text[1..], 8),
        None => (text, 10),
    };
    if digits.starts_with(['+', '-']) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// The answer to a `SHOW` for `converge status`; an unreachable console
/// says so.
fn show(admin: &PgbouncerAdmin, what: &str) -> Result<String, String> {
    let timeout = Duration::from_secs(admin.timeout_secs.clamp(1, 10));
    match command(admin, what, timeout) {
        Answer::Ok(text) => Ok(text),
        Answer::Unreachable(e) => Err(format!("PgBouncer not reachable: {e}")),
        Answer::TimedOut(e) | Answer::Failed(e) => Err(e),
    }
}

/// A console answer as [`command`] prints it, its columns found by their
/// names in the header, not by position: PgBouncer adds columns between
/// versions (`paused` is the 12th of `SHOW DATABASES` in 1.18). A missing
/// column or a row that does not match the header is an error, never a
/// guess.
struct Table<'a> {
    what: &'a str,
    header: Vec<&'a str>,
    rows: Vec<Vec<&'a str>>,
}

impl<'a> Table<'a> {
    /// Reads `text`, the answer to `what`.
    fn parse(what: &'a str, text: &'a str) -> Result<Self, String> {
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap_or_default().split('\0').collect();
        let mut rows = Vec::new();
        for (i, line) in lines.enumerate() {
            let f: Vec<&str> = line.split('\0').collect();
            if f.len() != header.len() {
                return Err(format!(
                    "{what} row {} has {} fields where the header has {}: {:?}",
                    i + 1,
                    f.len(),
                    header.len(),
                    line.replace('\0', "|")
                ));
            }
            rows.push(f);
        }
        Ok(Self { what, header, rows })
    }

    /// The position of column `name`.
    fn column(&self, name: &str) -> Result<usize, String> {
        self.header.iter().position(|h| *h == name).ok_or_else(|| {
            format!(
                "{} has no `{name}` column (columns: {})",
                self.what,
                self.header.join(", ")
            )
        })
    }
}

/// Reads `SHOW DATABASES` as [`command`] prints it, leaving out the
/// console's own `pgbouncer` row.
fn parse_databases(text: &str) -> Result<Vec<DatabaseRoute>, String> {
    let table = Table::parse("SHOW DATABASES", text)?;
    let (name, host, port, database, paused) = (
        table.column("name")?,
        table.column("host")?,
        table.column("port")?,
        table.column("database")?,
        table.column("paused")?,
    );
    Ok(table
        .rows
        .iter()
        .filter(|f| f[name] != "pgbouncer")
        .map(|f| DatabaseRoute {
            name: f[name].to_string(),
            host: f[host].to_string(),
            port: f[port].to_string(),
            database: f[database].to_string(),
            paused: f[paused] == "1",
        })
        .collect())
}

/// The most of a console answer that is read back. `SHOW DATABASES` of a
/// few thousand databases is well under it; more is an error, not a cut.
const MAX_ANSWER: u64 = 4 << 20;

/// Runs one console command with `psql`, killed at `timeout`.
fn command(admin: &PgbouncerAdmin, sql: &str, timeout: Duration) -> Answer {
    let connect = timeout.as_secs().clamp(2, 30).to_string();
    let mut cmd = Command::new("psql");
    cmd.args(["-X", "-q", "-A", "-z", "-P", "footer=off"])
        .args(["-v", "ON_ERROR_STOP=1", "-w"])
        .args(["-h", &admin.host, "-p", &admin.port.to_string()])
        .args(["-U", &admin.user, "-d", "pgbouncer", "-c", sql])
        .env("PGCONNECT_TIMEOUT", connect)
        .env("PGAPPNAME", "converge");
    let options = Options {
        separate_stderr: true,
        keep_group_on_exit: false,
        ..Options::default()
    };
    let start = Instant::now();
    let mut child = match Running::spawn_with(&mut cmd, options) {
        Ok(c) => c,
        Err(e) => return Answer::Failed(format!("cannot run psql for `{sql}`: {e}")),
    };
    let status = match child.wait_until(start, timeout) {
        Ok(Some(s)) => s,
        _ => {
            let _ = child.kill();
            return Answer::TimedOut(format!(
                "`{sql}` did not answer within {:.0}s",
                timeout.as_secs_f64()
            ));
        }
    };
    let (stderr, stdout) = match (
        bounded(child.stderr(MAX_ANSWER + 1)),
        bounded(child.stdout(MAX_ANSWER + 1)),
    ) {
        (Ok(e), Ok(o)) => (e, o),
        (Err(e), _) | (_, Err(e)) => return Answer::Failed(format!("`{sql}`: {e}")),
    };
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

/// What `psql` wrote, read back up to one byte past [`MAX_ANSWER`]: more
/// is an error, never a cut.
fn bounded(read: std::io::Result<Vec<u8>>) -> Result<String, String> {
    let bytes = read.map_err(|e| format!("cannot read psql's output back: {e}"))?;
    if bytes.len() as u64 > MAX_ANSWER {
        return Err(format!(
            "psql wrote more than {} MiB; nothing of it was used",
            MAX_ANSWER >> 20
        ));
    }
    Ok(String::from_utf8_lossy(&bytes).trim().to_string())
}

#[cfg(test)]
mod tests;
