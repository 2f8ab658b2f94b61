//! The scratch directory `validate` renders into, kept private.
//!
//! Rendered files hold secrets (a userlist's SCRAM verifiers, keepalived's
//! `auth_pass`), so the directory is 0700 from its creation and every file
//! in it keeps its target's mode (invariant 7). Its name carries the pid of
//! the run that made it (`converge-validate-<pid>-<random>`): a run killed
//! before it could remove its directory leaves something the next run can
//! recognise, and the next run removes every such directory owned by this
//! user whose pid no longer runs.

use std::fs::{self, DirBuilder, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tempfile::TempDir;

/// What every scratch directory's name starts with.
const PREFIX: &str = "converge-validate-";

/// Removes dead runs' leftovers under `base`, then makes this run's
/// private directory there.
pub(crate) fn create(base: &Path) -> io::Result<TempDir> {
    for removed in sweep(base) {
        tracing::info!(dir = %removed.display(), "removed the scratch directory of a validate run that was killed");
    }
    tempfile::Builder::new()
        .prefix(&format!("{PREFIX}{}-", std::process::id()))
        .permissions(Permissions::from_mode(0o700))
        .tempdir_in(base)
}

/// Writes `bytes` at `path` inside a scratch directory with `mode`: the
/// file is created 0600 (nobody else can open it while it fills) and given
/// its target's mode once written, whatever the umask.
pub(crate) fn write(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    if let Some(parent) = path.parent() {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.set_permissions(Permissions::from_mode(mode & 0o7777))
}

/// Removes every directory under `base` named like a scratch directory,
/// owned by this user, whose run's pid is not alive; returns what it
/// removed. Failures are logged and skipped: a leftover must not stop
/// today's check.
fn sweep(base: &Path) -> Vec<PathBuf> {
    let Ok(me) = fs::metadata("/proc/self").map(|m| m.uid()) else {
        return Vec::new();
    };
    let Ok(entries) = fs::read_dir(base) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let path = entry.path();
        let ours = fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir() && m.uid() == me);
        if !ours || Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }
        match fs::remove_dir_all(&path) {
            Ok(()) => removed.push(path),
            Err(e) => {
                tracing::warn!(dir = %path.display(), error = %e, "cannot remove a killed validate run's scratch directory")
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).expect("stat").permissions().mode() & 0o7777
    }

    #[test]
    fn the_directory_is_private_and_files_keep_their_target_mode() {
        let base = tempfile::tempdir().expect("base");
        let scratch = create(base.path()).expect("scratch");
        assert_eq!(mode(scratch.path()), 0o700);
        let userlist = scratch.path().join("lb1/etc/pgbouncer/userlist.txt");
        let cfg = scratch.path().join("lb1/etc/haproxy/haproxy.cfg");
        write(&userlist, b"\"app\" \"SCRAM\"\n", 0o600).expect("userlist");
        write(&cfg, b"global\n", 0o644).expect("cfg");
        assert_eq!(mode(&userlist), 0o600);
        assert_eq!(mode(&cfg), 0o644);
        assert_eq!(mode(&scratch.path().join("lb1")), 0o700);
    }

    #[test]
    fn a_killed_run_s_directory_is_removed_and_a_running_one_s_kept() {
        let base = tempfile::tempdir().expect("base");
        // Above any pid_max Linux allows, so never a running process.
        let dead = base.path().join(format!("{PREFIX}2147483647-abc"));
        let running = base
            .path()
            .join(format!("{PREFIX}{}-def", std::process::id()));
        let unrelated = base.path().join(format!("{PREFIX}notapid"));
        for d in [&dead, &running, &unrelated] {
            fs::create_dir_all(d.join("lb1/etc")).expect("mkdir");
            fs::write(d.join("lb1/etc/keepalived.conf"), "auth_pass x\n").expect("write");
        }
        let scratch = create(base.path()).expect("scratch");
        assert!(!dead.exists(), "a dead run's scratch directory was left");
        assert!(running.exists() && unrelated.exists());
        assert!(scratch.path().exists());
    }
}
