//! converge's own share of a flip's latency at many backends, read from
//! its own logs.
//!
//! converge runs with JSON logs at info level plus debug for
//! `converge_agent::daemon`, which logs `woken trigger=Catalog` when the
//! Consul source publishes a snapshot (the change is visible to converge),
//! and for `converge_programs::process`, which logs `validator spawned` once
//! the validator's process has been started (fork and exec returned). The
//! apply logs `committed` once the new file is renamed into place, then
//! `reload`. To know when `haproxy -c` exited, the manifest's validator for
//! this run is `converge-bench time-validator FILE -- haproxy -c -f {}`,
//! which records when it started and when `haproxy -c` exited (wall clock,
//! the clock tracing's timestamps use) and passes the exit status through.
//!
//! own share = (committed − woken) − (`haproxy -c` exited − spawned)
//!
//! That leaves in converge's share: reloading manifests and templates,
//! guard, render, plan, staging (write + fsync), fork and exec of the
//! validator, noticing its exit and reaping it (and the wrapper's own exit
//! after `haproxy -c`'s), commit (rename + directory fsync). The time
//! between `spawned` and the wrapper's first timestamp is the wrapper's
//! own start-up, which in production would be `haproxy`'s own loading; it
//! is reported on its own row and counted with the validator.

use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use converge_testkit::wait;

use crate::stack::{Stack, DEADLINE, FLIPPED};
use crate::stats::Summary;
use crate::tool::{self, Kind, Wait};

/// `converge-bench time-validator FILE -- PROGRAM ARGS...`: runs the
/// program, appends `START_US END_US STATUS` to FILE, exits with its status.
pub fn time_validator_main(args: &[String]) -> i32 {
    let start = unix_micros(SystemTime::now());
    let (Some(file), Some(sep)) = (args.first(), args.get(1)) else {
        eprintln!("usage: converge-bench time-validator FILE -- PROGRAM ARGS...");
        return 2;
    };
    if sep != "--" || args.len() < 3 {
        eprintln!("usage: converge-bench time-validator FILE -- PROGRAM ARGS...");
        return 2;
    }
    let status = Command::new(&args[2]).args(&args[3..]).status();
    let end = unix_micros(SystemTime::now());
    let code = match status {
        Ok(s) => s.code().unwrap_or(1),
        Err(e) => {
            eprintln!("cannot run {}: {e}", args[2]);
            127
        }
    };
    let line = format!("{start} {end} {code}\n");
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        eprintln!("cannot record validator timing in {file}: {e}");
    }
    code
}

/// The breakdown of one flip.
#[derive(Debug, Clone, Copy)]
pub struct Pass {
    /// Flip (check PUT) → source published the snapshot.
    pub source: Duration,
    /// woken → validator spawned (load, guard, render, plan, stage, fork
    /// and exec).
    pub before_validator: Duration,
    /// validator spawned → `haproxy -c` exited, as the wrapper timed it.
    pub validator: Duration,
    /// Of `validator`: spawned → the wrapper's first timestamp.
    pub wrapper_start: Duration,
    /// validator exited → committed (reap, rename, fsync).
    pub after_validator: Duration,
    /// committed → `reload` logged (signal and converge's 200 ms settle).
    pub reload: Duration,
    /// converge's own share: woken → committed minus the validator.
    pub own: Duration,
}

/// The result at many backends.
#[derive(Debug)]
pub struct ShareReport {
    /// Instances of `web`.
    pub backends: usize,
    /// One entry per flip that could be matched in the logs.
    pub passes: Vec<Pass>,
    /// Flips that could not be matched.
    pub unmatched: usize,
    /// Size of the rendered config, bytes.
    pub config_bytes: usize,
    /// This disk's cost of one durable replace of a file that size (write,
    /// fsync, rename, fsync of the directory), measured just before: the
    /// floor under any step that makes a file durable.
    pub durable_write: Option<Summary>,
}

impl ShareReport {
    /// Summary of one column.
    pub fn summary(&self, f: impl Fn(&Pass) -> Duration) -> Option<Summary> {
        Summary::of(&self.passes.iter().map(f).collect::<Vec<_>>())
    }
}

