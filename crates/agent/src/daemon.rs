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
//! - [`pauses`]: PgBouncer databases paused while their primary is
//!   unclear (the pass decides, this carries it out and ends it);
//! - `report`: the one place that writes status, metrics and log;
//! - [`board`]: the status and metrics the HTTP listener serves;
//! - [`events`]: the bounded ring of what the daemon did, for drills;
//! - [`http`]: that listener;
//! - `node_report`: the status as the fleet report `--published` writes.

pub mod board;
pub mod control;
pub mod events;
pub mod http;
mod node_report;
pub mod pauses;
pub mod primaries;
pub mod quiescence;
mod reconciler;
mod report;
mod watch_files;

use std::sync::Arc;
use std::time::Duration;

use converge_apply::ApplyOptions;
use tokio::sync::{mpsc, watch};

use crate::fleet::writer;
use crate::follow::{self, Follow, Following};
use crate::inputs::Inputs;
use crate::source::{self, CatalogFrom};
use board::Board;
pub use control::{Control, Trigger};
use node_report::node_report;
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
    /// With `--published`: follow the fleet's revision and report.
    pub fleet: Option<FleetConfig>,
}

/// How a daemon takes part in the fleet (`--published`): the inputs are
/// the store's current revision (see [`crate::follow`]), and a report is
/// written after every pass that changed it (see [`crate::fleet`]).
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// The Consul agent holding the keys.
    pub consul: converge_consul::Config,
    /// Keys, store and node.
    pub follow: Follow,
    /// TTL of the report's session.
    pub report_ttl: Duration,
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
        // A followed revision changes only through the follower, which
        // wakes the loop itself.
        let watched = config.fleet.is_none().then_some(&config.inputs);
        let _files = FileWatch::start(watched, catalog_file, wake.clone())
            .map_err(crate::AgentError::Watch)?;
        let reports = start_fleet(&config, &board, &wake, &shutdown)?;
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
        // When a pause's limit runs out: a pass then resumes it.
        let mut pause_deadline: Option<tokio::time::Instant> = None;
        loop {
            let trigger = tokio::select! {
                biased;
                _ = shutdown.wait_for(|stop| *stop) => break,
                t = wake_rx.recv() => match t {
                    Some(t) => t,
                    None => break,
                },
                () = until(pause_deadline) => Trigger::PauseLimit,
            };
            tracing::debug!(?trigger, "woken");
            if trigger != Trigger::Resync {
                board
                    .events
                    .record(events::EventKind::SawChange, trigger.as_str());
            }
            let mut inputs_may_have_changed = trigger.may_change_inputs();
            tokio::select! {
                biased;
                _ = shutdown.wait_for(|stop| *stop) => break,
                open = config.quiescence.settle(&mut wake_rx, |t: Trigger| {
                    inputs_may_have_changed |= t.may_change_inputs();
                }) => if !open { break },
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
                reconciler.woken(inputs_may_have_changed, source.as_mut());
                (reconciler, source)
            })
            .await
            .map_err(|e| crate::AgentError::Source(format!("reconcile task failed: {e}")))?;
            source.watch(reconciler.services());
            pause_deadline = reconciler
                .pause_deadline()
                .map(|d| tokio::time::Instant::now() + d);
            if let Some((tx, _)) = &reports {
                tx.send_replace(Some(node_report(&board.status())));
            }
            after_pass(&board);
        }
        // Nobody would resume what stays paused once this process is gone.
        let _ = tokio::task::spawn_blocking(move || reconciler.resume_paused()).await;
        tracing::info!("shutting down; no apply in flight");
        if let Some((_, writer)) = reports {
            // The writer ends its session, so the report reads as stale.
            let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
        }
        Ok(())
    }
}

/// Waits until `deadline`, or for ever when there is none.
async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The report channel and writer task of the fleet, with the follower
/// started; `None` without `--published`.
type Reports = Option<(
    watch::Sender<Option<crate::fleet::NodeReport>>,
    tokio::task::JoinHandle<()>,
)>;

/// Starts following the published revision and the report writer.
fn start_fleet(
    config: &DaemonConfig,
    board: &Arc<Board>,
    wake: &mpsc::Sender<Trigger>,
    shutdown: &watch::Receiver<bool>,
) -> Result<Reports, crate::AgentError> {
    let Some(fleet) = &config.fleet else {
        return Ok(None);
    };
    let client = converge_consul::Client::new(fleet.consul.clone())
        .map_err(|e| crate::AgentError::Source(e.to_string()))?;
    board.count_fleet_requests(client.clone());
    let wake = wake.clone();
    let follower_board = board.clone();
    follower_board.update(|s| s.published = Some(Following::default()));
    let (tx, rx) = watch::channel(None);
    let gated = follow::gated::Gated {
        reports: rx.clone(),
        ttl: fleet.report_ttl,
        root: config.inputs.root.clone(),
    };
    follow::spawn(
        client.clone(),
        fleet.follow.clone(),
        gated,
        Arc::new(move |state: &Following| {
            if state.error.is_some() {
                follower_board.fail("load");
            }
            follower_board.update(|s| s.published = Some(state.clone()));
            // A switch, or news for the report: either way, a pass.
            let _ = wake.try_send(Trigger::Files);
        }),
    );
    let target = writer::Target {
        key: fleet.follow.keys.node(&config.node),
        ttl: fleet.report_ttl,
        session_file: fleet.follow.store.dir().with_file_name("report-session"),
    };
    let writer = writer::spawn(client, target, rx, shutdown.clone());
    Ok(Some((tx, writer)))
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
