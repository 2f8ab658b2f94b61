//! `converge run`: the loop around [`Reconciler::reconcile`].
//!
//! Events — the catalog source changed, a file changed under the manifests
//! or templates, the resync timer, SIGHUP, an operator's release — only say
//! "look again". A burst of them is settled by [`Quiescence`](crate::quiescence::Quiescence) into one
//! pass. One task runs the passes one after another on a blocking thread,
//! so two reconciles never overlap, and shutdown waits for a pass in flight
//! instead of cutting an apply in half.
//!
//! [`Reconciler::reconcile`]: crate::reconciler::Reconciler::reconcile

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use converge_consul::{CatalogSource, SourceConfig};
use tokio::sync::{mpsc, watch};

use crate::reconciler::{CatalogFrom, DaemonConfig, Reconciler};
use crate::status::Board;
use crate::watch_files::FileWatch;

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
}

/// Operator requests shared with the HTTP listener and signal handlers.
#[derive(Debug, Clone)]
pub struct Control {
    wake: mpsc::Sender<Trigger>,
    releases: Arc<Mutex<Vec<String>>>,
    /// SIGHUP asked for the Consul settings files to be read again. A flag,
    /// not a trigger: quiescence folds triggers together.
    reread: Arc<AtomicBool>,
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
        let source = match config.catalog {
            CatalogFrom::File(_) => "file",
            CatalogFrom::Consul(_) => "consul",
        };
        let board = Board::new(&config.node, source);
        let (wake, wake_rx) = mpsc::channel(1024);
        Self {
            config,
            board,
            control: Control {
                wake,
                releases: Arc::new(Mutex::new(Vec::new())),
                reread: Arc::new(AtomicBool::new(false)),
            },
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
        let quiescence = config.quiescence;
        let resync = config.resync;

        let _files = FileWatch::start(&config, wake.clone()).map_err(crate::AgentError::Watch)?;

        let mut reconciler = Reconciler::new(config.clone(), board.clone());
        reconciler.load_inputs();

        let mut source = match &config.catalog {
            CatalogFrom::Consul(consul) => Some(
                ConsulWatch::start((**consul).clone(), reconciler.services(), wake.clone())
                    .map_err(crate::AgentError::Source)?,
            ),
            CatalogFrom::File(_) => None,
        };

        tokio::spawn({
            let wake = wake.clone();
            async move {
                let mut tick =
                    tokio::time::interval_at(tokio::time::Instant::now() + resync, resync);
                loop {
                    tick.tick().await;
                    if wake.send(Trigger::Resync).await.is_err() {
                        return;
                    }
                }
            }
        });

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
            tokio::select! {
                biased;
                _ = shutdown.wait_for(|stop| *stop) => break,
                open = quiescence.settle(&mut wake_rx) => if !open { break },
            }
            for backend in std::mem::take(
                &mut *control
                    .releases
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner),
            ) {
                tracing::warn!(%backend, "operator released the guard");
                reconciler.release(backend);
            }
            if control.reread.swap(false, Ordering::SeqCst) {
                if let Some(watch) = source.as_mut() {
                    watch.restart(reconciler.services(), wake.clone());
                }
            }
            let state = source.as_ref().map(|w| w.source.current());
            // Not cancelled by shutdown: a pass in flight always finishes.
            reconciler = tokio::task::spawn_blocking(move || {
                reconciler.load_inputs();
                reconciler.reconcile(state.as_ref());
                reconciler
            })
            .await
            .map_err(|e| crate::AgentError::Source(format!("reconcile task failed: {e}")))?;
            if let Some(watch) = &source {
                watch.source.set_services(reconciler.services());
            }
            after_pass(&board);
        }
        tracing::info!("shutting down; no apply in flight");
        Ok(())
    }
}

/// The Consul source and the task that turns its changes into wake-ups.
struct ConsulWatch {
    config: converge_consul::Config,
    source: CatalogSource,
    forward: tokio::task::JoinHandle<()>,
}

impl ConsulWatch {
    fn start(
        config: converge_consul::Config,
        services: BTreeSet<String>,
        wake: mpsc::Sender<Trigger>,
    ) -> Result<Self, String> {
        let source = CatalogSource::connect(config.clone(), SourceConfig::new(services))
            .map_err(|e| e.to_string())?;
        let mut rx = source.subscribe();
        let forward = tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                if wake.send(Trigger::Catalog).await.is_err() {
                    return;
                }
            }
        });
        Ok(Self {
            config,
            source,
            forward,
        })
    }

    /// SIGHUP: reads the token file again and reconnects with a new
    /// client (which reads the TLS files again), so a rotated token or
    /// certificate takes effect without a restart. Until the new source
    /// has read every service nothing is applied, and the live files stay
    /// as they are. If the settings cannot be read the current connection
    /// stays.
    fn restart(&mut self, services: BTreeSet<String>, wake: mpsc::Sender<Trigger>) {
        let fresh = self
            .config
            .reread()
            .map_err(|e| e.to_string())
            .and_then(|config| Self::start(config, services, wake));
        match fresh {
            Ok(fresh) => {
                tracing::info!(
                    "SIGHUP: reconnected to Consul with the token and TLS files read again"
                );
                *self = fresh;
            }
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: cannot read the Consul settings again; keeping the current connection");
            }
        }
    }
}

impl Drop for ConsulWatch {
    fn drop(&mut self) {
        self.forward.abort();
    }
}

/// Default resync interval.
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(300);
