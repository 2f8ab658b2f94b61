//! converge's own small files under the node's state directory (the
//! guard's baseline, the databases converge paused), written so that a
//! crash at any step leaves the old file or the new one, never a part.

use std::io::{self, Write};
use std::path::Path;

/// Replaces `path` with `value` as JSON: a temporary file in the same
/// directory, fsynced, renamed over `path`, then the directory fsynced.
pub fn store_json(path: &Path, value: &impl serde::Serialize) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("state file has no directory"))?;
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .tempfile_in(dir)?;
    // Serialised first and written at once: straight into the file,
    // serde_json makes one write(2) per token, tens of thousands for the
    // guard's baseline of a few thousand instances.
    tmp.write_all(&serde_json::to_vec(value)?)?;
    tmp.flush()?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}
