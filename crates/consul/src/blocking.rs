//! Blocking queries done the way Consul documents them.
//!
//! A blocking query sends the last `X-Consul-Index` as `?index=` with a
//! `?wait=`; Consul holds the request until the data behind the index moves
//! or `wait` (plus up to `wait/16` of its own jitter) runs out. Returning is
//! *no* proof of change. Consul's "implementation details" add rules a
//! client must follow, and each one is a branch here:
//!
//! - **Reset when the index goes backwards.** A returned index lower than
//!   the one sent (a restarted agent, a snapshot restore, a leader with a
//!   lagging state) sets the index to 0 so the next request is a plain read
//!   that re-establishes the baseline; blocking on the old, higher index
//!   would hang until `wait` expires and miss every change meanwhile.
//! - **An index must be at least 1.** Index 0 never blocks, so a returned 0
//!   is stored as 1; otherwise the loop would turn into a busy poll.
//! - **Never spin.** A request that came back with the same index before
//!   `wait` expired is followed by a pause of [`Pacing::unchanged_interval`]
//!   plus jitter, and consecutive requests are at least
//!   [`Pacing::min_interval`] apart even when the index keeps moving.
//! - **Errors reset the index too.** After a failed request the agent may
//!   have restarted with a fresh, lower index; a blocking request carrying
//!   the old index would sit out a whole `wait` before the backwards rule
//!   could even fire. One plain read after an error is the cheap, safe
//!   choice. Failures are spaced by a [`Backoff`].
//!
//! The request timeout is set by the client to `wait + wait/16 + margin`, so
//! a healthy long poll is never cut short (see
//! [`Client`](crate::Client)).

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::client::{QueryMeta, QueryOptions, Response};
use crate::error::Error;

/// What a returned index means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexOutcome {
    /// First read, or first after a reset: the data is a new baseline.
    Baseline,
    /// The index moved forward: the data may have changed.
    Moved,
    /// Same index as before: nothing changed (timeout or spurious wake).
    Unchanged,
    /// The index went backwards: the data is current, and the tracker was
    /// reset so the next request does not block on a stale index.
    WentBackwards,
}

impl IndexOutcome {
    /// Whether the data may differ from what the caller has.
    pub fn may_have_changed(self) -> bool {
        !matches!(self, IndexOutcome::Unchanged)
    }
}

/// The index half of the rules: which `?index=` to send next.
#[derive(Debug, Clone, Default)]
pub struct IndexTracker {
    index: u64,
}

impl IndexTracker {
    /// A tracker whose first request is a plain (non-blocking) read.
    pub fn new() -> Self {
        Self::default()
    }

    /// The `?index=` for the next request; 0 means do not block.
    pub fn request_index(&self) -> u64 {
        self.index
    }

    /// Records the `X-Consul-Index` of a successful answer.
    pub fn observe(&mut self, returned: u64) -> IndexOutcome {
        let previous = self.index;
        if previous == 0 {
            self.index = returned.max(1);
            return IndexOutcome::Baseline;
        }
        if returned < previous {
            self.index = 0;
            return IndexOutcome::WentBackwards;
        }
        if returned == previous {
            return IndexOutcome::Unchanged;
        }
        self.index = returned;
        IndexOutcome::Moved
    }

    /// Records a failed request: the next request is a plain read.
    pub fn on_error(&mut self) {
        self.index = 0;
    }
}

/// How far apart requests of one watch are kept.
#[derive(Debug, Clone)]
pub struct Pacing {
    /// `?wait=` of each blocking request.
    pub wait: Duration,
    /// Least time between the starts of two requests, whatever happened.
    pub min_interval: Duration,
    /// Least time between the start of a request that returned an
    /// unchanged index and the next one.
    pub unchanged_interval: Duration,
    /// Up to this much random time is added to either pause.
    pub jitter: Duration,
}

impl Default for Pacing {
    fn default() -> Self {
        Self {
            wait: Duration::from_secs(60),
            min_interval: Duration::from_millis(50),
            unchanged_interval: Duration::from_secs(1),
            jitter: Duration::from_millis(25),
        }
    }
}

