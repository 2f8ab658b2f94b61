//! Consul as a [`Source`]: the background source of `converge_consul`
//! (blocking queries, last good snapshot on failure) behind the agent's
//! interface, and the one-shot [`snapshot`] for `plan`, `apply --once` and
//! `validate`, where every service the manifests reference is read once
//! and any failed read fails the whole snapshot.

use std::collections::BTreeSet;
use std::time::Duration;

use converge_consul::{
    read_catalog, CatalogSource, Client, Consistency, HealthQuery, SourceConfig,
};
use converge_model::Catalog;

use super::{Reading, Source, Wake};
use crate::error::AgentError;

/// The Consul source and the task that turns its changes into wake-ups.
pub struct ConsulSource {
    config: converge_consul::Config,
    source: CatalogSource,
    wake: Wake,
    forward: tokio::task::JoinHandle<()>,
}

impl ConsulSource {
    /// Connects and starts watching `services`; `wake` is called on every
    /// change. Needs a running tokio runtime.
    pub fn connect(
        config: converge_consul::Config,
        services: BTreeSet<String>,
        wake: Wake,
    ) -> Result<Self, String> {
        let source = CatalogSource::connect(config.clone(), SourceConfig::new(services))
            .map_err(|e| e.to_string())?;
        let mut rx = source.subscribe();
        let forward = tokio::spawn({
            let wake = wake.clone();
            async move {
                while rx.changed().await.is_ok() {
                    wake();
                }
            }
        });
        Ok(Self {
            config,
            source,
            wake,
            forward,
        })
    }
}

impl Source for ConsulSource {
    fn read(&mut self) -> Reading {
        let state = self.source.current();
        // A service never read is unknown, not empty: render nothing until
        // every watched service has been read once.
        let catalog = if state.is_complete() {
            Some((*state.catalog).clone())
        } else {
            tracing::warn!(missing = ?state.missing, "not every watched service has been read yet; waiting");
            None
        };
        Reading {
            catalog,
            health: state.health,
        }
    }

    fn watch(&mut self, services: BTreeSet<String>) {
        self.source.set_services(services);
    }

    /// Reads the token file again and reconnects with a new client (which
    /// reads the TLS files again), so a rotated token or certificate takes
    /// effect without a restart. Until the new source has read every
    /// service nothing is applied, and the live files stay as they are. If
    /// the settings cannot be read the current connection stays.
    fn reread(&mut self, services: BTreeSet<String>) {
        let fresh = self
            .config
            .reread()
            .map_err(|e| e.to_string())
            .and_then(|config| Self::connect(config, services, self.wake.clone()));
        match fresh {
            Ok(fresh) => {
                tracing::info!(
                    "SIGHUP: reconnected to Consul with the token and TLS files read again"
                );
                *self = fresh;
            }
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: cannot read the Consul settings again; keeping the current connection");
            }
        }
    }
}

impl Drop for ConsulSource {
    fn drop(&mut self) {
        self.forward.abort();
    }
}

/// Reads `services` once, within `timeout`. Errors say what failed and that
/// nothing was changed; a token without permission is named as such.
pub(super) async fn snapshot(
    consul: converge_consul::Config,
    services: BTreeSet<String>,
    timeout: Duration,
) -> Result<Catalog, AgentError> {
    let client = Client::new(consul).map_err(|e| AgentError::Source(e.to_string()))?;
    let query = HealthQuery::default();
    let read = read_catalog(&client, &services, &query, Consistency::Default, 16);
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(catalog)) => Ok(catalog),
        Ok(Err(e)) => Err(AgentError::Source(format!("{e}; nothing was changed"))),
        Err(_) => Err(AgentError::Source(format!(
            "no complete snapshot from Consul within {timeout:?}; nothing was changed"
        ))),
    }
}
