//! The catalog source: turns Consul into a stream of immutable, sorted
//! [`Catalog`] snapshots for exactly the services the manifests reference.
//!
//! # Bounded connections
//!
//! consul-template holds one long-poll per dependency, so 600 watched
//! services are 600 open connections and run into Consul's default limit of
//! 200 connections per client address. This source holds **two** long
//! polls whatever the number of services, plus a bounded pool of short,
//! non-blocking reads:
//!
//! - a blocking query on `/v1/health/state/any`: its answer lists every
//!   check with its node, service and status, so a diff against the
//!   previous answer names exactly the services whose health or
//!   check-carrying membership changed (a node check names every watched
//!   service with an instance on that node);
//! - a blocking query on `/v1/catalog/services`: its index moves on any
//!   service or node registration, including changes no check shows (a
//!   check-less instance, a new port or tag). Its body cannot say *which*
//!   instance changed, so a move refetches every watched service;
//! - targeted `/v1/health/service/:name` reads for the services named by
//!   the diff, at most [`SourceConfig::fetch_concurrency`] at a time. A
//!   read runs after the answer that named it and can already hold a later
//!   change; when its index is past that answer's, the service is read
//!   again at the next answer, because a check that flipped back makes the
//!   next answer equal the last and the diff would name nothing.
//!
//! The bound of 32 connections is the [`Client`]'s, and holds by
//! construction (see [`MAX_CONNECTIONS`](crate::client::MAX_CONNECTIONS)):
//! a client lets at most `max_requests` requests through at once and keeps
//! at most as many idle connections. [`SourceConfig::client`] sizes one for
//! the two watches plus the fetch pool, which is clamped to
//! [`MAX_FETCH_CONCURRENCY`] so both always fit in
//! [`MAX_REQUESTS`](crate::client::MAX_REQUESTS): 2 + 14 requests and 16
//! idle connections at most. The default pool, 12, stays below that clamp
//! to leave room for the moment the HTTP pool is still handing a finished
//! connection back while a read opens a new one; the peaks this leads to
//! are measured in `BENCHMARKS.md`, section "Consul source: flip →
//! snapshot, idle load, connections".
//!
//! The trade-off: a health flip costs one wake-up of the checks watch (whose
//! answer grows with the number of checks in the datacenter, not with what
//! is watched) plus one small read, and converges within that one wake-up.
//! A registration costs a refetch of every watched service through the
//! pool; registrations are rare next to health flips, and the pool keeps
//! the burst bounded. A periodic resync ([`SourceConfig::resync_interval`],
//! 30 minutes by default) refetches everything as a safety net. It costs
//! one read per watched service per interval, which with hundreds of
//! services is most of the idle load (the two long polls wake rarely while
//! nothing changes), so it is kept long.
//!
//! What this costs against a real agent (connections at peak and when
//! idle, requests per minute while idle, flip → snapshot latency at 10 and
//! 600 watched services) is measured in `BENCHMARKS.md`, section "Consul
//! source: flip → snapshot, idle load, connections", with the commands
//! that reproduce it; numbers written here would go stale.
//!
//! # Failure
//!
//! "Could not ask" never becomes "no instances". A service whose read
//! fails keeps its last good instances and is marked
//! [`Freshness::Stale`]; a watch failure marks every service stale, because
//! nothing can be known to be current. A service that was never read is
//! left out of the catalog and listed in [`SourceState::missing`], not
//! published as empty. Reads are retried with a [`Backoff`]; after a
//! watch recovers (its index reset to a plain read, see
//! [`blocking`](crate::blocking)) everything is refetched once.
//!
//! An error that asking again cannot fix ([`Error::is_retryable`] is false:
//! a 403 from a missing ACL permission, an unknown token, a filter Consul
//! rejects) is not retried. Waiting does not grant a permission, so a retry
//! would only repeat the refusal at the backoff's cap, forever, from every
//! node. The source reports it as [`SourceHealth::Degraded`] with
//! `config_error`, keeps the last good data (stale), and stops asking for
//! what failed: that service's reads, or, for a watch, everything. It asks
//! again once it is restarted, which the daemon does on SIGHUP after the
//! operator fixed the token or policy.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use converge_model::{Catalog, Freshness, Instance, ServiceEntry};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::blocking::{BlockingQuery, IndexOutcome, Pacing, Update};
use crate::client::{
    Client, Consistency, HealthCheck, HealthQuery, QueryOptions, Response, MAX_REQUESTS,
};
use crate::config::Config;
use crate::error::Error;

