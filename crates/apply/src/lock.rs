//! One apply per node at a time.
//!
//! An advisory `flock` on `<state_dir>/apply.lock`. `flock` rather than a
//! pid file with liveness checks because the kernel drops it when the
//! holder dies, however it dies, so a crashed apply never wedges the node.
//! The holder writes its pid into the file so that a waiter that gives up
//! can say who is holding it. Waiting is a bounded retry of a non-blocking
//! lock, so the timeout is exact and needs no signal or thread.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use converge_model::Layout;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::error::ApplyError;

/// How often a waiter retries the lock.
const RETRY: Duration = Duration::from_millis(20);

/// The held lock; released on drop.
#[derive(Debug)]
pub struct ApplyLock {
    path: PathBuf,
    _flock: Flock<File>,
}

impl ApplyLock {
    /// `<state_dir>/apply.lock` for this layout.
    pub fn path_for(layout: &Layout) -> PathBuf {
        layout.state_dir().join("apply.lock")
    }

    /// Takes the lock at `path`, creating the file and its directories,
    /// waiting up to `timeout` for another holder to let go.
    pub fn acquire(path: &Path, timeout: Duration) -> Result<ApplyLock, ApplyError> {
        let io_err = |source: io::Error| ApplyError::LockFile {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            crate::fsutil::create_private_dir(dir)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(io_err)?;
        let started = Instant::now();
        let deadline = started + timeout;
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(mut flock) => {
                    write_pid(&mut flock).map_err(io_err)?;
                    return Ok(ApplyLock {
                        path: path.to_path_buf(),
                        _flock: flock,
                    });
                }
                Err((f, Errno::EWOULDBLOCK)) | Err((f, Errno::EINTR)) => file = f,
                Err((_, e)) => return Err(io_err(e.into())),
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ApplyError::LockBusy {
                    path: path.to_path_buf(),
                    holder: read_holder(&mut file),
                    waited: now - started,
                });
            }
            std::thread::sleep(RETRY.min(deadline - now));
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Writes this process's pid into the held lock file, unless it is there
/// already: the daemon takes the lock on every pass, and truncating and
/// rewriting the same bytes each time is a metadata change the file system
/// journals before the pass may go on (milliseconds on a busy ext4, ahead
/// of every validator).
fn write_pid(file: &mut File) -> io::Result<()> {
    let pid = format!("{}\n", std::process::id());
    let mut held = Vec::new();
    file.seek(SeekFrom::Start(0))?;
    Read::by_ref(file)
        .take(pid.len() as u64 + 1)
        .read_to_end(&mut held)?;
    if held == pid.as_bytes() {
        return Ok(());
    }
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    file.write_all(pid.as_bytes())
}

fn read_holder(file: &mut File) -> String {
    let mut text = String::new();
    let ok = file.seek(SeekFrom::Start(0)).is_ok() && file.read_to_string(&mut text).is_ok();
    match text.trim() {
        t if ok && !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) => t.to_string(),
        _ => "unknown".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_times_out_naming_path_and_pid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state/apply.lock");
        let held = ApplyLock::acquire(&path, Duration::ZERO).expect("first lock");
        assert_eq!(held.path(), path);
        let started = Instant::now();
        let err = ApplyLock::acquire(&path, Duration::from_millis(200)).expect_err("busy");
        assert!(started.elapsed() >= Duration::from_millis(200));
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        drop(held);
        ApplyLock::acquire(&path, Duration::ZERO).expect("free after drop");
    }

    #[test]
    fn the_file_names_the_holder_whatever_it_held_before() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state/apply.lock");
        let mine = format!("{}\n", std::process::id());
        for before in ["", "4194304\n", "1\n2\n", "x"] {
            std::fs::create_dir_all(dir.path().join("state")).expect("mkdir");
            std::fs::write(&path, before).expect("write");
            drop(ApplyLock::acquire(&path, Duration::ZERO).expect("lock"));
            assert_eq!(
                std::fs::read_to_string(&path).expect("read"),
                mine,
                "{before:?}"
            );
        }
        // Taken again by the same process: left as it is.
        drop(ApplyLock::acquire(&path, Duration::ZERO).expect("lock"));
        assert_eq!(std::fs::read_to_string(&path).expect("read"), mine);
    }
}
