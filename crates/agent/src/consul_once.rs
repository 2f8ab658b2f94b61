//! A single complete catalog snapshot from Consul, for `plan` and
//! `apply --once`: start the source, wait until every service the
//! manifests reference has been read once, take the snapshot, stop.
//!
//! Reusing the daemon's source (rather than a second code path) means the
//! one-shot commands see Consul exactly as `run` does.

use std::collections::BTreeSet;
use std::time::Duration;

use converge_consul::{CatalogSource, SourceConfig, SourceHealth};
use converge_model::Catalog;

use crate::error::AgentError;

/// Reads `services` once; fails after `timeout`, or at once on a
/// configuration error (a token without permission), naming the cause.
pub async fn snapshot(
    consul: converge_consul::Config,
    services: BTreeSet<String>,
    timeout: Duration,
) -> Result<Catalog, AgentError> {
    let source = CatalogSource::connect(consul, SourceConfig::new(services))
        .map_err(|e| AgentError::Source(e.to_string()))?;
    let mut rx = source.subscribe();
    let wait = async {
        loop {
            {
                let state = rx.borrow_and_update();
                if let SourceHealth::Degraded {
                    reason,
                    config_error: true,
                } = &state.health
                {
                    return Err(AgentError::Source(format!("{reason}; nothing was changed")));
                }
                if state.is_complete() && state.health != SourceHealth::Starting {
                    return Ok((*state.catalog).clone());
                }
            }
            if rx.changed().await.is_err() {
                return Err(AgentError::Source("the Consul source stopped".into()));
            }
        }
    };
    match tokio::time::timeout(timeout, wait).await {
        Ok(r) => r,
        Err(_) => {
            let state = source.current();
            let why = match state.health {
                SourceHealth::Degraded { reason, .. } => reason,
                _ => format!("services not read yet: {:?}", state.missing),
            };
            Err(AgentError::Source(format!(
                "no complete snapshot from Consul within {timeout:?}: {why}; nothing was changed"
            )))
        }
    }
}
