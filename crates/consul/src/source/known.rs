//! What the source knows about each watched service between reads: its
//! last good instances, when they were read, and why the latest read (or a
//! watch) failed.
//!
//! A `Failure` records whether asking again can help, because that one
//! bit decides everything the source does next: a retryable failure is
//! retried with backoff, a parked one is not asked again until the source
//! restarts, and is the one reported while it lasts.

use std::time::SystemTime;

use converge_model::Instance;

use crate::error::Error;

/// Per-service state inside the loop.
#[derive(Debug, Default)]
pub(super) struct Known {
    pub(super) instances: Vec<Instance>,
    pub(super) last_ok: Option<SystemTime>,
    pub(super) error: Option<Failure>,
}

/// Why the latest read of a service, or a watch, failed.
#[derive(Debug, Clone)]
pub(super) struct Failure {
    /// What went wrong and what the source does about it.
    pub(super) message: String,
    /// Asking again cannot help ([`Error::is_retryable`] is false): what
    /// failed is not asked for again until the source is restarted.
    pub(super) parked: bool,
}

impl Failure {
    pub(super) fn new(error: &Error) -> Self {
        let parked = !error.is_retryable();
        let message = if parked {
            format!("{error}; not asked again until the source restarts (SIGHUP)")
        } else {
            error.to_string()
        };
        Self { message, parked }
    }
}