/// Long polls the source keeps open: the checks watch and the services
/// watch.
const WATCHES: usize = 2;

/// Most reads the source runs at once, whatever is configured: what a
/// client lets through besides the two watches.
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
    /// Blocking-query pacing of the two watches.
    pub pacing: Pacing,
    /// Reads in flight at once (clamped to 1..=[`MAX_FETCH_CONCURRENCY`]).
    pub fetch_concurrency: usize,
    /// Full refetch at this interval (plus up to 10 % jitter).
    pub resync_interval: Duration,
    /// First retry delay after a failed read.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_cap: Duration,
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
        }
    }

    /// A client for this source: room for both watches and the fetch
    /// pool, and no more (see
    /// [`MAX_CONNECTIONS`](crate::client::MAX_CONNECTIONS)).
    pub fn client(&self, consul: Config) -> Result<Client, Error> {
        Client::with_max_requests(consul, WATCHES + self.concurrency())
    }

    fn concurrency(&self) -> usize {
        self.fetch_concurrency.clamp(1, MAX_FETCH_CONCURRENCY)
    }
}

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
        /// Whether asking again cannot help (a token without a needed
        /// permission, a filter Consul rejects): the source stopped asking
        /// for what failed until it is restarted, and an operator must fix
        /// something rather than wait.
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

/// A running catalog source. Dropping it stops the background task.
#[derive(Debug)]
pub struct CatalogSource {
    state: watch::Receiver<SourceState>,
    services: watch::Sender<BTreeSet<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CatalogSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CatalogSource {
    /// Builds a client sized for the source ([`SourceConfig::client`])
    /// and starts watching.
    pub fn connect(consul: Config, config: SourceConfig) -> Result<Self, Error> {
        let client = config.client(consul)?;
        Ok(Self::spawn(client, config))
    }

    /// Starts watching with `client`, whose request limit bounds the
    /// connections. A client letting fewer than `2 + fetch_concurrency`
    /// requests through makes reads wait for the watches' long polls;
    /// [`SourceConfig::client`] builds one that fits.
    pub fn spawn(client: Client, config: SourceConfig) -> Self {
        let initial = SourceState {
            catalog: Arc::new(Catalog::default()),
            missing: config.services.clone(),
            health: SourceHealth::Starting,
        };
        let (state_tx, state_rx) = watch::channel(initial);
        let (services_tx, services_rx) = watch::channel(config.services.clone());
        let task = tokio::spawn(run(client, config, state_tx, services_rx));
        Self {
            state: state_rx,
            services: services_tx,
            task,
        }
    }

    /// A receiver of every new state; the current one is available at once.
    pub fn subscribe(&self) -> watch::Receiver<SourceState> {
        self.state.clone()
    }

    /// The current state.
    pub fn current(&self) -> SourceState {
        self.state.borrow().clone()
    }

    /// Changes the watched services (after a manifest reload): new ones
    /// are read at once, dropped ones leave the catalog.
    pub fn set_services(&self, services: BTreeSet<String>) {
        self.services.send_replace(services);
    }
}

/// Which watch a signal comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Watch {
    Checks,
    Services,
}

/// Key of a check: node and check id.
type CheckKey = (String, String);
/// What matters of a check for instance health: service and status.
type CheckView = HashMap<CheckKey, (String, String)>;

enum Signal {
    Checks {
        outcome: IndexOutcome,
        index: u64,
        view: CheckView,
    },
    Services {
        outcome: IndexOutcome,
        index: u64,
    },
    Failed {
        watch: Watch,
        error: Error,
    },
}

/// Per-service state inside the loop.
#[derive(Debug, Default)]
struct Known {
    instances: Vec<Instance>,
    last_ok: Option<SystemTime>,
    error: Option<Failure>,
}

/// Why the latest read of a service, or a watch, failed.
#[derive(Debug, Clone)]
struct Failure {
    /// What went wrong and what the source does about it.
    message: String,
    /// Asking again cannot help ([`Error::is_retryable`] is false): what
    /// failed is not asked for again until the source is restarted.
    parked: bool,
}

