//! Where a pass's catalog comes from: one interface over the catalog file
//! and Consul.
//!
//! Like pingora's `ServiceDiscovery`, which puts static and dynamic
//! discovery behind one trait, every [`Source`] answers the same question —
//! "what is the newest complete snapshot, and how healthy are you?" — so
//! the daemon's reconciler never asks which kind it has. The file source
//! reads its file on every pass (the daemon's file watch wakes it); the
//! Consul source follows the catalog with blocking queries in the
//! background and hands out its latest state. Both keep the last good
//! snapshot when a read fails, and neither ever turns "I could not ask"
//! into "there are no instances".
//!
//! The one-shot commands take one complete snapshot with [`read_once`]:
//! the file, or every referenced service read once from Consul, all or
//! nothing.

mod consul;
mod file;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use converge_consul::SourceHealth;
use converge_model::{Catalog, Manifest};

use crate::error::AgentError;
pub use consul::ConsulSource;
pub use file::FileSource;

/// Which source, with its settings.
#[derive(Debug, Clone)]
pub enum CatalogFrom {
    /// A catalog file, watched for changes.
    File(PathBuf),
    /// A Consul agent.
    Consul(Box<converge_consul::Config>),
}

impl CatalogFrom {
    /// `file` or `consul`, as status names the source.
    pub fn kind(&self) -> &'static str {
        match self {
            CatalogFrom::File(_) => "file",
            CatalogFrom::Consul(_) => "consul",
        }
    }
}

/// Every catalog service `manifest` reads: what a source must watch.
pub fn referenced_services(manifest: &Manifest) -> BTreeSet<String> {
    manifest
        .backends
        .values()
        .map(|b| b.service.clone())
        .chain(manifest.databases.values().map(|d| d.service.clone()))
        .collect()
}

/// What a source says when a pass asks.
#[derive(Debug, Clone)]
pub struct Reading {
    /// The newest snapshot in which every watched service was read at
    /// least once (the last good one while reads fail); `None` before the
    /// first such snapshot: then nothing may be rendered.
    pub catalog: Option<Catalog>,
    /// The source's condition, for the status.
    pub health: SourceHealth,
}

/// Called when a source may have something new; the daemon turns it into
/// a wake-up of its loop.
pub type Wake = Arc<dyn Fn() + Send + Sync>;

/// A catalog source the daemon's reconciler reads on every pass.
pub trait Source: Send {
    /// The newest complete snapshot and the source's health.
    fn read(&mut self) -> Reading;

    /// From now on, watch exactly `services` (the manifests changed).
    fn watch(&mut self, services: BTreeSet<String>);

    /// SIGHUP: read the source's settings files again (token, TLS) and
    /// reconnect; on failure keep the current connection and say why.
    fn reread(&mut self, services: BTreeSet<String>);
}

/// Opens the source `from` describes, watching `services`; `wake` is
/// called whenever it may have news.
pub fn open(
    from: &CatalogFrom,
    services: BTreeSet<String>,
    wake: Wake,
) -> Result<Box<dyn Source>, AgentError> {
    Ok(match from {
        // The daemon's file watch covers the catalog file: no wake here.
        CatalogFrom::File(path) => Box::new(FileSource::new(path.clone())),
        CatalogFrom::Consul(config) => Box::new(
            ConsulSource::connect((**config).clone(), services, wake)
                .map_err(AgentError::Source)?,
        ),
    })
}

/// One complete snapshot for a one-shot command: the catalog file, or each
/// of `services` read once from Consul within `timeout`. Any failed read
/// fails the whole snapshot, since acting on a partial answer would turn
/// "could not ask" into "no instances".
pub fn read_once(
    from: &CatalogFrom,
    services: BTreeSet<String>,
    timeout: Duration,
) -> Result<Catalog, AgentError> {
    match from {
        CatalogFrom::File(path) => Catalog::load_file(path).map_err(AgentError::Catalog),
        CatalogFrom::Consul(config) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| AgentError::Source(format!("cannot start a runtime: {e}")))?;
            runtime.block_on(consul::snapshot((**config).clone(), services, timeout))
        }
    }
}
