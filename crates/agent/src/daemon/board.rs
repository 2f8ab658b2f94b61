//! What the daemon knows about itself, for `/status`, `/metrics` and logs.
//!
//! One [`Board`] is shared by the reconcile loop (the only writer) and the
//! HTTP handlers (readers). Counters are Prometheus types from
//! `prometheus-client`; the JSON status is a plain serializable struct.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

use crate::follow::Following;
use crate::guard::Hold;
use crate::revision::Revision;

/// Per-target state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TargetStatus {
    /// SHA-256 of the last content rendered for it.
    pub sha256: Option<String>,
    /// Unix time of the last commit.
    pub last_apply: Option<u64>,
    /// Latest failure, cleared by the next success.
    pub last_error: Option<String>,
    /// What the last pass did to it: `applied`, `unchanged`, `rejected`,
    /// `failed`, `rolled_back`, `drifted` (the live file differed from
    /// what the same render gave before, so someone changed it; it was put
    /// back), or `held` (applied or unchanged, but a hold keeps part of
    /// the catalog's change out of it: see `held_by`).
    #[serde(default)]
    pub outcome: Option<String>,
    /// Unix time the live file was last found changed by hand (and put
    /// back).
    #[serde(default)]
    pub last_drift: Option<u64>,
    /// The held backends and databases that keep this target from the
    /// render the catalog asks for (its outcome is then `held`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held_by: Vec<String>,
}

/// Per-backend state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BackendStatus {
    /// Servers in the snapshot that was rendered.
    pub servers: usize,
    /// The change held back, if any.
    pub held: Option<Hold>,
}

/// The JSON `/status` document.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Status {
    /// Node name.
    pub node: String,
    /// Revision of the desired state in force: the Git commit of the
    /// manifests (`abc1234`, `abc1234-dirty`) or a content hash
    /// (`sha256:…`); absent until inputs first load.
    #[serde(default)]
    pub revision: Option<Revision>,
    /// Last reconcile applied everything with no error and no hold.
    pub converged: bool,
    /// `file` or `consul`, and whether it is healthy.
    pub source: String,
    /// Source trouble, if any (last good snapshot stays in force).
    pub source_error: Option<String>,
    /// Manifest/template/render error, if the latest load failed (the
    /// previous desired state stays in force).
    pub input_error: Option<String>,
    /// Unix time of the last reconcile.
    pub last_reconcile: Option<u64>,
    /// Unix time of the last fully successful reconcile.
    pub last_success: Option<u64>,
    /// Per target.
    pub targets: BTreeMap<String, TargetStatus>,
    /// Per backend.
    pub backends: BTreeMap<String, BackendStatus>,
    /// Every change held back by the guard (backends and databases).
    pub holds: Vec<Hold>,
    /// Instances left out and render warnings of the last pass, as lines.
    pub findings: Vec<String>,
    /// Catalog instances the last pass left out, and why.
    #[serde(default)]
    pub left_out: Vec<converge_model::Rejection>,
    /// Per PgBouncer database: the primary the catalog as read names, the
    /// hosts the last pass rendered, and whether the guard held it.
    #[serde(default)]
    pub databases: BTreeMap<String, super::primaries::DatabaseStatus>,
    /// PgBouncer databases paused while their primary is unclear, and
    /// those whose pause timed out or failed while it still is.
    #[serde(default)]
    pub pauses: BTreeMap<String, super::pauses::PauseStatus>,
    /// Consul's index of the catalog snapshot the last pass rendered (0
    /// for a catalog file).
    #[serde(default)]
    pub catalog_index: u64,
    /// With `--published`: the fleet's desired revision, and why this node
    /// does not run it, when it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<Following>,
}

/// Lowercase hex SHA-256, how status reports what a target holds.
pub fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Labels of the failure counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Stage {
    /// `load`, `catalog`, `render`, `validate`, `reload`, `apply`, `pause`
    /// (a PgBouncer `PAUSE`/`RESUME` for an unclear primary).
    pub stage: String,
}

/// Every stage a failure is counted at, so each series exists (at zero)
/// from the daemon's start: an alert on `increase(...)` needs a series to
/// increase from.
pub const STAGES: [&str; 7] = [
    "load", "catalog", "render", "validate", "reload", "apply", "pause",
];

