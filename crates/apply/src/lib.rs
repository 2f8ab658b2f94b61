//! Turning a rendered set into live files, safely.
//!
//! (module docs to be written by the owner of this crate)
#![deny(missing_docs)]
