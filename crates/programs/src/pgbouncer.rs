//! PgBouncer, as converge drives it: a trial start on the candidate
//! instead of a check flag it lacks ([`validate`]), its admin console for
//! `PAUSE`/`RELOAD`/`RESUME` and for `converge status` ([`console`]),
//! reading a `pgbouncer.ini` as PgBouncer does ([`ini`]), and the settings
//! a reload does not apply ([`restart`]).

pub mod console;
pub mod ini;
pub mod restart;
pub mod validate;
