//! Turning a rendered set into live files, safely.
//!
//! Two entry points, sharing one comparison of the live file with the
//! rendered one (a [`Change`]), so `plan` shows exactly what `apply` does:
//!
//! - [`plan`] reads the destinations and says, per target, what would
//!   change, with a redacted unified diff. It writes nothing.
//! - [`apply`] runs one transaction per bundle under a node-wide lock:
//!   stage beside the destination → validate with the real program →
//!   back up → rename → fsync the directory → reload → verify, and on a
//!   failed reload put the previous files back and reload again.
//!
//! On disk (all under `--root`):
//!
//! - `<dest dir>/.<basename>.converge-stage.<pid>.<random>` — candidates
//!   while a transaction runs; files matching this scheme exactly are
//!   leftovers of a killed run and are removed by the next apply, under the
//!   lock.
//! - `/var/lib/converge/apply.lock` — the `flock`, holding the holder's pid.
//! - `/var/lib/converge/backups/<target>/<unix-nanos>-<sha8>` — previous
//!   versions, at most the target's `backups` of them.
//! - `/var/lib/converge/pending/<bundle>` — present from just before a
//!   bundle's first rename until its reload has run, so a reload lost to a
//!   crash is run by the next apply.
//!
//! Nothing here logs or returns file contents; error and diff text passes
//! through the set's secret redaction.
#![deny(missing_docs)]

pub use converge_programs::failpoint;
mod backup;
mod error;
mod fsutil;
mod live;
mod lock;
mod pending;
mod plan;
mod report;
mod stage;
#[cfg(test)]
mod testutil;
mod transaction;

pub use backup::{dir_for as backup_dir, list as list_backups};
pub use converge_programs::{describe_reload, ReloadOutcome};
pub use error::ApplyError;
pub use live::Change;
pub use lock::ApplyLock;
pub use plan::{describe_validator, dropped, plan, plan_between, Dropped, Plan, PlannedFile};
pub use report::{ApplyReport, BundleReport, Outcome, Rollback, RollbackReload, Timings};
pub use transaction::{apply, ApplyOptions};
