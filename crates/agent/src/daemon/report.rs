//! The one place a daemon pass reports: status, metrics and log are each
//! written here, once per event, so a caller never logs what it also puts
//! in the status and no layer counts the same failure twice.
//!
//! Trouble is counted when it starts, not on every pass it lasts: a
//! source failing for an hour is one `converge_source_errors_total`, a
//! hold lasting a hundred passes one `converge_guard_holds_total`, and a
//! left-out instance is logged when it first appears.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use converge_apply::{ApplyReport, Outcome, ReloadOutcome};
use converge_consul::SourceHealth;
use converge_model::{Catalog, Manifest, RenderedSet};

use super::board::{hex_sha256, unix_now, BackendStatus, Board, TargetLabel};
use super::events::{unix_ms, unix_ms_before, EventKind};
use super::pauses::{PauseEvent, PauseState, PauseStatus};
use super::primaries::DatabaseStatus;
use crate::guard::Hold;
use crate::revision::Revision;

/// The board, and what was reported last, to tell starts from repeats.
pub struct Reporter {
    board: Arc<Board>,
    /// Left-out instances and warnings of the last pass, as logged.
    findings: Vec<String>,
    /// Whether the source was failing at the last pass.
    source_failing: bool,
    /// Per target, the SHA-256 of the content last known live (applied
    /// or found unchanged), to tell drift from a new render.
    live: BTreeMap<String, String>,
    /// When this pass rendered (Unix ms): an event only if the pass goes
    /// on to change something, so no-op passes leave the ring alone.
    rendered_at: Option<u64>,
}

impl Reporter {
    /// A reporter writing to `board`.
    pub fn new(board: Arc<Board>) -> Self {
        Self {
            board,
            findings: Vec::new(),
            source_failing: false,
            live: BTreeMap::new(),
            rendered_at: None,
        }
    }

    /// A pass ended, after `took`.
    pub fn pass_finished(&self, took: Duration) {
        self.board.metrics.pass_seconds.observe(took.as_secs_f64());
    }

    /// The targets this node renders, so their series exist from the start.
    pub fn targets(&self, targets: impl IntoIterator<Item = String>) {
        self.board.targets(targets);
    }

    /// The revision of the desired state in force (the last inputs that
    /// loaded cleanly).
    pub fn revision(&self, revision: Option<&Revision>) {
        self.board.revision(revision);
    }

    /// A pass starts.
    pub fn pass_started(&self) {
        self.board.metrics.reconciles.inc();
        self.board.update(|s| s.last_reconcile = Some(unix_now()));
    }

    /// The pass rendered.
    pub fn rendered(&mut self) {
        self.board.metrics.renders.inc();
        self.rendered_at = Some(unix_ms(SystemTime::now()));
    }

    /// A pass ends before applying anything (no inputs or no snapshot yet,
    /// or a failure already reported).
    pub fn not_converged(&self) {
        self.board.update(|s| s.converged = false);
    }

    /// Manifests and templates loaded (`None`) or failed to load, with
    /// the previous desired state kept.
    pub fn inputs(&self, error: Option<String>) {
        if let Some(msg) = &error {
            tracing::error!(error = %msg, "manifests or templates are invalid; keeping the previous desired state");
            self.board.fail("load");
        }
        self.board.update(|s| s.input_error = error);
    }

    /// A node following the published revision has none on disk yet:
    /// nothing to render until the follower installs one. Said once in
    /// the log, kept in the status.
    pub fn waiting_for_revision(&self) {
        const WAITING: &str = "no published revision on this node yet; waiting for the first one";
        let mut first = false;
        self.board.update(|s| {
            first = s.input_error.as_deref() != Some(WAITING);
            s.input_error = Some(WAITING.to_string());
        });
        if first {
            tracing::info!("{WAITING}");
        }
    }

    /// The pass could not render; live files unchanged.
    pub fn render_failed(&self, msg: String) {
        tracing::error!(error = %msg, "render failed; live files unchanged");
        self.board.fail("render");
        self.board.update(|s| {
            s.input_error = Some(msg);
            s.converged = false;
        });
    }

    /// The transaction could not start; live files unchanged.
    pub fn apply_failed(&self, msg: String) {
        tracing::error!(error = %msg, "apply could not start");
        self.board.fail("apply");
        self.not_converged();
    }

