//! `converge plan`: the diff `apply` would make, touching nothing.

use converge_model::RenderedSet;
use serde::Serialize;

use crate::cli::{Cli, Format, PlanArgs};
use crate::exit;
use crate::output::{out, outln};

/// The JSON document `--format json` prints.
#[derive(Serialize)]
struct PlanDocument<'a> {
    node: &'a str,
    changes: bool,
    plan: &'a converge_apply::Plan,
    rejections: &'a [converge_model::Rejection],
    warnings: &'a [String],
}

/// Runs `plan`; 0 no changes, 2 changes.
pub fn run(cli: &Cli, args: &PlanArgs) -> anyhow::Result<u8> {
    let node = cli.node()?;
    let prepared = cli.prepare()?;
    let (set, plan) = prepared.plan(&node)?;
    match args.format {
        Format::Json => {
            let doc = PlanDocument {
                node: &node,
                changes: plan.has_changes(),
                plan: &plan,
                rejections: &set.rejections,
                warnings: &set.warnings,
            };
            outln!("{}", serde_json::to_string_pretty(&doc)?);
        }
        Format::Text => {
            out!("{plan}");
            print_findings(&set);
        }
    }
    Ok(if plan.has_changes() {
        exit::CHANGES
    } else {
        exit::OK
    })
}

/// Rejected catalog instances and render warnings, after the summary.
pub fn print_findings(set: &RenderedSet) {
    for r in &set.rejections {
        outln!(
            "rejected: service {} instance {}: {} `{}`: {}",
            r.service,
            r.instance,
            r.field,
            r.value,
            r.reason
        );
    }
    for w in &set.warnings {
        outln!("warning: {w}");
    }
}
