//! `converge drill`: break one thing on purpose, measure how long users
//! notice, and keep the evidence.
//!
//! The order is fixed and every step can stop the drill before it harms:
//! check every target is on loopback or a private range; probe until
//! `baseline` probes in a row succeed (or refuse: drilling a system that
//! is already down measures nothing); inject the fault the operator
//! named; probe at a fixed interval until `settle` successes in a row
//! follow a failure, the timeout passes, or SIGINT/SIGTERM arrives; undo
//! the fault, whichever way the wait ended; read converge's own events
//! from its daemon; write the report.
//!
//! RTO is the time from the fault to the first probe of the run of
//! successes that ended the outage ([`timeline`]).
//!
//! - [`safety`]: the address check;
//! - [`fault`]: faults and their undo;
//! - [`probe`]: one probe;
//! - [`scenario`]: probe targets found in the manifests;
//! - [`timeline`]: samples and the verdict they give;
//! - [`report`], [`svg`]: the report directory.

pub mod fault;
pub mod probe;
pub mod report;
pub mod safety;
pub mod scenario;
pub mod svg;
pub mod timeline;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

pub use reqwest::Url;
use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinSet;

use crate::daemon::events::{unix_ms, EventPage};
use fault::{Consul, Fault, FaultRecord};
use probe::Probe;
use report::Report;
use timeline::{progress, Progress, Sample};

/// Why a drill did not run to a verdict.
#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    /// Flags or manifests do not say what to drill.
    #[error("{0}")]
    Usage(String),
    /// A safety check refused: nothing was injected.
    #[error("refused: {0}")]
    Refused(String),
    /// The fault or its undo failed.
    #[error("fault: {0}")]
    Fault(String),
    /// The report could not be written.
    #[error("report: {0}")]
    Report(String),
}

/// A drill, ready to run.
#[derive(Debug)]
pub struct DrillConfig {
    /// Scenario name, for the report and its directory.
    pub scenario: String,
    /// What is probed.
    pub probe: Probe,
    /// What is broken.
    pub fault: Fault,
    /// The Consul agent for Consul faults.
    pub consul: Consul,
    /// The daemon's listener, for its events.
    pub daemon: Option<reqwest::Url>,
    /// RTO budget.
    pub budget: Duration,
    /// Time between probe starts.
    pub interval: Duration,
    /// Longest wait for recovery after the fault.
    pub timeout: Duration,
    /// Successes in a row before the fault.
    pub baseline: usize,
    /// Successes in a row that count as recovered.
    pub settle: usize,
    /// Where the timestamped report directory goes.
    pub report_dir: PathBuf,
    /// Drill targets outside loopback and private ranges too.
    pub allow_public: bool,
    /// The program that recovers from this fault without converge
    /// (keepalived moving a VIP): converge's events then say nothing
    /// about the recovery, so the RTO is not split by them.
    pub recovered_by: Option<String>,
}

/// The verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    /// Recovered within budget (or no failure was observed).
    Pass,
    /// Over budget, not recovered, or interrupted.
    Fail,
}

impl Verdict {
    /// `PASS` or `FAIL`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
        }
    }
}

/// How a drill that ran ended.
#[derive(Debug)]
pub struct Outcome {
    /// The verdict.
    pub verdict: Verdict,
    /// Why, in one line.
    pub reason: String,
    /// The report directory.
    pub dir: PathBuf,
}

