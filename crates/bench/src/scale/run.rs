//! `converge run` itself in the scale benchmark: the whole daemon path
//! (catalog source → pass → render → stage → `haproxy -c` → commit) on W
//! generated backends, one per watched service, through the shipped HAProxy
//! template.
//!
//! A flip is seen when the committed file shows it, polled like
//! consul-template's output file. Two modes ([`Mode`]):
//!
//! - [`Mode::File`]: nothing reloads (the target's reload is `none`), and as
//!   consul-template validates nothing before it writes, the validator's
//!   own run is taken out: the target's validator is `converge-bench
//!   time-validator FILE -- haproxy -c -f {}`, which records when `haproxy
//!   -c` started and exited, and every run between the previous flip's
//!   file and this one's is subtracted. The wrapper's own start-up (about
//!   1 ms, see "converge's own share at 1,000 instances" in BENCHMARKS.md)
//!   stays in converge's share. converge's log splits each flip further as
//!   [`crate::share`] does (flip → the source's snapshot woke the daemon,
//!   → validator spawned, validator exited → committed).
//! - [`Mode::Haproxy`]: a real HAProxy (master-worker) runs the file, and
//!   the backends opt in to the runtime API (`runtime_api: {slots: N}`), so
//!   a check going critical takes the instance out of HAProxy over its
//!   stats socket (its slot set to maintenance, or its dynamic server
//!   deleted with `slots: 0`) and passing again puts it back, without a
//!   reload. The flip is also timed until HAProxy's runtime state shows it
//!   (flip → routed): `show servers state` of the flipped backend, polled
//!   every millisecond, has a server up at the instance's address, or no
//!   longer has one. The runtime API needs the built-in `haproxy`
//!   validator (which it overlaps with its commands), so `haproxy -c` is
//!   not taken out here. HAProxy's own checks would go to the instances'
//!   `10.x` addresses, where nothing answers; every server's checks go to
//!   a loopback HTTP backend that passes them instead, at most once an
//!   hour (`inter 1h`, besides the one HAProxy makes when a server leaves
//!   maintenance), so HAProxy never leaves this machine, a server is up
//!   as soon as the runtime API lets it be, and 5,000 servers' checks do
//!   not load the machine the flips are timed on.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use converge_programs::haproxy::runtime_api::live_servers;
use converge_testkit::backend::HttpBackend;
use converge_testkit::consul::External;
use converge_testkit::haproxy::minimal_config;
use converge_testkit::proxy::CountingProxy;
use converge_testkit::{free_port, Child, Haproxy};

use super::ct::wait_for;
use super::dc::{self, measure as phases, Datacenter, Row, Sampler, Watcher};
use super::ScaleArgs;
use crate::procstat;
use crate::share::{self, parse_timings, unix_micros};
use crate::stack;
use crate::stats::{ms, Summary};

/// Where the daemon's changes go (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Only to the file; the validator's own run is taken out.
    File,
    /// To a real HAProxy too, over its runtime API, with `slots` server
    /// slots per backend (0: every instance is a dynamic server).
    Haproxy {
        /// `runtime_api: {slots: N}` of every backend.
        slots: u32,
    },
}

