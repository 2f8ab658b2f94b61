//! One reconcile pass, and the state that survives between passes.
//!
//! A pass recomputes everything from the current inputs — it is a function
//! of state, not of the event that woke it: reload manifests and templates
//! (keeping the last good desired state when the new one is broken; not
//! when only the catalog woke it, see [`Reconciler::woken`]), read
//! the [`Source`] (which keeps the last good snapshot when it fails), make
//! the [`pass`] (guard and render, the same call `plan` and `apply --once`
//! make), run the transaction, move the guard baseline. Every outcome goes
//! to the [`Reporter`], the one place that writes status, metrics and log;
//! no failure changes a live file.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use converge_model::{Catalog, Layout};

use super::board::{unix_now, Board};
use super::pauses::{Pauser, Psql};
use super::primaries;
use super::report::Reporter;
use super::DaemonConfig;
use crate::guard::baseline;
use crate::pass::{self, Pass, Prepared};
use crate::pause::Pause;
use crate::source::{referenced_services, Source};

/// The reconcile state that survives between passes.
pub struct Reconciler {
    config: DaemonConfig,
    report: Reporter,
    /// Last manifests and templates that loaded cleanly.
    inputs: Option<Prepared>,
    /// [`Inputs::fingerprint`](crate::inputs::Inputs::fingerprint) of the files `inputs` was parsed from.
    inputs_fingerprint: Option<[u8; 32]>,
    /// The guard's baseline: the snapshot it accepted last, read from
    /// disk at start (see [`baseline`]). It advances after every pass
    /// whose apply ran, whatever each bundle's outcome: a bundle that keeps
    /// failing (a PgBouncer candidate its validator rejects) must not
    /// freeze the baseline of every backend, or a later hold would bring
    /// back instances that left long ago.
    baseline: Option<Arc<Catalog>>,
    /// Writes `baseline` to disk off the pass's thread.
    baseline_writer: baseline::Writer,
    /// Backends an operator released, consumed by the next pass.
    released: BTreeSet<String>,
    /// The PgBouncer databases paused while their primary is unclear.
    pauses: Pauser,
}

impl Reconciler {
    /// A reconciler with nothing loaded yet.
    pub fn new(config: DaemonConfig, board: Arc<Board>) -> Self {
        let layout = Layout::new(&config.inputs.root);
        let baseline = baseline::load(&layout).map(Arc::new);
        Self {
            pauses: Pauser::new(layout, Box::new(Psql)),
            config,
            report: Reporter::new(board),
            inputs: None,
            inputs_fingerprint: None,
            baseline,
            baseline_writer: baseline::Writer::start(),
            released: BTreeSet::new(),
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
        // Named on every load: a commit of the files on disk changes the
        // name without changing a byte.
        let revision = self.config.inputs.revision();
        if self.config.inputs.unpacked.is_some() && revision.is_none() {
            return self.report.waiting_for_revision();
        }
        let fingerprint = self.config.inputs.fingerprint();
        if let Some(prepared) = self.inputs.as_mut() {
            if fingerprint.is_some() && fingerprint == self.inputs_fingerprint {
                prepared.revision = revision;
                self.report.revision(prepared.revision.as_ref());
                self.report.inputs(None);
                return;
            }
        }
        match self.config.inputs.load_config() {
            Ok((manifests, templates)) => {
                if let Ok(desired) = manifests.for_node(&self.config.node) {
                    self.report.targets(desired.targets.into_keys());
                }
                self.inputs_fingerprint = fingerprint;
                self.report.revision(revision.as_ref());
                self.inputs = Some(Prepared {
                    manifests,
                    templates,
                    layout: Layout::new(&self.config.inputs.root),
                    revision,
                });
                self.report.inputs(None);
            }
            Err(e) => self.report.inputs(Some(e.to_string())),
        }
    }

    /// The pass of a woken loop: reloads manifests and templates first
    /// when `inputs_may_have_changed` (see [`Trigger::may_change_inputs`])
    /// or none loaded cleanly yet, then reconciles. A pass woken only by
    /// the catalog skips the reload: the file watches, SIGHUP and the
    /// follower wake the loop for every input change, so the reload would
    /// only read and hash every file again and run `git` (a commit that
    /// changes no file is named by the next such pass or the resync, as a
    /// quiet catalog always did). Blocking: call from a blocking thread.
    ///
    /// [`Trigger::may_change_inputs`]: super::Trigger::may_change_inputs
    pub fn woken(&mut self, inputs_may_have_changed: bool, source: &mut dyn Source) {
        if inputs_may_have_changed || self.inputs.is_none() {
            self.load_inputs();
        }
        self.reconcile(source);
    }

    /// One pass over the current inputs and `source`'s newest snapshot.
    /// Blocking (source read, render, validators, reloads): call from a
    /// blocking thread.
    pub fn reconcile(&mut self, source: &mut dyn Source) {
        let started = Instant::now();
        let wanted = self.pass(source);
        let events = self.pauses.follow(wanted.as_deref(), unix_now());
        self.report.pauses(&events, self.pauses.status());
        self.report.pass_finished(started.elapsed());
    }

    /// When the next pass is due for a pause's limit, if one is in force.
    pub fn pause_deadline(&self) -> Option<std::time::Duration> {
        self.pauses.next_deadline(unix_now())
    }

    /// Resumes every database this daemon paused (shutdown). Blocking.
    pub fn resume_paused(&mut self) {
        let events = self.pauses.resume_all();
        self.report.pauses(&events, self.pauses.status());
    }

    /// One pass; the databases it wants paused once its transaction ran,
    /// `None` when it decided nothing.
    fn pass(&mut self, source: &mut dyn Source) -> Option<Vec<Pause>> {
        self.report.pass_started();
        let reading = source.read();
        self.report.source(reading.health);
        let (Some(prepared), Some(catalog)) = (self.inputs.as_ref(), reading.catalog) else {
            self.report.not_converged();
            return None;
        };
        let released = std::mem::take(&mut self.released);
        let manifest = &prepared.manifests.manifest;
        let mut databases = primaries::seen(manifest, &catalog);
        let pass = match pass::run(
            prepared,
            &self.config.node,
            &prepared.layout,
            catalog,
            self.baseline.as_deref(),
            &released,
        ) {
            Ok(pass) => pass,
            Err(e) => {
                self.report.render_failed(e.to_string());
                return None;
            }
        };
        self.report.rendered();
        self.report.catalog_index(pass.accepted.index);
        let complete = pass.complete();
        let Pass {
            set,
            holds,
            held_targets,
            accepted,
            pauses,
        } = pass;
        self.report
            .holds(&prepared.manifests.manifest, &accepted, &holds);
        self.report.findings(&set);
        primaries::rendered(&mut databases, manifest, &accepted, &holds);
        self.report.databases(databases);
        let layout = prepared.layout.clone();
        let outcome = converge_apply::apply(&set, &self.config.apply);
        let report = match outcome {
            Ok(r) => r,
            Err(e) => {
                self.report.apply_failed(set.redact(&e.to_string()));
                return None;
            }
        };
        let all_ok = self.report.outcomes(&set, &report);
        self.report.held(&held_targets);
        let accepted = Arc::new(accepted);
        self.baseline_writer
            .advance(&layout, self.baseline.as_deref(), &accepted);
        self.baseline = Some(accepted);
        self.report.converged(all_ok && complete);
        Some(pauses)
    }
}

#[cfg(test)]
mod tests;
