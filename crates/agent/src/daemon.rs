//! `converge run`: a small loop around the one [`pass`](crate::pass).
//!
//! Events ([`Trigger`]s: the catalog source changed, a file changed, the
//! resync timer, SIGHUP, an operator's release) only say "look again". A
//! burst of them is settled by [`Quiescence`] into one pass. One task runs
//! the passes one after another on a blocking thread, so two reconciles
//! never overlap, and shutdown waits for a pass in flight instead of
//! cutting an apply in half.
//!
//! - [`control`]: triggers and the operator's handle ([`Control`]);
//! - [`quiescence`]: settling a burst into one pass;
//! - `watch_files`: the file watches that wake the loop;
//! - `reconciler`: one pass and the state kept between passes;
//! - `report`: the one place that writes status, metrics and log;
//! - [`board`]: the status and metrics the HTTP listener serves;
//! - [`events`]: the bounded ring of what the daemon did, for drills;
//! - [`http`]: that listener.

pub mod board;
pub mod control;
pub mod events;
pub mod http;
pub mod primaries;
pub mod quiescence;
mod reconciler;
mod report;
mod watch_files;

use std::sync::Arc;
use std::time::Duration;

use converge_apply::ApplyOptions;
use tokio::sync::{mpsc, watch};

use crate::inputs::Inputs;
use crate::source::{self, CatalogFrom};
use board::Board;
pub use control::{Control, Trigger};
use quiescence::Quiescence;
use reconciler::Reconciler;
use watch_files::FileWatch;

/// Default resync interval.
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(300);

/// Daemon settings.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// Manifests, templates, root (its `catalog` is used for `File`).
    pub inputs: Inputs,
    /// This node.
    pub node: String,
    /// Catalog source.
    pub catalog: CatalogFrom,
    /// Burst settling.
    pub quiescence: Quiescence,
    /// Reconcile at least this often, whatever the watches say.
    pub resync: Duration,
    /// Apply settings.
    pub apply: ApplyOptions,
}

/// A daemon before it runs: build, hand out [`Control`], then [`run`](Self::run).
pub struct Daemon {
    config: DaemonConfig,
    board: Arc<Board>,
    control: Control,
    wake_rx: mpsc::Receiver<Trigger>,
}

impl Daemon {
    /// Prepares a daemon; nothing runs until [`Daemon::run`].
    pub fn new(config: DaemonConfig) -> Self {
        let board = Board::new(&config.node, config.catalog.kind());
        let (wake, wake_rx) = mpsc::channel(1024);
        Self {
            config,
            board,
            control: Control::new(wake),
            wake_rx,
        }
    }

    /// The shared status board.
    pub fn board(&self) -> Arc<Board> {
        self.board.clone()
    }

    /// A handle for operator requests.
    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// Runs until `shutdown` turns true. `after_pass` is called after every
    /// pass (the binary tells systemd `READY=1`/`STATUS=` there).
    pub async fn run(
        self,
        mut shutdown: watch::Receiver<bool>,
        after_pass: impl Fn(&Board) + Send + 'static,
    ) -> Result<(), crate::AgentError> {
        let Daemon {
            config,
            board,
            control,
            mut wake_rx,
        } = self;
        let wake = control.wake.clone();
        let catalog_file = match &config.catalog {
            CatalogFrom::File(path) => Some(path.as_path()),
            CatalogFrom::Consul(_) => None,
        };
        let _files = FileWatch::start(&config.inputs, catalog_file, wake.clone())
            .map_err(crate::AgentError::Watch)?;
        spawn_resync(wake.clone(), config.resync);

        let mut reconciler = Reconciler::new(config.clone(), board.clone());
        reconciler.load_inputs();
        let mut source = source::open(&config.catalog, reconciler.services(), {
            let wake = wake.clone();
            // A full channel already holds a wake-up: dropping is fine.
            Arc::new(move || {
                let _ = wake.try_send(Trigger::Catalog);
            })
        })?;

        // The first pass waits for quiescence too when it is configured, so
        // a daemon started into a burst renders once.
        let _ = wake.try_send(Trigger::Files);
        loop {
            let trigger = tokio::select! {
                biased;
                _ = shutdown.wait_for(|stop| *stop) => break,
                t = wake_rx.recv() => match t {
                    Some(t) => t,
                    None => break,
                },
            };
            tracing::debug!(?trigger, "woken");
            if trigger != Trigger::Resync {
                board
                    .events
                    .record(events::EventKind::SawChange, trigger.as_str());
            }
            tokio::select! {
                biased;
                _ = shutdown.wait_for(|stop| *stop) => break,
                open = config.quiescence.settle(&mut wake_rx) => if !open { break },
            }
            for backend in control.take_releases() {
                tracing::warn!(%backend, "operator released the guard");
                reconciler.release(backend);
            }
            if control.take_reread() {
                source.reread(reconciler.services());
            }
            // Not cancelled by shutdown: a pass in flight always finishes.
            (reconciler, source) = tokio::task::spawn_blocking(move || {
                reconciler.load_inputs();
                reconciler.reconcile(source.as_mut());
                (reconciler, source)
            })
            .await
            .map_err(|e| crate::AgentError::Source(format!("reconcile task failed: {e}")))?;
            source.watch(reconciler.services());
            after_pass(&board);
        }
        tracing::info!("shutting down; no apply in flight");
        Ok(())
    }
}

/// Wakes the loop every `resync`, whatever the watches say.
fn spawn_resync(wake: mpsc::Sender<Trigger>, resync: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + resync, resync);
        loop {
            tick.tick().await;
            if wake.send(Trigger::Resync).await.is_err() {
                return;
            }
        }
    });
}
