//! Test support: real programs in per-test temp dirs on free loopback
//! ports, stopped by pid when dropped.
//!
//! Nothing here is a stand-in for a real program. Helpers wait for
//! conditions with a deadline ([`wait::until`]) instead of sleeping.
#![deny(missing_docs)]
