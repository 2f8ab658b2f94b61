//! One read of a set of services into a fresh [`Catalog`], for one-shot
//! commands such as `converge plan --consul`.
//!
//! Unlike the running source it keeps nothing and marks nothing stale: a
//! one-shot command has no last good data to fall back on, so any failed
//! read fails the whole call rather than letting it act on part of the
//! answer. It shares the fetch pool's limit with the source, so it stays
//! inside the same connection bound.

use std::collections::{BTreeMap, BTreeSet};

use converge_model::Catalog;
use tokio::task::JoinSet;

use crate::client::{Client, Consistency, HealthQuery, QueryOptions};
use crate::error::Error;

use super::settings::MAX_FETCH_CONCURRENCY;

/// Reads `services` once, at most `concurrency` (clamped to
/// 1..=[`MAX_FETCH_CONCURRENCY`]) at a time, into a fresh [`Catalog`]: for
/// one-shot commands (`converge plan --consul`) that must not act on a
/// partial answer. Any failed read fails the whole call.
pub async fn read_catalog(
    client: &Client,
    services: &BTreeSet<String>,
    query: &HealthQuery,
    consistency: Consistency,
    concurrency: usize,
) -> Result<Catalog, Error> {
    let limit = concurrency.clamp(1, MAX_FETCH_CONCURRENCY);
    let opts = QueryOptions {
        consistency,
        ..QueryOptions::default()
    };
    let mut pending = services.iter().cloned();
    let mut running = JoinSet::new();
    let mut out = BTreeMap::new();
    let mut index = 0;
    loop {
        while running.len() < limit {
            let Some(name) = pending.next() else { break };
            let (client, query, opts) = (client.clone(), query.clone(), opts.clone());
            running.spawn(async move {
                let r = client.health_service(&name, &query, &opts).await;
                (name, r)
            });
        }
        let Some(joined) = running.join_next().await else {
            break;
        };
        let (name, result) = joined.map_err(|e| Error::Connect {
            endpoint: "/v1/health/service".into(),
            message: format!("read task failed: {e}"),
        })?;
        let resp = result?;
        index = index.max(resp.meta.index);
        out.insert(name, resp.value);
    }
    Ok(Catalog::fresh(index, out))
}
