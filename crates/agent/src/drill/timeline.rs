//! The probes of a drill, and the verdict they give.
//!
//! Probes start at a fixed interval and may overlap (a hung request is
//! still a failure, reported when its timeout ends), so samples are kept
//! by start order and only the prefix whose results are all in is judged.
//! The system has recovered at the first success of a run of `settle`
//! consecutive successes after a failure: one lucky request that reached
//! the surviving server of a round-robin pair is not a recovery.

use serde::{Deserialize, Serialize};

/// One probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// Wall-clock Unix milliseconds the probe started.
    pub unix_ms: u64,
    /// Whether it succeeded.
    pub ok: bool,
    /// How long it took (the timeout, for one that hung).
    pub latency_ms: u64,
    /// The answer or the error, in a few words.
    pub detail: String,
}

/// What the samples after a fault say so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Every probe so far succeeded.
    NoFailureYet,
    /// A probe failed and no run of `settle` successes followed yet.
    Failing {
        /// Start of the first failed probe.
        first_failure: u64,
    },
    /// Recovered.
    Recovered {
        /// Start of the first failed probe.
        first_failure: u64,
        /// Start of the first probe of the run of successes that ended it.
        recovered: u64,
    },
}

/// Judges the complete prefix of `samples` (in start order; `None` for a
/// probe still in flight), with `settle` successes in a row as recovery.
pub fn progress(samples: &[Option<Sample>], settle: usize) -> Progress {
    let mut first_failure = None;
    let mut run_start = None;
    let mut run = 0;
    for s in samples.iter().map_while(Option::as_ref) {
        if !s.ok {
            first_failure.get_or_insert(s.unix_ms);
            run = 0;
            run_start = None;
            continue;
        }
        run += 1;
        let start = *run_start.get_or_insert(s.unix_ms);
        if let Some(first_failure) = first_failure {
            if run >= settle.max(1) {
                return Progress::Recovered {
                    first_failure,
                    recovered: start,
                };
            }
        }
    }
    match first_failure {
        Some(first_failure) => Progress::Failing { first_failure },
        None => Progress::NoFailureYet,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(unix_ms: u64, ok: bool) -> Option<Sample> {
        Some(Sample {
            unix_ms,
            ok,
            latency_ms: 1,
            detail: String::new(),
        })
    }

    #[test]
    fn recovery_is_the_start_of_a_settled_run_after_a_failure() {
        let samples = [
            s(0, true),
            s(1, false),
            s(2, true), // a lucky one: the other server
            s(3, false),
            s(4, true),
            s(5, true),
            s(6, true),
        ];
        assert_eq!(
            progress(&samples, 3),
            Progress::Recovered {
                first_failure: 1,
                recovered: 4
            }
        );
        assert_eq!(
            progress(&samples[..6], 3),
            Progress::Failing { first_failure: 1 }
        );
    }

    #[test]
    fn a_probe_in_flight_stops_the_judgement_there() {
        let samples = [s(0, false), None, s(2, true), s(3, true)];
        assert_eq!(
            progress(&samples, 2),
            Progress::Failing { first_failure: 0 }
        );
        assert_eq!(
            progress(&[s(0, true), s(1, true)], 1),
            Progress::NoFailureYet
        );
    }
}
