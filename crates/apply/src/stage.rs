//! Candidates are written next to their destination, then renamed over it.
//!
//! A staged file lives in the destination's own directory (so the commit
//! is a same-filesystem `rename`, atomic by POSIX) under the name
//! `.<basename>.converge-stage.<pid>.<random>`: hidden, recognisable, and
//! never equal to a name a program would load from an include directory by
//! extension. It is created `0600`, filled and given its owner and final
//! mode, so a validator sees exactly the bytes that will be committed. It
//! is fsynced ([`sync`]) before it is renamed, so a crash can never expose
//! a partial file under the destination's name (invariant 1); the apply
//! runs that fsync while the validators read the file, not before.
//!
//! Staged files are deleted on drop, so every error path cleans up. A
//! process killed mid-transaction cannot run destructors; the next apply
//! calls [`remove_stale`] under the node lock, when no other apply can be
//! staging, and deletes every file in the destination directories that
//! matches the scheme exactly.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs::Permissions;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tempfile::TempPath;

use crate::fsutil;
use crate::live::{Ownership, MODE_MASK};

/// The fixed part of a staged file's name.
pub(crate) const MARK: &str = ".converge-stage.";

/// Mode of directories created for destinations that do not exist yet.
const NEW_DIR_MODE: u32 = 0o755;

/// Writes `bytes` to a new staged file beside `dest`, with `mode` and
/// `owner`, not yet fsynced. Missing parent directories are created.
pub(crate) fn write(
    dest: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Ownership,
) -> io::Result<TempPath> {
    let (dir, base) = split(dest)?;
    fsutil::create_dirs(dir, NEW_DIR_MODE)?;
    let mut prefix = OsString::from(".");
    prefix.push(base);
    prefix.push(format!("{MARK}{}.", std::process::id()));
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .rand_bytes(8)
        .permissions(Permissions::from_mode(0o600))
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    if owner.uid.is_some() || owner.gid.is_some() {
        nix::unistd::fchown(tmp.as_file(), owner.uid, owner.gid)?;
    }
    // After chown, which may clear set-id bits; fchmod ignores the umask.
    tmp.as_file()
        .set_permissions(Permissions::from_mode(mode & MODE_MASK))?;
    Ok(tmp.into_temp_path())
}

/// Flushes a staged file's contents and metadata to disk; required before
/// it is renamed over its destination.
pub(crate) fn sync(staged: &Path) -> io::Result<()> {
    std::fs::File::open(staged)?.sync_all()
}

fn split(dest: &Path) -> io::Result<(&Path, &OsStr)> {
    match (dest.parent(), dest.file_name()) {
        (Some(dir), Some(base)) if !dir.as_os_str().is_empty() => Ok((dir, base)),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "destination has no parent directory or file name",
        )),
    }
}

/// Whether `name` is exactly `.<basename>.converge-stage.<digits>.<alnum>`.
pub(crate) fn is_stage_name(name: &OsStr) -> bool {
    let bytes = name.as_bytes();
    let mark = MARK.as_bytes();
    let Some(at) = bytes.windows(mark.len()).rposition(|w| w == mark) else {
        return false;
    };
    if bytes.first() != Some(&b'.') || at < 2 {
        return false;
    }
    let rest = &bytes[at + mark.len()..];
    let mut parts = rest.split(|b| *b == b'.');
    let (Some(pid), Some(rand), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    !pid.is_empty()
        && pid.iter().all(u8::is_ascii_digit)
        && !rand.is_empty()
        && rand.iter().all(u8::is_ascii_alphanumeric)
}

/// Deletes staged files a killed run left in `dirs`. Call only under the
/// node lock. Returns what was removed; failures are logged and skipped (a
/// leftover hidden file is harmless, and the next run tries again).
pub(crate) fn remove_stale(dirs: &BTreeSet<PathBuf>) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    for dir in dirs {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot list directory for stale staged files");
                continue;
            }
        };
        let before = removed.len();
        for entry in entries.flatten() {
            let is_file = entry.file_type().is_ok_and(|t| t.is_file());
            if !is_file || !is_stage_name(&entry.file_name()) {
                continue;
            }
            let path = entry.path();
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "removed a staged file left by an interrupted apply");
                    removed.push(path);
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove stale staged file")
                }
            }
        }
        if removed.len() > before {
            if let Err(e) = fsutil::sync_dir(dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot sync directory");
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn the_naming_scheme_is_recognised_exactly() {
        for good in [
            ".haproxy.cfg.converge-stage.123.aB3dE5gH",
            ".x.converge-stage.1.z",
        ] {
            assert!(is_stage_name(OsStr::new(good)), "{good}");
        }
        for bad in [
            "haproxy.cfg",
            ".haproxy.cfg",
            "haproxy.cfg.converge-stage.1.abc",
            "..converge-stage.1.abc",
            ".x.converge-stage..abc",
            ".x.converge-stage.12.",
            ".x.converge-stage.12.ab.c",
            ".x.converge-stage.12a.abc",
            ".x.converge-stage.12.ab-c",
            ".x.converge-stage.12.abc.bak",
        ] {
            assert!(!is_stage_name(OsStr::new(bad)), "{bad}");
        }
    }

    #[test]
    fn staged_files_match_the_scheme_and_vanish_on_drop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("sub/dir/app.cfg");
        let staged = write(&dest, b"hello\n", 0o640, Ownership::default()).expect("stage");
        assert_eq!(staged.parent(), dest.parent());
        assert!(
            is_stage_name(staged.file_name().expect("name")),
            "{}",
            staged.display()
        );
        let meta = std::fs::metadata(&staged).expect("meta");
        assert_eq!(meta.mode() & 0o7777, 0o640);
        assert_eq!(std::fs::read(&staged).expect("read"), b"hello\n");
        assert!(!dest.exists());
        let path = staged.to_path_buf();
        drop(staged);
        assert!(!path.exists());
    }

    #[test]
    fn stale_cleanup_removes_only_matching_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keep = [
            "app.cfg",
            ".app.cfg.swp",
            ".app.cfg.converge-stage.notes",
            "app.cfg.converge-stage.1.abc",
        ];
        for k in keep {
            std::fs::write(dir.path().join(k), "x").expect("write");
        }
        std::fs::create_dir(dir.path().join(".d.converge-stage.1.dir")).expect("mkdir");
        let stale = dest_stage(dir.path(), "app.cfg");
        let dirs = BTreeSet::from([dir.path().to_path_buf(), dir.path().join("missing")]);
        assert_eq!(remove_stale(&dirs), vec![stale.clone()]);
        assert!(!stale.exists());
        for k in keep {
            assert!(dir.path().join(k).exists(), "{k} was removed");
        }
        assert!(dir.path().join(".d.converge-stage.1.dir").is_dir());
    }

    /// A staged file as a killed run leaves it: kept past its `TempPath`.
    fn dest_stage(dir: &Path, base: &str) -> PathBuf {
        let staged =
            write(&dir.join(base), b"partial", 0o644, Ownership::default()).expect("stage");
        staged.keep().expect("keep")
    }
}