/// Registers instances up to `total`, runs converge with the timing
/// validator and wait `wait`, flips one check `flips` times and reads the
/// breakdown from the logs.
pub fn measure(
    stack: &mut Stack,
    total: usize,
    flips: usize,
    gap: Duration,
    wait: Wait,
) -> anyhow::Result<ShareReport> {
    eprintln!("[share] registering {total} instances of web");
    stack.register_extra(total)?;
    let timings = stack.path("logs/validator-times.txt");
    let exe = std::env::current_exe().context("own path")?;
    stack.write_manifest(
        &format!(
            "{{command: [{}, time-validator, {}, \"--\", haproxy, -c, -f, \"{{}}\"]}}",
            yaml_str(&exe),
            yaml_str(&timings)
        ),
        None,
    )?;
    let t = tool::start(
        stack,
        Kind::Converge,
        wait,
        "share",
        "info,converge_agent::daemon=debug,converge_programs::process=debug",
    )?;
    let servers = |cfg: &str| cfg.matches("    server web-").count();
    wait::until(DEADLINE, "converge to render every instance", || {
        servers(&stack.config()) == total
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", t.log_tail(20)))?;
    wait::until(DEADLINE, "HAProxy to load every instance", || {
        stack.haproxy_ready()
            && stack
                .haproxy()
                .try_command("show servers state web")
                .map(|s| s.lines().filter(|l| l.contains(" web-")).count() == total)
                .unwrap_or(false)
    })
    .map_err(anyhow::Error::msg)?;
    std::thread::sleep(Duration::from_secs(2));
    let config_bytes = stack.config().len();
    let durable_write = durable_write(&stack.path("logs"), config_bytes, 30)?;

    eprintln!("[share] {flips} flips at {total} instances");
    let mut starts = Vec::new();
    for i in 0..flips {
        let to_passing = i % 2 == 1;
        let before = t.reloads();
        starts.push(unix_micros(SystemTime::now()));
        stack.set_flipped(to_passing)?;
        wait::until(DEADLINE, "converge to reload", || {
            t.reloads() > before && stack.haproxy_ready()
        })
        .map_err(|e| anyhow::anyhow!("{e}\n{}", t.log_tail(20)))?;
        std::thread::sleep(gap);
    }
    let _ = stack.set_flipped(true);
    let settled = Instant::now();
    wait::until(DEADLINE, "the last flip to settle", || {
        stack
            .config()
            .contains(&format!("    server web-{} ", FLIPPED + 1))
            && settled.elapsed() > Duration::from_millis(500)
    })
    .map_err(anyhow::Error::msg)?;
    let log = std::fs::read_to_string(&t.log).context("converge log")?;
    t.stop();
    let events = parse_log(&log);
    let validators = parse_timings(&std::fs::read_to_string(&timings).unwrap_or_default());
    let (passes, unmatched) = match_flips(&starts, &events, &validators);
    Ok(ShareReport {
        backends: total,
        passes,
        unmatched,
        config_bytes,
        durable_write,
    })
}

/// The breakdown of flips made at `starts` (unix µs), from converge's JSON
/// log and the timing validator's file, and how many could not be matched.
pub(crate) fn breakdown(log: &str, starts: &[i64], timings: &str) -> (Vec<Pass>, usize) {
    match_flips(starts, &parse_log(log), &parse_timings(timings))
}

/// Times `rounds` durable replaces of a `size`-byte file in `dir`.
fn durable_write(dir: &Path, size: usize, rounds: usize) -> anyhow::Result<Option<Summary>> {
    let bytes = vec![b'x'; size];
    let (tmp, dest) = (dir.join("durable.tmp"), dir.join("durable"));
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &dest)?;
        std::fs::File::open(dir)?.sync_all()?;
        times.push(t.elapsed());
    }
    std::fs::remove_file(&dest)?;
    Ok(Summary::of(&times))
}

/// Where the time of one end-to-end flip went, from converge's logs.
#[derive(Debug, Clone, Copy)]
pub struct Steps {
    /// Flip → the source published the change (`woken`).
    pub source: Duration,
    /// `woken` → `committed` (the whole pass up to the commit, validator
    /// included).
    pub pass: Duration,
    /// `committed` → the probe saw the routing change (signal or runtime
    /// API, and HAProxy taking it).
    pub after: Duration,
}

/// Splits end-to-end flips (`(start in unix micros, latency)`) into
/// [`Steps`] using converge's JSON log; flips that cannot be matched are
/// left out.
pub fn flip_steps(log: &str, flips: &[(i64, Duration)]) -> Vec<Steps> {
    let events = parse_log(log);
    let us = |d: i64| Duration::from_micros(u64::try_from(d).unwrap_or(0));
    let mut out = Vec::new();
    for (i, &(t0, latency)) in flips.iter().enumerate() {
        let next = flips.get(i + 1).map_or(i64::MAX, |f| f.0);
        let Some(woken) = first(&events, Line::Woken, t0, next) else {
            continue;
        };
        let Some(committed) = first(&events, Line::Committed, woken, next) else {
            continue;
        };
        let seen = t0 + i64::try_from(latency.as_micros()).unwrap_or(i64::MAX);
        out.push(Steps {
            source: us(woken - t0),
            pass: us(committed - woken),
            after: us(seen - committed),
        });
    }
    out
}

/// Which of converge's log lines an [`Event`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    Woken,
    Spawned,
    Committed,
    Reload,
}

/// A log line we use, with its timestamp in microseconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Event {
    line: Line,
    at: i64,
}

/// The time of the first `line` at or after `from`, if it is before
/// `until`.
fn first(events: &[Event], line: Line, from: i64, until: i64) -> Option<i64> {
    events
        .iter()
        .filter(|e| e.line == line)
        .map(|e| e.at)
        .find(|&t| t >= from)
        .filter(|&t| t < until)
}

