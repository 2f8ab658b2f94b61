//! CPU time and resident memory of a process, from `/proc`.
//!
//! CPU is `utime + stime` from `/proc/PID/stat` (the process's own threads)
//! and, separately, `cutime + cstime` (children it has waited for: the
//! validator and reload commands each tool runs). Both count in clock ticks
//! of `USER_HZ`, which Linux fixes at 100 per second for everything it
//! exports to user space, so the resolution is 10 ms.

use std::fs;
use std::time::{Duration, Instant};

/// Ticks per second in `/proc/PID/stat`.
const USER_HZ: u64 = 100;

/// One reading of a process.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// When it was taken.
    pub at: Instant,
    /// Own CPU (user + system), in ticks.
    pub own_ticks: u64,
    /// CPU of waited-for children, in ticks.
    pub children_ticks: u64,
    /// Resident set, KiB.
    pub rss_kib: u64,
    /// Peak resident set so far, KiB.
    pub hwm_kib: u64,
}

/// Reads `pid` now, or `None` when it is gone.
pub fn sample(pid: u32) -> Option<Sample> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ...`: comm may hold spaces, so split after the last `)`.
    let (_, rest) = stat.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime..cstime are fields 14..17.
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    let (utime, stime, cutime, cstime) = (num(11)?, num(12)?, num(13)?, num(14)?);
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    Some(Sample {
        at: Instant::now(),
        own_ticks: utime + stime,
        children_ticks: cutime + cstime,
        rss_kib: kib("VmRSS:"),
        hwm_kib: kib("VmHWM:"),
    })
}

/// CPU used between two samples of the same process.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// Wall time between the samples.
    pub wall: Duration,
    /// Own CPU.
    pub own: Duration,
    /// Children's CPU.
    pub children: Duration,
    /// Resident set at the end, KiB.
    pub rss_kib: u64,
    /// Peak resident set at the end, KiB.
    pub hwm_kib: u64,
}

impl Usage {
    /// The difference `to - from`.
    pub fn between(from: &Sample, to: &Sample) -> Self {
        let ticks = |t: u64| Duration::from_millis(t * 1000 / USER_HZ);
        Self {
            wall: to.at.saturating_duration_since(from.at),
            own: ticks(to.own_ticks.saturating_sub(from.own_ticks)),
            children: ticks(to.children_ticks.saturating_sub(from.children_ticks)),
            rss_kib: to.rss_kib,
            hwm_kib: to.hwm_kib,
        }
    }

    /// Own CPU as a percentage of one core over the wall time.
    pub fn own_percent(&self) -> f64 {
        percent(self.own, self.wall)
    }
}

fn percent(cpu: Duration, wall: Duration) -> f64 {
    if wall.is_zero() {
        return 0.0;
    }
    100.0 * cpu.as_secs_f64() / wall.as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let a = sample(std::process::id()).expect("own stat");
        // Burn a little CPU so the counter can move.
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(60) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let b = sample(std::process::id()).expect("own stat");
        let u = Usage::between(&a, &b);
        assert!(u.rss_kib > 0 && u.hwm_kib >= u.rss_kib);
        assert!(u.own >= Duration::from_millis(10), "{u:?}");
    }
}
