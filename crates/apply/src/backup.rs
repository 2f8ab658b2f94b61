//! Copies of the files a commit replaces, for an operator to go back to.
//!
//! `<state_dir>/backups/<target>/<unix-nanos>-<sha8>`, nanoseconds
//! zero-padded to 20 digits so name order is time order, `sha8` the first
//! eight hex digits of the content's SHA-256 (to tell versions apart at a
//! glance). Each backup is written like a commit (temp file, fsync,
//! rename) so it is complete or absent, mode `0600` inside a `0700`
//! directory because it may be a copy of a secret file. Once the new file
//! is committed the directory is pruned to the target's `backups` newest,
//! so disk use is bounded; pruning waits for the commit so that an apply
//! whose candidate is rejected can delete its own backup and leave the
//! older ones exactly as they were. Rollback after a failed reload uses the bytes read at the
//! start of the transaction, not these files.

use std::fs::Permissions;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use converge_model::Layout;

use crate::error::ApplyError;
use crate::fsutil::{self, sha256_hex};

/// `<state_dir>/backups/<target>`.
pub fn dir_for(layout: &Layout, target: &str) -> PathBuf {
    backups_root(&layout.state_dir()).join(safe_name(target))
}

/// The backups kept for `target`, oldest first.
pub fn list(layout: &Layout, target: &str) -> io::Result<Vec<PathBuf>> {
    list_in(&dir_for(layout, target))
}

fn backups_root(state_dir: &Path) -> PathBuf {
    state_dir.join("backups")
}

/// Target names become one path component, whatever they contain.
pub(crate) fn safe_name(target: &str) -> String {
    let s: String = target
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    match s.as_str() {
        "" | "." | ".." => format!("_{s}"),
        _ => s,
    }
}

fn is_backup_name(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() == 29
        && b[..20].iter().all(u8::is_ascii_digit)
        && b[20] == b'-'
        && b[21..].iter().all(|c| c.is_ascii_hexdigit())
}

fn list_in(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        if entry.file_name().to_str().is_some_and(is_backup_name) {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Saves `bytes` (the live contents of `target`'s `path`) and returns the
/// new backup's path; with `keep == 0` nothing is saved. Call [`prune`]
/// after the commit.
pub(crate) fn save(
    layout: &Layout,
    target: &str,
    path: &Path,
    bytes: &[u8],
    keep: u32,
) -> Result<Option<PathBuf>, ApplyError> {
    let dir = dir_for(layout, target);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let sha = sha256_hex(bytes);
    let dest = dir.join(format!("{nanos:020}-{}", &sha[..8]));
    let err = |source: io::Error| ApplyError::Backup {
        target: target.to_string(),
        path: path.to_path_buf(),
        backup: dest.clone(),
        source,
    };
    if keep == 0 {
        return Ok(None);
    }
    fsutil::create_private_dir(&dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".backup.")
        .permissions(Permissions::from_mode(0o600))
        .tempfile_in(&dir)
        .map_err(err)?;
    tmp.write_all(bytes).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    tmp.persist(&dest).map_err(|e| err(e.error))?;
    fsutil::sync_dir(&dir).map_err(err)?;
    Ok(Some(dest))
}

/// Deletes all but the `keep` newest backups of `target` (all of them
/// when `keep == 0`).
pub(crate) fn prune(layout: &Layout, target: &str, keep: u32) -> io::Result<()> {
    let all = list_in(&dir_for(layout, target))?;
    let keep = keep as usize;
    let excess = all.len().saturating_sub(keep);
    for old in &all[..excess] {
        std::fs::remove_file(old)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn backups_are_bounded_and_ordered_oldest_first() {
        let root = tempfile::tempdir().expect("tempdir");
        let layout = Layout::new(root.path());
        let live = root.path().join("etc/app.cfg");
        for i in 0..6 {
            save(&layout, "app", &live, format!("v{i}\n").as_bytes(), 3).expect("save");
            prune(&layout, "app", 3).expect("prune");
        }
        let kept = list(&layout, "app").expect("list");
        assert_eq!(kept.len(), 3);
        let contents: Vec<String> = kept
            .iter()
            .map(|p| std::fs::read_to_string(p).expect("read"))
            .collect();
        assert_eq!(contents, ["v3\n", "v4\n", "v5\n"]);
        let mode = std::fs::metadata(&kept[0]).expect("meta").mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = std::fs::metadata(dir_for(&layout, "app"))
            .expect("meta")
            .mode()
            & 0o777;
        assert_eq!(dmode, 0o700);

        // Lowering the bound prunes on the next commit; zero keeps none.
        assert_eq!(save(&layout, "app", &live, b"v6\n", 0).expect("save"), None);
        prune(&layout, "app", 0).expect("prune");
        assert!(list(&layout, "app").expect("list").is_empty());
    }

    #[test]
    fn target_names_stay_one_path_component() {
        assert_eq!(safe_name("../../etc/passwd"), ".._.._etc_passwd");
        assert_eq!(safe_name(".."), "_..");
        assert_eq!(safe_name("pgbouncer_userlist"), "pgbouncer_userlist");
    }
}
