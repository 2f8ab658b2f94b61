//! The catalog file as a [`Source`]: read on every pass, the last good
//! snapshot kept while the file is invalid.

use std::collections::BTreeSet;
use std::path::PathBuf;

use converge_consul::SourceHealth;
use converge_model::Catalog;

use super::{Reading, Source};

/// A catalog file and the last snapshot read from it cleanly.
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    last_good: Option<Catalog>,
}

impl FileSource {
    /// A source reading `path` (nothing is read until the first pass).
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            last_good: None,
        }
    }
}

impl Source for FileSource {
    fn read(&mut self) -> Reading {
        let health = match Catalog::load_file(&self.path) {
            Ok(c) => {
                self.last_good = Some(c);
                SourceHealth::Healthy
            }
            Err(e) => {
                let reason = e.to_string();
                tracing::error!(error = %reason, "catalog file is invalid; keeping the last good snapshot");
                SourceHealth::Degraded {
                    reason,
                    config_error: false,
                }
            }
        };
        Reading {
            catalog: self.last_good.clone(),
            health,
        }
    }

    /// A file holds every service; there is nothing to narrow.
    fn watch(&mut self, _services: BTreeSet<String>) {}

    /// The file is read on every pass anyway.
    fn reread(&mut self, _services: BTreeSet<String>) {}
}
