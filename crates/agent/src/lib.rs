//! The pipeline every converge command runs: load the manifests and the
//! catalog, render this node's targets, plan against the live files, apply.
//!
//! Each step is one call on immutable values ([`pipeline`]); the CLI calls
//! them once, and the daemon will call the very same functions in its loop,
//! so `plan` on a node shows exactly what `run` would do there.
//! [`repo_check`] is the manifest repository's CI: every node rendered and
//! every file checked by the real programs in a scratch directory.
#![deny(missing_docs)]

pub mod consul_once;
pub mod daemon;
pub mod error;
pub mod guard;
pub mod http;
pub mod node_status;
pub mod pass;
pub mod pipeline;
pub mod quiescence;
pub mod reconciler;
pub mod repo_check;
pub mod status;
pub mod watch_files;

pub use error::AgentError;
pub use pipeline::{Inputs, Prepared};