/// How the wait after the fault ended.
enum Ending {
    Settled(Progress),
    TimedOut(Progress),
    Interrupted(&'static str),
}

/// Runs the drill; see the module header for the order of steps.
pub async fn run(config: DrillConfig) -> Result<Outcome, DrillError> {
    check_targets(&config).await?;
    let since = match &config.daemon {
        // Only `last` is wanted: ask for the events after the newest.
        Some(url) => events(url, u64::MAX).await.map(|p| p.last),
        None => Ok(0),
    };
    let started = SystemTime::now();
    let baseline = baseline(&config).await?;
    let mut interrupt = Interrupts::new()?;
    let fault_at = unix_ms(SystemTime::now());
    eprintln!(
        "drill {}: injecting {}",
        config.scenario,
        config.fault.describe()
    );
    let injected = config.fault.inject(&config.consul).await;
    let (ending, samples) = match &injected {
        Ok(()) => observe(&config, fault_at, &mut interrupt).await,
        Err(_) => (
            Ending::Interrupted("the fault could not be injected"),
            Vec::new(),
        ),
    };
    let undo_result = undo(&config).await;
    injected?;
    let events = match (&config.daemon, since) {
        (Some(url), Ok(since)) => events(url, since).await.map(|p| p.events),
        (Some(_), Err(e)) => Err(e),
        (None, _) => Ok(Vec::new()),
    };
    let (verdict, reason, rto) = judge(&config, fault_at, &ending);
    let report = Report {
        scenario: config.scenario.clone(),
        verdict,
        reason: reason.clone(),
        budget_ms: millis(config.budget),
        rto_ms: rto,
        failure_observed: match &ending {
            Ending::Interrupted(_) => samples.iter().any(|s| !s.ok),
            Ending::Settled(p) | Ending::TimedOut(p) => *p != Progress::NoFailureYet,
        },
        started_unix_ms: unix_ms(started),
        fault_unix_ms: fault_at,
        probe: config.probe.describe(),
        interval_ms: millis(config.interval),
        settle: config.settle,
        fault: FaultRecord {
            fault: config.fault.describe(),
            undo: config.fault.describe_undo(),
            undo_result,
        },
        baseline,
        samples,
        events_error: events.as_ref().err().map(|e| e.to_string()),
        events: events.unwrap_or_default(),
        recovered_by: config.recovered_by.clone(),
    };
    let dir = report::write(&config.report_dir, &report)?;
    Ok(Outcome {
        verdict,
        reason,
        dir,
    })
}

/// Refuses probe, Consul and daemon addresses outside private ranges (a
/// probe command the operator wrote has no known address: not checked).
async fn check_targets(config: &DrillConfig) -> Result<(), DrillError> {
    let mut targets: Vec<(&str, (String, u16))> = Vec::new();
    if let Some(t) = config.probe.target() {
        targets.push(("probe", t.clone()));
    }
    if matches!(
        config.fault,
        Fault::ConsulMaintenance(_) | Fault::ConsulCheck(_)
    ) {
        targets.push(("Consul", safety::url_host_port(config.consul.url())?));
    }
    if let Fault::PatroniSwitchover(url) = &config.fault {
        targets.push(("Patroni", safety::url_host_port(url)?));
    }
    if let Some(d) = &config.daemon {
        targets.push(("daemon", safety::url_host_port(d)?));
    }
    for (what, (host, port)) in targets {
        safety::check(what, &host, port, config.allow_public).await?;
    }
    Ok(())
}

/// `baseline` probes in a row must succeed, one per interval.
async fn baseline(config: &DrillConfig) -> Result<Vec<Sample>, DrillError> {
    let mut samples = Vec::with_capacity(config.baseline);
    let mut tick = tokio::time::interval(config.interval);
    for n in 1..=config.baseline {
        tick.tick().await;
        let s = config.probe.once().await;
        if !s.ok {
            return Err(DrillError::Refused(format!(
                "the system is not healthy before the fault: baseline probe {n} of {} ({}) failed: {}; nothing was injected",
                config.baseline,
                config.probe.describe(),
                s.detail
            )));
        }
        samples.push(s);
    }
    Ok(samples)
}

/// SIGINT and SIGTERM, listened to from before the fault, so an interrupt
/// ends the wait (and the fault is undone) instead of the process.
struct Interrupts {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Interrupts {
    fn new() -> Result<Self, DrillError> {
        let listen = |kind| {
            signal(kind).map_err(|e| DrillError::Usage(format!("cannot listen for signals: {e}")))
        };
        Ok(Self {
            int: listen(SignalKind::interrupt())?,
            term: listen(SignalKind::terminate())?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "interrupted (SIGINT)",
            _ = self.term.recv() => "interrupted (SIGTERM)",
        }
    }
}

/// Probes every interval until recovery, the timeout or an interrupt;
/// returns how it ended and every probe whose result came in.
async fn observe(
    config: &DrillConfig,
    fault_at: u64,
    interrupt: &mut Interrupts,
) -> (Ending, Vec<Sample>) {
    let mut slots: Vec<Option<Sample>> = Vec::new();
    let mut in_flight = JoinSet::new();
    let mut tick = tokio::time::interval(config.interval);
    let deadline = tokio::time::sleep(config.timeout);
    tokio::pin!(deadline);
    let mut status = Status::new(config, fault_at);
    let ending = loop {
        tokio::select! {
            _ = &mut deadline => break Ending::TimedOut(progress(&slots, config.settle)),
            why = interrupt.next() => break Ending::Interrupted(why),
            _ = tick.tick() => {
                let probe = config.probe.clone();
                let slot = slots.len();
                slots.push(None);
                in_flight.spawn(async move { (slot, probe.once().await) });
            }
            Some(Ok((slot, sample))) = in_flight.join_next() => slots[slot] = Some(sample),
        }
        let now = progress(&slots, config.settle);
        status.show(&slots, now);
        if matches!(now, Progress::Recovered { .. }) {
            break Ending::Settled(now);
        }
    };
    status.done();
    in_flight.abort_all();
    (ending, slots.into_iter().flatten().collect())
}

/// Undoes the fault; what the report says about it.
async fn undo(config: &DrillConfig) -> Option<String> {
    let result = config.fault.undo(&config.consul).await?;
    Some(match result {
        Ok(()) => {
            eprintln!("drill {}: fault undone", config.scenario);
            "undone".into()
        }
        Err(e) => {
            eprintln!("drill {}: UNDO FAILED: {e}", config.scenario);
            format!("UNDO FAILED: {e}")
        }
    })
}

/// Verdict, reason and RTO.
fn judge(config: &DrillConfig, fault_at: u64, ending: &Ending) -> (Verdict, String, Option<u64>) {
    let budget = millis(config.budget);
    match ending {
        Ending::Settled(Progress::Recovered { recovered, .. }) => {
            let rto = recovered.saturating_sub(fault_at);
            if rto <= budget {
                (
                    Verdict::Pass,
                    format!("recovered in {rto} ms, within the {budget} ms budget"),
                    Some(rto),
                )
            } else {
                (
                    Verdict::Fail,
                    format!("recovered in {rto} ms, over the {budget} ms budget"),
                    Some(rto),
                )
            }
        }
        Ending::Settled(_) | Ending::TimedOut(Progress::NoFailureYet) => (
            Verdict::Pass,
            format!(
                "no probe failed within the {} ms timeout: the system absorbed the fault (RTO 0)",
                millis(config.timeout)
            ),
            Some(0),
        ),
        Ending::TimedOut(_) => (
            Verdict::Fail,
            format!(
                "not recovered within the {} ms timeout",
                millis(config.timeout)
            ),
            None,
        ),
        Ending::Interrupted(why) => (Verdict::Fail, (*why).to_string(), None),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The daemon's events after `since`.
async fn events(daemon: &reqwest::Url, since: u64) -> Result<EventPage, DrillError> {
    let url = daemon
        .join(&format!("/events?since={since}"))
        .map_err(|e| DrillError::Usage(format!("--daemon {daemon}: {e}")))?;
    let fail = |e: reqwest::Error| DrillError::Report(format!("GET {url}: {e}"));
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(fail)?
        .get(url.clone())
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(fail)?
        .json()
        .await
        .map_err(fail)
}

/// The progress line on stderr: rewritten in place on a terminal, one
/// line a second otherwise (a log stays readable).
struct Status {
    scenario: String,
    budget: Duration,
    started: Instant,
    fault_at: u64,
    last: Option<Instant>,
    tty: bool,
}

impl Status {
    fn new(config: &DrillConfig, fault_at: u64) -> Self {
        Self {
            scenario: config.scenario.clone(),
            budget: config.budget,
            started: Instant::now(),
            fault_at,
            last: None,
            tty: std::io::stderr().is_terminal(),
        }
    }

    fn show(&mut self, slots: &[Option<Sample>], now: Progress) {
        let every = if self.tty {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(1)
        };
        if self.last.is_some_and(|l| l.elapsed() < every) {
            return;
        }
        self.last = Some(Instant::now());
        let done: Vec<&Sample> = slots.iter().flatten().collect();
        let failed = done.iter().filter(|s| !s.ok).count();
        let state = match now {
            Progress::NoFailureYet => "no failure yet".to_string(),
            Progress::Failing { first_failure } => format!(
                "failing since +{:.1}s, waiting for recovery",
                first_failure.saturating_sub(self.fault_at) as f64 / 1000.0
            ),
            Progress::Recovered { .. } => "recovered".to_string(),
        };
        let line = format!(
            "drill {}: +{:.1}s since the fault (budget {:.1}s), {} probes, {failed} failed, {state}",
            self.scenario,
            self.started.elapsed().as_secs_f64(),
            self.budget.as_secs_f64(),
            done.len()
        );
        let mut err = std::io::stderr().lock();
        let _ = if self.tty {
            write!(err, "\r\x1b[2K{line}")
        } else {
            writeln!(err, "{line}")
        };
    }

    fn done(&self) {
        if self.tty {
            eprintln!();
        }
    }
}
