//! `PAUSE db` and `RESUME db` on their own, for a database whose primary
//! is unclear: the catalog names none, or several instances claim it.
//!
//! The reload's `PAUSE`/`RELOAD`/`RESUME` (the parent module) is one step
//! that ends resumed. This is the other use of the same commands: converge
//! pauses a database and leaves it paused across passes, so clients wait
//! for the primary to resolve instead of failing on a dead or doubtful
//! one, and resumes it once the resolved primary is live (or a timeout
//! says waiting longer is worse).
//!
//! PgBouncer marks the database paused when `PAUSE db` arrives — new
//! queries wait from that moment — and answers once its server
//! connections are released, which takes as long as the longest open
//! transaction. The caller waits for the answer only `wait`; past it the
//! `psql` is killed and the pause stays in force (PgBouncer keeps a
//! database paused whoever asked), reported as [`Paused::Draining`].
//! `PAUSE db` on a database already paused is answered like the first,
//! and `RESUME db` on one that is not paused (a reload's own `RESUME` got
//! there first) counts as resumed.

use std::time::Duration;

use converge_model::manifest::PgbouncerAdmin;

use super::{command, Answer};

/// What a `PAUSE db` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paused {
    /// Answered: no server connection of the database is in use.
    Done,
    /// Not answered within the wait: the pause is in force and waits for
    /// open transactions to end.
    Draining,
    /// Nobody listens on the console: PgBouncer is not running.
    NotRunning,
}

/// `database` as the console's parser takes it, or why it cannot be
/// named alone (the console reads one word, or a quoted name).
pub(super) fn one_word(database: &str) -> Result<&str, String> {
    if !database.is_empty()
        && database
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        Ok(database)
    } else {
        Err(format!(
            "database name `{database}` is not one word of letters, digits and `_`; the \
             console cannot pause it alone"
        ))
    }
}

/// Sends `PAUSE database`, waiting up to `wait` for its answer.
pub fn pause_database(
    admin: &PgbouncerAdmin,
    database: &str,
    wait: Duration,
) -> Result<Paused, String> {
    let db = one_word(database)?;
    match command(admin, &format!("PAUSE {db}"), wait) {
        Answer::Ok(_) => Ok(Paused::Done),
        Answer::TimedOut(_) => Ok(Paused::Draining),
        Answer::Unreachable(_) => Ok(Paused::NotRunning),
        Answer::Failed(e) => Err(e),
    }
}

/// Sends `RESUME database`; a database that is not paused is resumed
/// already, and a PgBouncer that does not run holds nothing.
pub fn resume_database(
    admin: &PgbouncerAdmin,
    database: &str,
    wait: Duration,
) -> Result<(), String> {
    let db = one_word(database)?;
    match command(admin, &format!("RESUME {db}"), wait) {
        Answer::Ok(_) | Answer::Unreachable(_) => Ok(()),
        Answer::Failed(e) if e.contains(&format!("database {db} is not paused")) => Ok(()),
        Answer::TimedOut(e) | Answer::Failed(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_one_word_names_are_sent() {
        assert_eq!(one_word("app_2"), Ok("app_2"));
        for bad in ["", "app; RESUME", "a b", "app\"", "bäd"] {
            assert!(one_word(bad).is_err(), "{bad}");
        }
    }
}
