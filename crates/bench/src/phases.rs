//! The measurements run on each tool in turn: idle, health flips, flapping.
//!
//! The same code drives both tools; only [`tool::start`] differs. A tool is
//! measured in two runs:
//!
//! 1. with the latency wait (`--wait`, off by default): warm-up flips, an
//!    idle window (CPU, RSS, requests to Consul), the timed flips (routing
//!    latency, CPU and RSS under churn), then flap bursts;
//! 2. with the flap wait (`--flap-wait`, 500ms:5s by default): flap bursts.

use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use converge_testkit::wait;

use crate::probe::{self, Observed};
use crate::procstat::{self, Usage};
use crate::share::{self, Steps};
use crate::stack::{Stack, DEADLINE};
use crate::tool::{self, Kind, Running, Wait};
use converge_testkit::proxy::{self, Seen};

/// converge's log filter: info, plus the daemon's `woken` debug line.
const RUST_LOG: &str = "info,converge_agent::daemon=debug";

/// What a run is asked to do.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Timed flips.
    pub flips: usize,
    /// Pause after a flip has settled before the next one.
    pub gap: Duration,
    /// Idle window.
    pub idle: Duration,
    /// Check changes per flap burst.
    pub flaps: usize,
    /// Time between check changes in a burst.
    pub flap_period: Duration,
    /// Bursts per wait setting.
    pub bursts: usize,
    /// Wait for the idle/latency run.
    pub wait: Wait,
    /// Wait for the flap-only run.
    pub flap_wait: Wait,
}

/// One timed flip.
#[derive(Debug, Clone, Copy)]
pub struct Flip {
    /// True: the check went passing (server added back).
    pub to_passing: bool,
    /// What the probe saw.
    pub seen: Observed,
    /// Reloads the tool counted for this flip.
    pub tool_reloads: u64,
    /// Reloads HAProxy's master logged for this flip.
    pub haproxy_reloads: usize,
    /// Runtime-API updates converge counted for this flip.
    pub runtime_updates: u64,
    /// When the flip was sent, microseconds since the epoch.
    pub sent_unix_us: i64,
}

/// One flap burst.
#[derive(Debug, Clone)]
pub struct Burst {
    /// The wait setting in force.
    pub wait: Wait,
    /// Check changes made.
    pub changes: usize,
    /// Reloads the tool counted.
    pub tool_reloads: u64,
    /// Reloads HAProxy's master logged.
    pub haproxy_reloads: usize,
    /// Runtime-API updates converge counted.
    pub runtime_updates: u64,
    /// How long the burst of check changes took.
    pub took: Duration,
    /// Set when the tool never applied the burst's final state.
    pub stuck: Option<String>,
}

/// Everything measured on one tool.
#[derive(Debug)]
pub struct ToolReport {
    /// Which tool.
    pub kind: Kind,
    /// Idle window usage.
    pub idle: Usage,
    /// Requests to Consul during the idle window.
    pub idle_requests: Vec<Seen>,
    /// Timed flips that were seen.
    pub flips: Vec<Flip>,
    /// Flips not seen within the deadline.
    pub missed: Vec<String>,
    /// Usage over the timed flips.
    pub churn: Usage,
    /// Requests to Consul during the timed flips.
    pub churn_requests: Vec<Seen>,
    /// Flap bursts, both wait settings.
    pub bursts: Vec<Burst>,
    /// Connections the tool opened to Consul over the first run.
    pub connections: usize,
    /// Warning/error lines in its logs.
    pub complaints: Vec<String>,
    /// converge only: where each timed flip's time went, from its log.
    pub steps: Vec<Steps>,
}