    /// The source's condition: a failure is counted when it starts, and
    /// the snapshot age runs only while the source fails.
    pub fn source(&mut self, health: SourceHealth) {
        let (error, failing) = match health {
            SourceHealth::Healthy => (None, false),
            SourceHealth::Starting => (
                Some("waiting for the first answer from Consul".to_string()),
                false,
            ),
            SourceHealth::Degraded { reason, .. } => (Some(reason), true),
        };
        if failing && !self.source_failing {
            self.board.metrics.source_errors.inc();
            self.board.fail("catalog");
        }
        if !failing && self.source_failing {
            tracing::info!("catalog source recovered; following it again");
        }
        self.source_failing = failing;
        self.board.snapshot_current(error.is_none());
        self.board.update(|s| s.source_error = error);
    }

    /// The holds of this pass and each backend's servers; a hold is logged
    /// and counted when it starts.
    pub fn holds(&self, manifest: &Manifest, catalog: &Catalog, holds: &[Hold]) {
        let mut before = Vec::new();
        self.board.update(|s| before.clone_from(&s.holds));
        let new: Vec<&Hold> = holds
            .iter()
            .filter(|h| !before.iter().any(|b| b.backend == h.backend))
            .collect();
        for h in &new {
            tracing::warn!(backend = %h.backend, before = h.before, after = h.after, "change held: {}", h.reason);
        }
        for ended in before
            .iter()
            .filter(|b| !holds.iter().any(|h| h.backend == b.backend))
        {
            tracing::info!(backend = %ended.backend, "hold ended: the catalog recovered or the operator released it");
        }
        for h in &new {
            self.board.events.record(EventKind::Held, &h.backend);
        }
        self.board.metrics.guard_holds.inc_by(new.len() as u64);
        self.board.metrics.held_backends.set(holds.len() as i64);
        self.board.update(|s| {
            s.holds = holds.to_vec();
            s.backends = manifest
                .backends
                .iter()
                .map(|(name, b)| {
                    let servers = catalog
                        .service(&b.service)
                        .map(|e| e.instances.iter().filter(|i| b.serves(i)).count())
                        .unwrap_or(0);
                    let held = holds.iter().find(|h| &h.backend == name).cloned();
                    (name.clone(), BackendStatus { servers, held })
                })
                .collect();
        });
    }

    /// The catalog index the pass rendered.
    pub fn catalog_index(&self, index: u64) {
        self.board.update(|s| s.catalog_index = index);
    }

    /// Each database's primary as the catalog names it and its hosts as
    /// rendered.
    pub fn databases(&self, databases: BTreeMap<String, DatabaseStatus>) {
        self.board.update(|s| s.databases = databases);
    }

    /// A PAUSE or RESUME sent in the event ring, for a drill's timeline.
    fn pause_event(&self, e: &PauseEvent) {
        let (kind, database, why) = match e {
            PauseEvent::Paused { database, .. } => (EventKind::Pause, database, ""),
            PauseEvent::Resumed { database, .. } => (EventKind::Resume, database, ""),
            PauseEvent::TimedOut { database, .. } => (EventKind::Resume, database, " (timed out)"),
            PauseEvent::LeftOver { database } => (EventKind::Resume, database, " (left over)"),
            PauseEvent::Shutdown { database } => (EventKind::Resume, database, " (shutdown)"),
            PauseEvent::Failed { .. } => return,
        };
        self.board.events.record(kind, format!("{database}{why}"));
    }

