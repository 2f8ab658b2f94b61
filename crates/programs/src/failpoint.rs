//! Crash points for tests of invariant 1 (a crash at any step leaves every
//! target either the old or the new complete file) and of invariant 8 (a
//! child converge started dies with it). They live with the programs, the
//! lowest crate that has a point, and the applier re-exports them.
//!
//! **Test hook.** When the environment variable `CONVERGE_FAILPOINT` equals
//! the name passed to [`hit`], the process sends itself `SIGKILL`: no
//! destructor runs, no temp file is cleaned up, the lock is released only
//! because the kernel closes the descriptor — exactly what a power cut or
//! an OOM kill looks like to the next run. The variable is read once per
//! process; in production it is unset and `hit` is a comparison against
//! `None`.
//!
//! The points, in the order a transaction passes them ([`POINTS`]):
//! `staged` (candidates written, not validated), `trial-up` (PgBouncer's
//! trial start is up on the candidate, not yet stopped), `validated`, `backed-up`,
//! `committed-one` (after the first rename of a bundle committing more than
//! one file), `committed` (all renamed, directories synced, not reloaded),
//! `reloaded`, `rolled-back` (previous files restored after a failed
//! reload, old config not yet reloaded).

use std::sync::OnceLock;

/// The environment variable naming the armed failpoint.
pub const ENV: &str = "CONVERGE_FAILPOINT";

/// Every failpoint, in transaction order.
pub const POINTS: &[&str] = &[
    "staged",
    "trial-up",
    "validated",
    "backed-up",
    "committed-one",
    "committed",
    "reloaded",
    "rolled-back",
];

static ARMED: OnceLock<Option<String>> = OnceLock::new();

/// Kills the process with `SIGKILL` if `name` is the armed failpoint.
pub fn hit(name: &str) {
    debug_assert!(POINTS.contains(&name), "unknown failpoint {name}");
    let armed = ARMED.get_or_init(|| std::env::var(ENV).ok());
    if fires(armed.as_deref(), name) {
        tracing::warn!(failpoint = name, "failpoint armed: killing this process");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        // SIGKILL to ourselves does not return; if it somehow did, still
        // die without running destructors.
        std::process::abort();
    }
}

/// Whether a failpoint armed as `armed` fires at `name`.
fn fires(armed: Option<&str>, name: &str) -> bool {
    armed == Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_named_point_fires() {
        assert!(fires(Some("committed"), "committed"));
        assert!(!fires(Some("committed"), "committed-one"));
        assert!(!fires(Some(""), "staged"));
        assert!(!fires(None, "staged"));
    }

    #[test]
    fn unarmed_points_return() {
        // The test process never sets the variable, so every point passes.
        for p in POINTS {
            hit(p);
        }
    }
}
