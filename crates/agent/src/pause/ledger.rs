//! The databases `converge run` paused, on disk in
//! `<state_dir>/pgbouncer-paused.json`.
//!
//! PgBouncer keeps a database paused until someone sends `RESUME`; if the
//! one that paused it is gone (killed with SIGKILL, the machine rebooted
//! under it), every query of the database waits for good. So the daemon
//! records a database here before it sends `PAUSE`, and removes it after
//! `RESUME`; the next daemon to start reads what is left and resumes it,
//! unless its first pass still wants that database paused. Written
//! atomically (see `state_file`), so a crash leaves the list before or
//! after the change. An unreadable or corrupt file is reported and read
//! as empty: nothing to resume is the safe reading only because converge
//! writes the file before every `PAUSE`.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;

use converge_model::manifest::PgbouncerAdmin;
use converge_model::Layout;
use serde::{Deserialize, Serialize};

/// One database converge paused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Unix time of the `PAUSE`.
    pub since: u64,
    /// Why it was paused.
    pub reason: String,
    /// The longest it may stay paused, in seconds.
    pub limit_secs: u64,
    /// The console it was paused on (and is resumed on).
    pub console: PgbouncerAdmin,
}

/// What the file holds: the paused databases by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ledger {
    /// Paused databases.
    pub paused: BTreeMap<String, Entry>,
}

/// `<state_dir>/pgbouncer-paused.json` under `layout`.
pub fn path(layout: &Layout) -> PathBuf {
    layout.state_dir().join("pgbouncer-paused.json")
}

/// The stored list; empty when there is none or it cannot be read.
pub fn load(layout: &Layout) -> Ledger {
    let path = path(layout);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ledger::default(),
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "cannot read the list of paused PgBouncer databases; none will be resumed for it");
            return Ledger::default();
        }
    };
    serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        tracing::error!(path = %path.display(), error = %e, "the list of paused PgBouncer databases is corrupt; none will be resumed for it");
        Ledger::default()
    })
}

/// Replaces the stored list with `ledger`, atomically.
pub fn store(layout: &Layout, ledger: &Ledger) -> io::Result<()> {
    crate::state_file::store_json(&path(layout), ledger)
}

/// A console as a manifest would name it, for tests of the ledger and
/// of what reads it.
#[cfg(test)]
pub(crate) fn sample_console() -> PgbouncerAdmin {
    PgbouncerAdmin {
        host: "/run/postgresql".into(),
        port: 6432,
        user: "converge".into(),
        pause: false,
        timeout_secs: 5,
        unclear_primary_pause_secs: 30,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_list_reads_back_and_a_corrupt_one_reads_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = Layout::new(dir.path());
        assert_eq!(load(&layout), Ledger::default());
        let entry = Entry {
            since: 7,
            reason: "no instance is primary".into(),
            limit_secs: 30,
            console: sample_console(),
        };
        let ledger = Ledger {
            paused: BTreeMap::from([("app".to_string(), entry)]),
        };
        store(&layout, &ledger).expect("store");
        assert_eq!(load(&layout), ledger);
        std::fs::write(path(&layout), "{\"paused\": 1}").expect("write");
        assert_eq!(load(&layout), Ledger::default());
    }
}
