//! `converge-bench`: converge's daemon and consul-template side by side,
//! against one real Consul agent and one real HAProxy, on loopback.
//!
//! Both tools are driven as child processes (the release `converge` and
//! the `consul-template` built by `scripts/build-peers.sh`), one after the
//! other, with the same wait settings, rendering byte-identical HAProxy
//! configs and reloading the same HAProxy master the same safe way. The
//! run prints a Markdown report (BENCHMARKS.md holds the results and
//! explains each measurement).
//!
//! ```sh
//! scripts/build-peers.sh
//! cargo build --release -p converge -p converge-bench
//! target/release/converge-bench --flips 100
//! ```
//!
//! `converge-bench scale …` measures the Consul source and consul-template
//! in a large synthetic datacenter instead (see `scale`).
#![forbid(unsafe_code)]

mod inproc;
mod membership;
mod phases;
mod probe;
mod procstat;
mod report;
mod scale;
mod share;
mod stack;
mod stats;
mod tool;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::phases::Plan;
use crate::stack::{Binaries, Stack};
use crate::tool::{Kind, Wait};

/// Measure `converge run` against consul-template: health flip → routing
/// latency, reloads per flapping burst, CPU/RSS idle and under churn,
/// requests to Consul, and converge's own share of the latency at many
/// backends. Everything runs on loopback; every process started is
/// stopped by its pid.
#[derive(Debug, Parser)]
#[command(name = "converge-bench", verbatim_doc_comment)]
struct Args {
    /// Timed health flips per tool (half remove the server, half re-add it).
    #[arg(long, default_value_t = 100)]
    flips: usize,
    /// Pause after each flip has settled (reload done, HAProxy ready).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "100ms")]
    gap: Duration,
    /// Idle window for CPU, RSS and requests to Consul. consul-template's
    /// blocking queries wait 60 s, so shorter windows undercount it.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    idle: Duration,
    /// Check changes per flapping burst.
    #[arg(long, default_value_t = 20)]
    flaps: usize,
    /// Time between the check changes of a burst.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "50ms")]
    flap_period: Duration,
    /// Bursts per wait setting, alternating `--flaps` changes (ending where
    /// they started) and one fewer (ending flipped).
    #[arg(long, default_value_t = 4)]
    bursts: usize,
    /// Wait MIN:MAX both tools get for the idle and flip measurements
    /// (`0s:0s` = no quiescence, each tool's default).
    #[arg(long, value_parser = Wait::parse, default_value = "0s:0s")]
    wait: Wait,
    /// Wait MIN:MAX for the second run, which only flaps.
    #[arg(long, value_parser = Wait::parse, default_value = "500ms:5s")]
    flap_wait: Wait,
    /// Instances of `web` for converge's own-share measurement (0 skips it).
    #[arg(long, default_value_t = 1000)]
    share_backends: usize,
    /// Flips for the own-share measurement.
    #[arg(long, default_value_t = 50)]
    share_flips: usize,
    /// Rounds of the in-process render + plan cross-check.
    #[arg(long, default_value_t = 50)]
    inproc_rounds: usize,
    /// Only these tools (repeatable): converge, converge-runtime-api,
    /// consul-template [default: all three].
    #[arg(long = "tool", value_parser = parse_kind)]
    tools: Vec<Kind>,
    /// The converge binary [default: target/release/converge].
    #[arg(long)]
    converge: Option<PathBuf>,
    /// The consul-template binary [default: target/peers/bin/consul-template].
    #[arg(long)]
    consul_template: Option<PathBuf>,
    /// Give consul-template the usual `haproxy -c -f OUT && kill -USR2
    /// $(cat PIDFILE)` reload command, which does not wait for HAProxy's
    /// master to handle SIGUSR2 (see testkit's haproxy.rs), instead of the
    /// default one that waits like converge does.
    #[arg(long)]
    ct_naive_reload: bool,
    /// Also write every timed flip as CSV to this file.
    #[arg(long)]
    raw: Option<PathBuf>,
    /// Keep the work directory (logs, configs) and print its path.
    #[arg(long)]
    keep: bool,
}

fn parse_kind(s: &str) -> Result<Kind, String> {
    match s {
        "converge" => Ok(Kind::Converge),
        "converge-runtime-api" => Ok(Kind::ConvergeRuntimeApi),
        "consul-template" => Ok(Kind::ConsulTemplate),
        _ => Err("converge, converge-runtime-api or consul-template".into()),
    }
}

