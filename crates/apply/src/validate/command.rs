//! An argv from the manifest, every `{}` (also inside an argument, as in
//! `--config={}`) replaced by the staged path. Run directly, never through
//! a shell; exit status 0 accepts the candidate.

use std::ffi::OsString;
use std::process::Command;
use std::time::Duration;

use super::{run, run_checked, Candidate, Failure, ValidateError, MAX_LINES};

pub(super) fn check(
    candidate: &Candidate<'_>,
    argv: &[String],
    timeout: Duration,
) -> Result<(), ValidateError> {
    let mut args = argv.iter().map(|a| substitute(a, candidate));
    let Some(program) = args.next() else {
        return Err(ValidateError::new(
            candidate,
            String::new(),
            Failure::NotRun,
            "the validator command is empty".to_string(),
        ));
    };
    let mut cmd = Command::new(program);
    cmd.args(args);
    run_to_verdict(candidate, &mut cmd, timeout, |output| {
        run::excerpt(output.trim().lines(), MAX_LINES)
    })
}

/// Runs a validator whose exit status 0 accepts the candidate; any other
/// status rejects it, with `excerpt` picking what of the output to show.
pub(super) fn run_to_verdict(
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
        run::display(cmd),
        Failure::Rejected(run::describe(status)),
        excerpt(&output),
    ))
}

fn substitute(arg: &str, candidate: &Candidate<'_>) -> OsString {
    let mut out = OsString::new();
    let mut parts = arg.split("{}");
    if let Some(first) = parts.next() {
        out.push(first);
    }
    for part in parts {
        out.push(candidate.staged.as_os_str());
        out.push(part);
    }
    out
}
