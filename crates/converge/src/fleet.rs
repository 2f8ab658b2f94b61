//! `converge fleet status` and `converge fleet wait`: the node reports in
//! Consul KV against the published revision.

use std::time::{Duration, UNIX_EPOCH};

use converge_agent::fleet::view::{self, FleetView, NodeView};
use converge_agent::publish::Keys;
use converge_agent::rollout;
use converge_agent::Revision;
use converge_consul::Client;

use crate::cli::{Cli, FleetCommand, FleetWaitArgs, Format};
use crate::exit;
use crate::output::outln;

/// Longest one blocking read of the reports waits.
const WAIT_STEP: Duration = Duration::from_secs(300);

/// Runs a `fleet` subcommand.
pub fn run(cli: &Cli, cmd: &FleetCommand) -> anyhow::Result<u8> {
    match cmd {
        FleetCommand::Status(a) => {
            on_consul(cli, |c, k| async move { status(&c, &k, a.format).await })
        }
        FleetCommand::Wait(a) => on_consul(cli, |c, k| async move { wait(&c, &k, a).await }),
        FleetCommand::Pause(a) => on_consul(cli, |c, k| async move {
            pause(&c, &k, a.node.as_deref(), true).await
        }),
        FleetCommand::Resume(a) => on_consul(cli, |c, k| async move {
            pause(&c, &k, a.node.as_deref(), false).await
        }),
        FleetCommand::Plan(a) => crate::fleet_plan::run(cli, a),
    }
}

/// Runs `work` with a client of --consul and the fleet's keys, on a
/// runtime of its own.
fn on_consul<F, W>(cli: &Cli, work: W) -> anyhow::Result<u8>
where
    W: FnOnce(Client, Keys) -> F,
    F: std::future::Future<Output = anyhow::Result<u8>>,
{
    let client = Client::new(cli.consul("fleet")?)?;
    let keys = cli.keys()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(work(client, keys))
}

/// `fleet status`: 0 converged, 2 not.
async fn status(client: &Client, keys: &Keys, format: Format) -> anyhow::Result<u8> {
    let desired = view::desired(client, keys)
        .await
        .map_err(anyhow::Error::msg)?;
    let revision = desired.map(|d| d.current.revision);
    let nodes = nodes(client, keys, revision.as_ref()).await;
    let rollout = rollout::read(client, keys)
        .await
        .map_err(anyhow::Error::msg)?;
    // A halt of another revision is history; one whose revision is
    // unknown (a corrupt key) halts whatever is published.
    let halt = rollout
        .halt
        .filter(|h| revision.as_ref().is_none_or(|r| h.halts(r)));
    let fleet = view::view(revision, nodes, &rollout.reports);
    let doc = serde_json::json!({
        "halted": halt,
        "paused": rollout.paused,
        "paused_nodes": rollout.paused_nodes,
    });
    print(format, &fleet, false, Some(doc));
    if format == Format::Text {
        if let Some(h) = &halt {
            let which = h
                .revision
                .as_ref()
                .map_or_else(|| "every revision".into(), |r| format!("revision {r}"));
            outln!("halted at {}: {} ({which})", h.node, h.reason);
        }
        if rollout.paused {
            outln!("paused: the whole fleet takes no new revision (converge fleet resume)");
        }
        for n in &rollout.paused_nodes {
            outln!("paused: {n} takes no new revision (converge fleet resume --node {n})");
        }
    }
    Ok(if fleet.converged && halt.is_none() {
        exit::OK
    } else {
        exit::CHANGES
    })
}

/// `fleet pause` / `fleet resume`.
async fn pause(client: &Client, keys: &Keys, node: Option<&str>, on: bool) -> anyhow::Result<u8> {
    rollout::set_pause(client, keys, node, on).await?;
    let who = node.map_or_else(|| "the fleet".to_string(), |n| format!("node {n}"));
    outln!(
        "{who} {}",
        if on {
            "paused: no new revision is taken"
        } else {
            "resumed"
        }
    );
    Ok(exit::OK)
}

