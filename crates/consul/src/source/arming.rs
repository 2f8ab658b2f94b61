//! Start-up order in per-service mode: every watched service's first read
//! before any of their long polls is armed.
//!
//! Consul evaluates a blocking query once when it arrives and only then
//! waits (`blockingQuery` in `agent/consul/rpc.go`), so arming a service's
//! long poll costs the agent about as much as reading the service. At
//! start-up each of thousands of services costs it both; sent as they
//! come, the armings of the services read first compete with the first
//! reads still queued, and the last first read, which the first complete
//! snapshot waits for, comes only after about twice the agent's work.
//! Holding the armings of a batch until each of its services has had its
//! first answer (or its first failure) lets the reads go first.
//!
//! No change is lost by waiting: an arming carries the index of its
//! service's first answer, and Consul answers it at once if the service
//! changed in between. A task stopped before its first read (a manifest
//! reload that dropped its service) drops its [`Ticket`], which counts as
//! done, so a batch's gate always opens.

use std::sync::Arc;

use tokio::sync::watch;

/// One watch's place in a batch of first reads. Dropped, it counts as
/// read: whether the read succeeded, failed or was never sent (the task
/// was aborted) does not matter to the others, only that it is no longer
/// pending.
#[derive(Debug)]
pub(super) struct Ticket {
    pending: Arc<watch::Sender<usize>>,
}

impl Ticket {
    /// `count` tickets sharing one gate, which opens once all of them are
    /// gone.
    pub(super) fn batch(count: usize) -> impl Iterator<Item = Ticket> {
        let pending = Arc::new(watch::Sender::new(count));
        (0..count).map(move |_| Ticket {
            pending: Arc::clone(&pending),
        })
    }

    /// Marks this watch's first read done and waits until every other
    /// watch of the batch is done too.
    pub(super) async fn first_read_done(self) {
        let mut open = self.pending.subscribe();
        drop(self);
        // An error means every ticket, and so the sender, is gone: open.
        let _ = open.wait_for(|pending| *pending == 0).await;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.pending.send_modify(|pending| *pending -= 1);
    }
}
