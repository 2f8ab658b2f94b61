//! The catalog source: turns Consul into a stream of immutable, sorted
//! [`Catalog`] snapshots for exactly the services the manifests reference.
//!
//! # Bounded connections
//!
//! consul-template holds one long-poll per dependency, so 600 watched
//! services are 600 open connections and run into Consul's default limit of
//! 200 connections per client address. This source holds **two** long
//! polls whatever the number of services, plus a bounded pool of short,
//! non-blocking reads:
//!
//! - a blocking query on `/v1/health/state/any`: its answer lists every
//!   check with its node, service and status, so a diff against the
//!   previous answer names exactly the services whose health or
//!   check-carrying membership changed (a node check names every watched
//!   service with an instance on that node);
//! - a blocking query on `/v1/catalog/services`: its index moves on any
//!   service or node registration, including changes no check shows (a
//!   check-less instance, a new port or tag). Its body cannot say *which*
//!   instance changed, so a move refetches every watched service;
//! - targeted `/v1/health/service/:name` reads for the services named by
//!   the diff, at most [`SourceConfig::fetch_concurrency`] at a time. A
//!   read runs after the answer that named it and can already hold a later
//!   change; when its index is past that answer's, the service is read
//!   again at the next answer, because a check that flipped back makes the
//!   next answer equal the last and the diff would name nothing.
//!
//! The bound of 32 connections is the [`Client`]'s, and holds by
//! construction (see [`MAX_CONNECTIONS`](crate::client::MAX_CONNECTIONS)):
//! a client lets at most `max_requests` requests through at once and keeps
//! at most as many idle connections. [`SourceConfig::client`] sizes one for
//! the two watches plus the fetch pool, which is clamped to
//! [`MAX_FETCH_CONCURRENCY`] so both always fit in
//! [`MAX_REQUESTS`](crate::client::MAX_REQUESTS): 2 + 14 requests and 16
//! idle connections at most. The default pool, 12, stays below that clamp
//! to leave room for the moment the HTTP pool is still handing a finished
//! connection back while a read opens a new one; the peaks this leads to
//! are measured in `BENCHMARKS.md`, section "Consul source: flip →
//! snapshot, idle load, connections".
//!
//! The trade-off: a health flip costs one wake-up of the checks watch (whose
//! answer grows with the number of checks in the datacenter, not with what
//! is watched) plus one small read, and converges within that one wake-up.
//! A registration costs a refetch of every watched service through the
//! pool; registrations are rare next to health flips, and the pool keeps
//! the burst bounded. A periodic resync ([`SourceConfig::resync_interval`],
//! 30 minutes by default) refetches everything as a safety net. It costs
//! one read per watched service per interval, which with hundreds of
//! services is most of the idle load (the two long polls wake rarely while
//! nothing changes), so it is kept long.
//!
//! What this costs against a real agent (connections at peak and when
//! idle, requests per minute while idle, flip → snapshot latency at 10 and
//! 600 watched services) is measured in `BENCHMARKS.md`, section "Consul
//! source: flip → snapshot, idle load, connections", with the commands
//! that reproduce it; numbers written here would go stale.
//!
//! # Failure
//!
//! "Could not ask" never becomes "no instances". A service whose read
//! fails keeps its last good instances and is marked
//! [`Freshness::Stale`](converge_model::Freshness::Stale); a watch failure
//! marks every service stale, because nothing can be known to be current.
//! A service that was never read is left out of the catalog and listed in
//! [`SourceState::missing`], not published as empty. Reads are retried
//! with a [`Backoff`](crate::Backoff); after a watch recovers (its index
//! reset to a plain read, see [`blocking`](crate::blocking)) everything is
//! refetched once.
//!
//! A refusal ([`Retry::Slowly`](crate::Retry::Slowly): every 403, whether
//! `ACL not found` or `Permission denied`, and an answer Consul filtered by
//! ACL) is reported as [`SourceHealth::Degraded`] with `config_error`, so
//! an operator sees it is not a network fault, and the last good data is
//! kept (stale). It is asked again, but only at the slow pace of
//! [`SourceConfig::refused_retry_base`] doubling to
//! [`SourceConfig::refused_retry_cap`] (by default
//! [`Backoff::for_refusals`](crate::Backoff::for_refusals): 5 s to 60 s,
//! jittered), and the source recovers by itself once Consul accepts the
//! token. Every 403 is treated alike, not only `ACL not found`: that one
//! is often transient (ACL replication lag on a secondary datacenter, a
//! token restored with the same SecretID), and a missing permission on a
//! valid token is fixed by an operator editing the policy, which should
//! take effect without also sending SIGHUP. One read per refused service
//! (or one per watch) and minute per node is a small price for that. A
//! refused service is read only when the refusal timer fires, not on every
//! watch wake-up, so the pace holds however busy the catalog is.
//!
//! A request Consul rejects as malformed ([`Retry::Never`](crate::Retry::Never):
//! a filter it cannot parse, a namespace on Consul OSS) is not retried:
//! nothing on Consul's side changes the answer. The source reports it the
//! same way and stops asking for what failed: that service's reads, or,
//! for a watch, everything, until it is restarted, which the daemon does
//! on SIGHUP.
//!
//! # Layout
//!
//! - `settings`: [`SourceConfig`] and [`MAX_FETCH_CONCURRENCY`];
//! - `state`: what is published, [`SourceState`] and [`SourceHealth`];
//! - `watches`: the two long polls, which only signal the loop;
//! - `checks`: the diff of two checks-watch answers (no I/O);
//! - `known`: what the loop knows per service, and why a read failed;
//! - `runner`: the one task that owns that state, reads and publishes;
//! - `one_shot`: [`read_catalog`], one complete read for one-shot commands.
//!
//! This file holds [`CatalogSource`], the handle that starts and stops the
//! task.

