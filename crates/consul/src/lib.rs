//! converge's Consul client and catalog source.
//!
//! - [`Config`]: where Consul is, the ACL token (a
//!   [`Secret`](converge_model::Secret) that never reaches a log, an error or
//!   a URL), TLS files; [`Config::from_env`] reads HashiCorp's
//!   `CONSUL_HTTP_*` variables.
//! - [`Client`]: one async method per endpoint converge uses (health,
//!   catalog, KV with CAS, agent, status). It does not retry or sleep; it
//!   reports typed [`Error`]s that say whether retrying can help, and lets
//!   a bounded number of requests through at once, which bounds the
//!   connections to Consul.
//! - [`blocking`]: Consul's blocking-query rules (index reset, index ≥ 1,
//!   no spinning) as a small state machine, and [`Backoff`] for failures.
//! - [`source`]: watches the services the manifests reference with a
//!   bounded number of connections and publishes immutable, sorted
//!   [`Catalog`](converge_model::Catalog) snapshots that keep the last good
//!   data, marked stale, when Consul cannot be asked.
//!
//! The split keeps I/O-free logic (index rules, backoff, check diffs,
//! response mapping) testable without a network, and everything that talks
//! to Consul testable against the real agent (see `tests/`).
#![deny(missing_docs)]

pub mod backoff;
pub mod blocking;
pub mod client;
pub mod config;
pub mod error;
pub mod source;

pub use backoff::Backoff;
pub use blocking::{BlockingQuery, IndexOutcome, IndexTracker, Pacing, Update};
pub use client::{
    AgentSelf, CheckStatus, Client, Consistency, HealthCheck, HealthQuery, KvPair, QueryMeta,
    QueryOptions, Response,
};
pub use config::{Config, TlsConfig};
pub use error::{Error, Retry};
pub use source::{read_catalog, CatalogSource, SourceConfig, SourceHealth, SourceState};