impl Failure {
    fn new(error: &Error) -> Self {
        let parked = !error.is_retryable();
        let message = if parked {
            format!("{error}; not asked again until the source restarts (SIGHUP)")
        } else {
            error.to_string()
        };
        Self { message, parked }
    }
}

struct Loop {
    client: Client,
    config: SourceConfig,
    watched: BTreeSet<String>,
    known: BTreeMap<String, Known>,
    checks: Option<CheckView>,
    checks_index: u64,
    services_index: u64,
    watch_up: [bool; 2],
    watch_error: Option<Failure>,
    need_full: bool,
    dirty: BTreeSet<String>,
    /// Services whose latest read answered at an index past the check view
    /// it was compared against: the read may already hold a change that
    /// the next view, compared with the last one, shows as none (a check
    /// that flips and flips back between two answers of the watch). The
    /// next view reads them again.
    ahead: BTreeSet<String>,
    retry: Backoff,
    retry_at: Option<Instant>,
    resync_at: Instant,
    rng: fastrand::Rng,
}

async fn run(
    client: Client,
    config: SourceConfig,
    state_tx: watch::Sender<SourceState>,
    mut services_rx: watch::Receiver<BTreeSet<String>>,
) {
    let (sig_tx, mut sig_rx) = mpsc::channel(8);
    let mut watches = JoinSet::new();
    watches.spawn(watch_checks(client.clone(), config.clone(), sig_tx.clone()));
    watches.spawn(watch_services(client.clone(), config.clone(), sig_tx));

    let mut rng = fastrand::Rng::new();
    let resync_at = Instant::now() + jittered(config.resync_interval, &mut rng);
    let mut lp = Loop {
        watched: services_rx.borrow_and_update().clone(),
        retry: Backoff::new(
            config.retry_base,
            config.retry_cap,
            0.5,
            fastrand::Rng::new(),
        ),
        client,
        config,
        known: BTreeMap::new(),
        checks: None,
        checks_index: 0,
        services_index: 0,
        watch_up: [false, false],
        watch_error: None,
        need_full: true,
        dirty: BTreeSet::new(),
        ahead: BTreeSet::new(),
        retry_at: None,
        resync_at,
        rng,
    };

    loop {
        let retry_at = lp.retry_at;
        tokio::select! {
            sig = sig_rx.recv() => {
                let Some(sig) = sig else { return };
                lp.on_signal(sig);
                while let Ok(sig) = sig_rx.try_recv() {
                    lp.on_signal(sig);
                }
            }
            changed = services_rx.changed() => {
                if changed.is_err() {
                    return;
                }
                let new = services_rx.borrow_and_update().clone();
                lp.set_watched(new);
            }
            _ = tokio::time::sleep_until(lp.resync_at) => {
                lp.need_full = true;
                lp.resync_at = Instant::now() + jittered(lp.config.resync_interval, &mut lp.rng);
            }
            _ = sleep_until_opt(retry_at) => lp.on_retry(),
        }
        lp.fetch().await;
        let next = lp.state();
        state_tx.send_if_modified(|cur| {
            let changed = *cur.catalog != *next.catalog
                || cur.missing != next.missing
                || cur.health != next.health;
            if changed {
                *cur = next;
            }
            changed
        });
    }
}

impl Loop {
    fn on_signal(&mut self, sig: Signal) {
        match sig {
            Signal::Checks {
                outcome,
                index,
                view,
            } => {
                self.watch_up[0] = true;
                self.checks_index = index;
                self.dirty.append(&mut self.ahead);
                match (&self.checks, outcome) {
                    (Some(old), IndexOutcome::Moved | IndexOutcome::Unchanged) => {
                        let changed = changed_services(old, &view, &self.known);
                        self.dirty.extend(changed);
                    }
                    _ => self.need_full = true,
                }
                self.checks = Some(view);
            }
            Signal::Services { outcome, index } => {
                self.watch_up[1] = true;
                self.services_index = index;
                if outcome.may_have_changed() {
                    self.need_full = true;
                }
            }
            Signal::Failed { watch, error } => {
                let failure = Failure::new(&error);
                if failure.parked {
                    tracing::error!(?watch, %error, "Consul refused the watch; keeping the last good catalog and not asking again until the source restarts (SIGHUP)");
                } else {
                    tracing::warn!(?watch, %error, "Consul watch failed; keeping the last good catalog");
                }
                self.watch_up[watch as usize] = false;
                if watch == Watch::Checks {
                    self.checks = None;
                }
                self.need_full = true;
                // A parked watch never recovers, so its failure is the one
                // to report until the source restarts.
                if self.watch_error.as_ref().is_none_or(|f| !f.parked) {
                    self.watch_error = Some(failure);
                }
            }
        }
        if self.watch_up.iter().all(|u| *u) {
            self.watch_error = None;
        }
    }