    /// What happened to the PgBouncer pauses, and where they stand: each
    /// event logged and counted once, a timeout loudly.
    pub fn pauses(&self, events: &[PauseEvent], status: BTreeMap<String, PauseStatus>) {
        let m = &self.board.metrics;
        for e in events {
            self.pause_event(e);
            match e {
                PauseEvent::Paused {
                    database,
                    reason,
                    limit_secs,
                    draining,
                } => {
                    m.pgbouncer_pauses.inc();
                    tracing::warn!(%database, draining, "PgBouncer database PAUSED: {reason}; clients wait for the primary to resolve, at most {limit_secs}s");
                }
                PauseEvent::Resumed {
                    database,
                    after_secs,
                } => {
                    tracing::info!(%database, after_secs, "PgBouncer database RESUMED: its primary resolved");
                }
                PauseEvent::TimedOut {
                    database,
                    after_secs,
                } => {
                    m.pgbouncer_pause_timeouts.inc();
                    self.board.fail("pause");
                    tracing::error!(%database, after_secs, "PAUSE TIMED OUT: PgBouncer database resumed at its last primary while the primary is still unclear; not paused again until it resolves");
                }
                PauseEvent::LeftOver { database } => {
                    tracing::warn!(%database, "PgBouncer database RESUMED: a converge that is gone had paused it");
                }
                PauseEvent::Shutdown { database } => {
                    tracing::info!(%database, "PgBouncer database RESUMED at shutdown");
                }
                PauseEvent::Failed {
                    database,
                    action,
                    error,
                } => {
                    self.board.fail("pause");
                    tracing::error!(%database, error = %error, "could not {action} the PgBouncer database");
                }
            }
        }
        let paused = status
            .values()
            .filter(|p| p.state == PauseState::Paused)
            .count();
        m.pgbouncer_paused.set(paused as i64);
        self.board.update(|s| s.pauses = status);
    }

    /// Left-out instances and render warnings go to the status every pass,
    /// and to the log when they first appear, so a flapping catalog does
    /// not repeat the same line every pass.
    pub fn findings(&mut self, set: &RenderedSet) {
        let findings: Vec<String> = set
            .rejections
            .iter()
            .map(|r| format!("left out: {r}"))
            .chain(set.warnings.iter().cloned())
            .collect();
        for f in findings.iter().filter(|f| !self.findings.contains(f)) {
            tracing::warn!("{f}");
        }
        self.board
            .metrics
            .left_out_instances
            .set(set.rejections.len() as i64);
        self.board.update(|s| {
            s.findings = findings.clone();
            s.left_out = set.rejections.clone();
        });
        self.findings = findings;
    }

    /// Each bundle's outcome in the status, metrics and log; whether every
    /// bundle was applied or unchanged.
    ///
    /// A target applied although it rendered what was live after the last
    /// pass has *drifted*: its live file was changed by someone else. It
    /// was put back like any change, and is reported and counted as drift.
    pub fn outcomes(&mut self, set: &RenderedSet, report: &ApplyReport) -> bool {
        self.events(report);
        let now = unix_now();
        let mut all_ok = true;
        let m = &self.board.metrics;
        for b in &report.bundles {
            if let Some(d) = b.timings.validate {
                m.validate_seconds.observe(d.as_secs_f64());
            }
            if let Some(d) = b.timings.reload {
                m.reload_seconds.observe(d.as_secs_f64());
            }
        }
        let live = &mut self.live;
        self.board.update(|s| {
            for b in &report.bundles {
                for t in &b.targets {
                    let entry = s.targets.entry(t.clone()).or_default();
                    entry.sha256 = set.files.get(t).map(|f| hex_sha256(&f.bytes));
                    let outcome = match &b.outcome {
                        Outcome::Applied { .. } | Outcome::RuntimeUpdated { .. } => {
                            entry.last_apply = Some(now);
                            entry.last_error = None;
                            if entry.sha256.is_some() && live.get(t) == entry.sha256.as_ref() {
                                tracing::warn!(target = %t, "the live file was changed by hand; put back what the revision renders");
                                m.drift_corrections.inc();
                                entry.last_drift = Some(now);
                                "drifted"
                            } else {
                                "applied"
                            }
                        }
                        Outcome::Unchanged => {
                            entry.last_error = None;
                            "unchanged"
                        }
                        Outcome::Rejected { error }
                        | Outcome::Failed { error }
                        | Outcome::RolledBack { error } => {
                            all_ok = false;
                            entry.last_error = Some(error.clone());
                            match &b.outcome {
                                Outcome::Rejected { .. } => "rejected",
                                Outcome::Failed { .. } => "failed",
                                _ => "rolled_back",
                            }
                        }
                    };
                    entry.outcome = Some(outcome.to_string());
                    let label = TargetLabel { target: t.clone() };
                    if entry.last_error.is_some() {
                        m.target_failures.get_or_create(&label).inc();
                    } else {
                        m.target_last_success.get_or_create(&label).set(now as i64);
                        if let Some(sha) = &entry.sha256 {
                            live.insert(t.clone(), sha.clone());
                        }
                    }
                }
            }
        });
        self.board
            .metrics
            .incomplete_rollbacks
            .inc_by(report.incomplete_rollbacks() as u64);
        for b in &report.bundles {
            match &b.outcome {
                Outcome::Applied { reload } => {
                    if *reload == ReloadOutcome::Reloaded {
                        self.board.metrics.reloads.inc();
                    }
                    tracing::info!(bundle = %b.bundle, reload = reload.as_str(), "applied");
                }
                Outcome::RuntimeUpdated { servers } => {
                    self.board.metrics.runtime_api_updates.inc();
                    tracing::info!(bundle = %b.bundle, servers, "applied through the HAProxy runtime API, no reload");
                }
                Outcome::Unchanged => {}
                Outcome::Rejected { error } => {
                    self.board.fail("validate");
                    tracing::error!(bundle = %b.bundle, error = %error, "candidate rejected; live files unchanged");
                }
                Outcome::Failed { error } => {
                    self.board.fail("apply");
                    tracing::error!(bundle = %b.bundle, error = %error, "apply failed; live files unchanged");
                }
                Outcome::RolledBack { error } => {
                    self.board.fail("reload");
                    tracing::error!(bundle = %b.bundle, error = %error, "reload failed; rolled back to the previous files");
                }
            }
        }
        all_ok
    }

