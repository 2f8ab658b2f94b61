//! One reconcile pass, and the state that survives between passes.
//!
//! A pass recomputes everything from the current inputs — it is a function
//! of state, not of the event that woke it: reload manifests and templates
//! (keeping the last good desired state when the new one is broken), take
//! the catalog (keeping the last good snapshot when the source fails),
//! guard, render, apply. Every failure is logged, counted and put in the
//! status; none of them changes a live file.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use converge_apply::{ApplyOptions, Outcome};
use converge_consul::SourceHealth;
use converge_model::{Catalog, Layout};

use crate::guard::{baseline, Hold};
use crate::pass::{self, Pass};
use crate::pipeline::{hex_sha256, Inputs, Prepared};
use crate::quiescence::Quiescence;
use crate::status::{unix_now, BackendStatus, Board};

/// Where the catalog comes from.
#[derive(Debug, Clone)]
pub enum CatalogFrom {
    /// A catalog file, watched for changes.
    File(PathBuf),
    /// A Consul agent.
    Consul(Box<converge_consul::Config>),
}

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

/// Every catalog service `manifest` reads: what a source must watch.
pub fn referenced_services(manifest: &converge_model::Manifest) -> BTreeSet<String> {
    manifest
        .backends
        .values()
        .map(|b| b.service.clone())
        .chain(manifest.databases.values().map(|d| d.service.clone()))
        .collect()
}

/// The reconcile state that survives between passes.
pub struct Reconciler {
    config: DaemonConfig,
    board: Arc<Board>,
    /// Last manifests and templates that loaded cleanly (its catalog is
    /// replaced on every pass).
    inputs: Option<Prepared>,
    /// [`Inputs::fingerprint`](crate::pipeline::Inputs::fingerprint) of
    /// the files `inputs` was parsed from.
    inputs_fingerprint: Option<[u8; 32]>,
    /// Last catalog read cleanly (file source).
    file_catalog: Option<Catalog>,
    /// The guard's baseline: the snapshot it accepted last, read from
    /// disk at start (see [`baseline`]). It advances after every pass
    /// whose apply ran, whatever each bundle's outcome: a bundle that keeps
    /// failing (a PgBouncer candidate its validator rejects) must not
    /// freeze the baseline of every backend, or a later hold would bring
    /// back instances that left long ago.
    baseline: Option<Catalog>,
    /// Backends an operator released, consumed by the next pass.
    released: BTreeSet<String>,
    /// Rejections and warnings of the last render, to log only new ones.
    findings: Vec<String>,
    /// Whether the source was failing at the last pass, so a failure is
    /// counted once, when it starts.
    source_failing: bool,
}

impl Reconciler {
    /// A reconciler with nothing loaded yet.
    pub fn new(config: DaemonConfig, board: Arc<Board>) -> Self {
        let baseline = baseline::load(&Layout::new(&config.inputs.root));
        Self {
            config,
            board,
            inputs: None,
            inputs_fingerprint: None,
            file_catalog: None,
            baseline,
            released: BTreeSet::new(),
            findings: Vec::new(),
            source_failing: false,
        }
    }

    /// Marks `backend` released for the next pass.
    pub fn release(&mut self, backend: String) {
        self.released.insert(backend);
    }

    /// Services the current manifests reference (what the source watches).
    pub fn services(&self) -> BTreeSet<String> {
        self.inputs
            .as_ref()
            .map(|p| referenced_services(&p.manifests.manifest))
            .unwrap_or_default()
    }

    /// Reloads manifests and templates; on failure keeps the previous ones
    /// and reports the error (with its file:line) in the status. Files
    /// byte-identical to the last clean load are not parsed again.
    pub fn load_inputs(&mut self) {
        let fingerprint = self.config.inputs.fingerprint();
        if self.inputs.is_some() && fingerprint.is_some() && fingerprint == self.inputs_fingerprint
        {
            self.board.update(|s| s.input_error = None);
            return;
        }
        match self.config.inputs.load_config() {
            Ok((manifests, templates)) => {
                self.inputs_fingerprint = fingerprint;
                self.inputs = Some(Prepared {
                    manifests,
                    templates,
                    layout: Layout::new(&self.config.inputs.root),
                });
                self.board.update(|s| s.input_error = None);
            }
            Err(e) => {
                let msg = e.to_string();
                tracing::error!(error = %msg, "manifests or templates are invalid; keeping the previous desired state");
                self.board.fail("load");
                self.board.update(|s| s.input_error = Some(msg));
            }
        }
    }

