//! The source's one task: it owns everything the source knows, reads what
//! the watches say may have changed, and publishes a new [`SourceState`]
//! when the result differs from the last.
//!
//! In per-service mode each watch's answer is the service's data, and the
//! loop only keeps it. In shared mode the watches and the services list
//! only wake the loop; what it reads is decided from its own state (the
//! check views, what each read answered, which services are dirty, ahead
//! or parked), and a periodic resync refetches everything in case a signal
//! was missed. Keeping all of it in one `Loop` value, changed only by its
//! methods, lets the tests drive the loop signal by signal without Consul.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use converge_model::{Catalog, Freshness, Instance, ServiceEntry};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::blocking::IndexOutcome;
use crate::client::{Client, QueryOptions, Response};
use crate::error::{Error, Retry};

use super::checks::{changed_services, CheckView};
use super::known::{Failure, Known};
use super::settings::SourceConfig;
use super::state::{SourceHealth, SourceState};
use super::tasks::{Mode, Tasks};
use super::watches::{Signal, Watch};

/// Signals queued before a watch waits: room for a thousand per-service
/// watches to hand in their answers without waiting on the loop, which
/// takes all queued signals before it publishes once; beyond that a watch
/// waits until the loop has taken some (at start-up of a larger set).
const SIGNAL_QUEUE: usize = 1024;

/// The source's state and the loop's steps; see the module docs.
pub(super) struct Loop {
    pub(super) client: Client,
    pub(super) config: SourceConfig,
    pub(super) mode: Mode,
    pub(super) watched: BTreeSet<String>,
    pub(super) known: BTreeMap<String, Known>,
    /// The latest answer of each checks watch (critical, warning).
    pub(super) checks: [Option<CheckView>; 2],
    /// The index of each checks watch's latest answer.
    pub(super) checks_index: [u64; 2],
    /// Whether each shared watch (indexed by [`Watch`]) answered last time.
    pub(super) watch_up: [bool; 3],
    pub(super) watch_error: Option<Failure>,
    pub(super) need_full: bool,
    pub(super) dirty: BTreeSet<String>,
    /// Services whose latest read answered at an index past the check view
    /// it was compared against: the read may already hold a change that
    /// the next view, compared with the last one, shows as none (a check
    /// that flips and flips back between two answers of the watch). The
    /// next view reads them again.
    pub(super) ahead: BTreeSet<String>,
    pub(super) retry: Backoff,
    pub(super) retry_at: Option<Instant>,
    /// The slow pace at which refused reads are asked again.
    pub(super) refusals: Backoff,
    pub(super) refused_at: Option<Instant>,
    /// The refusal timer fired: the next fetch asks again for the services
    /// Consul refused.
    pub(super) refused_due: bool,
    pub(super) resync_at: Instant,
    pub(super) rng: fastrand::Rng,
    /// Moves with every change that can change what [`Loop::state`]
    /// returns (a read, a watch going down or up, the watched set, the
    /// mode). The loop builds and publishes a state only when it moved:
    /// building one copies every watched service, and a wake-up that
    /// changed nothing watched (an unwatched flip in shared mode) must
    /// cost next to nothing.
    pub(super) generation: u64,
}

