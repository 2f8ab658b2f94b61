//! `apply`: one transaction per bundle, under the node lock.
//!
//! For each bundle: read what is live; if nothing differs, stop (no write,
//! no reload — invariant 3). Otherwise stage a candidate for *every*
//! member beside its destination, so validators see a complete candidate
//! set (a changed userlist is checked through its unchanged
//! `pgbouncer.ini`); validate each; only when all accept, back up, rename
//! the changed members over their destinations and fsync the directories
//! (invariants 1 and 2); then run each distinct reload action once, or,
//! for a membership-only change of runtime-API backends, nothing: the
//! runtime API gave HAProxy the new servers while the validator ran, and a
//! rejection reloads HAProxy on the live files. The
//! fsyncs, backups and pending-reload marker a commit needs are written
//! while the validators run, off the latency of a change. If a
//! commit step or a reload fails, the previous bytes (held in memory since
//! the start) are staged and renamed back the same way, or new files
//! removed, and the reload runs again so the program serves the old config
//! (invariant 4).
//!
//! A failed bundle does not stop the others: each bundle is its own unit.
//! A symlink at a destination is replaced by a regular file on commit (the
//! rename replaces the link, not its target); converge owns the path.
//! Failpoints (see [`failpoint`](crate::failpoint)) mark every step a crash
//! test may stop at.
//!
//! The programs themselves (validators, reloads, the runtime API) are
//! driven through [`converge_programs`]; this module decides when. Putting
//! files back, and the typed account of how that went, is `rollback`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use converge_model::manifest::Validator;
use converge_model::{ReloadAction, RenderedFile, RenderedSet};
use tempfile::TempPath;

use crate::error::ApplyError;
use crate::failpoint;
use crate::fsutil;
use crate::live::{self, Change, Live, Ownership, MODE_MASK};
use crate::lock::ApplyLock;
use crate::pending;
use crate::report::{ApplyReport, BundleReport, Outcome, Rollback, Timings};
use crate::stage;
use converge_programs::pgbouncer::ini as pgbouncer_ini;
use converge_programs::reload::{self, PauseScope, ReloadOutcome};
use converge_programs::signal;
use converge_programs::validate::{self, Candidate};

mod rollback;
mod runtime;

use rollback::Program;
use runtime::Runtime;

/// How long an apply waits, and for what.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// How long to wait for another apply on this node to finish.
    pub lock_timeout: Duration,
    /// How long a reload command may run before it is killed.
    pub reload_timeout: Duration,
    /// How long a signalled process must stay alive to count as reloaded.
    pub signal_settle: Duration,
    /// How long to wait for a process to install its handler for the
    /// reload signal before giving up without sending it (a signal with no
    /// handler can kill it, or be lost while HAProxy re-executes).
    pub signal_ready_timeout: Duration,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        Self {
            lock_timeout: Duration::from_secs(30),
            reload_timeout: Duration::from_secs(60),
            signal_settle: Duration::from_millis(200),
            signal_ready_timeout: Duration::from_secs(5),
        }
    }
}

/// Brings every bundle of `set` live, as described in the module docs.
///
/// Returns `Err` only when nothing could be attempted (the lock or the
/// state directory); per-bundle failures are in the report, see
/// [`ApplyReport::ok`].
pub fn apply(set: &RenderedSet, opts: &ApplyOptions) -> Result<ApplyReport, ApplyError> {
    let lock_path = ApplyLock::path_for(&set.layout);
    let _lock = ApplyLock::acquire(&lock_path, opts.lock_timeout)?;
    let dirs: BTreeSet<PathBuf> = set
        .files
        .values()
        .filter_map(|f| f.destination.parent().map(Path::to_path_buf))
        .collect();
    stage::remove_stale(&dirs);
    // Like staged files, children a killed run left running are its
    // leftovers (invariant 8).
    converge_programs::process::lineage::reap_leftovers();
    let bundles = set
        .bundles()
        .into_iter()
        .map(|(name, files)| run_bundle(set, name, &files, opts))
        .collect();
    Ok(ApplyReport {
        node: set.node.clone(),
        bundles,
    })
}

/// A bundle member and what is live at its destination.
struct Member<'a> {
    file: &'a RenderedFile,
    live: Option<Live>,
    own: Ownership,
    change: Change,
}

