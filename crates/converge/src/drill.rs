//! `converge drill`: flags, the scenario built from the manifests, and the
//! exit code. The drill itself is [`converge_agent::drill`].

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use converge_agent::drill::fault::{Consul, Fault};
use converge_agent::drill::probe::Probe;
use converge_agent::drill::{self, scenario, DrillConfig, DrillError, Url, Verdict};
use converge_model::Manifests;

use crate::cli::Cli;
use crate::exit;
use crate::output::outln;

/// Exit code of a drill refused before any fault: an unsafe target or an
/// unhealthy baseline. Nothing was touched.
const REFUSED: u8 = 2;

/// Scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// One instance of a backend goes away; the probe is an HTTP request
    /// through the frontend that routes to it.
    BackendKill,
}

impl Scenario {
    /// Its name on the command line (`backend-kill`).
    fn name(self) -> String {
        self.to_possible_value()
            .map_or_else(|| "drill".into(), |v| v.get_name().to_string())
    }
}

/// `drill` flags.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("fault").multiple(false)))]
pub struct DrillArgs {
    /// What to break.
    #[arg(long, value_enum)]
    pub scenario: Scenario,

    /// Longest recovery that passes (`5s`, `800ms`).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub rto_budget: Duration,

    /// Directory for the timestamped report directory.
    #[arg(long, default_value = "drills")]
    pub report_dir: PathBuf,

    /// The backend to break [default: the only HTTP backend a frontend
    /// routes to].
    #[arg(long, value_name = "NAME")]
    pub backend: Option<String>,

    /// Probe this URL instead of the frontend found in the manifests.
    #[arg(long, value_name = "URL")]
    pub probe_url: Option<String>,

    /// Fault: run this shell command.
    #[arg(long, value_name = "CMD", group = "fault")]
    pub fault_command: Option<String>,

    /// Undo of --fault-command, run however the drill ends.
    #[arg(long, value_name = "CMD", requires = "fault_command")]
    pub undo_command: Option<String>,

    /// Fault: send --signal to this process.
    #[arg(long, value_name = "PID", group = "fault", requires = "signal")]
    pub fault_pid: Option<i32>,

    /// Signal for --fault-pid: KILL, TERM, or STOP (undone with CONT).
    #[arg(long, value_name = "SIGNAL", requires = "fault_pid", value_parser = parse_signal)]
    pub signal: Option<nix::sys::signal::Signal>,

    /// Fault: Consul maintenance mode on this service instance id (undone
    /// by turning it off).
    #[arg(long, value_name = "SERVICE_ID", group = "fault")]
    pub consul_maintenance: Option<String>,

    /// Fault: set this Consul TTL check critical (undone by passing it).
    #[arg(long, value_name = "CHECK_ID", group = "fault")]
    pub fail_check: Option<String>,

    /// Time between probe starts.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "100ms")]
    pub interval: Duration,

    /// A probe that takes longer failed.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    pub probe_timeout: Duration,

    /// Longest wait for recovery after the fault.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    pub timeout: Duration,

    /// Probes in a row that must succeed before the fault.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..))]
    pub baseline: u16,

    /// Probes in a row that must succeed after a failure to count as
    /// recovered.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..))]
    pub settle: u16,

    /// The daemon's listener (`converge run --listen`), for its events.
    #[arg(long, default_value = "127.0.0.1:9181", conflicts_with = "no_daemon")]
    pub daemon: String,

    /// Do not read converge's events (no daemon runs here).
    #[arg(long)]
    pub no_daemon: bool,

    /// Drill targets outside loopback and private address ranges too.
    #[arg(long)]
    pub allow_public: bool,
}

fn parse_signal(s: &str) -> Result<nix::sys::signal::Signal, String> {
    let name = s.to_ascii_uppercase();
    let name = if name.starts_with("SIG") {
        name
    } else {
        format!("SIG{name}")
    };
    name.parse().map_err(|_| format!("unknown signal `{s}`"))
}

