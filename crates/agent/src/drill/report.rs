//! The report directory: `report.json` (everything), `report.md` (for a
//! person, with `timeline.svg`), `health-timeline.csv` (one probe a row).
//!
//! The directory is `SCENARIO-YYYYMMDDTHHMMSSZ` under the report dir, so
//! reports sort by time and a kept report is never overwritten.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;

use super::fault::FaultRecord;
use super::timeline::Sample;
use super::{DrillError, Verdict};
use crate::daemon::events::{Event, EventKind};

/// Everything a drill saw.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// PASS or FAIL.
    pub verdict: Verdict,
    /// Why, in one line.
    pub reason: String,
    /// The budget.
    pub budget_ms: u64,
    /// Fault to recovery; absent when the system did not recover.
    pub rto_ms: Option<u64>,
    /// Whether any probe failed after the fault.
    pub failure_observed: bool,
    /// When the drill started (Unix ms).
    pub started_unix_ms: u64,
    /// When the fault was injected (Unix ms).
    pub fault_unix_ms: u64,
    /// The probe, in words.
    pub probe: String,
    /// Time between probe starts.
    pub interval_ms: u64,
    /// Successes in a row that count as recovered.
    pub settle: usize,
    /// The fault and its undo.
    pub fault: FaultRecord,
    /// Probes before the fault.
    pub baseline: Vec<Sample>,
    /// Probes after the fault, in start order.
    pub samples: Vec<Sample>,
    /// converge's events during the drill.
    pub events: Vec<Event>,
    /// Why the events could not be read, if they could not.
    pub events_error: Option<String>,
    /// The program that recovers from this fault without converge; set,
    /// the RTO is not split (a reload converge happened to make meanwhile
    /// is not why the probes recovered).
    pub recovered_by: Option<String>,
}

/// Where the recovery time went, from converge's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Split {
    /// Fault → converge was woken by the change it then applied (health
    /// checks, a Patroni election, Consul propagation).
    pub before_converge_ms: u64,
    /// Woken → the change was live (quiescence, render, validate, reload
    /// or runtime update).
    pub converge_ms: u64,
    /// Live → the first probe of the recovered run.
    pub after_converge_ms: u64,
}

impl Report {
    /// Unix ms of recovery.
    pub fn recovered_unix_ms(&self) -> Option<u64> {
        self.rto_ms
            .filter(|_| self.failure_observed)
            .map(|r| self.fault_unix_ms + r)
    }

    /// The split of the RTO, when the system recovered and converge's
    /// events show a change made live by the time the recovering probe
    /// answered (or one probe interval after it started, the resolution
    /// of the probes). converge's share runs from the trigger of
    /// the pass that made it live (the last `saw-change` before that pass
    /// rendered) to the change being live; everything before is the
    /// fault's own (health checks, a Patroni election, passes that held or
    /// found nothing to do). The change can go live a little after the
    /// recovering probe started (it waited in PgBouncer for the reload, or
    /// the surviving server of a round-robin pair answered it): then the
    /// last part is 0 and the parts add up to a little more than the RTO,
    /// never less.
    pub fn split(&self) -> Option<Split> {
        if self.recovered_by.is_some() {
            return None;
        }
        let recovered = self.recovered_unix_ms()?;
        let answered = self
            .samples
            .iter()
            .find(|s| s.unix_ms == recovered)
            .map_or(recovered, |s| s.unix_ms + s.latency_ms);
        // What the probes cannot tell apart: one interval after the
        // recovering probe started, or until it answered if later.
        let run_end = answered.max(recovered + self.interval_ms);
        let window = |kinds: &[EventKind], until: u64| {
            self.events
                .iter()
                .filter(|e| kinds.contains(&e.kind))
                .filter(move |e| e.unix_ms >= self.fault_unix_ms && e.unix_ms <= until)
                .map(|e| e.unix_ms)
                .max()
        };
        let live_kinds = [
            EventKind::Reloaded,
            EventKind::RuntimeUpdate,
            EventKind::Committed,
        ];
        let live = window(&live_kinds, run_end)?;
        let rendered = window(&[EventKind::Rendered], live).unwrap_or(live);
        let saw = window(&[EventKind::SawChange], rendered)?;
        Some(Split {
            before_converge_ms: saw - self.fault_unix_ms,
            converge_ms: live - saw,
            after_converge_ms: recovered.saturating_sub(live),
        })
    }

    /// Milliseconds from the fault (negative before it).
    pub fn t(&self, unix_ms: u64) -> i64 {
        i64::try_from(unix_ms).unwrap_or(i64::MAX)
            - i64::try_from(self.fault_unix_ms).unwrap_or(i64::MAX)
    }
}

