//! Waiting for a condition with a deadline, instead of sleeping and hoping.
//!
//! Every helper polls its condition every [`POLL`] until it holds or the
//! deadline passes; the error names what was awaited and how long the wait
//! took, so a failing test says what never happened.

use std::thread;
use std::time::{Duration, Instant};

/// How often a condition is polled.
pub const POLL: Duration = Duration::from_millis(20);

/// Polls `cond` until it returns `true` or `deadline` has passed.
///
/// The condition is always checked at least once, and once more after the
/// deadline, so a condition that becomes true during the last poll interval
/// is not reported as a timeout.
///
/// # Errors
///
/// `timed out after 5.02s waiting for {what}` when the condition never held.
pub fn until(deadline: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Result<(), String> {
    until_some(deadline, what, || cond().then_some(()))
}

/// Polls `f` until it returns `Some`, and returns that value.
///
/// # Errors
///
/// `timed out after 5.02s waiting for {what}` when `f` kept returning `None`.
pub fn until_some<T>(
    deadline: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
) -> Result<T, String> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        let elapsed = start.elapsed();
        if elapsed >= deadline {
            return Err(format!(
                "timed out after {:.2}s waiting for {what}",
                elapsed.as_secs_f64()
            ));
        }
        thread::sleep(POLL.min(deadline - elapsed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_as_soon_as_the_condition_holds() {
        let mut calls = 0;
        let r = until(Duration::from_secs(5), "third call", || {
            calls += 1;
            calls == 3
        });
        assert_eq!(r, Ok(()));
        assert_eq!(calls, 3);
    }

    #[test]
    fn error_names_what_and_elapsed_time() {
        let err = until(Duration::from_millis(50), "the moon to turn blue", || false)
            .expect_err("condition never holds");
        assert!(err.contains("the moon to turn blue"), "{err}");
        assert!(err.starts_with("timed out after 0.0"), "{err}");
    }

    #[test]
    fn until_some_hands_back_the_value() {
        let mut n = 0;
        let v = until_some(Duration::from_secs(5), "n to reach 2", || {
            n += 1;
            (n >= 2).then_some(n * 10)
        });
        assert_eq!(v, Ok(20));
    }
}