pub(super) async fn run(
    client: Client,
    config: SourceConfig,
    state_tx: watch::Sender<SourceState>,
    mut services_rx: watch::Receiver<BTreeSet<String>>,
) {
    let (sig_tx, mut sig_rx) = mpsc::channel(SIGNAL_QUEUE);
    let mut tasks = Tasks::new(client.clone(), config.clone(), sig_tx);

    let mut rng = fastrand::Rng::new();
    let resync_at = Instant::now() + jittered(config.resync_interval, &mut rng);
    let mut lp = Loop {
        watched: services_rx.borrow_and_update().clone(),
        retry: config.retry_backoff(),
        refusals: config.refusal_backoff(),
        client,
        config,
        mode: Mode::Shared,
        known: BTreeMap::new(),
        checks: [None, None],
        checks_index: [0, 0],
        watch_up: [false; 3],
        watch_error: None,
        need_full: true,
        dirty: BTreeSet::new(),
        ahead: BTreeSet::new(),
        retry_at: None,
        refused_at: None,
        refused_due: false,
        resync_at,
        rng,
        generation: 0,
    };
    let capacity = learn_capacity(&mut lp, &state_tx).await;
    lp.follow(&mut tasks, capacity);

    let mut published = u64::MAX;
    loop {
        let (retry_at, refused_at) = (lp.retry_at, lp.refused_at);
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
                lp.follow(&mut tasks, capacity);
            }
            _ = tokio::time::sleep_until(lp.resync_at) => {
                lp.need_full = true;
                lp.resync_at = Instant::now() + jittered(lp.config.resync_interval, &mut lp.rng);
            }
            _ = sleep_until_opt(retry_at) => lp.on_retry(),
            _ = sleep_until_opt(refused_at) => lp.on_refused_retry(),
        }
        lp.fetch().await;
        lp.pace_refusals();
        if lp.generation != published {
            published = lp.generation;
            publish(&state_tx, lp.state());
        }
    }
}