/// Measures `converge run` (the binary `converge`) watching `s0 … s{W-1}`
/// over plain HTTP.
pub fn measure(
    dc: &mut Datacenter,
    args: &ScaleArgs,
    converge: &Path,
    mode: Mode,
) -> anyhow::Result<Row> {
    let dir = tempfile::Builder::new()
        .prefix("converge-scale-run")
        .tempdir()?;
    let root = dir.path().join("root");
    let timings = (mode == Mode::File).then(|| dir.path().join("validator-times.txt"));
    for sub in ["manifests", "root/etc/haproxy", "root/run/haproxy"] {
        fs::create_dir_all(dir.path().join(sub))?;
    }
    let front = free_port();
    let checks = match mode {
        Mode::File => None,
        Mode::Haproxy { .. } => Some(HttpBackend::start("checks").context("check backend")?),
    };
    fs::write(
        dir.path().join("manifests/site.yaml"),
        manifest(
            args.watched,
            front,
            mode,
            checks.as_ref().map(HttpBackend::port),
            timings.as_deref(),
        )?,
    )?;
    let file = root.join("etc/haproxy/haproxy.cfg");
    let socket = root.join("run/haproxy/admin.sock");
    // HAProxy starts on a config without servers; the daemon's first
    // commit is a new config and reloads it onto the W backends. Declared
    // before the daemon, so it is stopped (by its pid) after it.
    let haproxy = match mode {
        Mode::File => None,
        Mode::Haproxy { .. } => {
            fs::write(&file, minimal_config(&root.join("run/haproxy"), front, &[]))?;
            let h = Haproxy::start(&file, &root.join("run/haproxy.pid"), &socket)
                .map_err(anyhow::Error::msg)
                .context("haproxy")?;
            Some(h)
        }
    };
    let upstream = dc.agent.http_addr();
    let proxy = CountingProxy::start(upstream).context("counting proxy")?;
    let sampler = Sampler::start(upstream.port());
    let log = dir.path().join("converge.log");
    let out = fs::File::create(&log)?;
    let mut cmd = Command::new(converge);
    cmd.args(["run", "--node", "lb1", "--log-format", "json"])
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .arg("--manifests")
        .arg(dir.path().join("manifests"))
        .arg("--templates")
        .arg(stack::repo().join("templates"))
        .arg("--root")
        .arg(&root)
        .args(["--consul", &proxy.url()])
        .args(["--wait-min", "0ms", "--wait-max", "0ms"])
        .env(
            "RUST_LOG",
            "info,converge_agent::daemon=debug,converge_programs::process=debug",
        )
        .env("NO_COLOR", "1")
        .env_remove("CONSUL_HTTP_ADDR")
        .env_remove("CONSUL_HTTP_TOKEN")
        .env_remove("CONSUL_HTTP_TOKEN_FILE")
        .env_remove("CONVERGE_FAILPOINT")
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    let started = Instant::now();
    let child = Child::spawn("converge run", &mut cmd).context("spawn converge run")?;
    let mut row = Row {
        label: match mode {
            Mode::File => "converge run, HTTP/1.1 (flip → committed file)".to_string(),
            Mode::Haproxy { slots } => format!(
                "converge run, HTTP/1.1, HAProxy runtime API, slots: {slots} (flip → committed file)"
            ),
        },
        ..Row::default()
    };
    let last = format!("s{}", args.watched - 1);
    let ready = wait_for(args.startup_timeout, || {
        fs::read_to_string(&file).is_ok_and(|t| t.contains(&format!("\nbackend {last}\n")))
            && (haproxy.is_none()
                || live_servers(&socket, Some(&last), SOCKET_TIMEOUT).is_ok_and(|s| !s.is_empty()))
    });
    if !ready {
        let tail = fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = tail.lines().rev().take(20).collect();
        anyhow::bail!(
            "{}: no committed file with every backend in time{}; log tail:\n{}",
            row.label,
            if haproxy.is_some() {
                " or HAProxy not running it"
            } else {
                ""
            },
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    row.startup = Some(started.elapsed());
    let mut w = Run {
        child: &child,
        file,
        timings,
        seen: None,
        since: 0,
        starts: Vec::new(),
        validator: Duration::ZERO,
        routed: haproxy.as_ref().map(|_| Routed {
            socket,
            flipped: Instant::now(),
            latencies: Vec::new(),
        }),
    };
    phases(dc, args, &mut w, &proxy, true, &mut row)?;
    row.peak_connections = sampler.peak();
    let text = fs::read_to_string(&log).unwrap_or_default();
    row.note = match (&w.timings, &w.routed) {
        (Some(timings), _) => validator_split(&text, &w.starts, timings),
        (None, Some(r)) => routed_split(&text, &w.starts, &r.latencies),
        (None, None) => String::new(),
    };
    Ok(row)
}

/// [`Mode::File`]'s note: each flip split by converge's log and the
/// validator's timings.
fn validator_split(log: &str, starts: &[i64], timings: &Path) -> String {
    let (passes, unmatched) = share::breakdown(
        log,
        starts,
        &fs::read_to_string(timings).unwrap_or_default(),
    );
    let p50 = |f: fn(&share::Pass) -> Duration| {
        Summary::of(&passes.iter().map(f).collect::<Vec<_>>()).map_or("—".into(), |s| ms(s.p50))
    };
    format!(
        "; from its log, p50 of {} flips ({unmatched} unmatched): flip → woken {}, \
         woken → validator spawned {}, validator exited → committed {}, \
         own share (woken → committed − validator) {}",
        passes.len(),
        p50(|p| p.source),
        p50(|p| p.before_validator),
        p50(|p| p.after_validator),
        p50(|p| p.own),
    )
}

/// [`Mode::Haproxy`]'s note: flip → routed, each flip split by converge's
/// log, and how the changes reached HAProxy (from the log lines after the
/// first flip, so the start-up's reload is left out): a runtime-API update
/// per flip, or a reload where converge fell back to one.
fn routed_split(log: &str, starts: &[i64], latencies: &[(bool, Duration)]) -> String {
    let routed: Vec<Duration> = latencies.iter().map(|&(_, d)| d).collect();
    let p50_of = |back: bool| {
        let v: Vec<Duration> = latencies
            .iter()
            .filter(|&&(b, _)| b == back)
            .map(|&(_, d)| d)
            .collect();
        Summary::of(&v).map_or("—".into(), |s| ms(s.p50))
    };
    let flips: Vec<(i64, Duration)> = starts.iter().copied().zip(routed.iter().copied()).collect();
    let steps = share::flip_steps(log, &flips);
    let p50 = |f: fn(&share::Steps) -> Duration| {
        Summary::of(&steps.iter().map(f).collect::<Vec<_>>()).map_or("—".into(), |s| ms(s.p50))
    };
    let from = starts.first().copied().unwrap_or(i64::MAX);
    // (message, unix µs) of every log line from the first flip on.
    let during: Vec<(String, i64)> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            let at = v["timestamp"]
                .as_str()
                .and_then(share::parse_rfc3339_micros)?;
            Some((v["fields"]["message"].as_str()?.to_string(), at))
        })
        .filter(|&(_, at)| at >= from)
        .collect();
    let count = |message: &str| during.iter().filter(|(m, _)| m == message).count();
    // p50 of flip → the first `message` logged before the next flip.
    let after_flip = |message: &str| {
        let v: Vec<Duration> = starts
            .iter()
            .enumerate()
            .filter_map(|(i, &t0)| {
                let next = starts.get(i + 1).copied().unwrap_or(i64::MAX);
                let (_, at) = during
                    .iter()
                    .find(|(m, at)| m == message && (t0..next).contains(at))?;
                Some(Duration::from_micros(u64::try_from(at - t0).ok()?))
            })
            .collect();
        Summary::of(&v).map_or("—".into(), |s| ms(s.p50))
    };
    format!(
        "flip → routed (HAProxy's runtime state) {} (p50 leaving {}, coming back {}); \
         from its log, p50 of {} flips: flip → woken {}, woken → committed {}; \
         flip → validator spawned {}, flip → runtime-API update logged {}; \
         {} runtime-API updates, {} reloads",
        Summary::of(&routed).map_or("—".into(), |s| format!(
            "{} / {} / {}",
            ms(s.p50),
            ms(s.p90),
            ms(s.max)
        )),
        p50_of(false),
        p50_of(true),
        steps.len(),
        p50(|s| s.source),
        p50(|s| s.pass),
        after_flip("validator spawned"),
        after_flip("HAProxy runtime API"),
        count("HAProxy runtime API"),
        count("reload"),
    )
}

