//! Validators: run the real program on a staged candidate before it may
//! replace a live file (invariant 2: nothing is committed that the program
//! itself has not accepted).
//!
//! One module per program, because each needs a different trick to be
//! asked the question "would you accept this file?" without touching the
//! live service:
//!
//! - [`haproxy`](crate::haproxy::validate): `haproxy -c -f STAGED`. Not `-q`: in 2.6 `-q` also hides
//!   the `[ALERT]` lines that say which line is wrong.
//! - [`keepalived`](crate::keepalived::validate): `keepalived -t -f STAGED` inside a throwaway network
//!   namespace holding interfaces with the names the config uses, so the
//!   check means "is this config right for a node that has these
//!   interfaces", on any machine.
//! - [`pgbouncer`](crate::pgbouncer::validate): PgBouncer has no check flag, so the real binary is
//!   started on a wrapper config that includes the candidate and moves its
//!   listener, socket and pidfile into a private directory, and is stopped
//!   again once it accepts a connection.
//! - [`command`]: any argv, `{}` replaced by the staged path.
//!
//! All of them go through the one runner ([`process`](crate::process)): no shell
//! (keepalived's namespace setup is the one exception, with every value
//! passed as a positional argument), its own process group, a deadline
//! ([`DEFAULT_TIMEOUT`]) after which the group is killed, and the program's
//! output trimmed to the lines that explain the refusal (at most
//! [`MAX_LINES`]).

use std::time::Duration;

use converge_model::manifest::Validator;

pub use crate::check::{Candidate, CheckFailure, ValidateError, DEFAULT_TIMEOUT, MAX_LINES};
use crate::{haproxy, keepalived, pgbouncer};

pub mod command;

/// Runs the target's validator on the candidate, with [`DEFAULT_TIMEOUT`].
pub fn validate(candidate: &Candidate<'_>) -> Result<(), ValidateError> {
    validate_within(candidate, DEFAULT_TIMEOUT)
}

/// Runs the target's validator on the candidate, killing it after
/// `timeout`.
pub fn validate_within(candidate: &Candidate<'_>, timeout: Duration) -> Result<(), ValidateError> {
    match &candidate.file.validate {
        Validator::Haproxy => haproxy::validate::check(candidate, timeout),
        Validator::Keepalived => keepalived::validate::check(candidate, timeout),
        Validator::Pgbouncer => pgbouncer::validate::check(candidate, timeout),
        Validator::Command(argv) => command::check(candidate, argv, timeout),
        Validator::None => Ok(()),
    }
    .map_err(|mut e| {
        e.output = name_candidates(candidate, &e.output);
        e
    })
}

/// The program's output with each staged path (`.haproxy.cfg.converge-stage.…`,
/// deleted by the time anyone reads it) replaced by `(candidate) DESTINATION`,
/// so `file:line` in an `[ALERT]` names the file an operator knows.
///
/// One pass over the output, each staged path once: a candidate that is
/// also listed among its siblings, or staged at its own destination (as
/// `converge validate` does), is named once, not `(candidate) (candidate)`.
fn name_candidates(candidate: &Candidate<'_>, output: &str) -> String {
    let mut names: Vec<(String, String)> =
        std::iter::once((candidate.file.destination.as_path(), candidate.staged))
            .chain(
                candidate
                    .siblings
                    .iter()
                    .map(|(d, s)| (d.as_path(), s.as_path())),
            )
            .map(|(dest, staged)| {
                (
                    staged.to_string_lossy().into_owned(),
                    format!("(candidate) {}", dest.display()),
                )
            })
            .filter(|(staged, _)| !staged.is_empty())
            .collect();
    // Longest first, so a path that extends another is matched whole.
    names.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
    names.dedup_by(|a, b| a.0 == b.0);
    let mut out = String::with_capacity(output.len());
    let mut rest = output;
    loop {
        let next = names
            .iter()
            .filter_map(|(staged, name)| rest.find(staged.as_str()).map(|at| (at, staged, name)))
            .min_by_key(|(at, _, _)| *at);
        let Some((at, staged, name)) = next else {
            out.push_str(rest);
            return out;
        };
        out.push_str(&rest[..at]);
        out.push_str(name);
        rest = &rest[at + staged.len()..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil;
    use converge_model::ReloadAction;

    fn rendered(target: &str, destination: &str) -> converge_model::RenderedFile {
        testutil::rendered(target, destination, "", Validator::None, ReloadAction::None)
    }

    #[test]
    fn a_candidate_staged_at_its_destination_and_listed_as_a_sibling_is_named_once() {
        let file = &rendered("haproxy", "/srv/root/etc/haproxy/haproxy.cfg");
        let map = &rendered("map", "/srv/root/etc/haproxy/hosts.map");
        let dest = file.destination.clone();
        let siblings = vec![
            (dest.clone(), dest.clone()),
            (map.destination.clone(), map.destination.clone()),
        ];
        let candidate = Candidate {
            file,
            staged: &dest,
            siblings: &siblings,
        };
        let output = format!(
            "[ALERT] parsing [{}:10] : cannot open map {}",
            dest.display(),
            map.destination.display()
        );
        assert_eq!(
            name_candidates(&candidate, &output),
            format!(
                "[ALERT] parsing [(candidate) {}:10] : cannot open map (candidate) {}",
                dest.display(),
                map.destination.display()
            )
        );
    }
}
