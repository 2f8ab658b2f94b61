//! The daemon carrying out the pass's [`Pause`] decisions: `PAUSE` a
//! database while its primary is unclear, `RESUME` it once the pass no
//! longer asks (after the transaction that pointed it at the resolved
//! primary), or when its limit runs out, or at shutdown.
//!
//! Every database is written to the [`ledger`] before its `PAUSE` and
//! taken out after its `RESUME`, so whatever converge paused, a converge
//! resumes: this one at shutdown, or the next one at its first pass when
//! this one was killed (a leftover the first pass still wants stays
//! paused, its clock running from the original `PAUSE`). A pause that
//! outlived its limit is resumed at the last primary and not paused again
//! until the primary resolves; a `PAUSE` that failed is not retried until
//! then either, so a broken console costs one error, not one per pass.
//!
//! The `PAUSE` answer is awaited only briefly ([`PAUSE_ANSWER_WAIT`]):
//! PgBouncer holds new queries from the moment it reads the command and
//! answers once open transactions end, and the pass must not wait on an
//! application's transaction. What happened goes back as [`PauseEvent`]s
//! for the reporter, the one place that logs and counts.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use converge_model::manifest::PgbouncerAdmin;
use converge_model::Layout;
use converge_programs::pgbouncer::console::pause::{pause_database, resume_database, Paused};
use serde::{Deserialize, Serialize};

use crate::pause::ledger::{self, Entry, Ledger};
use crate::pause::Pause;

/// How long a `PAUSE` answer is awaited before the pass goes on, the
/// pause in force and draining.
pub const PAUSE_ANSWER_WAIT: Duration = Duration::from_secs(2);

/// After a `RESUME` failed, when to try again.
const RETRY: Duration = Duration::from_secs(5);

/// What happened to one database's pause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PauseEvent {
    /// Paused; `draining` when PgBouncer still waits for open
    /// transactions to end.
    Paused {
        /// Database.
        database: String,
        /// Why.
        reason: String,
        /// At most this long.
        limit_secs: u64,
        /// The `PAUSE` was not answered yet.
        draining: bool,
    },
    /// Resumed because the pass no longer asks: the primary resolved.
    Resumed {
        /// Database.
        database: String,
        /// Seconds it was paused.
        after_secs: u64,
    },
    /// Resumed at its last primary because the limit ran out while the
    /// primary was still unclear.
    TimedOut {
        /// Database.
        database: String,
        /// Seconds it was paused.
        after_secs: u64,
    },
    /// Resumed: a converge that is gone had paused it.
    LeftOver {
        /// Database.
        database: String,
    },
    /// Resumed at shutdown.
    Shutdown {
        /// Database.
        database: String,
    },
    /// A `PAUSE` or `RESUME` failed.
    Failed {
        /// Database.
        database: String,
        /// `PAUSE`, `RESUME`, or writing the ledger.
        action: &'static str,
        /// What went wrong.
        error: String,
    },
}

/// Where a database's pause stands, for `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PauseState {
    /// Paused now.
    Paused,
    /// The limit ran out; resumed at the last primary, which is still
    /// unclear.
    TimedOut,
    /// The `PAUSE` failed; not paused.
    Failed,
}

/// One database's pause in `/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PauseStatus {
    /// Where it stands.
    pub state: PauseState,
    /// Unix time it was paused (or the `PAUSE` failed).
    pub since: u64,
    /// Why it was paused.
    pub reason: String,
    /// The longest it may stay paused, in seconds.
    pub limit_secs: u64,
}

/// The two commands the pauser sends. A seam, so the rules above are
/// tested without a PgBouncer; [`Psql`] is the one the daemon uses.
pub trait Console: Send {
    /// `PAUSE database` on `console`.
    fn pause(&mut self, console: &PgbouncerAdmin, database: &str) -> Result<Paused, String>;
    /// `RESUME database` on `console`.
    fn resume(&mut self, console: &PgbouncerAdmin, database: &str) -> Result<(), String>;
}

/// PgBouncer's admin console, one `psql` per command.
pub struct Psql;

impl Console for Psql {
    fn pause(&mut self, console: &PgbouncerAdmin, database: &str) -> Result<Paused, String> {
        pause_database(console, database, PAUSE_ANSWER_WAIT)
    }

