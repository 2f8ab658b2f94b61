//! The catalog source: turns Consul into a stream of immutable, sorted
//! [`Catalog`] snapshots for exactly the services the manifests reference.
//!
//! # Cost follows what is watched
//!
//! The source must not cost more because the datacenter is large: a flip
//! on a service nobody here watches should cost next to nothing, and the
//! connections to Consul stay bounded (32, see
//! [`MAX_CONNECTIONS`](crate::client::MAX_CONNECTIONS)) whatever is
//! watched. Which Consul endpoint wakes on what decides the design (each
//! measured against Consul 1.22; numbers in `BENCHMARKS.md`, section
//! "Consul source at scale"):
//!
//! - a blocking `/v1/health/service/:name` wakes on a change to that
//!   service's instances or checks, or to the node (address, node checks)
//!   of one of its instances, and on nothing else: the only query an
//!   unwatched flip never wakes;
//! - `/v1/health/state/:state` blocks on the index of every check in the
//!   datacenter, so any flip anywhere wakes it. With `any`, every wake-up
//!   makes the agent encode, and the reader parse, every check (tens of
//!   megabytes in a large datacenter). A server-side `?filter=` shapes the
//!   answer but not the index, so a filtered query wakes just as often;
//!   the agent still walks and filters every check, which costs it tens of
//!   milliseconds per flip. `critical` and `warning` find their checks
//!   through an index and answer only those: about a millisecond of the
//!   agent's CPU and a few hundred bytes in a healthy datacenter;
//! - `/v1/catalog/services` wakes on any service registration anywhere (an
//!   unwatched instance's new port included), not on check flips;
//! - `?cached` (the agent cache) answers the same index and wakes on the
//!   same changes; on the local agent converge talks to it only adds a
//!   copy, so it is not used;
//! - gzip (`Accept-Encoding`) shrinks Consul's JSON about fifteen-fold
//!   but costs the agent about a third more CPU per answer; it is asked
//!   only from an agent beyond loopback (see `client::connection`);
//! - every blocking query is evaluated once when it arrives, before it
//!   waits, so arming a long poll costs the agent about what a read does
//!   (see `arming` for the start-up order this leads to).
//!
//! So the source watches in one of two ways, chosen from how many long
//! polls the [`Client`] can hold at once ([`Client::capacity`]) and
//! switched when a manifest reload crosses that limit:
//!
//! - **Per service** (watched services ≤ capacity): one blocking query per
//!   service on `/v1/health/service/:name`, whose answer is the service's
//!   instances; nothing else is asked. A change to a watched service costs
//!   one wake-up and one small answer, and an unwatched change costs
//!   nothing. Over HTTP/2, which Consul speaks on its HTTPS listener, the
//!   client carries up to
//!   [`H2_CONNECTIONS`](crate::client::H2_CONNECTIONS) ×
//!   [`H2_STREAMS`](crate::client::H2_STREAMS) requests on at most 28
//!   connections, so thousands of services are watched this way. Over
//!   plain HTTP/1.1 a long poll holds a connection, so only as many
//!   services as the client's request limit (15 by default) are.
//!   At start-up every service is read once before any long poll is
//!   armed: Consul evaluates a blocking query once before it waits, so
//!   armings sent as the first answers come would double the agent's work
//!   before the first complete snapshot (see `arming`).
//! - **Shared** (more services than that): three long polls whatever the
//!   number of services, plus a bounded pool of short, non-blocking reads.
//!   Blocking `/v1/health/state/critical` and `/v1/health/state/warning`
//!   list the checks that are not passing (an instance's health is the
//!   worst of its checks, so only those matter), so a diff of each against
//!   its previous answer names exactly the services whose health changed
//!   (a check turning passing leaves an answer; a node check names every
//!   watched service with an instance on that node), and a blocking
//!   `/v1/catalog/services` moves on any registration, including
//!   changes no check shows (a check-less instance, a new port or tag); as
//!   its body cannot say *which* instance changed, a move refetches every
//!   watched service. Targeted `/v1/health/service/:name` reads follow for
//!   the services named, at most [`SourceConfig::fetch_concurrency`] at a
//!   time. A read runs after the answers that named it and can already
//!   hold a later change; when its index is past either checks answer's,
//!   the service is read again at the next answer, because a check that
//!   flipped back makes the next answer equal the last and the diff would
//!   name nothing.
//!
//! The trade-off of shared mode, which plain HTTP beyond 15 services
//! cannot escape without breaking the connection bound: every flip in the
//! datacenter still wakes both checks watches, but each answer holds only
//! the checks in its state (a few hundred bytes in a healthy datacenter,
//! more where many checks fail) instead of every check, and converge
//! parses only that. A registration anywhere refetches
//! every watched service through the pool; registrations are rare next to
//! health flips. Serving Consul's API over TLS, as production setups do,
//! gives per-service mode at any size up to the HTTP/2 capacity.
//!
//! The bound of 32 connections is the [`Client`]'s, and holds by
//! construction (see [`MAX_CONNECTIONS`](crate::client::MAX_CONNECTIONS)):
//! over HTTP/1.1 a client lets at most `max_requests` requests through at
//! once and keeps at most as many idle connections; over HTTP/2 each lane
//! is one connection. [`SourceConfig::client`] sizes one for the three
//! shared watches plus the fetch pool, which is clamped to
//! [`MAX_FETCH_CONCURRENCY`] so both always fit in
//! [`MAX_REQUESTS`](crate::client::MAX_REQUESTS): 3 + 13 requests and 16
//! idle connections at most. The default pool, 12, stays below that clamp
//! to leave room for the moment the HTTP pool is still handing a finished
//! connection back while a read opens a new one.
//!
//! In shared mode a periodic resync ([`SourceConfig::resync_interval`], 30
//! minutes by default) refetches everything as a safety net; per-service
//! watches need none, as each renews its full answer every `wait`.
//!
//! # Failure
//!
//! "Could not ask" never becomes "no instances". A service whose read
//! (or per-service watch) fails keeps its last good instances and is
//! marked [`Freshness::Stale`](converge_model::Freshness::Stale); a shared
//! watch's failure marks every service stale, because nothing can be
//! known to be current. A per-service watch that answers "empty" under
//! ACLs that deny by default is read once more without blocking before it
//! is believed (see `watches`: a token deleted during a blocking query
//! gets one anonymous, empty answer before the refusals start).
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
//! refused service is read only when the refusal timer fires (in
//! per-service mode, when its own watch's refusal backoff runs out), not
//! on every watch wake-up, so the pace holds however busy the catalog is.
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
//! - `watches`: the long polls (per service, or the two shared ones),
//!   which only signal the loop;
//! - `tasks`: which of them run, and the choice between the two modes;
//! - `arming`: per-service watches read first and arm their long polls
//!   after, so start-up is not slowed by the armings;
//! - `checks`: the diff of two checks-watch answers (no I/O);
//! - `known`: what the loop knows per service, and why a read failed;
//! - `runner`: the one task that owns that state, reads and publishes;
//! - `one_shot`: [`read_catalog`], one complete read for one-shot commands.
//!
//! This file holds [`CatalogSource`], the handle that starts and stops the
//! task.

mod arming;
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
