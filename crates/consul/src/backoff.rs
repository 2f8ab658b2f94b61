//! Retry pacing: exponential, jittered, capped, reset after success.
//!
//! The `n`-th consecutive failure waits `min(cap, base * 2^n)` scaled down
//! by a random factor in `[1 - jitter, 1]`, so a fleet of nodes that lost
//! Consul at the same moment does not come back at the same moment. A
//! success resets the count. The random source is injected (a seeded
//! [`fastrand::Rng`]) so the sequence is testable without sleeping.
//!
//! Two policies are named here: [`Backoff::for_consul`] for faults that
//! waiting fixes, and the much slower [`Backoff::for_refusals`] for ACL
//! refusals (see [`Retry::Slowly`](crate::Retry::Slowly)), which are asked
//! again so that converge recovers by itself once the token works, but
//! rarely enough that a fleet of nodes with a bad token costs Consul
//! about one request per node and minute.

use std::time::Duration;

/// First delay of [`Backoff::for_refusals`].
pub const REFUSAL_BASE: Duration = Duration::from_secs(5);

/// Longest delay of [`Backoff::for_refusals`].
pub const REFUSAL_CAP: Duration = Duration::from_secs(60);

/// Exponential backoff with jitter and a cap.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    jitter: f64,
    failures: u32,
    rng: fastrand::Rng,
}

impl Backoff {
    /// A backoff starting at `base`, never above `cap`, with up to
    /// `jitter` (0.0..=1.0) of each delay taken off at random.
    pub fn new(base: Duration, cap: Duration, jitter: f64, rng: fastrand::Rng) -> Self {
        Self {
            base,
            cap: cap.max(base),
            jitter: jitter.clamp(0.0, 1.0),
            failures: 0,
            rng,
        }
    }

    /// converge's default for Consul: 250 ms doubling to 30 s, half jitter.
    pub fn for_consul() -> Self {
        Self::new(
            Duration::from_millis(250),
            Duration::from_secs(30),
            0.5,
            fastrand::Rng::new(),
        )
    }

    /// converge's default for a refusal Consul may lift (an ACL token not
    /// found or lacking a permission): [`REFUSAL_BASE`] doubling to
    /// [`REFUSAL_CAP`], half jitter.
    pub fn for_refusals() -> Self {
        Self::new(REFUSAL_BASE, REFUSAL_CAP, 0.5, fastrand::Rng::new())
    }

    /// Records a failure and returns how long to wait before the next try.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.failures.min(31);
        self.failures = self.failures.saturating_add(1);
        let full = self
            .base
            .checked_mul(1u32 << exp)
            .unwrap_or(self.cap)
            .min(self.cap);
        let keep = 1.0 - self.jitter * self.rng.f64();
        full.mul_f64(keep)
    }

    /// Records a success: the next failure starts again at `base`.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Consecutive failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The upper bound of any delay.
    pub fn cap(&self) -> Duration {
        self.cap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff(jitter: f64, seed: u64) -> Backoff {
        Backoff::new(
            Duration::from_millis(100),
            Duration::from_secs(5),
            jitter,
            fastrand::Rng::with_seed(seed),
        )
    }

    #[test]
    fn without_jitter_it_doubles_up_to_the_cap() {
        let mut b = backoff(0.0, 1);
        let got: Vec<u128> = (0..10).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(
            got,
            vec![100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000, 5000]
        );
    }

    #[test]
    fn jitter_stays_within_its_band_and_varies() {
        let mut b = backoff(0.5, 7);
        let mut seen = std::collections::BTreeSet::new();
        for n in 0..40u32 {
            let d = b.next_delay();
            let full = Duration::from_millis(100)
                .saturating_mul(1u32 << n.min(31))
                .min(Duration::from_secs(5));
            assert!(d <= full, "{d:?} > {full:?} at {n}");
            assert!(d >= full / 2, "{d:?} < half of {full:?} at {n}");
            seen.insert(d);
        }
        assert!(seen.len() > 30, "jitter must vary the delays: {seen:?}");
    }

    #[test]
    fn same_seed_same_sequence() {
        let mut a = backoff(0.5, 42);
        let mut b = backoff(0.5, 42);
        for _ in 0..10 {
            assert_eq!(a.next_delay(), b.next_delay());
        }
    }

    #[test]
    fn success_resets_to_base() {
        let mut b = backoff(0.0, 1);
        for _ in 0..6 {
            b.next_delay();
        }
        assert_eq!(b.failures(), 6);
        b.reset();
        assert_eq!(b.failures(), 0);
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }

    #[test]
    fn refusals_start_at_seconds_and_settle_at_a_minute() {
        let mut b = Backoff::for_refusals();
        let first = b.next_delay();
        assert!(
            first >= REFUSAL_BASE / 2 && first <= REFUSAL_BASE,
            "{first:?}"
        );
        for _ in 0..20 {
            b.next_delay();
        }
        let late = b.next_delay();
        assert!(late >= REFUSAL_CAP / 2 && late <= REFUSAL_CAP, "{late:?}");
        assert_eq!(b.cap(), REFUSAL_CAP);
    }

    #[test]
    fn many_failures_do_not_overflow() {
        let mut b = backoff(0.0, 1);
        for _ in 0..1000 {
            assert!(b.next_delay() <= Duration::from_secs(5));
        }
    }
}
