//! `converge apply --once`: one transaction on this node.

use std::time::Duration;

use converge_apply::ApplyOptions;

use crate::cli::{ApplyArgs, Cli, Format};
use crate::exit;
use crate::output::{out, outln};

/// Runs one apply; 0 when every bundle is unchanged or applied.
pub fn run(cli: &Cli, args: &ApplyArgs) -> anyhow::Result<u8> {
    let node = cli.node()?;
    let prepared = cli.prepare()?;
    let opts = ApplyOptions {
        lock_timeout: Duration::from_secs(args.lock_timeout),
        ..ApplyOptions::default()
    };
    let (set, report) = prepared.apply(&node, &opts)?;
    match args.format {
        Format::Json => outln!("{}", serde_json::to_string_pretty(&report)?),
        Format::Text => {
            out!("{report}");
            crate::plan::print_findings(&set);
        }
    }
    Ok(if report.ok() { exit::OK } else { exit::ERROR })
}