fn run_bundle(
    set: &RenderedSet,
    name: &str,
    files: &[&RenderedFile],
    opts: &ApplyOptions,
) -> BundleReport {
    let targets = files.iter().map(|f| f.target.clone()).collect();
    let members = match inspect(files) {
        Ok(m) => m,
        Err(e) => {
            return report(set, name, targets, Vec::new(), Err(failed(e)));
        }
    };
    let changed = members
        .iter()
        .filter(|m| m.change != Change::Unchanged)
        .map(|m| m.file.target.clone())
        .collect();
    let txn = Txn {
        set,
        name,
        members: &members,
        opts,
        owed: pending::is_pending(&set.layout, name),
        timings: Mutex::default(),
    };
    let result = txn.run();
    let mut report = report(set, name, targets, changed, result);
    report.timings = *txn.timings.lock().unwrap_or_else(PoisonError::into_inner);
    report
}

fn inspect<'a>(files: &[&'a RenderedFile]) -> Result<Vec<Member<'a>>, ApplyError> {
    files
        .iter()
        .map(|&file| {
            let live = live::read(file)?;
            let own = live::ownership(file)?;
            let (change, _) = live::compare(file, live.as_ref(), own);
            if change == Change::Changed {
                crate::plan::warn_needs_restart(file, live.as_ref().map(|l| l.bytes.as_slice()));
            }
            Ok(Member {
                file,
                live,
                own,
                change,
            })
        })
        .collect()
}

/// Why a bundle did not go live (unredacted error text).
enum NotApplied {
    /// A validator refused a candidate; nothing was committed.
    Rejected(String),
    /// Something failed before any commit.
    Failed(String),
    /// A commit or reload failed and the previous files were put back.
    RolledBack(Rollback),
}

fn failed(e: ApplyError) -> NotApplied {
    NotApplied::Failed(e.to_string())
}

fn report(
    set: &RenderedSet,
    name: &str,
    targets: Vec<String>,
    changed: Vec<String>,
    result: Result<Outcome, NotApplied>,
) -> BundleReport {
    let mut rollback = None;
    let outcome = match result {
        Ok(o) => o,
        Err(NotApplied::Rejected(e)) => Outcome::Rejected {
            error: set.redact(&e),
        },
        Err(NotApplied::Failed(e)) => Outcome::Failed {
            error: set.redact(&e),
        },
        Err(NotApplied::RolledBack(r)) => {
            let r = r.redacted(set);
            let error = r.to_string();
            rollback = Some(r);
            Outcome::RolledBack { error }
        }
    };
    // The caller reports the outcome (the daemon's report module, or the
    // one-shot command's output): logged here too it would appear twice.
    BundleReport {
        bundle: name.to_string(),
        targets,
        changed,
        outcome,
        rollback,
        timings: Timings::default(),
    }
}

/// One bundle's transaction.
struct Txn<'a> {
    set: &'a RenderedSet,
    name: &'a str,
    members: &'a [Member<'a>],
    opts: &'a ApplyOptions,
    /// An interrupted apply committed this bundle without reloading it.
    owed: bool,
    /// How long its validators and its reload took, for the metrics.
    timings: Mutex<Timings>,
}

