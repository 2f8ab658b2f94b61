//! Validators: run the real program on a staged candidate before it may
//! replace a live file (invariant 2: nothing is committed that the program
//! itself has not accepted).
//!
//! One module per program, because each needs a different trick to be
//! asked the question "would you accept this file?" without touching the
//! live service:
//!
//! - [`haproxy`]: `haproxy -c -f STAGED`. Not `-q`: in 2.6 `-q` also hides
//!   the `[ALERT]` lines that say which line is wrong.
//! - [`keepalived`]: `keepalived -t -f STAGED` inside a throwaway network
//!   namespace holding interfaces with the names the config uses, so the
//!   check means "is this config right for a node that has these
//!   interfaces", on any machine.
//! - [`pgbouncer`]: PgBouncer has no check flag, so the real binary is
//!   started on a wrapper config that includes the candidate and moves its
//!   listener, socket and pidfile into a private directory, and is stopped
//!   again once it accepts a connection.
//! - [`command`]: any argv, `{}` replaced by the staged path.
//!
//! All of them go through one runner (`validate/run.rs`): no shell
//! (keepalived's namespace setup is the one exception, with every value
//! passed as a positional argument), its own process group, a deadline
//! ([`DEFAULT_TIMEOUT`]) after which the group is killed, and the program's
//! output trimmed to the lines that explain the refusal (at most
//! [`MAX_LINES`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use converge_model::manifest::Validator;
use converge_model::RenderedFile;

pub mod command;
pub mod haproxy;
pub mod keepalived;
pub mod pgbouncer;
mod run;

/// How long a validator may run before it is killed and the candidate
/// refused.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The most output lines an error carries.
pub const MAX_LINES: usize = 20;

/// A staged candidate and where its bundle siblings are staged.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    /// The rendered target.
    pub file: &'a RenderedFile,
    /// Where its candidate bytes are on disk now.
    pub staged: &'a Path,
    /// `(final destination, staged path)` of every file in the same bundle,
    /// so a validator can point the program at the candidate siblings
    /// (PgBouncer's `auth_file`) instead of the live ones.
    pub siblings: &'a [(PathBuf, PathBuf)],
}

/// The program refused the candidate, or could not be run.
#[derive(Debug)]
pub struct ValidateError {
    /// Target name.
    pub target: String,
    /// The command line that was run.
    pub command: String,
    /// Its output, trimmed to the relevant lines.
    pub output: String,
    /// How the check ended.
    pub failure: Failure,
}

/// How a check ended without accepting the candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The program ran and refused the file; says how (`exit status 1`,
    /// `started but logged errors`, ...).
    Rejected(String),
    /// The program did not finish within this time and was killed.
    TimedOut(Duration),
    /// The check could not be carried out (program missing, no namespace,
    /// temp dir); the file was not judged, and is not accepted either.
    NotRun,
}

impl fmt::Display for ValidateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (target, command) = (&self.target, &self.command);
        match &self.failure {
            Failure::Rejected(how) => {
                write!(
                    f,
                    "target {target}: `{command}` rejected the candidate ({how})"
                )?;
            }
            Failure::TimedOut(after) => write!(
                f,
                "target {target}: `{command}` did not finish within {}s and was killed; \
                 the candidate is not accepted",
                after.as_secs_f64()
            )?,
            Failure::NotRun => write!(f, "target {target}: could not run `{command}`")?,
        }
        if !self.output.is_empty() {
            f.write_str(":")?;
            for line in self.output.lines() {
                write!(f, "\n    {line}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ValidateError {}

impl ValidateError {
    fn new(candidate: &Candidate<'_>, command: String, failure: Failure, output: String) -> Self {
        Self {
            target: candidate.file.target.clone(),
            command,
            output,
            failure,
        }
    }
}

/// Runs the target's validator on the candidate, with [`DEFAULT_TIMEOUT`].
pub fn validate(candidate: &Candidate<'_>) -> Result<(), ValidateError> {
    validate_within(candidate, DEFAULT_TIMEOUT)
}

/// Runs the target's validator on the candidate, killing it after
/// `timeout`.
pub fn validate_within(candidate: &Candidate<'_>, timeout: Duration) -> Result<(), ValidateError> {
    match &candidate.file.validate {
        Validator::Haproxy => haproxy::check(candidate, timeout),
        Validator::Keepalived => keepalived::check(candidate, timeout),
        Validator::Pgbouncer => pgbouncer::check(candidate, timeout),
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

/// Runs `cmd` with `timeout` and maps "could not run" and "timed out" to
/// errors; the caller judges the exit status and output.
fn run_checked(
    candidate: &Candidate<'_>,
    cmd: &mut Command,
    timeout: Duration,
) -> Result<(std::process::ExitStatus, String), ValidateError> {
    let shown = run::display(cmd);
    run::run(cmd, timeout).map_err(|e| match e {
        run::RunError::Io(e) => {
            let hint = if e.kind() == std::io::ErrorKind::NotFound {
                " (is the program installed and on PATH?)"
            } else {
                ""
            };
            ValidateError::new(candidate, shown, Failure::NotRun, format!("{e}{hint}"))
        }
        run::RunError::TimedOut(out) => ValidateError::new(
            candidate,
            shown,
            Failure::TimedOut(timeout),
            run::excerpt(out.lines(), MAX_LINES),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Fixture;

    #[test]
    fn a_candidate_staged_at_its_destination_and_listed_as_a_sibling_is_named_once() {
        let mut fx = Fixture::new();
        fx.add("haproxy", "/etc/haproxy/haproxy.cfg", "global\n");
        fx.add("map", "/etc/haproxy/hosts.map", "a b\n");
        let file = &fx.set.files["haproxy"];
        let map = &fx.set.files["map"];
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