impl Pacing {
    /// The pause before the next request, given what the last one returned
    /// and how long ago it started.
    pub fn delay(
        &self,
        outcome: IndexOutcome,
        since_start: Duration,
        rng: &mut fastrand::Rng,
    ) -> Duration {
        let floor = match outcome {
            IndexOutcome::Unchanged => self.unchanged_interval.max(self.min_interval),
            _ => self.min_interval,
        };
        let jitter = self.jitter.mul_f64(rng.f64());
        (floor + jitter).saturating_sub(since_start)
    }
}

/// One value watched with blocking queries: index tracking, pacing and
/// backoff around a caller-supplied request.
#[derive(Debug)]
pub struct BlockingQuery {
    tracker: IndexTracker,
    pacing: Pacing,
    backoff: Backoff,
    rng: fastrand::Rng,
    template: QueryOptions,
    next_at: Option<Instant>,
}

/// A successful wake-up of a [`BlockingQuery`].
#[derive(Debug)]
pub struct Update<T> {
    /// The answer.
    pub value: T,
    /// Its metadata (index, last contact).
    pub meta: QueryMeta,
    /// What the index did.
    pub outcome: IndexOutcome,
}

impl BlockingQuery {
    /// A watch sending `template` (datacenter, consistency) with the index
    /// and `wait` filled in per request.
    pub fn new(
        template: QueryOptions,
        pacing: Pacing,
        backoff: Backoff,
        rng: fastrand::Rng,
    ) -> Self {
        Self {
            tracker: IndexTracker::new(),
            pacing,
            backoff,
            rng,
            template,
            next_at: None,
        }
    }

    /// The index the next request will carry.
    pub fn index(&self) -> u64 {
        self.tracker.request_index()
    }