impl Txn<'_> {
    fn run(&self) -> Result<Outcome, NotApplied> {
        if self.members.iter().all(|m| m.change == Change::Unchanged) {
            return if self.owed {
                self.finish_owed_reload()
            } else {
                Ok(Outcome::Unchanged)
            };
        }
        let rewrites: Vec<&Member> = self
            .members
            .iter()
            .filter(|m| m.change.rewrites())
            .collect();
        if rewrites.is_empty() {
            self.fix_metadata().map_err(failed)?;
            return if self.owed {
                self.finish_owed_reload()
            } else {
                Ok(Outcome::Applied {
                    reload: ReloadOutcome::NotNeeded,
                })
            };
        }

        let mut staged = self.stage_all().map_err(failed)?;
        failpoint::hit("staged");
        let runtime = self.timed(
            |t| &mut t.validate,
            || self.check_and_prepare(&staged, &rewrites),
        )?;
        failpoint::hit("validated");

        // Only the rewritten members are committed; the other candidates
        // existed for the validators and are deleted here.
        let mut to_commit: Vec<(&Member, TempPath)> = Vec::with_capacity(rewrites.len());
        for (m, tmp) in self.members.iter().zip(staged.drain(..)) {
            if m.change.rewrites() {
                to_commit.push((m, tmp));
            }
        }

        let told = if runtime == Runtime::NotTried {
            Program::NotTold
        } else {
            Program::Told
        };
        let committed = self.commit(to_commit, told)?;
        failpoint::hit("committed");
        self.prune_backups(&rewrites);

        if let Runtime::Updated(servers) = runtime {
            pending::clear(&self.set.layout, self.name);
            failpoint::hit("reloaded");
            return Ok(Outcome::RuntimeUpdated { servers });
        }
        self.timed(|t| &mut t.reload, || self.reload_or_roll_back(&committed))
    }

    /// Runs `step`, recording how long it took in the slot `which` picks.
    fn timed<T>(
        &self,
        which: impl FnOnce(&mut Timings) -> &mut Option<Duration>,
        step: impl FnOnce() -> T,
    ) -> T {
        let started = Instant::now();
        let out = step();
        let mut timings = self.timings.lock().unwrap_or_else(PoisonError::into_inner);
        *which(&mut timings) = Some(started.elapsed());
        out
    }

    /// Validates the candidates while, on another thread, making
    /// everything durable that must be on disk before the first rename and
    /// handing a membership-only change to HAProxy's runtime API, and
    /// what that did; a rejected candidate is undone (see
    /// [`Txn::reject`]).
    fn check_and_prepare(
        &self,
        staged: &[TempPath],
        rewrites: &[&Member],
    ) -> Result<Runtime, NotApplied> {
        // The validators only read the candidates, so everything that must
        // be on disk before the first rename (the candidates themselves,
        // the backups, the pending-reload marker) is written meanwhile
        // instead of adding its fsyncs to every change's latency. Once the
        // marker is durable, a membership-only change of runtime-API
        // backends goes to HAProxy meanwhile too, instead of waiting for
        // `haproxy -c` (see `runtime_api`): HAProxy checks each command
        // itself, and a rejected file is undone by reloading HAProxy on
        // the live one.
        let mut backups = Vec::new();
        let (validated, durable) = std::thread::scope(|s| {
            let durable = s.spawn(|| {
                self.make_durable(staged, rewrites, &mut backups)
                    .map(|()| self.runtime_update())
            });
            let validated = self.validate_all(staged);
            (validated, durable.join())
        });
        let durable = durable.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        if let Err(e) = validated {
            let told = durable.as_ref().is_ok_and(|r| *r != Runtime::NotTried);
            return Err(NotApplied::Rejected(self.reject(&e, &backups, told)));
        }
        durable.map_err(failed)
    }

    /// Reloads the committed bundle; on failure, rolls it back.
    fn reload_or_roll_back(&self, committed: &[&Member]) -> Result<Outcome, NotApplied> {
        match self.reload_all() {
            Ok(reload) => {
                pending::clear(&self.set.layout, self.name);
                failpoint::hit("reloaded");
                Ok(Outcome::Applied { reload })
            }
            Err(e) => {
                tracing::warn!(bundle = self.name, error = %self.set.redact(&e.to_string()), "reload failed; rolling back");
                let program = match e {
                    ApplyError::Reload {
                        untouched: true, ..
                    } => Program::Untouched,
                    _ => Program::Told,
                };
                Err(NotApplied::RolledBack(self.roll_back(
                    committed,
                    &e.to_string(),
                    program,
                )))
            }
        }
    }

    /// The files are already right but an interrupted apply never reloaded
    /// them: reload now. On failure the marker stays, so the next apply
    /// tries again; there is nothing to roll back to that was validated
    /// more recently than what is live.
    fn finish_owed_reload(&self) -> Result<Outcome, NotApplied> {
        tracing::info!(
            bundle = self.name,
            "running the reload an interrupted apply left pending"
        );
        match self.reload_all() {
            Ok(reload) => {
                pending::clear(&self.set.layout, self.name);
                Ok(Outcome::Applied { reload })
            }
            Err(e) => Err(NotApplied::Failed(format!(
                "{e}; the files an interrupted apply committed stay in place and the reload will be retried"
            ))),
        }
    }

    fn stage_all(&self) -> Result<Vec<TempPath>, ApplyError> {
        self.members
            .iter()
            .map(|m| {
                stage::write(&m.file.destination, &m.file.bytes, m.file.mode, m.own).map_err(
                    |source| ApplyError::Stage {
                        target: m.file.target.clone(),
                        path: m.file.destination.clone(),
                        source,
                    },
                )
            })
            .collect()
    }

    fn validate_all(&self, staged: &[TempPath]) -> Result<(), ApplyError> {
        let siblings: Vec<(PathBuf, PathBuf)> = self
            .members
            .iter()
            .zip(staged)
            .map(|(m, s)| (m.file.destination.clone(), s.to_path_buf()))
            .collect();
        for (m, s) in self.members.iter().zip(staged) {
            validate::validate(&Candidate {
                file: m.file,
                staged: s,
                siblings: &siblings,
            })
            .map_err(ApplyError::Rejected)?;
        }
        Ok(())
    }

    /// Fsyncs the candidates that will be committed, backs up what they
    /// replace (into `backups`) and durably marks the bundle as owing a
    /// reload, so a crash after any rename is finished by the next apply.
    fn make_durable(
        &self,
        staged: &[TempPath],
        rewrites: &[&Member],
        backups: &mut Vec<PathBuf>,
    ) -> Result<(), ApplyError> {
        for (m, s) in self.members.iter().zip(staged) {
            if m.change.rewrites() {
                stage::sync(s).map_err(|source| ApplyError::Stage {
                    target: m.file.target.clone(),
                    path: m.file.destination.clone(),
                    source,
                })?;
            }
        }
        for m in rewrites {
            if let Some(live) = &m.live {
                backups.extend(crate::backup::save(
                    &self.set.layout,
                    &m.file.target,
                    &m.file.destination,
                    &live.bytes,
                    m.file.backups,
                )?);
            }
        }
        let targets: Vec<String> = rewrites.iter().map(|m| m.file.target.clone()).collect();
        pending::mark(&self.set.layout, self.name, &targets)?;
        failpoint::hit("backed-up");
        Ok(())
    }

    /// Undoes a rejected bundle and returns the report's text. Nothing
    /// was committed, so its backups are copies of files that stay live.
    /// If the runtime API already gave HAProxy the candidate's servers
    /// (`told`), HAProxy is reloaded on the live files. No reload is owed
    /// afterwards, unless an interrupted apply left one owed before this
    /// one began or that reload failed: then the marker stays, and the next
    /// apply reloads.
    fn reject(&self, e: &ApplyError, backups: &[PathBuf], told: bool) -> String {
        for b in backups {
            if let Err(e) = std::fs::remove_file(b) {
                tracing::warn!(backup = %b.display(), error = %e, "cannot remove the backup of a rejected apply");
            }
        }
        let mut text = e.to_string();
        let mut owed = self.owed;
        if told {
            match self.reload_all() {
                Ok(_) => text.push_str(
                    "; the runtime API update made meanwhile was undone by reloading the live files",
                ),
                Err(r) => {
                    text.push_str(&format!("; undoing the runtime API update made meanwhile failed ({r}); the next apply reloads"));
                    owed = true;
                }
            }
        }
        if !owed {
            pending::clear(&self.set.layout, self.name);
        }
        text
    }

    /// Bounds each committed target's backups; a failure costs disk space,
    /// not correctness, so it is logged.
    fn prune_backups(&self, rewrites: &[&Member]) {
        for m in rewrites {
            if let Err(e) = crate::backup::prune(&self.set.layout, &m.file.target, m.file.backups) {
                tracing::warn!(target = %m.file.target, error = %e, "cannot prune old backups");
            }
        }
    }

    /// Renames each candidate over its destination and syncs the
    /// directories. On failure, whatever was renamed is put back, and the
    /// program reloaded on it if `program` was already told of the change.
    fn commit<'m>(
        &self,
        to_commit: Vec<(&'m Member<'m>, TempPath)>,
        program: Program,
    ) -> Result<Vec<&'m Member<'m>>, NotApplied> {
        let multi = to_commit.len() > 1;
        let mut committed: Vec<&Member> = Vec::with_capacity(to_commit.len());
        for (m, tmp) in to_commit {
            let dest = &m.file.destination;
            if let Err(e) = tmp.persist(dest) {
                let err = ApplyError::Commit {
                    target: m.file.target.clone(),
                    path: dest.clone(),
                    source: e.error,
                };
                return Err(NotApplied::RolledBack(self.roll_back(
                    &committed,
                    &err.to_string(),
                    program,
                )));
            }
            tracing::info!(bundle = self.name, target = %m.file.target, path = %dest.display(), "committed");
            committed.push(m);
            if multi && committed.len() == 1 {
                failpoint::hit("committed-one");
            }
        }
        for dir in dirs_of(&committed) {
            if let Err(source) = fsutil::sync_dir(&dir) {
                let err = ApplyError::Commit {
                    target: committed
                        .first()
                        .map(|m| m.file.target.clone())
                        .unwrap_or_default(),
                    path: dir,
                    source,
                };
                return Err(NotApplied::RolledBack(self.roll_back(
                    &committed,
                    &err.to_string(),
                    program,
                )));
            }
        }
        if let Err(e) = self.fix_metadata() {
            return Err(NotApplied::RolledBack(self.roll_back(
                &committed,
                &e.to_string(),
                program,
            )));
        }
        Ok(committed)
    }

    /// Sets mode/owner in place on members whose bytes were already right.
    fn fix_metadata(&self) -> Result<(), ApplyError> {
        for m in self.members.iter().filter(|m| m.change == Change::Metadata) {
            let path = &m.file.destination;
            let err = |source: std::io::Error| ApplyError::Metadata {
                target: m.file.target.clone(),
                path: path.clone(),
                source,
            };
            let f = std::fs::File::open(path).map_err(err)?;
            if m.own.uid.is_some() || m.own.gid.is_some() {
                nix::unistd::fchown(&f, m.own.uid, m.own.gid).map_err(|e| err(e.into()))?;
            }
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(m.file.mode & MODE_MASK))
                .map_err(err)?;
            f.sync_all().map_err(err)?;
            tracing::info!(bundle = self.name, target = %m.file.target, "fixed mode/owner");
        }
        Ok(())
    }

    /// Runs each distinct reload action of the bundle once, in member order.
    /// A failure counts as `untouched` only while no earlier action ran:
    /// a program reloaded before it runs the new files and must be
    /// reloaded back by the rollback.
    fn reload_all(&self) -> Result<ReloadOutcome, ApplyError> {
        let limits = reload::Limits {
            timeout: self.opts.reload_timeout,
            settle: self.opts.signal_settle,
            ready: self.opts.signal_ready_timeout,
        };
        let mut actions: Vec<&ReloadAction> = Vec::new();
        for m in self.members {
            if !actions.contains(&&m.file.reload) {
                actions.push(&m.file.reload);
            }
        }
        let pause = self.pause_scope();
        let mut outcome = ReloadOutcome::NoAction;
        for (i, action) in actions.into_iter().enumerate() {
            // The program whose pidfile a signal reads, as the validators
            // of the members reloaded this way name it.
            let program = self
                .members
                .iter()
                .filter(|m| &m.file.reload == action)
                .find_map(|m| signal::Program::of(&m.file.validate));
            let o =
                reload::run(action, limits, &pause, program).map_err(|f| ApplyError::Reload {
                    bundle: self.name.to_string(),
                    command: f.command,
                    detail: f.detail,
                    stderr: f.stderr,
                    untouched: f.untouched && i == 0,
                })?;
            tracing::info!(bundle = self.name, action = %self.set.redact(&reload::describe(action)), outcome = o.as_str(), "reload");
            outcome = outcome.merge(o);
        }
        Ok(outcome)
    }

    /// The PgBouncer databases this bundle's change moves: `[databases]`
    /// entries that differ between the live files and the candidates of
    /// its `pgbouncer`-validated members (a rollback moves the same ones
    /// back). All of them when an interrupted apply left the reload owed:
    /// what that apply moved is no longer on disk to compare.
    fn pause_scope(&self) -> PauseScope {
        if self.owed {
            return PauseScope::All;
        }
        PauseScope::Only(
            self.members
                .iter()
                .filter(|m| m.file.validate == Validator::Pgbouncer)
                .filter_map(|m| {
                    let live = m.live.as_ref()?;
                    Some(pgbouncer_ini::moved_databases(&live.bytes, &m.file.bytes))
                })
                .flatten()
                .collect(),
        )
    }
}

fn dirs_of(members: &[&Member]) -> BTreeSet<PathBuf> {
    members
        .iter()
        .filter_map(|m| m.file.destination.parent().map(Path::to_path_buf))
        .collect()
}

#[cfg(test)]
mod tests;