/// Runs the drill; 0 PASS, 1 FAIL or error, 2 refused.
pub fn run(cli: &Cli, args: &DrillArgs) -> anyhow::Result<u8> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        let config = config(cli, args).await?;
        drill::run(config).await
    });
    match result {
        Ok(outcome) => {
            outln!(
                "{} {}: {}",
                outcome.verdict.as_str(),
                args.scenario.name(),
                outcome.reason
            );
            outln!("report: {}", outcome.dir.join("report.md").display());
            Ok(match outcome.verdict {
                Verdict::Pass => exit::OK,
                Verdict::Fail => exit::ERROR,
            })
        }
        Err(e @ DrillError::Refused(_)) => {
            crate::output::error_line(&format!("drill {e}"));
            Ok(REFUSED)
        }
        Err(e) => Err(e.into()),
    }
}

/// The drill the flags and manifests describe. The manifests are read
/// unless both the probe and the fault are given on the command line.
async fn config(cli: &Cli, args: &DrillArgs) -> Result<DrillConfig, DrillError> {
    let consul_url = cli.consul.as_deref().unwrap_or("http://127.0.0.1:8500");
    let consul = Consul::new(url(consul_url, "--consul")?)?;
    let named = named_fault(args);
    let target = match (&args.probe_url, &named) {
        (Some(_), Some(_)) => None,
        _ => {
            let manifests =
                Manifests::load(&cli.manifests).map_err(|e| DrillError::Usage(format!("{e}")))?;
            Some(scenario::backend_kill(
                &manifests.manifest,
                args.backend.as_deref(),
            )?)
        }
    };
    let (probe_url, host) = match (&args.probe_url, &target) {
        (Some(u), _) => (u.clone(), None),
        (None, Some(t)) => (t.url.clone(), t.host.clone()),
        (None, None) => return Err(DrillError::Usage("no probe target".into())),
    };
    let fault = match (named, &target) {
        (Some(f), _) => f,
        (None, Some(t)) => default_fault(&consul, &t.service).await?,
        (None, None) => return Err(DrillError::Usage("no fault".into())),
    };
    Ok(DrillConfig {
        scenario: args.scenario.name(),
        probe: Probe::http(url(&probe_url, "--probe-url")?, host, args.probe_timeout)?,
        fault,
        consul,
        daemon: match args.no_daemon {
            true => None,
            false => Some(url(&format!("http://{}", args.daemon), "--daemon")?),
        },
        budget: args.rto_budget,
        interval: args.interval,
        timeout: args.timeout,
        baseline: usize::from(args.baseline),
        settle: usize::from(args.settle),
        report_dir: args.report_dir.clone(),
        allow_public: args.allow_public,
    })
}

/// The fault the flags name, if any.
fn named_fault(args: &DrillArgs) -> Option<Fault> {
    if let Some(run) = &args.fault_command {
        return Some(Fault::Command {
            run: run.clone(),
            undo: args.undo_command.clone(),
        });
    }
    if let (Some(pid), Some(signal)) = (args.fault_pid, args.signal) {
        return Some(Fault::Signal { pid, signal });
    }
    args.consul_maintenance
        .clone()
        .map(Fault::ConsulMaintenance)
        .or_else(|| args.fail_check.clone().map(Fault::ConsulCheck))
}

/// With no fault named and Consul on loopback (a local test
/// environment), maintenance mode on the backend's first passing
/// instance; anywhere else the operator must name the fault.
async fn default_fault(consul: &Consul, service: &str) -> Result<Fault, DrillError> {
    let local = consul
        .url()
        .host_str()
        .and_then(|h| h.trim_matches(['[', ']']).parse::<std::net::IpAddr>().ok())
        .is_some_and(|ip| ip.is_loopback())
        || consul.url().host_str() == Some("localhost");
    if !local {
        return Err(DrillError::Usage(format!(
            "name the fault (--fault-command, --fault-pid with --signal, --consul-maintenance or \
             --fail-check): the default, Consul maintenance on an instance, is only for a Consul \
             agent on loopback, and {} is not",
            consul.url()
        )));
    }
    Ok(Fault::ConsulMaintenance(
        consul.first_passing(service).await?,
    ))
}

fn url(text: &str, flag: &str) -> Result<Url, DrillError> {
    Url::parse(text).map_err(|e| DrillError::Usage(format!("{flag} {text}: {e}")))
}
