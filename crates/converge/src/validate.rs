//! `converge validate`: every node rendered, every file checked.

use converge_agent::validate::{self, RepoReport};

use crate::cli::{Cli, Format, ValidateArgs};
use crate::exit;
use crate::output::outln;

/// Runs the repository check; 0 when everything passed.
pub fn run(cli: &Cli, args: &ValidateArgs) -> anyhow::Result<u8> {
    let (prepared, catalog) = cli.prepare()?;
    let report = validate::check(&prepared, &catalog, &args.only)?;
    match args.format {
        Format::Json => outln!("{}", serde_json::to_string_pretty(&report)?),
        Format::Text => print(&report),
    }
    Ok(if !report.ok() {
        exit::ERROR
    } else if !report.left_out.is_empty() {
        exit::INCOMPLETE
    } else {
        exit::OK
    })
}

/// The report as text: one line per file, then findings and a summary.
pub fn print(report: &RepoReport) {
    for (node, e) in &report.node_errors {
        outln!("FAIL  {node}: {e}");
    }
    for f in &report.files {
        match &f.error {
            None => outln!("ok    {} {}", f.node, f.target),
            Some(e) => outln!("FAIL  {} {}: {e}", f.node, f.target),
        }
    }
    for r in &report.left_out {
        outln!("left out: {r}");
    }
    for w in &report.warnings {
        outln!("warning: {w}");
    }
    let failed =
        report.files.iter().filter(|f| f.error.is_some()).count() + report.node_errors.len();
    outln!(
        "{} files checked, {failed} problems, {} instances left out",
        report.files.len(),
        report.left_out.len()
    );
}
