//! `converge-bench scale`: converge's Consul source and consul-template
//! watching W services of a large synthetic datacenter, on one real agent.
//!
//! One `consul agent -dev` (serving HTTP and HTTPS) is filled with
//! `--services` × `--instances` external instances, each with a passing
//! check, registered in parallel through `/v1/catalog/register`. Then, one
//! after the other, each watches `s0 … s{W-1}` through its own counting
//! proxy:
//!
//! - converge's catalog source (the code `converge run` runs) over plain
//!   HTTP/1.1, and over HTTPS where the agent speaks HTTP/2, in this
//!   process on its own runtime threads (their CPU is counted, the
//!   proxy's is not);
//! - consul-template rendering an equivalent template (every instance of
//!   every watched service with its status) at Consul's default
//!   `http_max_conns_per_client` and with the limit raised (the agent is
//!   reloaded with it).
//!
//! First, one read of each endpoint the source could watch (answer size
//! plain and gzipped, the agent's CPU). Then for each tool: start-up
//! until everything is read (or rendered), watched
//! flips (a check through the catalog API → the snapshot or file shows
//! it), unwatched flips (bytes and requests read, the tool's and the
//! agent's CPU), an idle window, peak connections and memory. With
//! `--converge-run`, `converge run` itself too, on W generated backends
//! through the shipped HAProxy template: flip → committed file, and the
//! same without `haproxy -c`'s own run ([`run`]). With `--haproxy-slots
//! N`, the same daemon in front of a real HAProxy whose backends take
//! membership changes over the runtime API with N slots each: flip →
//! committed file and flip → routed (HAProxy's runtime state shows it).
//!
//! ```sh
//! scripts/build-peers.sh
//! cargo build --release -p converge-bench
//! target/release/converge-bench scale --services 5050 --instances 10 --watched 500
//! ```

mod ct;
mod dc;
mod endpoints;
mod report;
mod run;
mod source;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::stack;

/// Measure converge's Consul source and consul-template watching W
/// services of a large synthetic datacenter.
#[derive(Debug, Parser)]
#[command(name = "converge-bench scale")]
pub struct ScaleArgs {
    /// Services in the datacenter.
    #[arg(long, default_value_t = 5050)]
    pub services: usize,
    /// Instances per service, each on its own external node.
    #[arg(long, default_value_t = 10)]
    pub instances: usize,
    /// Services watched (s0 … s{W-1}).
    #[arg(long, default_value_t = 500)]
    pub watched: usize,
    /// Timed flips of watched services per tool.
    #[arg(long, default_value_t = 30)]
    pub flips: usize,
    /// Flips of unwatched services per tool.
    #[arg(long, default_value_t = 30)]
    pub unwatched_flips: usize,
    /// Pause between flips.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "300ms")]
    pub gap: Duration,
    /// Idle window.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    pub idle: Duration,
    /// How long a tool gets to read (render) everything at start.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "120s")]
    pub startup_timeout: Duration,
    /// `http_max_conns_per_client` for the raised consul-template run.
    #[arg(long, default_value_t = 12_000)]
    pub raised_limit: u32,
    /// The consul-template binary [default: target/peers/bin/consul-template].
    #[arg(long)]
    pub consul_template: Option<PathBuf>,
    /// Skip consul-template at Consul's default limit.
    #[arg(long)]
    pub skip_ct_default: bool,
    /// Skip converge's catalog source run in this process (both protocols).
    #[arg(long)]
    pub skip_source: bool,
    /// Also run `converge run` on W generated backends through the shipped
    /// HAProxy template, flip → committed file with and without the
    /// validator's run.
    #[arg(long)]
    pub converge_run: bool,
    /// Also run `converge run` in front of a real HAProxy (master-worker,
    /// loopback only) whose backends have `runtime_api: {slots: N}`, and
    /// time flip → routed in its runtime state as well; repeatable, one
    /// run per N. N ≥ --instances: a health flip sets a slot's state; 0:
    /// every instance is a dynamic server, added and deleted.
    #[arg(long = "haproxy-slots", value_name = "N")]
    pub haproxy_slots: Vec<u32>,
    /// The converge binary for `--converge-run` and `--haproxy-slots`
    /// [default: target/release/converge].
    #[arg(long)]
    pub converge: Option<PathBuf>,
}

/// Runs the scale benchmark with `argv` (after `scale`) and prints its
/// Markdown report.
pub fn main(argv: &[String]) -> anyhow::Result<()> {
    let args =
        ScaleArgs::parse_from(std::iter::once("scale".to_string()).chain(argv.iter().cloned()));
    anyhow::ensure!(
        args.watched > 0 && args.watched < args.services,
        "--watched must be between 1 and --services - 1 (unwatched flips need an unwatched service)"
    );
    let ct_bin = args
        .consul_template
        .clone()
        .unwrap_or_else(|| stack::repo().join("target/peers/bin/consul-template"));
    anyhow::ensure!(
        ct_bin.is_file(),
        "{} not found: run scripts/build-peers.sh",
        ct_bin.display()
    );
    let converge = args
        .converge
        .clone()
        .unwrap_or_else(|| stack::repo().join("target/release/converge"));
    anyhow::ensure!(
        converge.is_file() || (!args.converge_run && args.haproxy_slots.is_empty()),
        "{} not found: `cargo build --release -p converge` or pass --converge",
        converge.display()
    );
    let mut dc = dc::Datacenter::start(&args)?;
    let endpoints = endpoints::table(&dc)?;
    let mut rows = Vec::new();
    if !args.skip_source {
        for tls in [false, true] {
            rows.push(source::measure(&mut dc, &args, tls)?);
        }
    }
    if args.converge_run {
        rows.push(run::measure(&mut dc, &args, &converge, run::Mode::File)?);
    }
    for &slots in &args.haproxy_slots {
        let mode = run::Mode::Haproxy { slots };
        rows.push(run::measure(&mut dc, &args, &converge, mode)?);
    }
    if !args.skip_ct_default {
        rows.push(ct::measure(&mut dc, &args, &ct_bin, "default limit (200)")?);
    }
    dc.raise_limit(args.raised_limit)?;
    let raised = format!("limit raised ({})", args.raised_limit);
    rows.push(ct::measure(&mut dc, &args, &ct_bin, &raised)?);
    println!("{}\n{endpoints}", report::markdown(&args, &dc, &rows));
    Ok(())
}
