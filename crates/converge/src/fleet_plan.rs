//! `converge fleet plan`: every node, the proposed revision against the
//! published one (see [`converge_agent::fleet::plan`]).

use std::time::Duration;

use converge_agent::fleet::plan::{self, FleetPlan, NodePlan, Published};
use converge_agent::publish::Keys;
use converge_agent::source::{self, CatalogFrom};
use converge_consul::Client;

use crate::cli::{CatalogSource, Cli, FleetPlanArgs, Format};
use crate::exit;
use crate::output::{out, outln};

/// Runs `fleet plan`: 0 no node changes, 2 some do, 1 an error.
pub fn run(cli: &Cli, args: &FleetPlanArgs) -> anyhow::Result<u8> {
    if cli.published {
        anyhow::bail!(
            "fleet plan compares --manifests/--templates with the published revision; \
             drop --published"
        );
    }
    let config = cli.consul("fleet plan")?;
    let keys = cli.keys()?;
    // The proposed revision first: a manifest that does not load is the
    // reviewer's answer, whatever Consul says.
    let proposed = cli.inputs().prepare()?;
    let published = fetch(Client::new(config)?, &keys, cli)?;
    let mut services = source::referenced_services(&proposed.manifests.manifest);
    if let Some(p) = &published {
        services.extend(source::referenced_services(&p.prepared.manifests.manifest));
    }
    let from = match args.catalog_source {
        CatalogSource::Consul => cli.catalog_from()?,
        CatalogSource::File => CatalogFrom::File(cli.catalog.clone()),
    };
    let catalog = source::read_once(&from, services, cli.consul_timeout)?;
    let fleet = plan::plan(&proposed, published.as_ref(), &catalog);
    match args.format {
        Format::Json => outln!("{}", serde_json::to_string_pretty(&fleet)?),
        Format::Text => print(&fleet, &keys),
    }
    let errors = fleet.errors().count();
    if errors > 0 {
        crate::output::error_line(&format!(
            "error: {errors} node(s) did not render; see above"
        ));
        return Ok(exit::ERROR);
    }
    Ok(if fleet.changes {
        exit::CHANGES
    } else {
        exit::OK
    })
}

/// The published revision, within --consul-timeout.
fn fetch(client: Client, keys: &Keys, cli: &Cli) -> anyhow::Result<Option<Published>> {
    let timeout: Duration = cli.consul_timeout;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let read = plan::published(&client, keys, &cli.manifests);
    match runtime.block_on(async { tokio::time::timeout(timeout, read).await }) {
        Ok(read) => read.map_err(anyhow::Error::msg),
        Err(_) => anyhow::bail!(
            "no answer from Consul within {}",
            humantime::format_duration(timeout)
        ),
    }
}

fn print(fleet: &FleetPlan, keys: &Keys) {
    let name = |r: Option<&converge_agent::Revision>| {
        r.map_or_else(|| "unknown".to_string(), ToString::to_string)
    };
    outln!("proposed revision {}", name(fleet.proposed.as_ref()));
    match &fleet.published {
        Some(r) => outln!("published revision {r}"),
        None => outln!(
            "published revision: none ({} is empty); comparing against nothing, \
             so every target is new",
            keys.desired()
        ),
    }
    for n in &fleet.nodes {
        outln!();
        node(n);
    }
    outln!();
    let changing = fleet.nodes.iter().filter(|n| n.changes).count();
    outln!(
        "{changing} of {} nodes change from {} to {}",
        fleet.nodes.len(),
        name(fleet.published.as_ref()),
        name(fleet.proposed.as_ref())
    );
}

/// One node's section: its header, its plan, what it drops and finds.
fn node(n: &NodePlan) {
    let what = if let Some(e) = &n.error {
        format!("error: {e}")
    } else if !n.in_proposed {
        "dropped: not a node of the proposed manifests (its daemon would refuse the revision \
         and stay on the one it runs)"
            .to_string()
    } else if !n.in_published {
        "new node: not in the published manifests".to_string()
    } else if n.changes {
        "changes".to_string()
    } else {
        "no change".to_string()
    };
    outln!("=== {}: {what}", n.node);
    if let Some(plan) = &n.plan {
        out!("{plan}");
    }
    for d in &n.dropped {
        outln!(
            "dropped    {}  {}  (no longer rendered; its file is left as it is)",
            d.target,
            d.destination.display()
        );
    }
    for r in &n.left_out {
        outln!("left out: {r}");
    }
    for w in &n.warnings {
        outln!("warning: {w}");
    }
}