mod checks;
mod known;
mod one_shot;
mod runner;
mod settings;
mod state;
mod tasks;
mod watches;

#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::sync::Arc;

use converge_model::Catalog;
use tokio::sync::watch;

use crate::client::Client;
use crate::config::Config;
use crate::error::Error;

pub use one_shot::read_catalog;
pub use settings::{SourceConfig, MAX_FETCH_CONCURRENCY};
pub use state::{SourceHealth, SourceState};

/// A running catalog source. Dropping it stops the background task.
#[derive(Debug)]
pub struct CatalogSource {
    state: watch::Receiver<SourceState>,
    services: watch::Sender<BTreeSet<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CatalogSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CatalogSource {
    /// Builds a client sized for the source ([`SourceConfig::client`])
    /// and starts watching.
    pub fn connect(consul: Config, config: SourceConfig) -> Result<Self, Error> {
        let client = config.client(consul)?;
        Ok(Self::spawn(client, config))
    }

    /// Starts watching with `client`, whose request limit bounds the
    /// connections. A client letting fewer than `2 + fetch_concurrency`
    /// requests through makes reads wait for the watches' long polls;
    /// [`SourceConfig::client`] builds one that fits.
    pub fn spawn(client: Client, config: SourceConfig) -> Self {
        let initial = SourceState {
            catalog: Arc::new(Catalog::default()),
            missing: config.services.clone(),
            health: SourceHealth::Starting,
        };
        let (state_tx, state_rx) = watch::channel(initial);
        let (services_tx, services_rx) = watch::channel(config.services.clone());
        let task = tokio::spawn(runner::run(client, config, state_tx, services_rx));
        Self {
            state: state_rx,
            services: services_tx,
            task,
        }
    }

    /// A receiver of every new state; the current one is available at once.
    pub fn subscribe(&self) -> watch::Receiver<SourceState> {
        self.state.clone()
    }

    /// The current state.
    pub fn current(&self) -> SourceState {
        self.state.borrow().clone()
    }

    /// Changes the watched services (after a manifest reload): new ones
    /// are read at once, dropped ones leave the catalog.
    pub fn set_services(&self, services: BTreeSet<String>) {
        self.services.send_replace(services);
    }
}
