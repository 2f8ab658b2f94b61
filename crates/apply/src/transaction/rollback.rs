//! Putting the previous files back when a commit or reload fails, and
//! saying how that went as a value ([`Rollback`]), not as text: a caller,
//! a metric or a test can tell a complete rollback from an incomplete one
//! without reading the words, and the report's text is its `Display`.

use nix::unistd::{Gid, Uid};

use super::{dirs_of, Member, Txn};
use crate::error::ApplyError;
use crate::failpoint;
use crate::fsutil;
use crate::live::Ownership;
use crate::pending;
use crate::report::{Rollback, RollbackReload};
use crate::stage;

impl Txn<'_> {
    /// Puts back the previous bytes (or removes files that were new) of
    /// `committed`, then reloads as `program` says. Returns what the
    /// rollback did, with the original error as its cause. The
    /// pending-reload marker goes once the live files are the previous
    /// ones and the program runs them.
    pub(super) fn roll_back(
        &self,
        committed: &[&Member],
        cause: &str,
        program: Program,
    ) -> Rollback {
        let reload = match program {
            Program::Told => true,
            Program::NotTold => self.owed,
            Program::Untouched => false,
        };
        let mut restore_errors = Vec::new();
        for m in committed.iter().rev() {
            if let Err(e) = restore(m) {
                restore_errors.push(e.to_string());
            }
        }
        for dir in dirs_of(committed) {
            if let Err(e) = fsutil::sync_dir(&dir) {
                restore_errors.push(format!("cannot sync {}: {e}", dir.display()));
            }
        }
        failpoint::hit("rolled-back");
        let reload = if reload {
            match self.reload_all() {
                Ok(_) => RollbackReload::Reloaded,
                Err(e) => RollbackReload::Failed {
                    error: e.to_string(),
                },
            }
        } else if program == Program::Untouched {
            RollbackReload::Untouched
        } else {
            RollbackReload::NotNeeded
        };
        // A reload owed from before stays owed when the program was left
        // untouched: it still runs files older than the restored ones.
        let reloaded = match &reload {
            RollbackReload::Reloaded => true,
            RollbackReload::Failed { .. } => false,
            RollbackReload::Untouched | RollbackReload::NotNeeded => {
                program != Program::Untouched || !self.owed
            }
        };
        let rollback = Rollback::new(cause, restore_errors, reload);
        if rollback.complete && reloaded {
            pending::clear(&self.set.layout, self.name);
        }
        rollback
    }
}

/// What the program saw of a commit being rolled back, which decides
/// whether the rollback reloads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Program {
    /// A reload reached it (and failed), or the runtime API gave it the
    /// new servers before the commit failed: reload it on the restored
    /// files.
    Told,
    /// The commit failed before any reload or runtime API update: reload
    /// only if a reload was owed from an interrupted apply.
    NotTold,
    /// The reload failed before reaching it, and would fail the same way
    /// again at once (a PgBouncer `PAUSE` timed out on an open
    /// transaction): it still runs the restored files, or an older owed
    /// set, which the next apply reloads.
    Untouched,
}

/// Writes `m`'s previous bytes back atomically with their previous mode
/// and owner, or removes the file if there was none.
fn restore(m: &Member) -> Result<(), ApplyError> {
    let dest = &m.file.destination;
    let err = |source: std::io::Error| ApplyError::Restore {
        target: m.file.target.clone(),
        path: dest.clone(),
        source,
    };
    match &m.live {
        Some(live) => {
            use std::os::unix::fs::MetadataExt;
            let own = if Uid::effective().is_root() {
                Ownership {
                    uid: Some(Uid::from_raw(live.meta.uid())),
                    gid: Some(Gid::from_raw(live.meta.gid())),
                }
            } else {
                Ownership::default()
            };
            let tmp = stage::write(dest, &live.bytes, live.meta.mode(), own).map_err(err)?;
            stage::sync(&tmp).map_err(err)?;
            tmp.persist(dest).map_err(|e| err(e.error))?;
        }
        None => match std::fs::remove_file(dest) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        },
    }
    tracing::info!(target = %m.file.target, path = %dest.display(), "restored previous file");
    Ok(())
}
