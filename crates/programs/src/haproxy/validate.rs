//! `haproxy -c -f STAGED`.
//!
//! What the check covers (HAProxy 2.6, verified): syntax, unknown keywords,
//! references between sections (a `default_backend` that does not exist),
//! files the config loads (map, ACL, certificate files must exist and
//! parse), and server addresses, which are resolved with the system
//! resolver at check time, so a hostname that does not resolve on the
//! checking machine is refused. It does not bind anything: a port already in
//! use, an address not present on this machine, or a `stats socket` in a
//! directory that does not exist all pass the check.
//!
//! `-q` is deliberately not used: with it, HAProxy 2.6 prints nothing at all
//! on failure, not even the `[ALERT]` lines. Warnings do not fail the check
//! (that would be `-dW`); the excerpt keeps the `[ALERT]` lines, which name
//! `[FILE:LINE]`, plus their `|` continuation lines.

use std::process::Command;
use std::time::Duration;

use crate::check::{run_to_verdict, Candidate, ValidateError, MAX_LINES};
use crate::process;

pub(crate) fn check(candidate: &Candidate<'_>, timeout: Duration) -> Result<(), ValidateError> {
    let mut cmd = Command::new(process::program("haproxy"));
    cmd.arg("-c").arg("-f").arg(candidate.staged);
    run_to_verdict(candidate, &mut cmd, timeout, relevant)
}

/// The `[ALERT]` lines and their continuations, without the pid; all
/// non-`[NOTICE]` lines when there is no alert.
fn relevant(output: &str) -> String {
    let mut keep = Vec::new();
    let mut in_alert = false;
    for line in output.lines() {
        if line.starts_with('[') {
            in_alert = line.starts_with("[ALERT]");
            if in_alert {
                keep.push(strip_pid(line));
            }
        } else if in_alert && line.trim_start().starts_with('|') {
            keep.push(line.to_string());
        }
    }
    if keep.is_empty() {
        keep = output
            .lines()
            .filter(|l| !l.starts_with("[NOTICE]"))
            .map(str::to_string)
            .collect();
    }
    process::excerpt(keep.iter().map(String::as_str), MAX_LINES)
}

/// `[ALERT]    (1234) : config : ...` → `[ALERT] config : ...`.
fn strip_pid(line: &str) -> String {
    let Some((level, rest)) = line.split_once(']') else {
        return line.to_string();
    };
    let rest = rest.trim_start();
    let rest = rest
        .strip_prefix('(')
        .and_then(|r| r.split_once(')'))
        .filter(|(pid, _)| pid.chars().all(|c| c.is_ascii_digit()))
        .map(|(_, r)| r.trim_start().trim_start_matches(':').trim_start())
        .unwrap_or(rest);
    format!("{level}] {rest}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_alerts_without_pids_and_drops_notices() {
        let out = "[NOTICE]   (1) : haproxy version is 2.6.12\n\
                   [NOTICE]   (1) : path to executable is /usr/sbin/haproxy\n\
                   [ALERT]    (24432) : config : parsing [bad.cfg:7] : unknown keyword 'x' in 'frontend' section\n\
                   [WARNING]  (1) : config : missing timeouts\n   | more warning\n\
                   [ALERT]    (24432) : config : Fatal errors found in configuration.\n   | detail\n";
        assert_eq!(
            relevant(out),
            "[ALERT] config : parsing [bad.cfg:7] : unknown keyword 'x' in 'frontend' section\n\
             [ALERT] config : Fatal errors found in configuration.\n   | detail"
        );
    }
}
