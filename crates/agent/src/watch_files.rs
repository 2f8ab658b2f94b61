//! File watches: the manifests and templates directories and the catalog
//! file, through `notify` (inotify on Linux, no polling).
//!
//! A watch only wakes the loop; which file changed does not matter, since
//! every pass reloads everything. Editors that replace a file by rename are
//! covered because the parent directories are watched, not the files.

use std::path::{Path, PathBuf};

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::daemon::Trigger;
use crate::reconciler::{CatalogFrom, DaemonConfig};

/// Live watches; dropping this stops them.
pub struct FileWatch {
    _watcher: RecommendedWatcher,
}

impl FileWatch {
    /// Watches what `config` reads from disk.
    pub fn start(config: &DaemonConfig, wake: mpsc::Sender<Trigger>) -> notify::Result<Self> {
        let catalog_file = match &config.catalog {
            CatalogFrom::File(p) => Some(absolute(p)),
            CatalogFrom::Consul(_) => None,
        };
        let dirs = [
            absolute(&config.inputs.manifests),
            absolute(&config.inputs.templates),
        ];
        let file = catalog_file.clone();
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
                    // A full channel already holds a wake-up: dropping is fine.
                    let _ = wake.try_send(Trigger::Files);
                }
            })?;
        watcher.watch(&config.inputs.manifests, RecursiveMode::Recursive)?;
        watcher.watch(&config.inputs.templates, RecursiveMode::Recursive)?;
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

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}