// Long on purpose: the phases of one measurement in the order they run
// against one stack.
/// Measures `kind` against `stack`.
pub fn measure(stack: &Stack, kind: Kind, plan: &Plan) -> anyhow::Result<ToolReport> {
    ensure_passing(stack)?;
    stack.write_manifest("haproxy", kind.slots())?;
    eprintln!("[{kind}] run 1: wait {}", plan.wait);
    // `woken` (debug) marks when converge's source saw a change.
    let t = tool::start(stack, kind, plan.wait, "run1", RUST_LOG)?;
    for to_passing in [false, true] {
        flip(stack, &t, to_passing).context("warm-up flip")?;
        std::thread::sleep(plan.gap);
    }
    std::thread::sleep(Duration::from_secs(5));

    eprintln!("[{kind}] idle for {:?}", plan.idle);
    let (idle, idle_requests) = window(&t, || {
        std::thread::sleep(plan.idle);
        Ok(())
    })?;

    eprintln!("[{kind}] {} timed flips", plan.flips);
    let mut flips = Vec::new();
    let mut missed = Vec::new();
    let (churn, churn_requests) = window(&t, || {
        for i in 0..plan.flips {
            let to_passing = i % 2 == 1;
            match flip(stack, &t, to_passing) {
                Ok(f) => flips.push(f),
                Err(e) => {
                    eprintln!("[{kind}] flip {i}: {e:#}");
                    missed.push(format!("flip {i}: {e:#}"));
                    // Put the world back where the next flip expects it.
                    stack.set_flipped(to_passing)?;
                    stack.wait_config_has_flipped(to_passing)?;
                }
            }
            std::thread::sleep(plan.gap);
        }
        Ok(())
    })?;
    ensure_passing(stack)?;

    let mut bursts = Vec::new();
    for i in 0..plan.bursts {
        bursts.push(burst(stack, &t, plan, i)?);
    }
    let connections = t.proxy.connections();
    let mut complaints = t.complaints();
    let steps = if kind == Kind::ConsulTemplate {
        Vec::new()
    } else {
        let log = std::fs::read_to_string(&t.log).unwrap_or_default();
        let sent: Vec<(i64, Duration)> = flips
            .iter()
            .map(|f| (f.sent_unix_us, f.seen.latency))
            .collect();
        share::flip_steps(&log, &sent)
    };
    t.stop();

    eprintln!("[{kind}] run 2: wait {}", plan.flap_wait);
    let t = tool::start(stack, kind, plan.flap_wait, "run2", RUST_LOG)?;
    std::thread::sleep(Duration::from_secs(2));
    let flap_plan = Plan {
        wait: plan.flap_wait,
        ..plan.clone()
    };
    for i in 0..plan.bursts {
        bursts.push(burst(stack, &t, &flap_plan, i)?);
    }
    complaints.extend(t.complaints());
    t.stop();

    Ok(ToolReport {
        kind,
        idle,
        idle_requests,
        flips,
        missed,
        churn,
        churn_requests,
        bursts,
        connections,
        complaints,
        steps,
    })
}

/// Runs `body` and returns the tool's CPU/RSS over it and the requests it
/// sent to Consul meanwhile.
fn window(
    t: &Running,
    body: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<(Usage, Vec<Seen>)> {
    let pid = t.pid();
    let from = procstat::sample(pid).context("tool exited")?;
    body()?;
    let to = procstat::sample(pid).context("tool exited")?;
    Ok((Usage::between(&from, &to), t.proxy.seen_since(from.at)))
}

/// Flips the check, times the routing change, and waits until the tool
/// and HAProxy have finished what it caused (a reload, or a runtime-API
/// update).
fn flip(stack: &Stack, t: &Running, to_passing: bool) -> anyhow::Result<Flip> {
    let before = Counts::now(stack, t);
    let sent_unix_us = share::unix_micros(SystemTime::now());
    let t0 = Instant::now();
    stack.set_flipped(to_passing)?;
    let seen = probe::routing_change(stack.front, stack.flipped_name(), to_passing, t0, DEADLINE)
        .map_err(|e| anyhow::anyhow!("{e}\n{} log tail:\n{}", t.kind, t.log_tail(20)))?;
    wait::until(
        DEADLINE,
        "the tool and HAProxy to finish the change",
        || {
            let now = Counts::now(stack, t);
            let reloaded = now.tool > before.tool && now.haproxy > before.haproxy;
            (reloaded || now.runtime > before.runtime) && stack.haproxy_ready()
        },
    )
    .map_err(|e| anyhow::anyhow!("{e}\n{} log tail:\n{}", t.kind, t.log_tail(20)))?;
    let after = Counts::now(stack, t);
    Ok(Flip {
        to_passing,
        seen,
        tool_reloads: after.tool - before.tool,
        haproxy_reloads: after.haproxy - before.haproxy,
        runtime_updates: after.runtime - before.runtime,
        sent_unix_us,
    })
}

/// The three counters a change moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    tool: u64,
    haproxy: usize,
    runtime: u64,
}

impl Counts {
    fn now(stack: &Stack, t: &Running) -> Self {
        Self {
            tool: t.reloads(),
            haproxy: stack.haproxy_reloads(),
            runtime: t.runtime_updates(),
        }
    }
}

