//! File watches: the manifests and templates directories and the catalog
//! file, through `notify` (inotify on Linux, no polling).
//!
//! A watch only wakes the loop; which file changed does not matter, since
//! a pass a file event wakes reloads every input. Editors that replace a file by rename are
//! covered because the parent directories are watched, not the files.
//!
//! Events wake the loop only once they have been quiet for [`SETTLE`].
//! Writes are not atomic: `git checkout` and many editors truncate a file
//! and then write it, and a pass that read in between would take a
//! half-written template that still parses as the new "last good" one —
//! every later render through it rejected by the validator, catalog
//! changes no longer applied. Each event restarts the wait, on a thread
//! that blocks on its channel, so an idle daemon still never polls. A
//! burst that never goes quiet (a process rewriting a file under the
//! manifests every 100 ms) wakes the loop anyway after [`MAX_SETTLE`], so
//! it cannot starve the daemon of file changes.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::control::Trigger;
use crate::inputs::Inputs;

/// How long file events must be quiet before the loop is woken.
pub const SETTLE: Duration = Duration::from_millis(200);

/// The longest a burst of file events delays the wake-up.
pub const MAX_SETTLE: Duration = Duration::from_secs(2);

/// Live watches; dropping this stops them.
pub struct FileWatch {
    _watcher: RecommendedWatcher,
}

impl FileWatch {
    /// Watches the manifests and templates directories (unless `inputs`
    /// is `None`: a followed revision) and, when the
    /// catalog comes from a file, that file; each settled burst of changes
    /// sends one [`Trigger::Files`] on `wake`.
    pub fn start(
        inputs: Option<&Inputs>,
        catalog_file: Option<&Path>,
        wake: mpsc::Sender<Trigger>,
    ) -> notify::Result<Self> {
        let catalog_file = catalog_file.map(absolute);
        let dirs: Vec<PathBuf> = inputs
            .iter()
            .flat_map(|i| [absolute(&i.manifests), absolute(&i.templates)])
            .collect();
        let file = catalog_file.clone();
        let (events, settled) = channel::<()>();
        std::thread::Builder::new()
            .name("converge-file-settle".into())
            .spawn(move || {
                settle(&settled, SETTLE, MAX_SETTLE, || {
                    // A full channel already holds a wake-up: dropping is fine.
                    let _ = wake.try_send(Trigger::Files);
                })
            })
            .map_err(|e| {
                notify::Error::generic(&format!("cannot start the file-settle thread: {e}"))
            })?;
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                let Ok(event) = res else { return };
                if event.kind.is_access() {
                    return;
                }
                // The catalog file's directory is watched for renames; other
                // files in it (a --root inside it, say) are not ours.
                let ours = event
                    .paths
                    .iter()
                    .any(|p| dirs.iter().any(|d| p.starts_with(d)) || Some(p) == file.as_ref());
                if ours {
                    let _ = events.send(());
                }
            })?;
        for dir in inputs.iter().flat_map(|i| [&i.manifests, &i.templates]) {
            watcher.watch(dir, RecursiveMode::Recursive)?;
        }
        if let Some(file) = catalog_file {
            let dir = file
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("."));
            watcher.watch(&dir, RecursiveMode::NonRecursive)?;
        }
        Ok(Self { _watcher: watcher })
    }
}

/// Calls `quiet` once after each burst of events on `events` has been
/// followed by `settle` without one, or has lasted `max`; returns when
/// every sender is gone (the watcher was dropped).
fn settle(events: &Receiver<()>, settle: Duration, max: Duration, mut quiet: impl FnMut()) {
    while events.recv().is_ok() {
        let deadline = Instant::now() + max;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match events.recv_timeout(settle.min(left)) {
                Ok(()) => continue,
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        quiet();
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Longer than any test runs: a wake-up cannot come from it.
    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn a_burst_of_events_wakes_once_after_it_ends() {
        let (tx, rx) = channel();
        let (woke_tx, woke) = channel();
        // The whole burst is queued before the thread reads any of it,
        // so it is drained without waiting: one wake-up, whatever the
        // machine's speed.
        for _ in 0..50 {
            tx.send(()).expect("send");
        }
        let t = std::thread::spawn(move || {
            settle(&rx, Duration::from_millis(20), HOUR, || {
                woke_tx.send(()).expect("test alive");
            })
        });
        woke.recv_timeout(Duration::from_secs(30))
            .expect("one wake-up after the burst");
        // A second burst wakes again; then dropping the sender ends the
        // thread, and no wake-up was sent for anything else.
        tx.send(()).expect("send");
        woke.recv_timeout(Duration::from_secs(30))
            .expect("a wake-up for the second burst");
        drop(tx);
        t.join().expect("settle thread");
        assert!(woke.try_recv().is_err(), "one wake-up per burst");
    }

    #[test]
    fn a_burst_that_never_goes_quiet_still_wakes() {
        let (tx, rx) = channel();
        let (woke_tx, woke) = channel();
        // Never quiet for an hour, so only the bound can wake it.
        let t = std::thread::spawn(move || {
            settle(&rx, HOUR, Duration::from_millis(100), || {
                let _ = woke_tx.send(());
            })
        });
        let (stop_tx, stop) = channel::<()>();
        let writer = std::thread::spawn(move || {
            while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(Duration::from_millis(10))
            {
                tx.send(()).expect("settle thread alive");
            }
        });
        woke.recv_timeout(Duration::from_secs(30))
            .expect("a wake-up while events keep coming");
        drop(stop_tx);
        writer.join().expect("writer");
        t.join().expect("settle thread");
    }
}