fn parse_log(log: &str) -> Vec<Event> {
    let mut out = Vec::new();
    for line in log.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(ts) = v["timestamp"].as_str().and_then(parse_rfc3339_micros) else {
            continue;
        };
        let fields = &v["fields"];
        let line = match fields["message"].as_str() {
            Some("woken") if fields["trigger"].as_str() == Some("Catalog") => Line::Woken,
            Some("validator spawned") => Line::Spawned,
            Some("committed") => Line::Committed,
            Some("reload") => Line::Reload,
            _ => continue,
        };
        out.push(Event { line, at: ts });
    }
    out
}

/// `START_US END_US STATUS` lines of the timing validator, as
/// `(start, end)`.
pub(crate) fn parse_timings(text: &str) -> Vec<(i64, i64)> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
        })
        .collect()
}

fn match_flips(starts: &[i64], events: &[Event], validators: &[(i64, i64)]) -> (Vec<Pass>, usize) {
    let mut passes = Vec::new();
    let mut unmatched = 0;
    for (i, &t0) in starts.iter().enumerate() {
        let next = starts.get(i + 1).copied().unwrap_or(i64::MAX);
        let Some(woken) = first(events, Line::Woken, t0, next) else {
            unmatched += 1;
            continue;
        };
        let Some(committed) = first(events, Line::Committed, woken, next) else {
            unmatched += 1;
            continue;
        };
        let Some(spawned) = first(events, Line::Spawned, woken, committed) else {
            unmatched += 1;
            continue;
        };
        let reload = first(events, Line::Reload, committed, i64::MAX).unwrap_or(committed);
        let Some(&(vs, ve)) = validators
            .iter()
            .rev()
            .find(|(s, e)| *s >= spawned && *e <= committed)
        else {
            unmatched += 1;
            continue;
        };
        let us = |d: i64| Duration::from_micros(u64::try_from(d).unwrap_or(0));
        passes.push(Pass {
            source: us(woken - t0),
            before_validator: us(spawned - woken),
            validator: us(ve - spawned),
            wrapper_start: us(vs - spawned),
            after_validator: us(committed - ve),
            reload: us(reload - committed),
            own: us((committed - woken) - (ve - spawned)),
        });
    }
    (passes, unmatched)
}

/// Microseconds since the epoch (the clock tracing's timestamps use).
pub fn unix_micros(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `2026-03-21T10:00:00.123456Z` (any number of fraction digits, `Z` only:
/// tracing writes UTC) → microseconds since the epoch.
pub(crate) fn parse_rfc3339_micros(s: &str) -> Option<i64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (h, mi, sec) = (t.next()??, t.next()??, t.next()??);
    let digits: String = frac.chars().take(6).collect();
    let micros = digits.parse::<i64>().ok()? * 10i64.pow(6 - digits.len() as u32);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + h * 3600 + mi * 60 + sec) * 1_000_000) + micros)
}

/// A YAML double-quoted scalar for a path.
fn yaml_str(p: &Path) -> String {
    serde_json::Value::String(p.display().to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_to_micros() {
        assert_eq!(parse_rfc3339_micros("1970-01-01T00:00:00.000001Z"), Some(1));
        assert_eq!(
            parse_rfc3339_micros("2000-03-01T00:00:01.5Z"),
            Some(951_868_801_500_000)
        );
        assert_eq!(parse_rfc3339_micros("not a time"), None);
    }

    #[test]
    fn flips_match_their_log_lines() {
        let log = [
            r#"{"timestamp":"1970-01-01T00:00:00.000100Z","level":"DEBUG","fields":{"message":"woken","trigger":"Catalog"}}"#,
            r#"{"timestamp":"1970-01-01T00:00:00.000250Z","level":"DEBUG","fields":{"message":"validator spawned","program":"converge-bench"}}"#,
            r#"{"timestamp":"1970-01-01T00:00:00.000900Z","level":"INFO","fields":{"message":"committed"}}"#,
            r#"{"timestamp":"1970-01-01T00:00:00.001000Z","level":"INFO","fields":{"message":"reload"}}"#,
        ]
        .join("\n");
        let events = parse_log(&log);
        assert_eq!(events.len(), 4);
        let (passes, unmatched) = match_flips(&[50], &events, &[(300, 700)]);
        assert_eq!(unmatched, 0);
        let p = passes[0];
        assert_eq!(p.source, Duration::from_micros(50));
        assert_eq!(p.validator, Duration::from_micros(450));
        assert_eq!(p.wrapper_start, Duration::from_micros(50));
        assert_eq!(p.own, Duration::from_micros(350));
        assert_eq!(p.before_validator, Duration::from_micros(150));
        assert_eq!(p.after_validator, Duration::from_micros(200));
        assert_eq!(p.reload, Duration::from_micros(100));
    }
}
