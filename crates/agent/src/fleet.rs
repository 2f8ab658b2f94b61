//! The fleet in Consul KV, beside what [`crate::publish`] writes:
//!
//! ```text
//! <prefix>/nodes/<node>   the node's report (JSON), held by its session
//! ```
//!
//! Every node following the published revision writes a [`NodeReport`]
//! after a pass whose outcome changed it, and only then, so an idle fleet
//! does not write to KV. The key is acquired with a session of the node
//! ([`writer`]), renewed while the daemon lives; when the daemon or its
//! Consul agent dies the session is invalidated and Consul clears the
//! key's `Session`, so readers ([`view`]: `converge fleet status` and
//! `converge fleet wait`) see the report as stale instead of trusting it.

pub mod plan;
pub mod report;
pub mod view;
pub mod writer;

pub use report::NodeReport;