/// `fleet wait`: 0 once every node converged on the revision, 2 when the
/// timeout passes first.
async fn wait(client: &Client, keys: &Keys, args: &FleetWaitArgs) -> anyhow::Result<u8> {
    let deadline = tokio::time::Instant::now() + args.timeout;
    let revision = match &args.revision {
        Some(r) => r.clone(),
        None => view::desired(client, keys)
            .await
            .map_err(anyhow::Error::msg)?
            .map(|d| d.current.revision)
            .ok_or_else(|| anyhow::anyhow!("nothing is published at {}", keys.desired()))?,
    };
    let nodes = nodes(client, keys, Some(&revision)).await;
    let mut index = 0;
    let mut last = None;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            break;
        }
        let read = view::reports(client, keys, index, left.min(WAIT_STEP));
        let Ok(read) = tokio::time::timeout(left, read).await else {
            break;
        };
        let (reports, at) = read.map_err(anyhow::Error::msg)?;
        // An index going backwards (a restored Consul) starts over.
        index = if at < index { 0 } else { at.max(1) };
        let fleet = view::view(Some(revision.clone()), nodes.clone(), &reports);
        if fleet.converged {
            print(args.format, &fleet, false, None);
            return Ok(exit::OK);
        }
        last = Some(fleet);
    }
    let fleet =
        last.unwrap_or_else(|| view::view(Some(revision.clone()), nodes, &Default::default()));
    print(args.format, &fleet, true, None);
    crate::output::error_line(&format!(
        "error: not every node converged on {revision} within {}",
        humantime::format_duration(args.timeout)
    ));
    Ok(exit::CHANGES)
}

/// The nodes of `revision`'s manifests, or why they could not be read.
async fn nodes(
    client: &Client,
    keys: &Keys,
    revision: Option<&Revision>,
) -> Result<Vec<String>, String> {
    match revision {
        Some(r) => view::manifest_nodes(client, keys, r).await,
        None => Err(format!("nothing is published at {}", keys.desired())),
    }
}

/// Prints the table (text) or the document (JSON, with `rollout` as its
/// `rollout` field when given).
fn print(format: Format, fleet: &FleetView, timed_out: bool, rollout: Option<serde_json::Value>) {
    if format == Format::Json {
        let mut doc = serde_json::to_value(fleet).unwrap_or_default();
        doc["timed_out"] = timed_out.into();
        if let Some(r) = rollout {
            doc["rollout"] = r;
        }
        outln!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        return;
    }
    match &fleet.revision {
        Some(r) => outln!("desired revision {r}"),
        None => outln!("desired revision: nothing published"),
    }
    if let Some(note) = &fleet.nodes_note {
        outln!("nodes: those with a report (the manifests could not be read: {note})");
    }
    outln!(
        "{:<16} {:<6} {:<22} {:<10} {:<20} {:<20} {}",
        "NODE",
        "ALIVE",
        "REVISION",
        "CONVERGED",
        "HELD/FAILING",
        "LAST APPLY",
        "DRIFT"
    );
    for n in &fleet.nodes {
        row(n);
    }
    for n in fleet.stragglers() {
        let why = n
            .report
            .as_ref()
            .map(|r| match (&r.error, r.holds.is_empty()) {
                (Some(e), _) => e.clone(),
                (None, false) => format!("held: {}", r.holds.join("; ")),
                (None, true) => "not converged yet".into(),
            })
            .unwrap_or_else(|| "no report".into());
        let stale = if n.report.is_some() && !n.alive {
            " (report stale: its session is gone)"
        } else {
            ""
        };
        outln!("not converged: {}{stale}: {why}", n.node);
    }
}

fn row(n: &NodeView) {
    let yes = |b: bool| if b { "yes" } else { "no" };
    let Some(r) = &n.report else {
        outln!("{:<16} {:<6} {:<22} {:<10}", n.node, "no", "-", "no");
        return;
    };
    let with = |outcomes: &[&str]| -> Vec<&str> {
        r.targets
            .iter()
            .filter(|(_, t)| t.outcome.as_deref().is_some_and(|o| outcomes.contains(&o)))
            .map(|(name, _)| name.as_str())
            .collect()
    };
    let failing = with(&["rejected", "failed", "rolled_back"]);
    let held = with(&["held"]);
    let mut trouble = Vec::new();
    if !held.is_empty() {
        trouble.push(format!("held {}", held.join(",")));
    } else if !r.holds.is_empty() {
        trouble.push(format!("{} holds", r.holds.len()));
    }
    if !failing.is_empty() {
        trouble.push(format!("failing {}", failing.join(",")));
    }
    let drift: Vec<&str> = r
        .targets
        .iter()
        .filter(|(_, t)| t.last_drift.is_some())
        .map(|(name, _)| name.as_str())
        .collect();
    let last_apply = r
        .last_apply
        .map(|t| humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(t)).to_string())
        .unwrap_or_else(|| "-".into());
    outln!(
        "{:<16} {:<6} {:<22} {:<10} {:<20} {:<20} {}",
        n.node,
        yes(n.alive),
        r.revision.as_ref().map_or("-", Revision::as_str),
        yes(n.converged),
        if trouble.is_empty() {
            "-".to_string()
        } else {
            trouble.join("; ")
        },
        last_apply,
        if drift.is_empty() {
            "-".to_string()
        } else {
            drift.join(",")
        }
    );
}