    /// Waits out the pause owed since the last request, sends one request
    /// through `send`, and applies the rules to its answer. Errors are
    /// returned to the caller after scheduling the backoff pause, so the
    /// next call cannot come too soon. An error that waiting does not fix
    /// ([`Error::retry`] is not [`Retry::Soon`](crate::Retry::Soon)) is
    /// returned the same way; the caller decides whether to wait longer or
    /// stop (the [source](crate::source) does both, by kind).
    pub async fn next<T, F, Fut>(&mut self, send: F) -> Result<Update<T>, Error>
    where
        F: FnOnce(QueryOptions) -> Fut,
        Fut: Future<Output = Result<Response<T>, Error>>,
    {
        if let Some(at) = self.next_at.take() {
            tokio::time::sleep_until(at).await;
        }
        let mut opts = self.template.clone();
        opts.index = self.tracker.request_index();
        opts.wait = Some(self.pacing.wait);
        let started = Instant::now();
        match send(opts).await {
            Ok(resp) => {
                self.backoff.reset();
                let outcome = self.tracker.observe(resp.meta.index);
                let pause = self.pacing.delay(outcome, started.elapsed(), &mut self.rng);
                self.next_at = Some(Instant::now() + pause);
                Ok(Update {
                    value: resp.value,
                    meta: resp.meta,
                    outcome,
                })
            }
            Err(e) => {
                self.tracker.on_error();
                self.next_at = Some(Instant::now() + self.backoff.next_delay());
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn first_answer_is_a_baseline_and_zero_becomes_one() {
        let mut t = IndexTracker::new();
        assert_eq!(t.request_index(), 0);
        assert_eq!(t.observe(0), IndexOutcome::Baseline);
        assert_eq!(t.request_index(), 1, "index 0 never blocks; store 1");
        assert_eq!(t.observe(5), IndexOutcome::Moved);
        assert_eq!(t.request_index(), 5);
    }

    #[test]
    fn backwards_index_resets_to_a_plain_read() {
        let mut t = IndexTracker::new();
        t.observe(100);
        assert_eq!(t.observe(7), IndexOutcome::WentBackwards);
        assert_eq!(t.request_index(), 0);
        assert_eq!(t.observe(7), IndexOutcome::Baseline);
        assert_eq!(t.request_index(), 7);
    }

    #[test]
    fn a_returned_zero_after_a_real_index_is_backwards_then_one() {
        let mut t = IndexTracker::new();
        t.observe(100);
        assert_eq!(t.observe(0), IndexOutcome::WentBackwards);
        assert_eq!(t.observe(0), IndexOutcome::Baseline);
        assert_eq!(t.request_index(), 1);
    }

    #[test]
    fn unchanged_index_is_reported_and_kept() {
        let mut t = IndexTracker::new();
        t.observe(42);
        assert_eq!(t.observe(42), IndexOutcome::Unchanged);
        assert_eq!(t.request_index(), 42);
    }

    #[test]
    fn error_resets_index() {
        let mut t = IndexTracker::new();
        t.observe(42);
        t.on_error();
        assert_eq!(t.request_index(), 0);
    }

    #[test]
    fn pacing_never_lets_an_unchanged_index_spin() {
        let p = Pacing::default();
        let mut rng = fastrand::Rng::with_seed(3);
        // Came back at once with the same index: wait at least 1 s.
        let d = p.delay(IndexOutcome::Unchanged, Duration::ZERO, &mut rng);
        assert!(d >= Duration::from_secs(1), "{d:?}");
        assert!(d <= Duration::from_secs(1) + p.jitter, "{d:?}");
        // Came back after the full wait: go again at once.
        let d = p.delay(IndexOutcome::Unchanged, p.wait, &mut rng);
        assert_eq!(d, Duration::ZERO);
        // Changed: only the minimum interval applies.
        let d = p.delay(IndexOutcome::Moved, Duration::from_millis(10), &mut rng);
        assert!(
            d >= Duration::from_millis(40) && d <= Duration::from_millis(65),
            "{d:?}"
        );
    }

    fn resp(index: u64) -> Result<Response<u64>, Error> {
        Ok(Response {
            value: index,
            meta: QueryMeta {
                index,
                ..QueryMeta::default()
            },
        })
    }

    /// Drives a BlockingQuery against a scripted sequence of answers that
    /// come back instantly, and records the request index and the (paused)
    /// clock of each request.
    async fn drive(script: Vec<Result<Response<u64>, Error>>) -> Vec<(u64, Duration)> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut q = BlockingQuery::new(
            QueryOptions::default(),
            Pacing::default(),
            Backoff::new(
                Duration::from_millis(100),
                Duration::from_secs(2),
                0.0,
                fastrand::Rng::with_seed(1),
            ),
            fastrand::Rng::with_seed(2),
        );
        let start = Instant::now();
        for answer in script {
            let seen = seen.clone();
            let _ = q
                .next(|opts| async move {
                    assert_eq!(opts.wait, Some(Pacing::default().wait));
                    seen.lock()
                        .expect("lock")
                        .push((opts.index, start.elapsed()));
                    answer
                })
                .await;
        }
        let out = seen.lock().expect("lock").clone();
        out
    }

    #[tokio::test(start_paused = true)]
    async fn instant_unchanged_answers_are_paced_not_spun() {
        let script = (0..6).map(|_| resp(9)).collect();
        let seen = drive(script).await;
        assert_eq!(seen[0].0, 0);
        for w in seen.windows(2).skip(1) {
            let gap = w[1].1 - w[0].1;
            assert!(gap >= Duration::from_secs(1), "spun: {seen:?}");
            assert_eq!(w[1].0, 9);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn errors_back_off_exponentially_and_reset_the_index() {
        let err = || {
            Err(Error::Connect {
                endpoint: "/v1/x".into(),
                message: "refused".into(),
            })
        };
        let seen = drive(vec![resp(50), err(), err(), err(), resp(3), resp(4)]).await;
        let idx: Vec<u64> = seen.iter().map(|s| s.0).collect();
        // After an error the next request is a plain read (index 0); after
        // recovery the new, lower index is the baseline.
        assert_eq!(idx, vec![0, 50, 0, 0, 0, 3]);
        let gaps: Vec<u128> = seen
            .windows(2)
            .map(|w| (w[1].1 - w[0].1).as_millis())
            .collect();
        // 50 ms min interval (+ jitter), then 100, 200, 400 ms backoff,
        // then min interval again after the success.
        assert!(gaps[0] >= 50 && gaps[0] <= 75, "{gaps:?}");
        assert_eq!(&gaps[1..4], &[100, 200, 400], "{gaps:?}");
        assert!(gaps[4] >= 50 && gaps[4] <= 75, "{gaps:?}");
    }
}
