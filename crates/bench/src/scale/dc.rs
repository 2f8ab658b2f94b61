//! The datacenter every tool of the scale benchmark watches, and the one
//! sequence of measurements every tool goes through (`measure`), so the
//! numbers of the tools compare like for like.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use converge_testkit::consul::{open_connections_to, ConsulAgent, External};
use converge_testkit::proxy::CountingProxy;

use super::ScaleArgs;
use crate::procstat;
use crate::stats::Summary;

/// The agent and the state of every check the benchmark flipped.
pub struct Datacenter {
    /// The agent (HTTP and HTTPS).
    pub agent: ConsulAgent,
    /// How long registering the datacenter took.
    pub registered_in: Duration,
    critical: HashSet<(usize, usize)>,
}

impl Datacenter {
    /// Starts the agent and registers the datacenter.
    pub fn start(args: &ScaleArgs) -> anyhow::Result<Self> {
        let agent = ConsulAgent::start_with_tls().map_err(anyhow::Error::msg)?;
        let t = Instant::now();
        agent
            .register_synthetic(args.services, args.instances)
            .map_err(anyhow::Error::msg)
            .context("registering the datacenter")?;
        let registered_in = t.elapsed();
        eprintln!(
            "registered {} × {} instances in {registered_in:?}",
            args.services, args.instances
        );
        Ok(Self {
            agent,
            registered_in,
            critical: HashSet::new(),
        })
    }

    /// Raises the agent's connection limit per client address.
    pub fn raise_limit(&mut self, limit: u32) -> anyhow::Result<()> {
        self.agent
            .set_http_conn_limit(limit)
            .map_err(anyhow::Error::msg)
    }

    /// Flips `e`'s check to the other status; returns the new one.
    fn flip(&mut self, e: External) -> anyhow::Result<&'static str> {
        let key = (e.service, e.instance);
        let status = if self.critical.remove(&key) {
            "passing"
        } else {
            self.critical.insert(key);
            "critical"
        };
        self.agent
            .set_external(e, e.port(), status)
            .map_err(anyhow::Error::msg)?;
        Ok(status)
    }

    /// The agent's CPU time so far.
    pub fn agent_cpu(&self) -> Duration {
        let pid = self.agent.pid().unwrap_or_default();
        procstat::sample(pid).map_or(Duration::ZERO, |s| ticks(s.own_ticks))
    }
}

/// CPU ticks of `/proc` as time (`USER_HZ` is 100 on Linux).
pub fn ticks(t: u64) -> Duration {
    Duration::from_millis(t * 10)
}

/// A tool under measurement, as the phases see it.
pub trait Watcher {
    /// Waits up to `deadline` until the tool shows `e` at `status`.
    fn shows(&mut self, e: External, status: &str, deadline: Duration) -> bool;
    /// Called just before a watched flip is made.
    fn flipping(&mut self) {}
    /// Of the last flip [`Watcher::shows`] saw, the time that is not the
    /// tool's to count (a validator's own run); `None` for a tool that runs
    /// none.
    fn excluded(&self) -> Option<Duration> {
        None
    }
    /// The tool's CPU time so far.
    fn cpu(&self) -> Duration;
    /// The tool's resident memory now and at its peak, KiB.
    fn memory(&self) -> (u64, u64);
}

/// One tool's results.
#[derive(Debug, Default)]
pub struct Row {
    /// Tool and mode.
    pub label: String,
    /// Until everything was read (rendered); `None`: not within the timeout.
    pub startup: Option<Duration>,
    /// Flip → seen without the validator's own run, for a tool that
    /// validates before it writes.
    pub without_validator: Option<Summary>,
    /// Watched flip → snapshot (file).
    pub flips: Option<Summary>,
    /// Bytes read per watched flip.
    pub watched_bytes: u64,
    /// Bytes read per unwatched flip.
    pub unwatched_bytes: u64,
    /// Requests per unwatched flip (plain HTTP only).
    pub unwatched_requests: Option<f64>,
    /// The tool's CPU per unwatched flip, idle share taken out.
    pub unwatched_cpu: Duration,
    /// The agent's CPU per unwatched flip (applying it and answering every
    /// tool's wake-ups), idle share taken out.
    pub agent_cpu: Duration,
    /// Requests per minute while idle (plain HTTP only).
    pub idle_requests: Option<f64>,
    /// Bytes per minute while idle.
    pub idle_bytes: u64,
    /// Most connections to the agent at once.
    pub peak_connections: usize,
    /// Resident memory at the end and at the peak, KiB.
    pub memory: (u64, u64),
    /// What else the reader should know.
    pub note: String,
}