/// Labels of the per-target series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabel {
    /// Target name, as the manifests name it.
    pub target: String,
}

/// Labels of `converge_revision_info`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RevisionInfo {
    revision: String,
}

/// Labels of `converge_build_info`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildInfo {
    version: String,
}

/// Buckets for durations from a millisecond to a minute.
fn duration_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.001, 2.5, 14)
}

/// Prometheus metrics.
#[derive(Debug)]
pub struct Metrics {
    /// Reconcile passes.
    pub reconciles: Counter,
    /// Successful renders.
    pub renders: Counter,
    /// Bundles whose program was reloaded.
    pub reloads: Counter,
    /// Bundles whose membership change HAProxy took over its runtime API,
    /// with no reload.
    pub runtime_api_updates: Counter,
    /// Failures by stage.
    pub failures: Family<Stage, Counter>,
    /// Changes the guard started holding (a hold that lasts several
    /// passes counts once).
    pub guard_holds: Counter,
    /// Backends held right now.
    pub held_backends: Gauge,
    /// Catalog instances the last pass left out.
    pub left_out_instances: Gauge,
    /// Rollbacks that could not put every file back (the node may run a
    /// mix of old and new files: page someone).
    pub incomplete_rollbacks: Counter,
    /// Times the catalog source started failing (one failure lasting
    /// several passes counts once).
    pub source_errors: Counter,
    /// Seconds since the snapshot in force was last known current: 0 while
    /// the source is healthy (it follows the catalog as it changes),
    /// growing while it fails (set at scrape).
    pub snapshot_age_seconds: Gauge<f64, AtomicU64>,
    /// Unix time of the last fully successful reconcile.
    pub last_success_seconds: Gauge,
    /// 1 when the last pass left the node at its desired state, else 0
    /// (the same verdict as `/status` `converged`).
    pub converged: Gauge,
    /// Seconds one pass took, from source read to the last reload.
    pub pass_seconds: Histogram,
    /// Seconds a bundle's validators took.
    pub validate_seconds: Histogram,
    /// Seconds a bundle's reload took (with its rollback, if it failed).
    pub reload_seconds: Histogram,
    /// Failed applies per target (rejected, failed or rolled back).
    pub target_failures: Family<TargetLabel, Counter>,
    /// Unix time each target was last applied or found unchanged.
    pub target_last_success: Family<TargetLabel, Gauge>,
    /// PgBouncer databases paused while their primary was unclear.
    pub pgbouncer_pauses: Counter,
    /// Those pauses that ran out their limit and were resumed at the last
    /// primary, the primary still unclear.
    pub pgbouncer_pause_timeouts: Counter,
    /// PgBouncer databases paused now.
    pub pgbouncer_paused: Gauge,
    /// Live files found changed by hand and put back.
    pub drift_corrections: Counter,
    /// 1 while `converge fleet pause` keeps this node from taking the
    /// desired revision.
    pub rollout_paused: Gauge,
    /// Requests the follower and the report writer sent to Consul (read
    /// from their client at each scrape).
    fleet_requests: Gauge,
    /// 1 for the revision in force (one series at a time).
    revision_info: Family<RevisionInfo, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let histogram = || Histogram::new(duration_buckets());
        Self {
            reconciles: Counter::default(),
            renders: Counter::default(),
            reloads: Counter::default(),
            runtime_api_updates: Counter::default(),
            failures: Family::default(),
            guard_holds: Counter::default(),
            held_backends: Gauge::default(),
            left_out_instances: Gauge::default(),
            incomplete_rollbacks: Counter::default(),
            source_errors: Counter::default(),
            snapshot_age_seconds: Gauge::default(),
            last_success_seconds: Gauge::default(),
            converged: Gauge::default(),
            pass_seconds: histogram(),
            validate_seconds: histogram(),
            reload_seconds: histogram(),
            target_failures: Family::default(),
            target_last_success: Family::default(),
            pgbouncer_pauses: Counter::default(),
            pgbouncer_pause_timeouts: Counter::default(),
            pgbouncer_paused: Gauge::default(),
            drift_corrections: Counter::default(),
            rollout_paused: Gauge::default(),
            fleet_requests: Gauge::default(),
            revision_info: Family::default(),
        }
    }
}

