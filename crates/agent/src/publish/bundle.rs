//! A bundle: the manifests and templates of one revision as one
//! compressed archive, the value a node fetches from Consul KV.
//!
//! It holds exactly what [`Inputs::load_config`] reads — every `*.yaml` and
//! `*.yml` file directly in the manifests directory as
//! `manifests/NAME`, every `*.tera` file directly in the templates
//! directory as `templates/NAME` — and never a secret: a file the
//! manifests reference as `{file: …}` is left out even when it sits among
//! the manifests (secrets are resolved on each node from its own copy),
//! and subdirectories such as `secrets/` are never walked.
//!
//! The archive is a tar file compressed with gzip, built to be
//! byte-identical for identical files (sorted entries, mode 0644, owner 0,
//! time 0, gzip's time 0), so publishing a revision twice gives the same
//! checksum. [`unpack`] reads one back with bounds on what it accepts, as a
//! node must for bytes that came over the network.

use std::io::Read;
use std::path::{Path, PathBuf};

use converge_model::secret::SecretRef;
use converge_model::Manifest;
use sha2::Digest;

use crate::inputs::Inputs;
use crate::revision::Revision;

/// Most files a bundle may hold.
pub const MAX_FILES: usize = 1000;

/// Most bytes a bundle may unpack to (a gzip bomb stops here).
pub const MAX_UNPACKED: u64 = 64 * 1024 * 1024;

/// The two directories of a bundle, as archive path prefixes.
const DIRS: [&str; 2] = ["manifests", "templates"];

/// One revision's manifests and templates, compressed.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The revision the files are.
    pub revision: Revision,
    /// The archive (tar + gzip).
    pub bytes: Vec<u8>,
    /// Archive paths, in archive order (for people and tests).
    pub files: Vec<String>,
}

impl Bundle {
    /// Packs the bundle of `inputs`, named `revision`, leaving out every
    /// secret file `manifest` references.
    pub fn pack(
        inputs: &Inputs,
        manifest: &Manifest,
        revision: Revision,
    ) -> Result<Self, std::io::Error> {
        let secrets = secret_files(manifest, &inputs.manifests);
        let mut files = Vec::new();
        let mut archive = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::best(),
        ));
        for (dir, path, exts) in [
            (DIRS[0], &inputs.manifests, &["yaml", "yml"][..]),
            (DIRS[1], &inputs.templates, &["tera"][..]),
        ] {
            for file in listed(path, exts)? {
                if secrets.contains(&canonical(&file)) {
                    continue;
                }
                let Some(name) = file.file_name().and_then(|n| n.to_str()) else {
                    continue;
                };
                let bytes = std::fs::read(&file)?;
                let entry = format!("{dir}/{name}");
                let mut header = tar::Header::new_gnu();
                header.set_path(&entry)?;
                header.set_size(bytes.len() as u64);
                header.set_mode(0o644);
                header.set_mtime(0);
                header.set_uid(0);
                header.set_gid(0);
                header.set_entry_type(tar::EntryType::Regular);
                header.set_cksum();
                archive.append(&header, bytes.as_slice())?;
                files.push(entry);
            }
        }
        let bytes = archive.into_inner()?.finish()?;
        Ok(Self {
            revision,
            bytes,
            files,
        })
    }

    /// `sha256:` and the hex SHA-256 of the archive.
    pub fn checksum(&self) -> String {
        checksum(&self.bytes)
    }
}

/// `sha256:` and the hex SHA-256 of `bytes`: how a bundle's checksum is
/// written in KV and compared by whoever fetches it.
pub fn checksum(bytes: &[u8]) -> String {
    let hex: String = sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// The files of an archive as `(path, bytes)` in archive order: only
/// regular files named `manifests/NAME` or `templates/NAME`, at most
/// [`MAX_FILES`] of them and [`MAX_UNPACKED`] bytes in all. Anything else
/// (a link, a nested path, `..`) makes the whole archive an error.
pub fn unpack(bytes: &[u8]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let gz = flate2::read::GzDecoder::new(bytes).take(MAX_UNPACKED + 1);
    let mut archive = tar::Archive::new(gz);
    let mut out = Vec::new();
    let mut total = 0u64;
    for entry in archive.entries().map_err(|e| e.to_string())? {
        let mut entry = entry.map_err(|e| format!("unreadable archive entry: {e}"))?;
        let path = entry
            .path()
            .map_err(|e| format!("unreadable entry name: {e}"))?
            .to_string_lossy()
            .into_owned();
        let allowed = path
            .split_once('/')
            .is_some_and(|(dir, name)| DIRS.contains(&dir) && plain_name(name));
        if !allowed || entry.header().entry_type() != tar::EntryType::Regular {
            return Err(format!("unexpected entry {path:?} in the bundle"));
        }
        if out.len() >= MAX_FILES {
            return Err(format!("more than {MAX_FILES} files in the bundle"));
        }
        let mut data = Vec::new();
        entry
            .read_to_end(&mut data)
            .map_err(|e| format!("cannot read {path}: {e}"))?;
        total += data.len() as u64;
        if total > MAX_UNPACKED {
            return Err(format!(
                "the bundle unpacks to more than {MAX_UNPACKED} bytes"
            ));
        }
        out.push((path, data));
    }
    Ok(out)
}

/// Writes files [`unpack`] returned under `dir`, as `dir/manifests/NAME`
/// and `dir/templates/NAME` (both directories made, even when empty).
pub fn write_into(dir: &Path, files: &[(String, Vec<u8>)]) -> std::io::Result<()> {
    for d in DIRS {
        std::fs::create_dir_all(dir.join(d))?;
    }
    for (path, bytes) in files {
        std::fs::write(dir.join(path), bytes)?;
    }
    Ok(())
}

/// A file name with no directory part and nothing special in it.
fn plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0'])
}

/// Regular files directly in `dir` whose extension is one of `exts`,
/// sorted by name.
fn listed(dir: &Path, exts: &[&str]) -> Result<Vec<PathBuf>, std::io::Error> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| exts.contains(&e))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Every secret file `manifest` references, resolved against the
/// manifests directory as [`SecretRef::resolve`] resolves it.
fn secret_files(manifest: &Manifest, manifests_dir: &Path) -> Vec<PathBuf> {
    manifest
        .vips
        .values()
        .filter_map(|v| v.auth_pass.as_ref())
        .chain(manifest.pgbouncer.users.values())
        .filter_map(|r| match r {
            SecretRef::File(p) => Some(canonical(&manifests_dir.join(p))),
            SecretRef::Env(_) => None,
        })
        .collect()
}

/// `path` with links and `..` resolved when it exists, else as given.
fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpack_refuses_anything_but_plain_files_of_the_two_directories() {
        for bad in [
            "secrets/vrrp.pass",
            "manifests/a/b.yaml",
            "manifests/..",
            "x",
        ] {
            let mut archive = tar::Builder::new(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::fast(),
            ));
            let mut header = tar::Header::new_gnu();
            header.set_size(1);
            header.set_mode(0o644);
            header.set_entry_type(tar::EntryType::Regular);
            // set_path refuses `..`; write the name field directly.
            let name = &mut header.as_old_mut().name;
            name[..bad.len()].copy_from_slice(bad.as_bytes());
            header.set_cksum();
            archive.append(&header, &b"x"[..]).expect("append");
            let bytes = archive.into_inner().expect("tar").finish().expect("gzip");
            assert!(unpack(&bytes).is_err(), "{bad} accepted");
        }
        assert!(unpack(b"not gzip").is_err());
    }
}
