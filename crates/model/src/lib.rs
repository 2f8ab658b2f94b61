//! The data at the bottom of converge: what the operator declared
//! (manifests), what the world looks like (catalog snapshots), and the
//! per-node desired state derived from the two.
//!
//! This crate does no network I/O and touches the filesystem only to read
//! manifest, catalog and secret files. Everything here is a plain value:
//! the renderer, the applier and the daemon pass these around immutably.
//!
//! Parsing is two-staged on purpose: [`load`] turns YAML into typed
//! [`manifest`] structs and keeps a map from every field path back to
//! `file:line:column` ([`locate`]); [`validate`](load::Manifests::validate)
//! then checks references across files and reports *every* problem at once,
//! each with its location, before anything downstream runs.
#![deny(missing_docs)]

pub mod bounds;
pub mod catalog;
pub mod check;
pub mod config_line;
pub mod desired;
pub mod duration;
pub mod error;
pub mod identity;
pub mod load;
pub mod locate;
pub mod manifest;
pub mod pgbouncer_settings;
pub mod rendered;
pub mod rollout;
pub mod schema;
pub mod secret;
pub mod selection;
pub mod wording;

pub use catalog::{Catalog, Freshness, Health, Instance, ServiceEntry};
pub use desired::NodeDesired;
pub use error::{Location, ManifestError, ManifestErrors};
pub use load::Manifests;
pub use manifest::Manifest;
pub use rendered::{
    Layout, Rejection, ReloadAction, RenderedFile, RenderedSet, RUNTIME_API_MARKER,
};
pub use secret::Secret;
