//! A manifest's own validator: an argv, every `{}` (also inside an argument, as in
//! `--config={}`) replaced by the staged path. Run directly, never through
//! a shell; exit status 0 accepts the candidate.

use std::ffi::OsString;
use std::process::Command;
use std::time::Duration;

use crate::check::{run_to_verdict, Candidate, CheckFailure, ValidateError, MAX_LINES};
use crate::process;

pub(crate) fn check(
    candidate: &Candidate<'_>,
    argv: &[String],
    timeout: Duration,
) -> Result<(), ValidateError> {
    let mut args = argv.iter().map(|a| substitute(a, candidate));
    let Some(program) = args.next() else {
        return Err(ValidateError::new(
            candidate,
            String::new(),
            CheckFailure::NotRun,
            "the validator command is empty".to_string(),
        ));
    };
    let mut cmd = Command::new(program);
    cmd.args(args);
    run_to_verdict(candidate, &mut cmd, timeout, |output| {
        process::excerpt(output.trim().lines(), MAX_LINES)
    })
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
