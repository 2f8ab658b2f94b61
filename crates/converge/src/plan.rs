//! `converge plan`: the diff `apply` would make, touching nothing.

use converge_agent::guard::Hold;
use converge_agent::pass::Pass;
use converge_agent::pause::Pause;
use converge_agent::Revision;
use converge_model::Rejection;
use serde::Serialize;

use crate::cli::{Cli, Format, PlanArgs};
use crate::exit;
use crate::output::{out, outln};

/// The JSON document `--format json` prints.
#[derive(Serialize)]
struct PlanDocument<'a> {
    node: &'a str,
    revision: Option<&'a Revision>,
    changes: bool,
    plan: &'a converge_apply::Plan,
    holds: &'a [Hold],
    /// Per target a hold keeps from changing, the holds.
    held_targets: &'a std::collections::BTreeMap<String, Vec<String>>,
    /// Databases `converge run` would pause while their primary is unclear.
    would_pause: &'a [Pause],
    left_out: &'a [Rejection],
    warnings: &'a [String],
}

/// Runs `plan`; 0 nothing to do, 2 changes or holds.
pub fn run(cli: &Cli, args: &PlanArgs) -> anyhow::Result<u8> {
    let node = cli.node()?;
    let (prepared, catalog) = cli.prepare()?;
    let (pass, plan) = prepared.plan(&node, catalog, &args.release.set())?;
    match args.format {
        Format::Json => {
            let doc = PlanDocument {
                node: &node,
                revision: prepared.revision.as_ref(),
                changes: plan.has_changes(),
                plan: &plan,
                holds: &pass.holds,
                held_targets: &pass.held_targets,
                would_pause: &pass.pauses,
                left_out: pass.left_out(),
                warnings: &pass.set.warnings,
            };
            outln!("{}", serde_json::to_string_pretty(&doc)?);
        }
        Format::Text => {
            print_revision(prepared.revision.as_ref());
            out!("{plan}");
            print_findings(&pass);
            for p in &pass.pauses {
                outln!("would pause: {p} (converge run pauses it; plan and apply --once never do)");
            }
        }
    }
    Ok(if plan.has_changes() || !pass.holds.is_empty() {
        exit::CHANGES
    } else {
        exit::OK
    })
}

/// `revision abc1234`: which manifests and templates the output is of.
pub fn print_revision(revision: Option<&Revision>) {
    match revision {
        Some(r) => outln!("revision {r}"),
        None => outln!("revision unknown"),
    }
}

/// Holds, left-out instances and render warnings, after the summary.
pub fn print_findings(pass: &Pass) {
    for h in &pass.holds {
        let targets: Vec<&str> = pass
            .held_targets
            .iter()
            .filter(|(_, by)| by.contains(&h.backend))
            .map(|(t, _)| t.as_str())
            .collect();
        let targets = if targets.is_empty() {
            String::new()
        } else {
            format!(" in {}", targets.join(", "))
        };
        outln!(
            "held: {} (service {}): {}; keeping its last {}{targets} (release once with --release {})",
            h.backend,
            h.service,
            h.reason,
            h.before,
            h.backend
        );
    }
    for r in pass.left_out() {
        outln!("left out: {r}");
    }
    for w in &pass.set.warnings {
        outln!("warning: {w}");
    }
}
