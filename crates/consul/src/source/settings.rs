//! What the source watches and how ([`SourceConfig`]), and the limit that
//! keeps its requests inside one client's connection bound.
//!
//! The fetch pool is clamped so that the three shared watches and the pool
//! always fit in a client's request limit ([`MAX_REQUESTS`]), and
//! [`SourceConfig::client`] builds a client of exactly that size, so the
//! source and its client cannot be sized apart by accident.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::backoff::{Backoff, REFUSAL_BASE, REFUSAL_CAP};
use crate::blocking::Pacing;
use crate::client::{Client, Consistency, HealthQuery, MAX_REQUESTS};
use crate::config::Config;
use crate::error::Error;

/// Long polls the source keeps open in shared mode: the critical and the
/// warning checks watches, and the services watch.
pub(super) const WATCHES: usize = 3;

/// Most reads the source runs at once, whatever is configured: what a
/// client lets through besides the three shared watches.
pub const MAX_FETCH_CONCURRENCY: usize = MAX_REQUESTS - WATCHES;

/// What to watch and how.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Service names to watch.
    pub services: BTreeSet<String>,
    /// Filters applied to every service read. The default reads every
    /// instance with its health, so templates can tell down from absent.
    pub health: HealthQuery,
    /// Consistency of all reads.
    pub consistency: Consistency,
    /// Blocking-query pacing of every watch.
    pub pacing: Pacing,
    /// Reads in flight at once (clamped to 1..=[`MAX_FETCH_CONCURRENCY`]).
    pub fetch_concurrency: usize,
    /// Full refetch at this interval (plus up to 10 % jitter).
    pub resync_interval: Duration,
    /// First retry delay after a failed read.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_cap: Duration,
    /// First delay before asking again for something Consul refused (an
    /// ACL refusal, [`Retry::Slowly`](crate::Retry::Slowly)).
    pub refused_retry_base: Duration,
    /// Longest delay before asking again for something Consul refused.
    pub refused_retry_cap: Duration,
}

impl SourceConfig {
    /// Watches `services` with converge's defaults.
    pub fn new(services: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            services: services.into_iter().map(Into::into).collect(),
            health: HealthQuery::default(),
            consistency: Consistency::Default,
            pacing: Pacing::default(),
            fetch_concurrency: 12,
            resync_interval: Duration::from_secs(30 * 60),
            retry_base: Duration::from_millis(250),
            retry_cap: Duration::from_secs(30),
            refused_retry_base: REFUSAL_BASE,
            refused_retry_cap: REFUSAL_CAP,
        }
    }

    /// The backoff after a failure that waiting fixes.
    pub(super) fn retry_backoff(&self) -> Backoff {
        Backoff::new(self.retry_base, self.retry_cap, 0.5, fastrand::Rng::new())
    }

    /// The backoff after a refusal, by default
    /// [`Backoff::for_refusals`]'s pace.
    pub(super) fn refusal_backoff(&self) -> Backoff {
        Backoff::new(
            self.refused_retry_base,
            self.refused_retry_cap,
            0.5,
            fastrand::Rng::new(),
        )
    }

    /// A client for this source: room for both watches and the fetch
    /// pool, and no more (see
    /// [`MAX_CONNECTIONS`](crate::client::MAX_CONNECTIONS)).
    pub fn client(&self, consul: Config) -> Result<Client, Error> {
        Client::with_max_requests(consul, WATCHES + self.concurrency())
    }

    /// The fetch pool, clamped to 1..=[`MAX_FETCH_CONCURRENCY`].
    pub(super) fn concurrency(&self) -> usize {
        self.fetch_concurrency.clamp(1, MAX_FETCH_CONCURRENCY)
    }
}