    /// The retry timer: reads again every service whose latest read failed
    /// in a way waiting can fix, and every one never read.
    fn on_retry(&mut self) {
        self.retry_at = None;
        let failed = self.known.iter().filter(|(_, k)| match &k.error {
            Some(f) => !f.parked,
            None => k.last_ok.is_none(),
        });
        let failed: Vec<String> = failed.map(|(n, _)| n.clone()).collect();
        self.dirty.extend(failed);
        let unread = self.watched.iter().filter(|s| !self.known.contains_key(*s));
        let unread: Vec<String> = unread.cloned().collect();
        self.dirty.extend(unread);
    }

    /// Whether `service` failed in a way asking again cannot fix.
    fn is_parked(&self, service: &str) -> bool {
        self.known
            .get(service)
            .and_then(|k| k.error.as_ref())
            .is_some_and(|f| f.parked)
    }

    fn set_watched(&mut self, new: BTreeSet<String>) {
        self.known.retain(|name, _| new.contains(name));
        self.dirty.retain(|name| new.contains(name));
        for name in new.difference(&self.watched) {
            self.dirty.insert(name.clone());
        }
        self.watched = new;
    }

    /// Reads every dirty service (all of them after a full-refetch
    /// trigger), at most `fetch_concurrency` at a time, except those
    /// parked by a failure asking again cannot fix. Does nothing while a
    /// watch is down: the reads would fail too, and the watch's recovery
    /// triggers one full refetch.
    async fn fetch(&mut self) {
        if !self.watch_up.iter().all(|u| *u) {
            return;
        }
        if self.need_full {
            self.need_full = false;
            self.dirty.extend(self.watched.iter().cloned());
        }
        let todo: Vec<String> = std::mem::take(&mut self.dirty)
            .into_iter()
            .filter(|s| self.watched.contains(s) && !self.is_parked(s))
            .collect();
        if todo.is_empty() {
            return;
        }
        let opts = QueryOptions {
            consistency: self.config.consistency,
            ..QueryOptions::default()
        };
        let mut pending = todo.into_iter();
        let mut running = JoinSet::new();
        let limit = self.config.concurrency();
        let mut retry_needed = false;
        loop {
            while running.len() < limit {
                let Some(name) = pending.next() else { break };
                let client = self.client.clone();
                let query = self.config.health.clone();
                let opts = opts.clone();
                running.spawn(async move {
                    let r = client.health_service(&name, &query, &opts).await;
                    (name, r)
                });
            }
            let Some(joined) = running.join_next().await else {
                break;
            };
            let Ok((name, result)) = joined else { continue };
            retry_needed |= self.record_read(name, result);
        }
        if retry_needed {
            let delay = self.retry.next_delay();
            self.retry_at = Some(Instant::now() + delay);
        } else if !self
            .known
            .values()
            .any(|k| k.error.as_ref().is_some_and(|f| !f.parked))
        {
            self.retry.reset();
            self.retry_at = None;
        }
    }

    /// Keeps what one read of `name` answered; `true` when it failed in a
    /// way that asking again later can fix.
    fn record_read(
        &mut self,
        name: String,
        result: Result<Response<Vec<Instance>>, Error>,
    ) -> bool {
        let entry = self.known.entry(name.clone()).or_default();
        match result {
            Ok(resp) => {
                entry.instances = resp.value;
                entry.instances.sort();
                entry.last_ok = Some(SystemTime::now());
                entry.error = None;
                if resp.meta.index > self.checks_index {
                    self.ahead.insert(name);
                } else {
                    self.ahead.remove(&name);
                }
                false
            }
            Err(e) => {
                let failure = Failure::new(&e);
                let retry = !failure.parked;
                if failure.parked {
                    tracing::error!(service = %name, error = %e, "Consul refused the read; keeping the last good instances and not asking again until the source restarts (SIGHUP)");
                } else {
                    tracing::warn!(service = %name, error = %e, "Consul read failed; keeping the last good instances");
                }
                entry.error = Some(failure);
                retry
            }
        }
    }