    fn resume(&mut self, console: &PgbouncerAdmin, database: &str) -> Result<(), String> {
        let wait = Duration::from_secs(console.timeout_secs.clamp(1, 10));
        resume_database(console, database, wait)
    }
}

/// The pauses in force, and the databases given up on.
pub struct Pauser {
    console: Box<dyn Console>,
    layout: Layout,
    ledger: Ledger,
    /// Databases not paused again until the pass stops asking: their
    /// limit ran out, or their `PAUSE` failed.
    gave_up: BTreeMap<String, PauseStatus>,
    /// Databases whose `RESUME` failed: tried again [`RETRY`] later, not
    /// only when their limit runs out, and whatever the next pass decides.
    resume_failed: BTreeSet<String>,
    /// No pass followed yet: what the ledger holds was left by another
    /// converge.
    first: bool,
}

impl Pauser {
    /// A pauser reading what a previous converge left in the ledger,
    /// sending its commands to `console`.
    pub fn new(layout: Layout, console: Box<dyn Console>) -> Self {
        let ledger = ledger::load(&layout);
        Self {
            console,
            layout,
            ledger,
            gave_up: BTreeMap::new(),
            resume_failed: BTreeSet::new(),
            first: true,
        }
    }

    /// Follows a pass's decision at unix time `now`; `wanted` is `None`
    /// when the pass decided nothing (no inputs, no catalog, no apply):
    /// then only limits are enforced, and leftovers resumed.
    pub fn follow(&mut self, wanted: Option<&[Pause]>, now: u64) -> Vec<PauseEvent> {
        let mut events = Vec::new();
        let names: BTreeSet<&str> = wanted
            .unwrap_or_default()
            .iter()
            .map(|p| p.database.as_str())
            .collect();
        if wanted.is_some() {
            self.gave_up.retain(|db, _| names.contains(db.as_str()));
        }
        let first = std::mem::take(&mut self.first);
        for (db, entry) in self.ledger.paused.clone() {
            let over = now >= entry.since.saturating_add(entry.limit_secs);
            let wants = names.contains(db.as_str());
            if wants {
                // Unclear again: the pause it holds is wanted, nothing owed.
                self.resume_failed.remove(&db);
            }
            let after_secs = now.saturating_sub(entry.since);
            let database = db.clone();
            let event = match (wants, first, wanted.is_some()) {
                // A converge that is gone paused it, and nobody asks now.
                (false, true, _) => PauseEvent::LeftOver { database },
                // Its RESUME failed and nobody asks for it again: the
                // resume is still owed, even by a pass that decided nothing.
                (false, false, _) if self.resume_failed.contains(&db) => PauseEvent::Resumed {
                    database,
                    after_secs,
                },
                (false, false, true) => PauseEvent::Resumed {
                    database,
                    after_secs,
                },
                _ if over => PauseEvent::TimedOut {
                    database,
                    after_secs,
                },
                _ => {
                    if first {
                        // PgBouncer may have restarted since: pause again,
                        // keeping the original clock.
                        self.send_pause(&db, &entry, &mut events);
                    }
                    continue;
                }
            };
            // Still asked for, or nobody could tell: not paused again
            // until a pass finds the primary resolved.
            if matches!(event, PauseEvent::TimedOut { .. }) {
                self.give_up(&db, &entry, PauseState::TimedOut);
            }
            self.resume(&db, &entry, event, &mut events);
        }
        for p in wanted.unwrap_or_default() {
            if self.ledger.paused.contains_key(&p.database)
                || self.gave_up.contains_key(&p.database)
            {
                continue;
            }
            self.pause(p, now, &mut events);
        }
        events
    }

    /// Resumes every paused database (shutdown).
    pub fn resume_all(&mut self) -> Vec<PauseEvent> {
        let mut events = Vec::new();
        for (db, entry) in self.ledger.paused.clone() {
            let event = PauseEvent::Shutdown {
                database: db.clone(),
            };
            self.resume(&db, &entry, event, &mut events);
        }
        events
    }

