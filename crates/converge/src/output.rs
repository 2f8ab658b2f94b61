//! Every byte a command prints goes through here.
//!
//! `println!` panics when stdout is gone (`converge plan | head -0`), and
//! a panic after `apply` committed turns a success into exit 101. Commands
//! print with [`outln!`] and [`out!`] instead: a closed stdout ends the
//! output quietly and the command carries on to its own exit code; any
//! other write error is kept and reported once by `main` after the command
//! has finished, so nothing it did is hidden. `main` also writes errors
//! here, as a JSON document under `--format json` ([`error_document`]), so
//! a program reading stdout always gets JSON.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use converge_agent::AgentError;
use serde_json::json;

/// Set once a write failed; later output is dropped.
static STOPPED: AtomicBool = AtomicBool::new(false);
/// The first write error other than a closed pipe.
static FAILURE: OnceLock<String> = OnceLock::new();

/// `print!` to stdout that never panics.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write(format_args!($($arg)*))
    };
}

/// `println!` to stdout that never panics.
macro_rules! outln {
    () => {
        $crate::output::write(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::write(format_args!("{}\n", format_args!($($arg)*)))
    };
}

pub(crate) use {out, outln};

/// Writes to stdout unless an earlier write failed.
pub(crate) fn write(args: std::fmt::Arguments<'_>) {
    if STOPPED.load(Ordering::Relaxed) {
        return;
    }
    let mut stdout = io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        stopped(e);
    }
}

fn stopped(e: io::Error) {
    STOPPED.store(true, Ordering::Relaxed);
    if e.kind() != io::ErrorKind::BrokenPipe {
        let _ = FAILURE.set(e.to_string());
    }
}

/// A write error other than a closed pipe, if one happened.
pub(crate) fn failure() -> Option<&'static str> {
    FAILURE.get().map(String::as_str)
}

/// A line on stderr, never panicking (stderr may be closed too).
pub(crate) fn error_line(text: &str) {
    let _ = writeln!(io::stderr().lock(), "{text}");
}

/// `{"error": {"kind": …, "message": …}}` for an error that stopped a
/// command. `kind` tells a program which input was at fault (see
/// [`AgentError::kind`]; `catalog` for Consul, `other` otherwise).
pub(crate) fn error_document(e: &anyhow::Error) -> serde_json::Value {
    json!({ "error": { "kind": kind(e), "message": format!("{e:#}") } })
}

/// The error document for a command line clap refused.
pub(crate) fn usage_document(e: &clap::Error) -> serde_json::Value {
    json!({ "error": { "kind": "usage", "message": e.to_string().trim_end() } })
}

fn kind(e: &anyhow::Error) -> &'static str {
    for cause in e.chain() {
        if let Some(a) = cause.downcast_ref::<AgentError>() {
            return a.kind();
        }
        if let Some(p) = cause.downcast_ref::<converge_agent::publish::PublishError>() {
            return p.kind();
        }
        if cause.is::<converge_consul::Error>() {
            return "catalog";
        }
    }
    "other"
}

/// Whether a raw command line asks for `--format json`, for errors that
/// stop it before it is parsed.
pub(crate) fn wants_json(args: &[String]) -> bool {
    args.windows(2)
        .any(|w| w[0] == "--format" && w[1] == "json")
        || args.iter().any(|a| a == "--format=json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_asked_for_either_way() {
        let args = |s: &str| s.split(' ').map(str::to_string).collect::<Vec<_>>();
        assert!(wants_json(&args("converge plan --format json")));
        assert!(wants_json(&args("converge plan --format=json")));
        assert!(!wants_json(&args("converge plan --format text")));
    }
}