    /// The failure to report: a watch's before a read's, and one that
    /// parked something before one that is retried.
    fn failure(&self) -> Option<&Failure> {
        let reads = self
            .watched
            .iter()
            .filter_map(|s| self.known.get(s)?.error.as_ref());
        let mut all = self.watch_error.iter().chain(reads);
        let first = all.clone().next();
        all.find(|f| f.parked).or(first)
    }

    /// The state to publish: last good data everywhere, stale where the
    /// latest read or a watch failed.
    fn state(&self) -> SourceState {
        let watch_down = self.watch_error.as_ref().map(|f| &f.message);
        let mut services = BTreeMap::new();
        let mut missing = BTreeSet::new();
        for name in &self.watched {
            let Some(k) = self.known.get(name) else {
                missing.insert(name.clone());
                continue;
            };
            let Some(since) = k.last_ok else {
                missing.insert(name.clone());
                continue;
            };
            let freshness = match (k.error.as_ref().map(|f| &f.message), watch_down) {
                (Some(e), _) | (None, Some(e)) => Freshness::Stale {
                    since,
                    error: e.clone(),
                },
                (None, None) => Freshness::Fresh,
            };
            services.insert(
                name.clone(),
                ServiceEntry {
                    instances: k.instances.clone(),
                    freshness,
                },
            );
        }
        let health = if let Some(f) = self.failure() {
            SourceHealth::Degraded {
                reason: f.message.clone(),
                config_error: f.parked,
            }
        } else if self.watch_up.iter().all(|u| *u) && missing.is_empty() {
            SourceHealth::Healthy
        } else {
            SourceHealth::Starting
        };
        SourceState {
            catalog: Arc::new(Catalog::new(
                self.checks_index.max(self.services_index),
                services,
            )),
            missing,
            health,
        }
    }
}

/// Services whose health or membership differ between two check views:
/// the service a changed check belongs to, or for a node check, every
/// known service with an instance on that node.
fn changed_services(
    old: &CheckView,
    new: &CheckView,
    known: &BTreeMap<String, Known>,
) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut mark = |node: &str, service: &str| {
        if service.is_empty() {
            for (name, k) in known {
                if k.instances.iter().any(|i| i.node == node) {
                    out.insert(name.clone());
                }
            }
        } else {
            out.insert(service.to_string());
        }
    };
    for (key, value) in new {
        if old.get(key) != Some(value) {
            mark(&key.0, &value.0);
            if let Some(prev) = old.get(key) {
                mark(&key.0, &prev.0);
            }
        }
    }
    for (key, value) in old {
        if !new.contains_key(key) {
            mark(&key.0, &value.0);
        }
    }
    out
}

fn check_view(checks: Vec<HealthCheck>) -> CheckView {
    checks
        .into_iter()
        .map(|c| ((c.node, c.check_id), (c.service_name, c.status)))
        .collect()
}

fn watch_options(config: &SourceConfig) -> (QueryOptions, Pacing) {
    (
        QueryOptions {
            consistency: config.consistency,
            ..QueryOptions::default()
        },
        config.pacing.clone(),
    )
}

async fn watch_checks(client: Client, config: SourceConfig, tx: mpsc::Sender<Signal>) {
    let read =
        |client: Client, o: QueryOptions| async move { client.health_state("any", &o).await };
    watch_index(client, config, tx, Watch::Checks, read, |u| {
        Signal::Checks {
            outcome: u.outcome,
            index: u.meta.index,
            view: check_view(u.value),
        }
    })
    .await;
}

async fn watch_services(client: Client, config: SourceConfig, tx: mpsc::Sender<Signal>) {
    let read = |client: Client, o: QueryOptions| async move { client.catalog_services(&o).await };
    watch_index(client, config, tx, Watch::Services, read, |u| {
        Signal::Services {
            outcome: u.outcome,
            index: u.meta.index,
        }
    })
    .await;
}

