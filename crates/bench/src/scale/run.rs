//! `converge run` itself in the scale benchmark: the whole daemon path
//! (catalog source → pass → render → stage → `haproxy -c` → commit) on W
//! generated backends, one per watched service, through the shipped HAProxy
//! template.
//!
//! A flip is seen when the committed file shows it, polled like
//! consul-template's output file. consul-template validates nothing before
//! it writes, so the validator's own run is taken out: the target's
//! validator is `converge-bench time-validator FILE -- haproxy -c -f {}`,
//! which records when `haproxy -c` started and exited, and every run
//! between the previous flip's file and this one's is subtracted. The
//! wrapper's own start-up (about 1 ms, see "converge's own share at 1,000
//! instances" in BENCHMARKS.md) stays in converge's share. converge's log
//! splits each flip further as [`crate::share`] does (flip → the source's
//! snapshot woke the daemon, → validator spawned, validator exited →
//! committed). Nothing reloads:
//! the target's reload is `none`, as HAProxy is not part of this
//! benchmark.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use converge_testkit::consul::External;
use converge_testkit::proxy::CountingProxy;
use converge_testkit::{free_port, Child};

use super::ct::wait_for;
use super::dc::{self, measure as phases, Datacenter, Row, Sampler, Watcher};
use super::ScaleArgs;
use crate::procstat;
use crate::share::{self, parse_timings, unix_micros};
use crate::stack;
use crate::stats::{ms, Summary};

/// Measures `converge run` (the binary `converge`) watching `s0 … s{W-1}`
/// over plain HTTP.
pub fn measure(dc: &mut Datacenter, args: &ScaleArgs, converge: &Path) -> anyhow::Result<Row> {
    let dir = tempfile::Builder::new()
        .prefix("converge-scale-run")
        .tempdir()?;
    let timings = dir.path().join("validator-times.txt");
    for sub in ["manifests", "root"] {
        fs::create_dir_all(dir.path().join(sub))?;
    }
    fs::write(
        dir.path().join("manifests/site.yaml"),
        manifest(args.watched, &timings)?,
    )?;
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
        .arg(dir.path().join("root"))
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
    let file = dir.path().join("root/etc/haproxy/haproxy.cfg");
    let mut row = Row {
        label: "converge run, HTTP/1.1 (flip → committed file)".to_string(),
        ..Row::default()
    };
    let last = format!("\nbackend s{}\n", args.watched - 1);
    let ready = wait_for(args.startup_timeout, || {
        fs::read_to_string(&file).is_ok_and(|t| t.contains(&last))
    });
    if !ready {
        let tail = fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = tail.lines().rev().take(20).collect();
        anyhow::bail!(
            "{}: no committed file with every backend in time; log tail:\n{}",
            row.label,
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
    };
    phases(dc, args, &mut w, &proxy, true, &mut row)?;
    row.peak_connections = sampler.peak();
    let (passes, unmatched) = share::breakdown(
        &fs::read_to_string(&log).unwrap_or_default(),
        &w.starts,
        &fs::read_to_string(&w.timings).unwrap_or_default(),
    );
    let p50 = |f: fn(&share::Pass) -> Duration| {
        Summary::of(&passes.iter().map(f).collect::<Vec<_>>()).map_or("—".into(), |s| ms(s.p50))
    };
    row.note = format!(
        "; from its log, p50 of {} flips ({unmatched} unmatched): flip → woken {}, \
         woken → validator spawned {}, validator exited → committed {}, \
         own share (woken → committed − validator) {}",
        passes.len(),
        p50(|p| p.source),
        p50(|p| p.before_validator),
        p50(|p| p.after_validator),
        p50(|p| p.own),
    );
    Ok(row)
}

/// W backends `s0 … s{W-1}`, each its own service with an HTTP check, and
/// the shipped HAProxy template validated through the timing wrapper.
fn manifest(watched: usize, timings: &Path) -> anyhow::Result<String> {
    let exe = std::env::current_exe().context("own path")?;
    let mut m = format!(
        "nodes:\n  lb1: {{}}\nfrontends:\n  http_in:\n    bind: [\"127.0.0.1:{}\"]\n    \
         default_backend: s0\nbackends:\n",
        free_port()
    );
    for s in 0..watched {
        m.push_str(&format!(
            "  s{s}:\n    service: s{s}\n    health_check: {{path: /up}}\n"
        ));
    }
    m.push_str(&format!(
        "targets:\n  haproxy:\n    template: haproxy.cfg.tera\n    \
         destination: /etc/haproxy/haproxy.cfg\n    \
         validate: {{command: [{}, time-validator, {}, \"--\", haproxy, -c, -f, \"{{}}\"]}}\n    \
         reload: none\n",
        json(&exe),
        json(timings)
    ));
    Ok(m)
}

fn json(p: &Path) -> String {
    serde_json::to_string(&p.display().to_string()).unwrap_or_default()
}

struct Run<'a> {
    child: &'a Child,
    file: PathBuf,
    timings: PathBuf,
    /// The committed file's modification time when last read.
    seen: Option<SystemTime>,
    /// When the flip being watched was made (unix µs): validator runs
    /// that start before it belong to something else.
    since: i64,
    /// When each watched flip was made (unix µs).
    starts: Vec<i64>,
    /// The validator's time in the last flip.
    validator: Duration,
}

impl Watcher for Run<'_> {
    fn shows(&mut self, e: External, status: &str, deadline: Duration) -> bool {
        // The shipped template renders passing instances only; a server is
        // named after its instance's id and node (`s3-0:n3-0`).
        let line = format!("\n    server {}:", e.id());
        let want = status == "passing";
        let shown = wait_for(deadline, || {
            let now = fs::metadata(&self.file).and_then(|m| m.modified()).ok();
            if now == self.seen {
                return false;
            }
            self.seen = now;
            fs::read_to_string(&self.file).is_ok_and(|t| t.contains(&line) == want)
        });
        let until = unix_micros(SystemTime::now());
        let runs = parse_timings(&fs::read_to_string(&self.timings).unwrap_or_default());
        let us: i64 = runs
            .iter()
            .filter(|&&(start, end)| start >= self.since && end <= until)
            .map(|&(start, end)| end - start)
            .sum();
        self.validator = Duration::from_micros(u64::try_from(us).unwrap_or(0));
        shown
    }

    fn flipping(&mut self) {
        self.since = unix_micros(SystemTime::now());
        self.starts.push(self.since);
    }

    fn excluded(&self) -> Option<Duration> {
        Some(self.validator)
    }

    fn cpu(&self) -> Duration {
        procstat::sample(self.child.pid()).map_or(Duration::ZERO, |s| dc::ticks(s.own_ticks))
    }

    fn memory(&self) -> (u64, u64) {
        procstat::sample(self.child.pid()).map_or((0, 0), |s| (s.rss_kib, s.hwm_kib))
    }
}
