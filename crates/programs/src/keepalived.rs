//! keepalived, as converge drives it: `keepalived -t` on the candidate in
//! a scratch network namespace that has the interfaces the config names
//! ([`validate`]). Reloads are a signal through its pidfile (see
//! [`signal`](crate::signal)).

pub mod validate;