    /// How long until the next limit runs out (or a failed `RESUME` is
    /// tried again), at unix time `now`.
    pub fn next_deadline(&self, now: u64) -> Option<Duration> {
        self.ledger
            .paused
            .iter()
            .map(|(db, e)| {
                let left = e.since.saturating_add(e.limit_secs).saturating_sub(now);
                if left == 0 || self.resume_failed.contains(db) {
                    RETRY
                } else {
                    Duration::from_secs(left)
                }
            })
            .min()
    }

    /// Every database paused now or given up on, for `/status`.
    pub fn status(&self) -> BTreeMap<String, PauseStatus> {
        let paused = self.ledger.paused.iter().map(|(db, e)| {
            let status = PauseStatus {
                state: PauseState::Paused,
                since: e.since,
                reason: e.reason.clone(),
                limit_secs: e.limit_secs,
            };
            (db.clone(), status)
        });
        self.gave_up
            .iter()
            .map(|(db, s)| (db.clone(), s.clone()))
            .chain(paused)
            .collect()
    }

    /// Records `p` in the ledger, then pauses it.
    fn pause(&mut self, p: &Pause, now: u64, events: &mut Vec<PauseEvent>) {
        let entry = Entry {
            since: now,
            reason: p.reason.clone(),
            limit_secs: p.limit_secs,
            console: p.console.clone(),
        };
        self.ledger.paused.insert(p.database.clone(), entry.clone());
        if let Err(e) = ledger::store(&self.layout, &self.ledger) {
            self.ledger.paused.remove(&p.database);
            self.give_up(&p.database, &entry, PauseState::Failed);
            events.push(PauseEvent::Failed {
                database: p.database.clone(),
                action: "record the pause (not paused)",
                error: format!("{}: {e}", ledger::path(&self.layout).display()),
            });
            return;
        }
        self.send_pause(&p.database, &entry, events);
    }

    /// Sends `PAUSE` for a database already in the ledger.
    fn send_pause(&mut self, db: &str, entry: &Entry, events: &mut Vec<PauseEvent>) {
        let paused = self.console.pause(&entry.console, db);
        let draining = match paused {
            Ok(Paused::Done) => false,
            Ok(Paused::Draining) => true,
            Ok(Paused::NotRunning) => {
                // Nothing runs to hold queries; nothing to resume later.
                self.forget(db, events);
                return;
            }
            Err(error) => {
                self.forget(db, events);
                self.give_up(db, entry, PauseState::Failed);
                events.push(PauseEvent::Failed {
                    database: db.to_string(),
                    action: "PAUSE",
                    error,
                });
                return;
            }
        };
        events.push(PauseEvent::Paused {
            database: db.to_string(),
            reason: entry.reason.clone(),
            limit_secs: entry.limit_secs,
            draining,
        });
    }

    /// Sends `RESUME`; on success the database leaves the ledger and
    /// `event` is reported, else it stays for the next try.
    fn resume(&mut self, db: &str, entry: &Entry, event: PauseEvent, events: &mut Vec<PauseEvent>) {
        match self.console.resume(&entry.console, db) {
            Ok(()) => {
                self.forget(db, events);
                events.push(event);
            }
            Err(error) => {
                self.resume_failed.insert(db.to_string());
                events.push(PauseEvent::Failed {
                    database: db.to_string(),
                    action: "RESUME",
                    error,
                });
            }
        }
    }

    /// Takes `db` out of the ledger on disk.
    fn forget(&mut self, db: &str, events: &mut Vec<PauseEvent>) {
        self.resume_failed.remove(db);
        if self.ledger.paused.remove(db).is_some() {
            if let Err(e) = ledger::store(&self.layout, &self.ledger) {
                events.push(PauseEvent::Failed {
                    database: db.to_string(),
                    action: "record the resume",
                    error: format!("{}: {e}", ledger::path(&self.layout).display()),
                });
            }
        }
    }

    fn give_up(&mut self, db: &str, entry: &Entry, state: PauseState) {
        let status = PauseStatus {
            state,
            since: entry.since,
            reason: entry.reason.clone(),
            limit_secs: entry.limit_secs,
        };
        self.gave_up.insert(db.to_string(), status);
    }
}

#[cfg(test)]
mod tests;
