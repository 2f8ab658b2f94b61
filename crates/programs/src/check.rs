//! What every validator shares: the candidate it is asked about, the
//! error that says why it was refused, and running the checker through the
//! [`process`] runner with a deadline.
//!
//! Kept apart from [`validate`](crate::validate), which picks the program,
//! so each program's own module (`haproxy::validate`, ...) can use these
//! without depending on the dispatcher that depends on it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use converge_model::RenderedFile;

use crate::process;

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
    pub failure: CheckFailure,
}

/// How a check ended without accepting the candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckFailure {
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
            CheckFailure::Rejected(how) => {
                write!(
                    f,
                    "target {target}: `{command}` rejected the candidate ({how})"
                )?;
            }
            CheckFailure::TimedOut(after) => write!(
                f,
                "target {target}: `{command}` did not finish within {}s and was killed; \
                 the candidate is not accepted",
                after.as_secs_f64()
            )?,
            CheckFailure::NotRun => write!(f, "target {target}: could not run `{command}`")?,
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
    pub(crate) fn new(
        candidate: &Candidate<'_>,
        command: String,
        failure: CheckFailure,
        output: String,
    ) -> Self {
        Self {
            target: candidate.file.target.clone(),
            command,
            output,
            failure,
        }
    }
}

/// Runs `cmd` with `timeout` and maps "could not run" and "timed out" to
/// errors; the caller judges the exit status and output.
pub(crate) fn run_checked(
    candidate: &Candidate<'_>,
    cmd: &mut Command,
    timeout: Duration,
) -> Result<(std::process::ExitStatus, String), ValidateError> {
    let shown = process::display(cmd);
    process::run(cmd, timeout).map_err(|e| match e {
        process::RunError::Io(e) => {
            let hint = if e.kind() == std::io::ErrorKind::NotFound {
                " (is the program installed and on PATH?)"
            } else {
                ""
            };
            ValidateError::new(candidate, shown, CheckFailure::NotRun, format!("{e}{hint}"))
        }
        process::RunError::TimedOut(out) => ValidateError::new(
            candidate,
            shown,
            CheckFailure::TimedOut(timeout),
            process::excerpt(out.lines(), MAX_LINES),
        ),
    })
}

/// Runs a validator whose exit status 0 accepts the candidate; any other
/// status rejects it, with `excerpt` picking what of the output to show.
pub(crate) fn run_to_verdict(
    candidate: &Candidate<'_>,
    cmd: &mut Command,
    timeout: Duration,
    excerpt: impl FnOnce(&str) -> String,
) -> Result<(), ValidateError> {
    let (status, output) = run_checked(candidate, cmd, timeout)?;
    if status.success() {
        return Ok(());
    }
    Err(ValidateError::new(
        candidate,
        process::display(cmd),
        CheckFailure::Rejected(process::describe(status)),
        excerpt(&output),
    ))
}
