//! A single complete catalog snapshot from Consul, for `plan`,
//! `apply --once` and `validate`: every service the manifests reference is
//! read once, and any failed read fails the whole snapshot, since acting on
//! a partial answer would turn "could not ask" into "no instances".

use std::collections::BTreeSet;
use std::time::Duration;

use converge_consul::{read_catalog, Client, Consistency, HealthQuery};
use converge_model::Catalog;

use crate::error::AgentError;

/// Reads `services` once, within `timeout`. Errors say what failed and that
/// nothing was changed; a token without permission is named as such.
pub async fn snapshot(
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