    /// Reads the catalog file; on failure keeps the last good one.
    fn read_file_catalog(&mut self, path: &Path) -> Option<Catalog> {
        match Catalog::load_file(path) {
            Ok(c) => {
                self.record_source(SourceHealth::Healthy);
                self.file_catalog = Some(c);
            }
            Err(e) => {
                let reason = e.to_string();
                tracing::error!(error = %reason, "catalog file is invalid; keeping the last good snapshot");
                self.record_source(SourceHealth::Degraded {
                    reason,
                    config_error: false,
                });
            }
        }
        self.file_catalog.clone()
    }

    /// One pass over the current inputs. `consul` is the source's latest
    /// state when Consul is the source. Blocking (render, validators,
    /// reloads): call from a blocking thread.
    pub fn reconcile(&mut self, consul: Option<&converge_consul::SourceState>) {
        self.board.metrics.reconciles.inc();
        self.board.update(|s| s.last_reconcile = Some(unix_now()));
        let catalog = match (&self.config.catalog, consul) {
            (CatalogFrom::File(path), _) => {
                let path = path.clone();
                self.read_file_catalog(&path)
            }
            (CatalogFrom::Consul(_), Some(state)) => self.consul_catalog(state),
            (CatalogFrom::Consul(_), None) => None,
        };
        let (Some(prepared), Some(catalog)) = (self.inputs.as_ref(), catalog) else {
            self.board.update(|s| s.converged = false);
            return;
        };
        let released = std::mem::take(&mut self.released);
        let pass = match pass::run(
            prepared,
            &self.config.node,
            &prepared.layout,
            catalog,
            self.baseline.as_ref(),
            &released,
        ) {
            Ok(pass) => pass,
            Err(e) => {
                let msg = e.to_string();
                tracing::error!(error = %msg, "render failed; live files unchanged");
                self.board.fail("render");
                self.board.update(|s| {
                    s.input_error = Some(msg);
                    s.converged = false;
                });
                return;
            }
        };
        self.board.metrics.renders.inc();
        let manifest = prepared.manifests.manifest.clone();
        let layout = prepared.layout.clone();
        let complete = pass.complete();
        let Pass {
            set,
            holds,
            accepted,
        } = pass;
        self.record_holds(&manifest, &accepted, &holds);
        self.report_findings(&set);
        let report = match converge_apply::apply(&set, &self.config.apply) {
            Ok(r) => r,
            Err(e) => {
                let msg = set.redact(&e.to_string());
                tracing::error!(error = %msg, "apply could not start");
                self.board.fail("apply");
                self.board.update(|s| s.converged = false);
                return;
            }
        };
        let now = unix_now();
        let mut all_ok = true;
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
                }
            }
        });
        for b in &report.bundles {
            match &b.outcome {
                Outcome::Applied { reload } => {
                    if *reload == converge_apply::ReloadOutcome::Reloaded {
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
        baseline::advance(&layout, self.baseline.as_ref(), &accepted);
        self.baseline = Some(accepted);
        let converged = all_ok && complete;
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

    /// Rejected catalog values and render warnings go to the status every
    /// pass, and to the log when they first appear, so a flapping catalog
    /// does not repeat the same line every pass.
    fn report_findings(&mut self, set: &converge_model::RenderedSet) {
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

    /// Puts the source's condition in the status and metrics: a failure is
    /// counted when it starts (not on every pass it lasts), and the
    /// snapshot age runs only while the source fails.
    fn record_source(&mut self, health: SourceHealth) {
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
        self.source_failing = failing;
        self.board.snapshot_current(error.is_none());
        self.board.update(|s| s.source_error = error);
    }

    fn consul_catalog(&mut self, state: &converge_consul::SourceState) -> Option<Catalog> {
        self.record_source(state.health.clone());
        // A service never read is unknown, not empty: render nothing until
        // every watched service has been read once.
        if !state.is_complete() {
            tracing::warn!(missing = ?state.missing, "not every watched service has been read yet; waiting");
            return None;
        }
        Some((*state.catalog).clone())
    }

    /// Puts the holds of this pass in the status and metrics; a hold is
    /// logged and counted when it starts, not on every pass it lasts.
    fn record_holds(&self, manifest: &converge_model::Manifest, catalog: &Catalog, holds: &[Hold]) {
        // Only the holds, not a copy of the whole status.
        let mut before = Vec::new();
        self.board.update(|s| before.clone_from(&s.holds));
        let new: Vec<&Hold> = holds
            .iter()
            .filter(|h| !before.iter().any(|b| b.backend == h.backend))
            .collect();
        for h in &new {
            tracing::warn!(backend = %h.backend, before = h.before, after = h.after, "change held: {}", h.reason);
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
                    (
                        name.clone(),
                        BackendStatus {
                            servers,
                            held: holds.iter().find(|h| &h.backend == name).cloned(),
                        },
                    )
                })
                .collect();
        });
    }
}

#[cfg(test)]
mod tests;