fn main() -> std::process::ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    // Flip → routed at many HAProxy backends, alone (see `membership`).
    if argv.get(1).map(String::as_str) == Some("membership") {
        let code = membership::main(&argv[2..]);
        return std::process::ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    // The timing validator converge runs during the own-share measurement.
    if argv.get(1).map(String::as_str) == Some("time-validator") {
        let code = share::time_validator_main(&argv[2..]);
        return std::process::ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    if argv.get(1).map(String::as_str) == Some("scale") {
        return match scale::main(&argv[2..]) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("converge-bench scale: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let args = Args::parse();
    match run(args, argv.join(" ")) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("converge-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

// Long on purpose: one arm per benchmark command, each a few lines that
// start its stack and print its report.
fn run(args: Args, argv: String) -> anyhow::Result<()> {
    let target = stack::repo().join("target");
    let bins = Binaries {
        converge: args
            .converge
            .clone()
            .unwrap_or_else(|| target.join("release/converge")),
        consul_template: args
            .consul_template
            .clone()
            .unwrap_or_else(|| target.join("peers/bin/consul-template")),
    };
    for b in [&bins.converge, &bins.consul_template] {
        anyhow::ensure!(
            b.is_file(),
            "{} not found: build it (`cargo build --release -p converge`, `scripts/build-peers.sh`) or pass its path",
            b.display()
        );
    }
    let plan = Plan {
        flips: args.flips,
        gap: args.gap,
        idle: args.idle,
        flaps: args.flaps,
        flap_period: args.flap_period,
        bursts: args.bursts,
        wait: args.wait,
        flap_wait: args.flap_wait,
    };
    let kinds = if args.tools.is_empty() {
        vec![
            Kind::Converge,
            Kind::ConvergeRuntimeApi,
            Kind::ConsulTemplate,
        ]
    } else {
        args.tools.clone()
    };
    let mut env = report::environment(&bins.converge, &bins.consul_template);
    env.push((
        "consul-template reload command".into(),
        if args.ct_naive_reload {
            "naive: `haproxy -c -f OUT && kill -USR2 $(cat PIDFILE)`".into()
        } else {
            "`haproxy -c -f OUT`, wait until the master handles SIGUSR2, `kill -USR2` (as converge)"
                .into()
        },
    ));

    let mut stack = Stack::start(bins, args.ct_naive_reload)?;
    if args.keep {
        stack.dir.disable_cleanup(true);
        eprintln!("work directory (kept): {}", stack.dir.path().display());
    }
    let alike = stack.templates_render_alike()?;
    if let Err(e) = &alike {
        eprintln!("warning: {e}");
    }
    let measured = measure_all(&mut stack, &args, &kinds, &plan);
    let (tools, share, inproc) = match measured {
        Ok(m) => m,
        Err(e) => {
            // Keep the logs and configs of a failed run.
            stack.dir.disable_cleanup(true);
            eprintln!("work directory kept: {}", stack.dir.path().display());
            return Err(e);
        }
    };
    let out = report::markdown(
        &report::Run {
            plan: &plan,
            tools: &tools,
            share: share.as_ref(),
            inproc: inproc.as_ref(),
            alike: &alike,
            argv,
        },
        &env,
    );
    println!("{out}");
    if let Some(path) = &args.raw {
        std::fs::write(path, report::flips_csv(&tools))
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

type Measured = (
    Vec<phases::ToolReport>,
    Option<share::ShareReport>,
    Option<inproc::InprocReport>,
);

fn measure_all(
    stack: &mut Stack,
    args: &Args,
    kinds: &[Kind],
    plan: &Plan,
) -> anyhow::Result<Measured> {
    let mut tools = Vec::new();
    for &kind in kinds {
        tools.push(phases::measure(stack, kind, plan)?);
    }
    let share = if args.share_backends > 0 && tools_include(args, Kind::Converge) {
        Some(share::measure(
            stack,
            args.share_backends,
            args.share_flips,
            args.gap.max(Duration::from_millis(300)),
            plan.wait,
        )?)
    } else {
        None
    };
    let inproc = if args.share_backends > 0 && args.inproc_rounds > 0 {
        Some(inproc::measure(
            stack,
            args.share_backends,
            args.inproc_rounds,
        )?)
    } else {
        None
    };
    Ok((tools, share, inproc))
}

fn tools_include(args: &Args, kind: Kind) -> bool {
    args.tools.is_empty() || args.tools.contains(&kind)
}
