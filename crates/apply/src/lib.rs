//! Turning a rendered set into live files, safely.
//!
//! (module docs to be completed by the owner of this crate)
#![deny(missing_docs)]

pub mod validate;
