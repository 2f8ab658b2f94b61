//! What the source knows about each watched service between reads: its
//! last good instances, when they were read, and why the latest read (or a
//! watch) failed.
//!
//! A `Failure` records whether, and how soon, asking again can help
//! ([`Retry`]), because that decides everything the source does next: a
//! fault is retried with the normal backoff, a refusal with the slow one,
//! and a request Consul will never accept is not asked again until the
//! source restarts. The last two are configuration errors and are the
//! ones reported while they last.

use std::time::{Duration, SystemTime};

use converge_model::Instance;

use crate::error::{Error, Retry};

/// Per-service state inside the loop.
#[derive(Debug, Default)]
pub(super) struct Known {
    pub(super) instances: Vec<Instance>,
    pub(super) last_ok: Option<SystemTime>,
    /// The Raft index of the last good read.
    pub(super) index: u64,
    pub(super) error: Option<Failure>,
}

/// Why the latest read of a service, or a watch, failed.
#[derive(Debug, Clone)]
pub(super) struct Failure {
    /// What went wrong and what the source does about it.
    pub(super) message: String,
    /// When to ask again: soon, slowly (at most every `refused_cap`), or
    /// not until the source is restarted.
    pub(super) retry: Retry,
}

impl Failure {
    /// The failure `error` stands for; `refused_cap` is the longest pause
    /// before a refusal is asked again, named in the message so an
    /// operator knows how soon a fixed token takes effect.
    pub(super) fn new(error: &Error, refused_cap: Duration) -> Self {
        let retry = error.retry();
        let message = match retry {
            Retry::Soon => error.to_string(),
            Retry::Slowly => format!(
                "{error}; asked again at a slowing pace, at least every {} s, until Consul \
                 accepts it",
                refused_cap.as_secs().max(1)
            ),
            Retry::Never => {
                format!("{error}; not asked again until the source restarts (SIGHUP)")
            }
        };
        Self { message, retry }
    }

    /// Whether an operator has to fix something (a token, a policy, a
    /// filter) rather than wait for the network.
    pub(super) fn config_error(&self) -> bool {
        self.retry != Retry::Soon
    }
}