    /// Marks the targets a hold keeps from changing (`held_targets` of the
    /// pass): outcome `held` where the apply went through (a failure says
    /// more), and `held_by` naming the holds; every other target's
    /// `held_by` is cleared.
    pub fn held(&self, held_targets: &BTreeMap<String, Vec<String>>) {
        self.board.update(|s| {
            for (name, t) in &mut s.targets {
                t.held_by = held_targets.get(name).cloned().unwrap_or_default();
                let through = matches!(t.outcome.as_deref(), Some("applied" | "unchanged"));
                if through && !t.held_by.is_empty() {
                    t.outcome = Some("held".into());
                }
            }
        });
    }

    /// Each changed bundle's steps in the event ring. The apply reports
    /// durations, not instants: a bundle's validation and commit are put at
    /// the start of its reload (the commit is a rename, instant next to
    /// the validators), its reload at the end of the apply.
    fn events(&mut self, report: &ApplyReport) {
        let rendered_at = self.rendered_at.take();
        if report
            .bundles
            .iter()
            .all(|b| b.outcome == Outcome::Unchanged)
        {
            return;
        }
        let events = &self.board.events;
        let end = SystemTime::now();
        if let Some(at) = rendered_at {
            events.record_at(at, EventKind::Rendered, "");
        }
        for b in &report.bundles {
            let reload = b.timings.reload.unwrap_or_default();
            let before_reload = unix_ms_before(end, reload);
            if let Some(v) = b.timings.validate {
                let detail = format!("{} in {} ms", b.bundle, v.as_millis());
                events.record_at(before_reload, EventKind::Validated, detail);
            }
            let (kind, detail) = match &b.outcome {
                Outcome::Unchanged => continue,
                Outcome::Applied { reload: how } => {
                    events.record_at(before_reload, EventKind::Committed, &b.bundle);
                    if *how != ReloadOutcome::Reloaded {
                        continue;
                    }
                    let ms = reload.as_millis();
                    (EventKind::Reloaded, format!("{} in {ms} ms", b.bundle))
                }
                Outcome::RuntimeUpdated { servers } => (
                    EventKind::RuntimeUpdate,
                    format!("{}: {servers} servers", b.bundle),
                ),
                Outcome::Rejected { .. } => (EventKind::Rejected, b.bundle.clone()),
                Outcome::Failed { .. } => (EventKind::Failed, b.bundle.clone()),
                Outcome::RolledBack { .. } => (EventKind::RolledBack, b.bundle.clone()),
            };
            events.record_at(unix_ms(end), kind, detail);
        }
    }

    /// The pass's verdict: converged when every bundle went through, with
    /// nothing held or left out, on current inputs from a healthy source.
    pub fn converged(&self, converged: bool) {
        let now = unix_now();
        self.board.update(|s| {
            s.converged = converged && s.input_error.is_none() && s.source_error.is_none();
            if converged {
                s.last_success = Some(now);
            }
        });
        if converged {
            self.board.metrics.last_success_seconds.set(now as i64);
        }
    }
}
