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

    /// Each database's primary as the catalog names it and its hosts as
    /// rendered.
    pub fn databases(&self, databases: BTreeMap<String, DatabaseStatus>) {
        self.board.update(|s| s.databases = databases);
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

    /// Each bundle's outcome in the status, metrics, log and events;
    /// whether every bundle was applied or unchanged.
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
        self.board.update(|s| {
            for b in &report.bundles {
                for t in &b.targets {
                    let entry = s.targets.entry(t.clone()).or_default();
                    entry.sha256 = set.files.get(t).map(|f| hex_sha256(&f.bytes));
                    match &b.outcome {
                        Outcome::Applied { .. } | Outcome::RuntimeUpdated { .. } => {
                            entry.last_apply = Some(now);
                            entry.last_error = None;
                        }
                        Outcome::Unchanged => entry.last_error = None,
                        Outcome::Rejected { error }
                        | Outcome::Failed { error }
                        | Outcome::RolledBack { error } => {
                            all_ok = false;
                            entry.last_error = Some(error.clone());
                        }
                    }
                    let label = TargetLabel { target: t.clone() };
                    if entry.last_error.is_some() {
                        m.target_failures.get_or_create(&label).inc();
                    } else {
                        m.target_last_success.get_or_create(&label).set(now as i64);
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
