//! What the source publishes: a [`SourceState`] (the catalog snapshot, the
//! services never read, and a [`SourceHealth`]).
//!
//! A service never read is listed in [`SourceState::missing`] and left out
//! of the catalog rather than published with no instances: "could not ask"
//! must never look like "nothing is there" to the renderer.

use std::collections::BTreeSet;
use std::sync::Arc;

use converge_model::Catalog;

/// How the source is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceHealth {
    /// No answer from Consul yet.
    Starting,
    /// The latest round of every watch and read succeeded.
    Healthy,
    /// Something failed; the catalog holds the last good data, with the
    /// affected services marked stale.
    Degraded {
        /// The latest failure.
        reason: String,
        /// Whether an operator must fix something rather than wait for
        /// the network: a token refused by ACL (asked again slowly, so the
        /// source recovers by itself once it works) or a request Consul
        /// rejects (not asked again until the source restarts).
        config_error: bool,
    },
}

/// One published state of the source.
#[derive(Debug, Clone)]
pub struct SourceState {
    /// The snapshot: every watched service read at least once, each with
    /// its freshness.
    pub catalog: Arc<Catalog>,
    /// Watched services never read successfully (absent from `catalog`,
    /// which is *not* the same as having no instances).
    pub missing: BTreeSet<String>,
    /// Overall condition.
    pub health: SourceHealth,
}

impl SourceState {
    /// Whether every watched service has been read at least once.
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty()
    }
}
