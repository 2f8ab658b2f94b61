//! The programs converge drives, and the only code that talks to them.
//!
//! `converge-apply` decides what to change and when; this crate knows how
//! each program is asked: whether it accepts a candidate file, to pick up
//! committed files, and (for HAProxy's runtime API and PgBouncer's
//! console) what it runs now. One module per program, so what is known
//! about a program's behaviour (versions checked, quirks relied on) sits
//! beside the code relying on it:
//!
//! - [`haproxy`]: `haproxy -c`, the runtime API over the stats socket, and
//!   reading a config for it.
//! - [`pgbouncer`]: the trial start, the admin console, `pgbouncer.ini`,
//!   restart-only settings.
//! - [`keepalived`]: `keepalived -t` in a scratch network namespace.
//! - [`signal`]: signals through a pidfile, sent only once the process
//!   handles them (read from `/proc`).
//! - [`process`]: the one runner every child goes through (pidfd wait, own
//!   process group, killed as a group at its deadline, dies with converge).
//! - [`failpoint`]: crash points for tests, shared with the applier.
//! - [`validate`] and [`reload`]: the manifest's `validate` and `reload`
//!   settings, dispatched to the modules above.
//!
//! It depends on the model only, never on the applier, so `converge
//! status` can read the programs without the transaction code.
#![deny(missing_docs)]

pub mod check;
pub mod failpoint;
pub mod haproxy;
pub mod keepalived;
pub mod pgbouncer;
pub mod process;
pub mod reload;
pub mod signal;
#[cfg(test)]
mod testutil;
pub mod validate;

pub use reload::{describe as describe_reload, ReloadOutcome};