// Long on purpose: one burst's writes, waits and counts, in order.
/// Check changes `plan.flap_period` apart, starting from passing; then
/// waits for the dust to settle and counts the reloads. Even-numbered
/// bursts make `plan.flaps` changes, odd ones one fewer, so with an even
/// `flaps` every other burst ends where it started (a tool that waits for
/// quiet renders nothing new: 0 reloads is ideal) and the others end
/// flipped (1 reload is ideal).
fn burst(stack: &Stack, t: &Running, plan: &Plan, index: usize) -> anyhow::Result<Burst> {
    let changes = if index % 2 == 0 {
        plan.flaps
    } else {
        plan.flaps.saturating_sub(1)
    };
    let before = Counts::now(stack, t);
    let start = Instant::now();
    for k in 0..changes {
        let at = start + plan.flap_period * k as u32;
        if let Some(d) = at.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        stack.set_flipped(k % 2 == 1)?;
    }
    let took = start.elapsed();
    let passing = changes % 2 == 0;
    // Long enough for the wait window to close and a last reload to run.
    std::thread::sleep(plan.wait.max.max(plan.wait.min) + Duration::from_secs(2));
    // A tool that never reaches the final state is a finding, not a reason
    // to stop the run: record it, with what Consul and the tool said.
    let stuck = match stack.wait_config_has_flipped(passing) {
        Ok(()) => None,
        Err(e) => {
            let status = t.status().unwrap_or_default();
            let note = format!(
                "burst of {changes} changes (wait {}): final state never applied: {e:#}\n{} status: {status}",
                plan.wait, t.kind
            );
            eprintln!("[{}] {note}", t.kind);
            Some(note)
        }
    };
    settle(stack, t)?;
    // The file is right; is HAProxy serving it? (A lost reload leaves the
    // old config running under a correct file.)
    let stuck = stuck.or_else(|| {
        probe::routing_change(
            stack.front,
            stack.flipped_name(),
            passing,
            Instant::now(),
            Duration::from_secs(5),
        )
        .err()
        .map(|e| {
            let note = format!(
                "burst of {changes} changes (wait {}): the file is right but HAProxy does not serve it: {e}",
                plan.wait
            );
            eprintln!("[{}] {note}", t.kind);
            note
        })
    });
    let after = Counts::now(stack, t);
    let b = Burst {
        wait: plan.wait,
        changes,
        tool_reloads: after.tool - before.tool,
        haproxy_reloads: after.haproxy - before.haproxy,
        runtime_updates: after.runtime - before.runtime,
        took,
        stuck,
    };
    eprintln!(
        "[{}] burst of {} changes (wait {}): {} tool reloads, {} HAProxy reloads, {} runtime-API updates",
        t.kind, b.changes, b.wait, b.tool_reloads, b.haproxy_reloads, b.runtime_updates
    );
    if b.stuck.is_some() {
        // Two more changes wake any tool up; end passing.
        stack.set_flipped(!passing)?;
        std::thread::sleep(Duration::from_millis(300));
        stack.set_flipped(passing)?;
        std::thread::sleep(Duration::from_millis(300));
    }
    if !passing || b.stuck.is_some() {
        stack.set_flipped(true)?;
        stack.wait_config_has_flipped(true)?;
        settle(stack, t)?;
    }
    std::thread::sleep(Duration::from_secs(1));
    Ok(b)
}

/// Waits until neither the tool's nor HAProxy's reload count has moved for
/// a second and HAProxy's master handles SIGUSR2.
fn settle(stack: &Stack, t: &Running) -> anyhow::Result<()> {
    let mut last = Counts::now(stack, t);
    let mut since = Instant::now();
    wait::until(DEADLINE, "reloads to stop", || {
        let now = Counts::now(stack, t);
        if now != last {
            last = now;
            since = Instant::now();
        }
        since.elapsed() >= Duration::from_secs(1) && stack.haproxy_ready()
    })
    .map_err(anyhow::Error::msg)
}

/// Makes sure the flipped instance is passing and the config shows it.
fn ensure_passing(stack: &Stack) -> anyhow::Result<()> {
    stack.set_flipped(true)?;
    stack.wait_config_has_flipped(true)
}

/// Requests per minute over a window.
pub fn per_minute(requests: &[Seen], window: Duration) -> f64 {
    if window.is_zero() {
        return 0.0;
    }
    requests.len() as f64 * 60.0 / window.as_secs_f64()
}

/// `endpoint × count` lines, most requested first.
pub fn endpoints(requests: &[Seen]) -> String {
    let mut v: Vec<(String, usize)> = proxy::by_endpoint(requests).into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v.iter()
        .map(|(e, n)| format!("{n}× `{e}`"))
        .collect::<Vec<_>>()
        .join(", ")
}