/// One blocking query, repeated until the receiver is gone: `read` sends
/// it with this round's options, an answer whose index moved becomes the
/// signal `changed` builds, an unchanged index sends nothing, and a
/// failure (after the query's backoff) is [`Signal::Failed`] for `which`.
/// A failure asking again cannot fix is reported once, and the watch then
/// holds its sender without asking Consul anything until the source stops.
async fn watch_index<T, F, Fut>(
    client: Client,
    config: SourceConfig,
    tx: mpsc::Sender<Signal>,
    which: Watch,
    read: F,
    changed: impl Fn(Update<T>) -> Signal,
) where
    F: Fn(Client, QueryOptions) -> Fut,
    Fut: Future<Output = Result<Response<T>, Error>>,
{
    let (opts, pacing) = watch_options(&config);
    let backoff = Backoff::new(
        config.retry_base,
        config.retry_cap,
        0.5,
        fastrand::Rng::new(),
    );
    let mut q = BlockingQuery::new(opts, pacing, backoff, fastrand::Rng::new());
    loop {
        let sig = match q.next(|o| read(client.clone(), o)).await {
            Ok(u) if u.outcome == IndexOutcome::Unchanged => continue,
            Ok(u) => changed(u),
            Err(error) if !error.is_retryable() => {
                let failed = Signal::Failed {
                    watch: which,
                    error,
                };
                if tx.send(failed).await.is_ok() {
                    tx.closed().await;
                }
                return;
            }
            Err(error) => Signal::Failed {
                watch: which,
                error,
            },
        };
        if tx.send(sig).await.is_err() {
            return;
        }
    }
}