/// W backends `s0 … s{W-1}`, each its own service with an HTTP check, and
/// the shipped HAProxy template: in [`Mode::File`] validated through the
/// timing wrapper (writing `timings`) and never reloaded, in
/// [`Mode::Haproxy`] validated and reloaded as in production, with the
/// backends' servers on the runtime API and their checks sent to
/// `127.0.0.1:check_port`.
fn manifest(
    watched: usize,
    front: u16,
    mode: Mode,
    check_port: Option<u16>,
    timings: Option<&Path>,
) -> anyhow::Result<String> {
    let backend = match (mode, check_port) {
        (Mode::Haproxy { slots }, Some(port)) => format!(
            "    server_options: [addr 127.0.0.1, port {port}, inter 1h]\n    \
             runtime_api: {{slots: {slots}}}\n"
        ),
        _ => String::new(),
    };
    let mut m = format!(
        "nodes:\n  lb1: {{}}\nhaproxy:\n  stats_socket: /run/haproxy/admin.sock\n\
         frontends:\n  http_in:\n    bind: [\"127.0.0.1:{front}\"]\n    \
         default_backend: s0\nbackends:\n"
    );
    for s in 0..watched {
        m.push_str(&format!(
            "  s{s}:\n    service: s{s}\n    health_check: {{path: /up}}\n{backend}"
        ));
    }
    m.push_str(
        "targets:\n  haproxy:\n    template: haproxy.cfg.tera\n    \
         destination: /etc/haproxy/haproxy.cfg\n",
    );
    match timings {
        Some(timings) => m.push_str(&format!(
            "    validate: {{command: [{}, time-validator, {}, \"--\", haproxy, -c, -f, \"{{}}\"]}}\n    \
             reload: none\n",
            json(&std::env::current_exe().context("own path")?),
            json(timings)
        )),
        None => m.push_str(
            "    validate: haproxy\n    \
             reload:\n      signal: {pidfile: /run/haproxy.pid, signal: SIGUSR2}\n",
        ),
    }
    Ok(m)
}