/// Samples the connections to one port until dropped.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl Sampler {
    /// Starts sampling this process's connections to `port` (the proxy's
    /// connections upstream, one per connection of the tool).
    pub fn start(port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicUsize::new(0));
        let thread = std::thread::spawn({
            let (stop, peak) = (stop.clone(), peak.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    peak.fetch_max(open_connections_to(port), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        });
        Self {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    /// The peak so far.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The phases after start-up: idle window, watched flips, unwatched flips.
pub fn measure(
    dc: &mut Datacenter,
    args: &ScaleArgs,
    w: &mut impl Watcher,
    proxy: &CountingProxy,
    plain_http: bool,
    row: &mut Row,
) -> anyhow::Result<()> {
    let requests = |p: &CountingProxy| p.seen().len();
    // Idle.
    std::thread::sleep(Duration::from_secs(2));
    let (b0, r0, c0, a0) = (
        proxy.bytes_received(),
        requests(proxy),
        w.cpu(),
        dc.agent_cpu(),
    );
    let t0 = Instant::now();
    std::thread::sleep(args.idle);
    let minutes = t0.elapsed().as_secs_f64() / 60.0;
    let idle_cpu_rate = (w.cpu() - c0).as_secs_f64() / t0.elapsed().as_secs_f64();
    let agent_idle_rate = (dc.agent_cpu() - a0).as_secs_f64() / t0.elapsed().as_secs_f64();
    row.idle_bytes = ((proxy.bytes_received() - b0) as f64 / minutes) as u64;
    row.idle_requests = plain_http.then(|| (requests(proxy) - r0) as f64 / minutes);

    // Watched flips, in pairs: an instance's check goes critical, then
    // passes again, so both an instance leaving and one coming back are
    // timed (a runtime-API backend takes them with different commands).
    let mut latencies = Vec::with_capacity(args.flips);
    let mut own = Vec::new();
    let b0 = proxy.bytes_received();
    for k in 0..args.flips {
        let e = External {
            service: (k / 2 * 7919) % args.watched,
            instance: 0,
        };
        w.flipping();
        let t = Instant::now();
        let status = dc.flip(e)?;
        anyhow::ensure!(
            w.shows(e, status, Duration::from_secs(60)),
            "{}: {} {status} never showed",
            row.label,
            e.id()
        );
        let latency = t.elapsed();
        latencies.push(latency);
        if let Some(excluded) = w.excluded() {
            own.push(latency.saturating_sub(excluded));
        }
        std::thread::sleep(args.gap);
    }
    row.flips = Summary::of(&latencies);
    row.without_validator = Summary::of(&own);
    row.watched_bytes = (proxy.bytes_received() - b0) / args.flips.max(1) as u64;

    // Unwatched flips, each checked to have reached the agent by the
    // watched flip that closes the window.
    let unwatched = args.services - args.watched;
    let (b0, r0, c0, a0, t0) = (
        proxy.bytes_received(),
        requests(proxy),
        w.cpu(),
        dc.agent_cpu(),
        Instant::now(),
    );
    for k in 0..args.unwatched_flips {
        let e = External {
            service: args.watched + (k / 2) % unwatched,
            instance: 1,
        };
        dc.flip(e)?;
        std::thread::sleep(args.gap);
    }
    let n = args.unwatched_flips.max(1) as f64;
    let elapsed = t0.elapsed().as_secs_f64();
    let own = (w.cpu() - c0).as_secs_f64() - idle_cpu_rate * elapsed;
    row.unwatched_cpu = Duration::from_secs_f64((own / n).max(0.0));
    let agent = (dc.agent_cpu() - a0).as_secs_f64() - agent_idle_rate * elapsed;
    row.agent_cpu = Duration::from_secs_f64((agent / n).max(0.0));
    row.unwatched_bytes = ((proxy.bytes_received() - b0) as f64 / n) as u64;
    row.unwatched_requests = plain_http.then(|| (requests(proxy) - r0) as f64 / n);
    row.memory = w.memory();
    Ok(())
}