/// Shared state of one daemon.
#[derive(Debug)]
pub struct Board {
    status: Mutex<Status>,
    snapshot: Mutex<Snapshot>,
    /// The fleet's Consul client, whose request count is read at each
    /// scrape, with `--published`.
    fleet_client: Mutex<Option<converge_consul::Client>>,
    /// Counters and gauges.
    pub metrics: Metrics,
    /// What the daemon did and when, for `GET /events`.
    pub events: super::events::Events,
    registry: Registry,
}

impl Board {
    // Long on purpose: one registration per metric, each with its help text;
    // a list to read down, not logic.
    /// A board for `node`, reading from `source` (`file` or `consul`).
    pub fn new(node: &str, source: &str) -> Arc<Self> {
        let metrics = Metrics::default();
        let mut registry = Registry::with_prefix("converge");
        let m = &metrics;
        registry.register("reconciles", "Reconcile passes", m.reconciles.clone());
        registry.register("renders", "Successful renders", m.renders.clone());
        registry.register(
            "reloads",
            "Program reloads after a commit",
            m.reloads.clone(),
        );
        registry.register(
            "runtime_api_updates",
            "Membership changes applied through the HAProxy runtime API instead of a reload",
            m.runtime_api_updates.clone(),
        );
        registry.register("failures", "Failures by stage", m.failures.clone());
        registry.register(
            "guard_holds",
            "Changes the guard started holding back",
            m.guard_holds.clone(),
        );
        registry.register(
            "held_backends",
            "Backends whose change is held now",
            m.held_backends.clone(),
        );
        registry.register(
            "left_out_instances",
            "Catalog instances the last pass left out (a value that could break out of its field, or a duplicated identity)",
            m.left_out_instances.clone(),
        );
        registry.register(
            "incomplete_rollbacks",
            "Rollbacks that could not restore every file of their bundle",
            m.incomplete_rollbacks.clone(),
        );
        registry.register(
            "source_errors",
            "Times the catalog source started failing",
            m.source_errors.clone(),
        );
        registry.register(
            "snapshot_age_seconds",
            "Seconds since the catalog snapshot in force was last known current",
            m.snapshot_age_seconds.clone(),
        );
        registry.register(
            "last_success_timestamp_seconds",
            "Unix time of the last fully successful reconcile",
            m.last_success_seconds.clone(),
        );
        registry.register(
            "converged",
            "1 when the last pass left the node at its desired state",
            m.converged.clone(),
        );
        registry.register(
            "pass_duration_seconds",
            "Seconds one reconcile pass took",
            m.pass_seconds.clone(),
        );
        registry.register(
            "validate_duration_seconds",
            "Seconds a bundle's validators took",
            m.validate_seconds.clone(),
        );
        registry.register(
            "reload_duration_seconds",
            "Seconds a bundle's reload took, with its rollback if it failed",
            m.reload_seconds.clone(),
        );
        registry.register(
            "target_failures",
            "Applies of a target that were rejected, failed or rolled back",
            m.target_failures.clone(),
        );
        registry.register(
            "target_last_success_timestamp_seconds",
            "Unix time the target was last applied or found unchanged",
            m.target_last_success.clone(),
        );
        registry.register(
            "pgbouncer_pauses",
            "PgBouncer databases paused while their primary was unclear",
            m.pgbouncer_pauses.clone(),
        );
        registry.register(
            "pgbouncer_pause_timeouts",
            "Pauses that ran out their limit and resumed at the last primary, still unclear",
            m.pgbouncer_pause_timeouts.clone(),
        );
        registry.register(
            "pgbouncer_paused_databases",
            "PgBouncer databases paused now",
            m.pgbouncer_paused.clone(),
        );
        registry.register(
            "drift_corrections",
            "Live files found different from what their unchanged render gave before (edited by hand) and put back",
            m.drift_corrections.clone(),
        );
        registry.register(
            "rollout_paused",
            "1 while converge fleet pause keeps this node from taking the desired revision (--published)",
            m.rollout_paused.clone(),
        );
        registry.register(
            "fleet_consul_requests",
            "Requests sent so far to Consul by the follower of the published revision and the node report writer (--published)",
            m.fleet_requests.clone(),
        );
        let build = Family::<BuildInfo, Gauge>::default();
        build
            .get_or_create(&BuildInfo {
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .set(1);
        registry.register("build_info", "converge's version", build);
        registry.register(
            "revision_info",
            "The revision of the manifests and templates in force",
            m.revision_info.clone(),
        );
        for stage in STAGES {
            let _ = m.failures.get_or_create(&Stage {
                stage: stage.to_string(),
            });
        }
        Arc::new(Self {
            status: Mutex::new(Status {
                node: node.to_string(),
                source: source.to_string(),
                ..Status::default()
            }),
            snapshot: Mutex::new(Snapshot {
                current: false,
                at: Instant::now(),
            }),
            fleet_client: Mutex::new(None),
            metrics,
            events: super::events::Events::default(),
            registry,
        })
    }

    /// From now on `converge_fleet_consul_requests` counts the requests
    /// of `client` (and its clones).
    pub fn count_fleet_requests(&self, client: converge_consul::Client) {
        *self
            .fleet_client
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(client);
    }

    /// A copy of the status.
    pub fn status(&self) -> Status {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Changes the status under its lock; `converge_converged` follows the
    /// status's verdict, whoever changed it.
    pub fn update(&self, f: impl FnOnce(&mut Status)) {
        let mut status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut status);
        self.metrics.converged.set(i64::from(status.converged));
        let paused = status
            .published
            .as_ref()
            .and_then(|p| p.waiting.as_ref())
            .is_some_and(|w| matches!(w, crate::rollout::Waiting::Paused { .. }));
        self.metrics.rollout_paused.set(i64::from(paused));
    }

    /// The revision in force: `/status` `revision`, and
    /// `converge_revision_info{revision="…"} 1` as its only series.
    pub fn revision(&self, revision: Option<&Revision>) {
        let mut status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        if status.revision.as_ref() == revision {
            return;
        }
        if let Some(old) = status.revision.take() {
            self.metrics.revision_info.remove(&RevisionInfo {
                revision: old.to_string(),
            });
        }
        if let Some(new) = revision {
            self.metrics
                .revision_info
                .get_or_create(&RevisionInfo {
                    revision: new.to_string(),
                })
                .set(1);
        }
        status.revision = revision.cloned();
    }

    /// Records how the source answered this pass: `true` when the
    /// snapshot in force is current, `false` when it is the last good one.
    pub fn snapshot_current(&self, current: bool) {
        let mut s = self.snapshot.lock().unwrap_or_else(PoisonError::into_inner);
        if current || s.current {
            // Current now, or until this pass found the source failing.
            s.at = Instant::now();
        }
        s.current = current;
    }

    /// Prometheus text exposition.
    pub fn metrics_text(&self) -> String {
        let snapshot = *self.snapshot.lock().unwrap_or_else(PoisonError::into_inner);
        let age = if snapshot.current {
            0.0
        } else {
            snapshot.at.elapsed().as_secs_f64()
        };
        self.metrics.snapshot_age_seconds.set(age);
        if let Some(client) = &*self
            .fleet_client
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
        {
            let sent = i64::try_from(client.requests_sent()).unwrap_or(i64::MAX);
            self.metrics.fleet_requests.set(sent);
        }
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Makes each target's series exist (at zero) before its first apply.
    pub fn targets(&self, targets: impl IntoIterator<Item = String>) {
        for target in targets {
            let label = TargetLabel { target };
            let _ = self.metrics.target_failures.get_or_create(&label);
            let _ = self.metrics.target_last_success.get_or_create(&label);
        }
    }

    /// Counts a failure at `stage`.
    pub fn fail(&self, stage: &str) {
        self.metrics
            .failures
            .get_or_create(&Stage {
                stage: stage.to_string(),
            })
            .inc();
    }
}

/// Whether the snapshot in force is current, and since when it is not.
#[derive(Debug, Clone, Copy)]
struct Snapshot {
    current: bool,
    /// When it was last known current; while no source answer was ever
    /// current, when the board was made (the daemon's start), so that a
    /// source failing from the start shows an age that grows.
    at: Instant,
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
