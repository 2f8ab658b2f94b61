//! HAProxy, as converge drives it: asking `haproxy -c` about a candidate
//! ([`validate`]), reading a config for what the runtime API can change
//! ([`cfg`](mod@cfg)), and changing server slots over the admin stats socket
//! instead of reloading ([`runtime_api`]).
//!
//! Reloads themselves are a signal to the master through its pidfile (see
//! [`signal`](crate::signal)), chosen by the manifest like any program's.

pub mod cfg;
pub mod runtime_api;
pub mod validate;