/// Sends `next` to subscribers if it differs from the current state.
fn publish(state_tx: &watch::Sender<SourceState>, next: SourceState) {
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

/// How many long polls the client can hold at once (for an `https` agent
/// this asks whether it speaks HTTP/2). Until the agent answers, the
/// failure is published as a watch failure and asked again with the
/// retry backoff.
async fn learn_capacity(lp: &mut Loop, state_tx: &watch::Sender<SourceState>) -> usize {
    loop {
        match lp.client.capacity().await {
            Ok(capacity) => {
                lp.retry.reset();
                return capacity;
            }
            Err(error) => {
                lp.on_signal(Signal::Failed {
                    watch: Watch::Critical,
                    error,
                });
                publish(state_tx, lp.state());
                tokio::time::sleep(lp.retry.next_delay()).await;
            }
        }
    }
}

impl Loop {
    pub(super) fn on_signal(&mut self, sig: Signal) {
        let before = (self.watch_up, self.watch_error.is_some());
        match sig {
            Signal::Checks {
                watch,
                outcome,
                index,
                view,
            } => {
                let i = watch as usize;
                self.watch_up[i] = true;
                self.checks_index[i] = index;
                self.dirty.append(&mut self.ahead);
                match (&self.checks[i], outcome) {
                    (Some(old), IndexOutcome::Moved | IndexOutcome::Unchanged) => {
                        let changed = changed_services(old, &view, &self.known);
                        self.dirty.extend(changed);
                    }
                    _ => self.need_full = true,
                }
                self.checks[i] = Some(view);
            }
            Signal::Service { name, result } => {
                // A task stopped after it sent is no longer watched.
                if self.watched.contains(&name) {
                    self.record_read(name, result);
                }
            }
            Signal::Services { outcome } => {
                self.watch_up[Watch::Services as usize] = true;
                if outcome.may_have_changed() {
                    self.need_full = true;
                }
            }
            Signal::Failed { watch, error } => {
                self.generation += 1;
                let failure = Failure::new(&error, self.config.refused_retry_cap);
                match failure.retry {
                    Retry::Soon => {
                        tracing::warn!(?watch, %error, "Consul watch failed; keeping the last good catalog")
                    }
                    Retry::Slowly => {
                        tracing::error!(?watch, %error, "Consul refused the watch; keeping the last good catalog and asking again slowly")
                    }
                    Retry::Never => {
                        tracing::error!(?watch, %error, "Consul rejected the watch; keeping the last good catalog and not asking again until the source restarts (SIGHUP)")
                    }
                }
                self.watch_up[watch as usize] = false;
                if watch != Watch::Services {
                    self.checks[watch as usize] = None;
                }
                self.need_full = true;
                // A refusal is what an operator must act on, so a network
                // fault of the other watch does not hide it.
                if self.watch_error.as_ref().is_none_or(|f| !f.config_error()) {
                    self.watch_error = Some(failure);
                }
            }
        }
        if self.watch_up.iter().all(|u| *u) {
            self.watch_error = None;
        }
        if (self.watch_up, self.watch_error.is_some()) != before {
            self.generation += 1;
        }
    }

    /// The retry timer: reads again every service whose latest read failed
    /// in a way waiting can fix, and every one never read.
    pub(super) fn on_retry(&mut self) {
        self.retry_at = None;
        let failed = self.known.iter().filter(|(_, k)| match &k.error {
            Some(f) => f.retry == Retry::Soon,
            None => k.last_ok.is_none(),
        });
        let failed: Vec<String> = failed.map(|(n, _)| n.clone()).collect();
        self.dirty.extend(failed);
        let unread = self.watched.iter().filter(|s| !self.known.contains_key(*s));
        let unread: Vec<String> = unread.cloned().collect();
        self.dirty.extend(unread);
    }

    /// The refusal timer: the next fetch reads again every service whose
    /// latest read Consul refused.
    pub(super) fn on_refused_retry(&mut self) {
        self.refused_at = None;
        self.refused_due = true;
        let refused = self.refused().cloned().collect::<Vec<_>>();
        self.dirty.extend(refused);
    }

    /// Watched services whose latest read Consul refused.
    fn refused(&self) -> impl Iterator<Item = &String> {
        self.watched.iter().filter(|s| {
            self.known
                .get(*s)
                .and_then(|k| k.error.as_ref())
                .is_some_and(|f| f.retry == Retry::Slowly)
        })
    }

    /// Keeps the refusal timer in step with what is refused: armed at the
    /// next slow delay while a watched service is refused and it is not
    /// already waiting, disarmed (and the pace reset) once none is. A
    /// service that is still refused when the timer fires makes the next
    /// delay longer.
    pub(super) fn pace_refusals(&mut self) {
        // Per-service watches pace their own refusals.
        if self.refused().next().is_none() || self.mode == Mode::PerService {
            self.refusals.reset();
            self.refused_at = None;
        } else if self.refused_at.is_none() && !self.refused_due {
            self.refused_at = Some(Instant::now() + self.refusals.next_delay());
        }
    }

    /// Whether `service` is not to be read now: Consul rejected its read
    /// for good, or refused it and the refusal timer has not fired.
    fn is_held(&self, service: &str) -> bool {
        let failure = self.known.get(service).and_then(|k| k.error.as_ref());
        match failure.map(|f| f.retry) {
            Some(Retry::Never) => true,
            Some(Retry::Slowly) => !self.refused_due,
            Some(Retry::Soon) | None => false,
        }
    }

    /// Watches the way that fits the watched set (see [`Mode::for_count`]),
    /// switching when a new set crosses the limit.
    fn follow(&mut self, tasks: &mut Tasks, capacity: usize) {
        let mode = Mode::for_count(self.watched.len(), capacity);
        if mode != self.mode {
            self.enter(mode);
        }
        tasks.sync(mode, &self.watched);
    }

    /// Switches what the loop expects to hear: per-service watches report
    /// their own failures, so the shared watches count as up; shared
    /// watches start again from nothing, and their first answers refetch
    /// everything.
    pub(super) fn enter(&mut self, mode: Mode) {
        self.generation += 1;
        self.mode = mode;
        self.checks = [None, None];
        self.ahead.clear();
        self.dirty.clear();
        match mode {
            Mode::PerService => {
                self.watch_up = [true; 3];
                self.watch_error = None;
                self.need_full = false;
            }
            Mode::Shared => {
                self.watch_up = [false; 3];
                self.need_full = true;
            }
        }
    }

    fn set_watched(&mut self, new: BTreeSet<String>) {
        self.generation += 1;
        self.known.retain(|name, _| new.contains(name));
        self.dirty.retain(|name| new.contains(name));
        for name in new.difference(&self.watched) {
            self.dirty.insert(name.clone());
        }
        self.watched = new;
    }

    /// Reads every dirty service (all of them after a full-refetch
    /// trigger), at most `fetch_concurrency` at a time, except those held
    /// by a refusal (until the refusal timer fires) or by a request Consul
    /// rejects for good. Does nothing while a
    /// watch is down: the reads would fail too, and the watch's recovery
    /// triggers one full refetch. In per-service mode the watches are the
    /// reads, so there is never anything to fetch.
    pub(super) async fn fetch(&mut self) {
        if self.mode == Mode::PerService {
            self.dirty.clear();
            self.need_full = false;
            return;
        }
        if !self.watch_up.iter().all(|u| *u) {
            return;
        }
        if self.need_full {
            self.need_full = false;
            self.dirty.extend(self.watched.iter().cloned());
        }
        let todo: Vec<String> = std::mem::take(&mut self.dirty)
            .into_iter()
            .filter(|s| self.watched.contains(s) && !self.is_held(s))
            .collect();
        self.refused_due = false;
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
            .any(|k| k.error.as_ref().is_some_and(|f| f.retry == Retry::Soon))
        {
            self.retry.reset();
            self.retry_at = None;
        }
    }

    /// Keeps what one read of `name` answered; `true` when it failed in a
    /// way that asking again soon can fix (a refusal is paced by
    /// [`Loop::pace_refusals`]).
    pub(super) fn record_read(
        &mut self,
        name: String,
        result: Result<Response<Vec<Instance>>, Error>,
    ) -> bool {
        self.generation += 1;
        let entry = self.known.entry(name.clone()).or_default();
        match result {
            Ok(resp) => {
                entry.instances = resp.value;
                entry.instances.sort();
                entry.last_ok = Some(SystemTime::now());
                entry.error = None;
                entry.index = resp.meta.index;
                // A per-service answer has no check view to be ahead of;
                // a read past either checks view may hide a flip back.
                let behind = self.checks_index.iter().min().copied().unwrap_or(0);
                if self.mode == Mode::Shared && resp.meta.index > behind {
                    self.ahead.insert(name);
                } else {
                    self.ahead.remove(&name);
                }
                false
            }
            Err(e) => {
                let failure = Failure::new(&e, self.config.refused_retry_cap);
                match failure.retry {
                    Retry::Soon => {
                        tracing::warn!(service = %name, error = %e, "Consul read failed; keeping the last good instances")
                    }
                    Retry::Slowly => {
                        tracing::error!(service = %name, error = %e, "Consul refused the read; keeping the last good instances and asking again slowly")
                    }
                    Retry::Never => {
                        tracing::error!(service = %name, error = %e, "Consul rejected the read; keeping the last good instances and not asking again until the source restarts (SIGHUP)")
                    }
                }
                let soon = failure.retry == Retry::Soon;
                entry.error = Some(failure);
                soon
            }
        }
    }

    /// The failure to report: a watch's before a read's, and a
    /// configuration error (a refusal) before a fault waiting fixes.
    fn failure(&self) -> Option<&Failure> {
        let reads = self
            .watched
            .iter()
            .filter_map(|s| self.known.get(s)?.error.as_ref());
        let mut all = self.watch_error.iter().chain(reads);
        let first = all.clone().next();
        all.find(|f| f.config_error()).or(first)
    }

    /// The state to publish: last good data everywhere, stale where the
    /// latest read or a watch failed.
    pub(super) fn state(&self) -> SourceState {
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
                config_error: f.config_error(),
            }
        } else if self.watch_up.iter().all(|u| *u) && missing.is_empty() {
            SourceHealth::Healthy
        } else {
            SourceHealth::Starting
        };
        // The index of the newest read, not of the watches: a watch moved
        // by an unwatched change must not make a new snapshot.
        let index = self.known.values().map(|k| k.index).max().unwrap_or(0);
        SourceState {
            catalog: Arc::new(Catalog::new(index, services)),
            missing,
            health,
        }
    }
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
