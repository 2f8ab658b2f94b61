//! `converge apply --once`: one transaction on this node.

use std::time::Duration;

use converge_agent::guard::Hold;
use converge_agent::pause::Pause;
use converge_agent::Revision;
use converge_apply::{ApplyOptions, ApplyReport};
use converge_model::Rejection;
use serde::Serialize;

use crate::cli::{ApplyArgs, Cli, Format};
use crate::exit;
use crate::output::{out, outln};

/// The JSON document `--format json` prints.
#[derive(Serialize)]
struct ApplyDocument<'a> {
    revision: Option<&'a Revision>,
    #[serde(flatten)]
    report: &'a ApplyReport,
    holds: &'a [Hold],
    /// Databases `converge run` would pause; `apply --once` does not.
    not_paused: &'a [Pause],
    left_out: &'a [Rejection],
    warnings: &'a [String],
}

/// Runs one apply; 0 when every bundle is unchanged or applied with
/// nothing held or left out, 3 when applied but held or left out.
pub fn run(cli: &Cli, args: &ApplyArgs) -> anyhow::Result<u8> {
    let node = cli.node()?;
    let (prepared, catalog) = cli.prepare()?;
    let opts = ApplyOptions {
        lock_timeout: Duration::from_secs(args.lock_timeout),
        ..ApplyOptions::default()
    };
    let (pass, report) = prepared.apply(&node, catalog, &args.release.set(), &opts)?;
    match args.format {
        Format::Json => {
            let doc = ApplyDocument {
                revision: prepared.revision.as_ref(),
                report: &report,
                holds: &pass.holds,
                not_paused: &pass.pauses,
                left_out: pass.left_out(),
                warnings: &pass.set.warnings,
            };
            outln!("{}", serde_json::to_string_pretty(&doc)?);
        }
        Format::Text => {
            crate::plan::print_revision(prepared.revision.as_ref());
            out!("{report}");
            crate::plan::print_findings(&pass);
            for p in &pass.pauses {
                outln!(
                    "not paused: {p}; apply --once exits and would leave it paused, \
                     converge run pauses it"
                );
            }
        }
    }
    Ok(if !report.ok() {
        exit::ERROR
    } else if !pass.complete() {
        exit::INCOMPLETE
    } else {
        exit::OK
    })
}