/// Reads `services` once, at most `concurrency` (clamped to
/// 1..=[`MAX_FETCH_CONCURRENCY`]) at a time, into a fresh [`Catalog`]: for
/// one-shot commands (`converge plan --consul`) that must not act on a
/// partial answer. Any failed read fails the whole call.
pub async fn read_catalog(
    client: &Client,
    services: &BTreeSet<String>,
    query: &HealthQuery,
    consistency: Consistency,
    concurrency: usize,
) -> Result<Catalog, Error> {
    let limit = concurrency.clamp(1, MAX_FETCH_CONCURRENCY);
    let opts = QueryOptions {
        consistency,
        ..QueryOptions::default()
    };
    let mut pending = services.iter().cloned();
    let mut running = JoinSet::new();
    let mut out = BTreeMap::new();
    let mut index = 0;
    loop {
        while running.len() < limit {
            let Some(name) = pending.next() else { break };
            let (client, query, opts) = (client.clone(), query.clone(), opts.clone());
            running.spawn(async move {
                let r = client.health_service(&name, &query, &opts).await;
                (name, r)
            });
        }
        let Some(joined) = running.join_next().await else {
            break;
        };
        let (name, result) = joined.map_err(|e| Error::Connect {
            endpoint: "/v1/health/service".into(),
            message: format!("read task failed: {e}"),
        })?;
        let resp = result?;
        index = index.max(resp.meta.index);
        out.insert(name, resp.value);
    }
    Ok(Catalog::fresh(index, out))
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn jittered(d: Duration, rng: &mut fastrand::Rng) -> Duration {
    d + d.mul_f64(0.1 * rng.f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::QueryMeta;
    use converge_model::Health;

    fn inst(id: &str, node: &str) -> Instance {
        Instance {
            id: id.into(),
            node: node.into(),
            address: "127.0.0.1".into(),
            port: 1,
            tags: Default::default(),
            meta: Default::default(),
            health: Health::Passing,
        }
    }

    fn view(entries: &[(&str, &str, &str, &str)]) -> CheckView {
        entries
            .iter()
            .map(|(node, id, svc, status)| {
                (
                    (node.to_string(), id.to_string()),
                    (svc.to_string(), status.to_string()),
                )
            })
            .collect()
    }

    fn known(pairs: &[(&str, &str)]) -> BTreeMap<String, Known> {
        let mut m: BTreeMap<String, Known> = BTreeMap::new();
        for (svc, node) in pairs {
            m.entry(svc.to_string())
                .or_default()
                .instances
                .push(inst("i", node));
        }
        m
    }

    #[test]
    fn a_status_flip_names_only_its_service() {
        let old = view(&[
            ("n1", "c-web", "web", "passing"),
            ("n1", "c-db", "db", "passing"),
        ]);
        let new = view(&[
            ("n1", "c-web", "web", "critical"),
            ("n1", "c-db", "db", "passing"),
        ]);
        let got = changed_services(&old, &new, &known(&[("web", "n1"), ("db", "n1")]));
        assert_eq!(got, BTreeSet::from(["web".to_string()]));
    }

    #[test]
    fn new_and_removed_checks_name_their_services() {
        let old = view(&[("n1", "c-web", "web", "passing")]);
        let new = view(&[("n1", "c-api", "api", "passing")]);
        let got = changed_services(&old, &new, &BTreeMap::new());
        assert_eq!(got, BTreeSet::from(["api".to_string(), "web".to_string()]));
    }

    #[test]
    fn a_node_check_names_every_service_on_that_node() {
        let old = view(&[
            ("n1", "serfHealth", "", "passing"),
            ("n2", "serfHealth", "", "passing"),
        ]);
        let new = view(&[
            ("n1", "serfHealth", "", "critical"),
            ("n2", "serfHealth", "", "passing"),
        ]);
        let got = changed_services(
            &old,
            &new,
            &known(&[("web", "n1"), ("db", "n2"), ("api", "n1")]),
        );
        assert_eq!(got, BTreeSet::from(["api".to_string(), "web".to_string()]));
    }

    #[test]
    fn unchanged_views_name_nothing() {
        let v = view(&[("n1", "c-web", "web", "passing")]);
        assert!(changed_services(&v, &v.clone(), &BTreeMap::new()).is_empty());
    }

    #[test]
    fn the_sources_client_fits_both_watches_and_the_fetch_pool() {
        for asked in [
            0,
            1,
            12,
            MAX_FETCH_CONCURRENCY,
            MAX_FETCH_CONCURRENCY + 1,
            1000,
        ] {
            let mut config = SourceConfig::new(["web"]);
            config.fetch_concurrency = asked;
            let consul = Config::new("127.0.0.1:1").expect("config");
            let client = config.client(consul).expect("client");
            assert_eq!(
                client.max_requests(),
                WATCHES + config.concurrency(),
                "fetch_concurrency {asked}"
            );
            assert!(
                2 * client.max_requests() <= crate::client::MAX_CONNECTIONS,
                "fetch_concurrency {asked}: requests and idle connections exceed the bound"
            );
        }
    }

    fn lp() -> Loop {
        let config = SourceConfig::new(["web", "db"]);
        Loop {
            client: Client::new(Config::new("127.0.0.1:1").expect("config")).expect("client"),
            watched: config.services.clone(),
            config,
            known: BTreeMap::new(),
            checks: None,
            checks_index: 0,
            services_index: 0,
            watch_up: [true, true],
            watch_error: None,
            need_full: false,
            dirty: BTreeSet::new(),
            ahead: BTreeSet::new(),
            retry: Backoff::for_consul(),
            retry_at: None,
            resync_at: Instant::now(),
            rng: fastrand::Rng::with_seed(1),
        }
    }

    #[tokio::test]
    async fn never_read_is_missing_not_empty_and_failures_keep_last_good() {
        let mut l = lp();
        let s = l.state();
        assert!(s.catalog.service("web").is_none());
        assert_eq!(s.missing.len(), 2);
        assert_eq!(s.health, SourceHealth::Starting);

        let since = SystemTime::now();
        l.known.insert(
            "web".into(),
            Known {
                instances: vec![inst("w1", "n1")],
                last_ok: Some(since),
                error: Some(Failure {
                    message: "cannot reach Consul".into(),
                    parked: false,
                }),
            },
        );
        let s = l.state();
        let web = s.catalog.service("web").expect("web kept");
        assert_eq!(web.instances.len(), 1, "last good instances are kept");
        assert!(matches!(&web.freshness, Freshness::Stale { since: t, .. } if *t == since));
        assert_eq!(s.missing, BTreeSet::from(["db".to_string()]));
    }

    #[tokio::test]
    async fn a_failed_watch_marks_everything_stale_and_degraded() {
        let mut l = lp();
        for name in ["web", "db"] {
            l.known.insert(
                name.into(),
                Known {
                    instances: vec![inst("x", "n1")],
                    last_ok: Some(SystemTime::now()),
                    error: None,
                },
            );
        }
        assert_eq!(l.state().health, SourceHealth::Healthy);
        l.on_signal(Signal::Failed {
            watch: Watch::Checks,
            error: Error::Connect {
                endpoint: "/v1/health/state/any".into(),
                message: "connection refused".into(),
            },
        });
        let s = l.state();
        assert!(matches!(
            s.health,
            SourceHealth::Degraded {
                config_error: false,
                ..
            }
        ));
        for e in s.catalog.services().values() {
            assert!(matches!(e.freshness, Freshness::Stale { .. }));
            assert_eq!(e.instances.len(), 1);
        }
        // While the watch is down, nothing is fetched (and nothing dropped).
        l.fetch().await;
        assert!(l.need_full, "recovery must refetch everything");
    }

    /// The checks watch answers with web passing (index 10); the read it
    /// triggers runs after web went critical (index 11); the next answer
    /// (index 12) has web passing again, the same as the first. Compared
    /// view to view nothing changed, but the catalog says critical: web
    /// must be read again, or the flip back is lost until something else
    /// changes.
    #[tokio::test]
    async fn a_read_past_its_check_view_is_read_again_at_the_next_view() {
        let checks = |l: &mut Loop, index: u64| {
            l.on_signal(Signal::Checks {
                outcome: IndexOutcome::Moved,
                index,
                view: view(&[("n1", "c-web", "web", "passing")]),
            });
        };
        let read = |index: u64, health: Health| {
            Ok(Response {
                value: vec![Instance {
                    health,
                    ..inst("w1", "n1")
                }],
                meta: QueryMeta {
                    index,
                    ..QueryMeta::default()
                },
            })
        };
        let mut l = lp();
        checks(&mut l, 10);
        l.dirty.clear();
        assert!(!l.record_read("web".into(), read(11, Health::Critical)));
        checks(&mut l, 12);
        assert_eq!(l.dirty, BTreeSet::from(["web".to_string()]));

        // A read no newer than the view it follows needs no second look.
        l.dirty.clear();
        assert!(!l.record_read("web".into(), read(12, Health::Passing)));
        checks(&mut l, 13);
        assert!(l.dirty.is_empty(), "{:?}", l.dirty);
    }

    fn denied(endpoint: &str) -> Error {
        Error::PermissionDenied {
            endpoint: endpoint.into(),
            message: "Permission denied: token lacks 'service:read'".into(),
        }
    }

    fn refused(endpoint: &str) -> Error {
        Error::Connect {
            endpoint: endpoint.into(),
            message: "connection refused".into(),
        }
    }

    fn assert_parked_reason(s: &SourceState, endpoint: &str) {
        match &s.health {
            SourceHealth::Degraded {
                reason,
                config_error,
            } => {
                assert!(*config_error, "{reason}");
                assert!(reason.contains(endpoint), "{reason}");
                assert!(reason.contains("not asked again"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_refused_read_is_not_retried_and_outranks_a_retryable_one() {
        let mut l = lp();
        l.known.insert(
            "web".into(),
            Known {
                instances: vec![inst("w1", "n1")],
                last_ok: Some(SystemTime::now()),
                error: Some(Failure::new(&denied("/v1/health/service/web"))),
            },
        );
        l.known.insert(
            "db".into(),
            Known {
                error: Some(Failure::new(&refused("/v1/health/service/db"))),
                ..Known::default()
            },
        );
        l.on_retry();
        assert_eq!(l.dirty, BTreeSet::from(["db".to_string()]));
        let s = l.state();
        assert_parked_reason(&s, "/v1/health/service/web");
        let web = s.catalog.service("web").expect("last good web kept");
        assert_eq!(web.instances.len(), 1);
        assert!(matches!(web.freshness, Freshness::Stale { .. }));
    }

    #[tokio::test]
    async fn a_refused_watch_stays_the_reported_failure() {
        let mut l = lp();
        for (watch, error) in [
            (Watch::Checks, denied("/v1/health/state/any")),
            (Watch::Services, refused("/v1/catalog/services")),
        ] {
            l.on_signal(Signal::Failed { watch, error });
        }
        assert_parked_reason(&l.state(), "/v1/health/state/any");
    }
}