fn json(p: &Path) -> String {
    serde_json::to_string(&p.display().to_string()).unwrap_or_default()
}

/// How long one `show servers state` may take.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(1);

struct Run<'a> {
    child: &'a Child,
    file: PathBuf,
    /// The timing validator's file ([`Mode::File`] only).
    timings: Option<PathBuf>,
    /// The committed file's modification time when last read.
    seen: Option<SystemTime>,
    /// When the flip being watched was made (unix µs): validator runs
    /// that start before it belong to something else.
    since: i64,
    /// When each watched flip was made (unix µs).
    starts: Vec<i64>,
    /// The validator's time in the last flip.
    validator: Duration,
    /// HAProxy's side ([`Mode::Haproxy`] only).
    routed: Option<Routed>,
}

/// Flip → routed: when HAProxy's runtime state showed each flip.
struct Routed {
    socket: PathBuf,
    /// When the flip being watched was made.
    flipped: Instant,
    /// Per flip: whether the instance came back (passing), and the time.
    latencies: Vec<(bool, Duration)>,
}

impl Routed {
    /// Whether HAProxy sends traffic to `endpoint` in `e`'s backend: a
    /// server there that is up (neither in maintenance nor down). `None`
    /// when the socket gave no answer.
    fn routes(&self, e: External, endpoint: &str) -> Option<bool> {
        let servers = live_servers(&self.socket, Some(&e.service_name()), SOCKET_TIMEOUT).ok()?;
        Some(
            servers
                .iter()
                .any(|s| s.endpoint == endpoint && s.state == "UP"),
        )
    }
}

impl Watcher for Run<'_> {
    fn shows(&mut self, e: External, status: &str, deadline: Duration) -> bool {
        // The shipped template renders passing instances only, each on a
        // server line with its address (in a slot, whose name does not
        // say which instance it holds, too).
        let endpoint = format!("{}:{}", e.address(), e.port());
        let line = format!(" {endpoint} ");
        let want = status == "passing";
        let mut committed = false;
        let mut routed = self.routed.is_none();
        let shown = wait_for(deadline, || {
            if let (false, Some(r)) = (routed, &mut self.routed) {
                if r.routes(e, &endpoint) == Some(want) {
                    r.latencies.push((want, r.flipped.elapsed()));
                    routed = true;
                }
            }
            if !committed {
                let now = fs::metadata(&self.file).and_then(|m| m.modified()).ok();
                if now != self.seen {
                    self.seen = now;
                    committed =
                        fs::read_to_string(&self.file).is_ok_and(|t| t.contains(&line) == want);
                }
            }
            committed && routed
        });
        if let Some(timings) = &self.timings {
            let until = unix_micros(SystemTime::now());
            let runs = parse_timings(&fs::read_to_string(timings).unwrap_or_default());
            let us: i64 = runs
                .iter()
                .filter(|&&(start, end)| start >= self.since && end <= until)
                .map(|&(start, end)| end - start)
                .sum();
            self.validator = Duration::from_micros(u64::try_from(us).unwrap_or(0));
        }
        shown
    }

    fn flipping(&mut self) {
        self.since = unix_micros(SystemTime::now());
        self.starts.push(self.since);
        if let Some(r) = &mut self.routed {
            r.flipped = Instant::now();
        }
    }

    fn excluded(&self) -> Option<Duration> {
        self.timings.as_ref().map(|_| self.validator)
    }

    fn cpu(&self) -> Duration {
        procstat::sample(self.child.pid()).map_or(Duration::ZERO, |s| dc::ticks(s.own_ticks))
    }

    fn memory(&self) -> (u64, u64) {
        procstat::sample(self.child.pid()).map_or((0, 0), |s| (s.rss_kib, s.hwm_kib))
    }
}
