//! Small durable-filesystem helpers shared by staging, backups and commit.
//!
//! A rename is only durable once the directory holding it is fsynced, and
//! a created directory only once its parent is; these helpers make that the
//! default rather than something each caller must remember.

use std::fs::{DirBuilder, File};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::ApplyError;

/// fsyncs a directory, making renames and unlinks in it durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and missing parents with `mode`, syncing each new
/// directory's parent. Existing directories are left as they are.
pub(crate) fn create_dirs(dir: &Path, mode: u32) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        if !parent.as_os_str().is_empty() {
            create_dirs(parent, mode)?;
        }
    }
    match DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => return Ok(()),
        Err(e) => return Err(e),
    }
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => Ok(()),
    }
}

/// Creates converge's own directories (state, backups): `0700`, because
/// backups hold copies of secret files.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), ApplyError> {
    create_dirs(dir, 0o700).map_err(|source| ApplyError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })
}

/// Lowercase hex SHA-256: how plan shows a file and a backup is named.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
