//! Reloads owed by an apply that was killed between commit and reload.
//!
//! Without this, a crash after the rename but before the reload leaves the
//! new files on disk and the old config in the program: the next apply
//! sees files equal to the rendered ones, reports "unchanged", and the
//! program never picks them up. So before its first rename a transaction
//! writes `<state_dir>/pending/<bundle>` (fsynced), and removes it once the
//! bundle's reload has run — after success, or after a rollback and the
//! reload of the old files. A marker found by a later apply (or plan) means
//! "reload this bundle even if its files are unchanged".

use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;

use converge_model::Layout;

use crate::error::ApplyError;
use crate::fsutil;

fn dir(layout: &Layout) -> PathBuf {
    layout.state_dir().join("pending")
}

fn marker(layout: &Layout, bundle: &str) -> PathBuf {
    dir(layout).join(crate::backup::safe_name(bundle))
}

/// Whether `bundle` has a reload owed by an interrupted apply.
pub(crate) fn is_pending(layout: &Layout, bundle: &str) -> bool {
    marker(layout, bundle).is_file()
}

/// Records, durably, that `bundle` is about to be committed.
pub(crate) fn mark(layout: &Layout, bundle: &str, targets: &[String]) -> Result<(), ApplyError> {
    let d = dir(layout);
    fsutil::create_private_dir(&d)?;
    let path = marker(layout, bundle);
    let err = |source: io::Error| ApplyError::Pending {
        bundle: bundle.to_string(),
        path: path.clone(),
        source,
    };
    let mut f = File::create(&path).map_err(err)?;
    writeln!(f, "{}", targets.join(" ")).map_err(err)?;
    f.sync_all().map_err(err)?;
    fsutil::sync_dir(&d).map_err(err)
}

/// The reload for `bundle` has run; forget the marker. Failure is logged:
/// the worst case is one extra reload next time.
pub(crate) fn clear(layout: &Layout, bundle: &str) {
    let path = marker(layout, bundle);
    match std::fs::remove_file(&path) {
        Ok(()) => {
            if let Some(d) = path.parent() {
                let _ = fsutil::sync_dir(d);
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(bundle, path = %path.display(), error = %e, "cannot remove pending-reload marker")
        }
    }
}
