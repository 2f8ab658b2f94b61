//! Seeing a routing change through HAProxy with real requests.
//!
//! After a check flips, the probe sends `GET /` through HAProxy's frontend
//! on a new connection about every 1–2 ms (the request itself takes a few
//! hundred microseconds on loopback, then 1 ms of sleep) and notes which
//! backend answered.
//!
//! - Added back: routing changed at the start of the first request that
//!   reaches the flipped backend.
//! - Removed: routing changed at the start of the first request after the
//!   last one that reached it, once [`CONFIRM`] answers in a row came from
//!   other backends (with round robin over three servers the old config
//!   sends every third request to it, so ten misses cannot be chance).
//!
//! Either way the reading is accurate to about two probe intervals (round
//! robin may pick another backend for the first requests of the new
//! worker), the same for both tools — as long as a probe request itself is
//! fast. Each observation carries the median request time, and the report
//! shows it, so a slow probe (one that once cost ~44 ms per request: a
//! request head split over several writes, held back by Nagle until
//! HAProxy's delayed ACK) shows up as such instead of as routing latency.

use std::time::{Duration, Instant};

use converge_testkit::http::get;

/// Consecutive answers from other backends that prove a removal.
pub const CONFIRM: usize = 10;

/// Pause between probe requests.
pub const INTERVAL: Duration = Duration::from_millis(1);

/// One observed routing change.
#[derive(Debug, Clone, Copy)]
pub struct Observed {
    /// From the flip to the change, as defined in the module docs.
    pub latency: Duration,
    /// Probe requests that failed (refused, reset, not 200).
    pub failures: usize,
    /// Median time of one probe request, start to answer.
    pub request: Duration,
}

/// Probes `front` until `target` is reached (`reach`) or has stopped being
/// reached (`!reach`); latencies count from `t0`.
///
/// # Errors
///
/// When the change is not seen within `deadline`.
pub fn routing_change(
    front: u16,
    target: &str,
    reach: bool,
    t0: Instant,
    deadline: Duration,
) -> Result<Observed, String> {
    routing_change_at(front, "/", target, reach, t0, deadline)
}

/// [`routing_change`] for requests to `path`, which a route of the
/// frontend sends to the backend that changes.
///
/// # Errors
///
/// When the change is not seen within `deadline`.
pub fn routing_change_at(
    front: u16,
    path: &str,
    target: &str,
    reach: bool,
    t0: Instant,
    deadline: Duration,
) -> Result<Observed, String> {
    let mut starts: Vec<Instant> = Vec::new();
    let mut took: Vec<Duration> = Vec::new();
    let mut failures = 0;
    let mut last_hit: Option<usize> = None;
    let mut misses = 0;
    loop {
        let start = Instant::now();
        let answer = get(front, path);
        took.push(start.elapsed());
        starts.push(start);
        let i = starts.len() - 1;
        match answer.as_deref() {
            Some(name) if name == target => {
                if reach {
                    return Ok(Observed {
                        latency: start - t0,
                        failures,
                        request: median(&mut took),
                    });
                }
                last_hit = Some(i);
                misses = 0;
            }
            Some(_) => {
                misses += 1;
                if !reach && misses >= CONFIRM {
                    let first = last_hit.map_or(0, |h| h + 1);
                    return Ok(Observed {
                        latency: starts[first].saturating_duration_since(t0),
                        failures,
                        request: median(&mut took),
                    });
                }
            }
            None => failures += 1,
        }
        if t0.elapsed() > deadline {
            return Err(format!(
                "HAProxy did not {} {target} within {:.1}s ({} probes, {failures} failed)",
                if reach {
                    "start sending to"
                } else {
                    "stop sending to"
                },
                deadline.as_secs_f64(),
                starts.len()
            ));
        }
        std::thread::sleep(INTERVAL);
    }
}

/// The middle value of a non-empty list (the loop pushes before returning).
fn median(values: &mut [Duration]) -> Duration {
    values.sort_unstable();
    values[values.len() / 2]
}
