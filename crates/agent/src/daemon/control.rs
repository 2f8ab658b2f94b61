//! What wakes the daemon's loop, and the operator's handle on it.
//!
//! Events — the catalog source changed, a file changed, the resync timer,
//! SIGHUP, an operator's release — are [`Trigger`]s on one channel; they
//! only say "look again". [`Control`] is what the HTTP listener and the
//! signal handlers hold.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::mpsc;

/// Why the loop looks again (for logs; every pass recomputes everything).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The catalog may have changed.
    Catalog,
    /// A manifest, template or catalog file may have changed.
    Files,
    /// The periodic resync.
    Resync,
    /// SIGHUP, or an operator's release.
    Operator,
    /// A PgBouncer database paused for an unclear primary reached its
    /// limit.
    PauseLimit,
}

impl Trigger {
    /// Its name in `GET /events`.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Catalog => "catalog",
            Trigger::Files => "files",
            Trigger::Resync => "resync",
            Trigger::Operator => "operator",
            Trigger::PauseLimit => "pause-limit",
        }
    }

    /// Whether the manifests, templates or their revision may have changed
    /// since the last pass: for every trigger but the catalog source's. A
    /// pass woken only by the catalog keeps what it loaded and named
    /// before, instead of reading every input file and asking `git` again
    /// on each catalog change (see `Reconciler::woken`).
    pub fn may_change_inputs(self) -> bool {
        self != Trigger::Catalog
    }
}

/// Operator requests shared with the HTTP listener and signal handlers.
#[derive(Debug, Clone)]
pub struct Control {
    pub(super) wake: mpsc::Sender<Trigger>,
    pub(super) releases: Arc<Mutex<Vec<String>>>,
    /// SIGHUP asked for the Consul settings files to be read again. A flag,
    /// not a trigger: quiescence folds triggers together.
    pub(super) reread: Arc<AtomicBool>,
}

impl Control {
    /// SIGHUP: a pass now, which reads manifests and templates again, and,
    /// with Consul as the source, the token file too (reconnecting).
    pub fn reload(&self) {
        self.reread.store(true, Ordering::SeqCst);
        let _ = self.wake.try_send(Trigger::Operator);
    }

    /// Accepts the current catalog for `backend` once, ending its hold.
    pub fn release(&self, backend: &str) {
        self.releases
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(backend.to_string());
        let _ = self.wake.try_send(Trigger::Operator);
    }
}

impl Control {
    pub(super) fn new(wake: mpsc::Sender<Trigger>) -> Self {
        Self {
            wake,
            releases: Arc::new(Mutex::new(Vec::new())),
            reread: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The releases asked for since the last call.
    pub(super) fn take_releases(&self) -> Vec<String> {
        std::mem::take(&mut *self.releases.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Whether SIGHUP asked for the source's settings to be read again
    /// since the last call.
    pub(super) fn take_reread(&self) -> bool {
        self.reread.swap(false, Ordering::SeqCst)
    }
}