/// Writes the report directory; returns its path.
pub fn write(report_dir: &Path, report: &Report) -> Result<PathBuf, DrillError> {
    let fail = |p: &Path, e: std::io::Error| DrillError::Report(format!("{}: {e}", p.display()));
    std::fs::create_dir_all(report_dir).map_err(|e| fail(report_dir, e))?;
    let stamp = humantime::format_rfc3339_seconds(
        UNIX_EPOCH + Duration::from_millis(report.started_unix_ms),
    )
    .to_string()
    .replace(['-', ':'], "");
    let mut dir = report_dir.join(format!("{}-{stamp}", report.scenario));
    let mut n = 1;
    while dir.exists() {
        n += 1;
        dir = report_dir.join(format!("{}-{stamp}-{n}", report.scenario));
    }
    std::fs::create_dir(&dir).map_err(|e| fail(&dir, e))?;
    let json = serde_json::to_string_pretty(&serde_json::json!({
        "report": report,
        "split": report.split(),
    }))
    .map_err(|e| DrillError::Report(e.to_string()))?;
    for (name, text) in [
        ("report.json", json + "\n"),
        ("report.md", markdown(report)),
        ("health-timeline.csv", csv(report)),
        ("timeline.svg", super::svg::chart(report)),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| fail(&path, e))?;
    }
    Ok(dir)
}

/// One row per probe, baseline first.
fn csv(report: &Report) -> String {
    let mut out = String::from("unix_ms,t_ms,phase,ok,latency_ms,detail\n");
    let rows = report
        .baseline
        .iter()
        .map(|s| ("baseline", s))
        .chain(report.samples.iter().map(|s| ("after-fault", s)));
    for (phase, s) in rows {
        let _ = writeln!(
            out,
            "{},{},{phase},{},{},\"{}\"",
            s.unix_ms,
            report.t(s.unix_ms),
            s.ok,
            s.latency_ms,
            s.detail.replace('"', "\"\"")
        );
    }
    out
}

/// The report for a person: verdict first, then where the time went, the
/// chart, and the timeline as a table (probe state changes and converge's
/// events, in time order).
fn markdown(r: &Report) -> String {
    let mut out = format!(
        "# Drill `{}`: {}\n\n{}\n\n",
        r.scenario,
        r.verdict.as_str(),
        r.reason
    );
    let rto = r
        .rto_ms
        .map_or("not recovered".into(), |v| format!("{v} ms"));
    let undo = match (&r.fault.undo, &r.fault.undo_result) {
        (Some(u), Some(res)) => format!("{u}: {res}"),
        (Some(u), None) => format!("{u}: not run"),
        _ => "none (not reversible)".into(),
    };
    let started =
        humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(r.started_unix_ms));
    let _ = write!(
        out,
        "| | |\n|---|---|\n| Verdict | **{}** |\n| RTO | {rto} |\n| Budget | {} ms |\n\
         | Failure observed | {} |\n| Fault | {} |\n| Undo | {undo} |\n\
         | Probe | {} every {} ms; recovered = {} successes in a row |\n| Started | {started} |\n\n",
        r.verdict.as_str(),
        r.budget_ms,
        if r.failure_observed { "yes" } else { "no" },
        r.fault.fault,
        r.probe,
        r.interval_ms,
        r.settle,
    );
    out += "## Where the time went\n\n";
    match (r.split(), &r.recovered_by) {
        (_, Some(by)) => {
            let _ = write!(
                out,
                "Not split: {by} recovers from this fault without converge, so all of the RTO is the fault's own.\n\n"
            );
        }
        (Some(s), None) => {
            let _ = write!(
                out,
                "| Phase | ms |\n|---|---:|\n\
                 | Fault → converge woken by the change it applied (the fault's own: health checks, election, catalog) | {} |\n\
                 | converge: woken → change live (render, validate, reload / runtime update) | {} |\n\
                 | Change live → probes succeed again | {} |\n\n",
                s.before_converge_ms, s.converge_ms, s.after_converge_ms
            );
        }
        (None, None) => out += "Not split: the system did not recover, or converge's events show no change applied between the fault and the recovery, so the recovery was not converge's doing (HAProxy's own health check, a retry, the fault ending by itself).\n\n",
    }
    if let Some(e) = &r.events_error {
        let _ = writeln!(out, "converge's events could not be read: {e}\n");
    }
    out += "![timeline](timeline.svg)\n\n## Timeline\n\n| t (ms from fault) | What |\n|---:|---|\n";
    for (t, what) in timeline_rows(r) {
        let _ = writeln!(out, "| {t:+} | {} |", what.replace('|', "\\|"));
    }
    out
}

/// Probe state changes, the fault, recovery and converge's events, in
/// time order.
fn timeline_rows(r: &Report) -> Vec<(i64, String)> {
    let mut rows = Vec::new();
    if let Some(first) = r.baseline.first() {
        rows.push((
            r.t(first.unix_ms),
            format!("baseline: {} probes in a row succeeded", r.baseline.len()),
        ));
    }
    rows.push((0, format!("fault injected: {}", r.fault.fault)));
    let mut state = Some(true);
    for s in &r.samples {
        if state != Some(s.ok) {
            let what = if s.ok {
                "probes succeed"
            } else {
                "probes fail"
            };
            rows.push((r.t(s.unix_ms), format!("{what} ({})", s.detail)));
            state = Some(s.ok);
        }
    }
    for e in &r.events {
        let kind = e.kind.name();
        let detail = if e.detail.is_empty() {
            String::new()
        } else {
            format!(": {}", e.detail)
        };
        rows.push((r.t(e.unix_ms), format!("converge {kind}{detail}")));
    }
    if let Some(rec) = r.recovered_unix_ms() {
        rows.push((
            r.t(rec),
            format!("recovered ({} successes in a row from here)", r.settle),
        ));
    }
    rows.sort_by_key(|(t, _)| *t);
    rows
}

#[cfg(test)]
mod tests;
