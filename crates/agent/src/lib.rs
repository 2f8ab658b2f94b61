//! Everything converge decides and does on a node, below the command line.
//!
//! The data flow, one module each:
//!
//! - [`inputs`]: manifests and templates loaded and checked ([`Prepared`]),
//!   named by their [`revision`] (a Git commit or a content hash);
//! - [`source`]: the catalog, from the file or Consul, behind one
//!   interface;
//! - [`pass`]: the one pure pass — inputs, catalog, guard baseline and
//!   releases in; rendered set, holds and left-out instances out — with
//!   [`guard`] (the hold policy and its baseline on disk) and [`pause`]
//!   (which databases PgBouncer should hold while their primary is
//!   unclear);
//! - [`once`]: `plan` and `apply --once`: the pass, then the plan or one
//!   transaction;
//! - [`daemon`]: `converge run`, a small loop around the same pass;
//! - [`validate`]: `converge validate`, every node rendered and every file
//!   checked by the real programs in a scratch directory;
//! - [`status`]: `converge status`, where traffic goes on this node;
//! - [`vrrp`]: keepalived's own report of each VRRP instance, read by
//!   `status` and by the rollout's health gate;
//! - [`drill`]: `converge drill`, a fault injected on purpose, probed
//!   until recovery, with converge's own events on the same timeline;
//! - [`publish`]: `converge publish`, a validated revision put in Consul
//!   KV for the fleet, and the fleet's desired revision moved to it;
//! - [`follow`]: `--published`, a node taking that revision (fetched,
//!   verified, kept on disk) as its manifests and templates;
//! - [`fleet`]: node reports in KV, and `converge fleet status`/`wait`
//!   reading them.
//!
//! `plan`, `apply --once`, `validate` and the daemon all call
//! [`pass::run`], so `plan` on a node shows exactly what `run` would do
//! there.
#![deny(missing_docs)]

pub mod daemon;
pub mod drill;
pub mod error;
pub mod fleet;
pub mod follow;
pub mod guard;
pub mod inputs;
pub mod once;
pub mod pass;
pub mod pause;
pub mod publish;
pub mod revision;
pub mod rollout;
pub mod source;
mod state_file;
pub mod status;
pub mod validate;
pub mod vrrp;

pub use error::AgentError;
pub use inputs::Inputs;
pub use pass::Prepared;
pub use revision::Revision;
