//! `converge validate`: every node rendered, every file checked.

use converge_agent::repo_check;

use crate::cli::{Cli, Format, ValidateArgs};
use crate::exit;

/// Runs the repository check; 0 when everything passed.
pub fn run(cli: &Cli, args: &ValidateArgs) -> anyhow::Result<u8> {
    let (prepared, catalog) = cli.prepare()?;
    let report = repo_check::check(&prepared, &catalog, &args.only)?;
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Text => {
            for (node, e) in &report.node_errors {
                println!("FAIL  {node}: {e}");
            }
            for f in &report.files {
                match &f.error {
                    None => println!("ok    {} {}", f.node, f.target),
                    Some(e) => println!("FAIL  {} {}: {e}", f.node, f.target),
                }
            }
            for r in &report.left_out {
                println!("left out: {r}");
            }
            for w in &report.warnings {
                println!("warning: {w}");
            }
            let failed = report.files.iter().filter(|f| f.error.is_some()).count()
                + report.node_errors.len();
            println!(
                "{} files checked, {failed} problems, {} instances left out",
                report.files.len(),
                report.left_out.len()
            );
        }
    }
    Ok(if !report.ok() {
        exit::ERROR
    } else if !report.left_out.is_empty() {
        exit::INCOMPLETE
    } else {
        exit::OK
    })
}
