//! `converge drill`: flags, the scenario built from the manifests, and the
//! exit code. The drill itself is [`converge_agent::drill`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};
use converge_agent::drill::fault::{Consul, Fault};
use converge_agent::drill::probe::Probe;
use converge_agent::drill::{self, scenario, DrillConfig, DrillError, Url, Verdict};
use converge_model::Manifests;

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
    /// The Postgres primary goes away; the probe is a write through this
    /// node's PgBouncer (`psql`, `select txid_current()`, which a standby
    /// refuses).
    PrimaryKill,
    /// A planned primary change; the probe as for primary-kill.
    Switchover,
    /// The node holding a VIP loses its HAProxy or keepalived; the probe
    /// is an HTTP request to the VIP on an HTTP frontend's port.
    LbKill,
}

impl Scenario {
    /// Its name on the command line (`backend-kill`).
    fn name(self) -> String {
        self.to_possible_value()
            .map_or_else(|| "drill".into(), |v| v.get_name().to_string())
    }

    /// The program that recovers from this fault without converge: a
    /// VIP moves by keepalived's VRRP alone, so converge's events do not
    /// split an lb-kill's RTO.
    fn recovered_by(self) -> Option<String> {
        match self {
            Scenario::LbKill => Some("keepalived".into()),
            Scenario::BackendKill | Scenario::PrimaryKill | Scenario::Switchover => None,
        }
    }
}

/// Break one thing on purpose and measure how long users notice: a
/// failover drill with an RTO budget and a report to keep as evidence.
///
/// The probe comes from the manifests: backend-kill sends GET through
/// the frontend that routes to the backend; primary-kill and
/// switchover write through this node's PgBouncer with psql
/// (`select txid_current()`, which only a primary accepts); lb-kill
/// sends GET to the VIP on an HTTP frontend's port. The fault
/// is one you name: --fault-command (with --undo-command), --fault-pid
/// with --signal (STOP is undone with CONT), --consul-maintenance,
/// --fail-check, or --patroni-switchover. With none named and Consul
/// on loopback (a test environment), backend-kill puts the backend's
/// first passing instance in Consul maintenance.
///
/// Safety first: targets outside loopback and private ranges are
/// refused unless --allow-public; the baseline must be healthy
/// (--baseline probes in a row) or nothing is injected; a reversible
/// fault is undone however the drill ends, SIGINT and SIGTERM
/// included.
///
/// RTO is the time from the fault to the first probe of the run of
/// --settle successes that follows the first failure. The report
/// directory (REPORT_DIR/SCENARIO-YYYYMMDDTHHMMSSZ) holds report.json,
/// report.md with timeline.svg, and health-timeline.csv; converge's own
/// events (saw the change, rendered, validated, reloaded, runtime
/// update, held), read from the daemon at --daemon, are on the same
/// timeline, and the RTO is split into the fault's own time and
/// converge's share (not for lb-kill: keepalived moves the VIP alone).
///
/// Examples:
///
///   converge drill --scenario backend-kill --backend web \
///     --fault-pid 4242 --signal STOP --rto-budget 5s --report-dir drills/
///
///   converge drill --scenario switchover \
///     --patroni-switchover http://10.0.0.5:8008 --rto-budget 30s
///
///   converge drill --scenario lb-kill --vip edge \
///     --fault-command 'ssh lb1 systemctl kill -s TERM keepalived' --rto-budget 5s
///
/// Exit status: 0 PASS (recovered within the budget, or no probe
/// failed); 1 FAIL (over budget, not recovered within --timeout,
/// interrupted) or an error; 2 refused before any fault (unsafe
/// target, unhealthy baseline): nothing was touched.
#[derive(Debug, Args)]
#[command(verbatim_doc_comment, group(clap::ArgGroup::new("fault").multiple(false)))]
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

    /// Probe this URL instead of the frontend or VIP found in the
    /// manifests (backend-kill, lb-kill).
    #[arg(long, value_name = "URL", conflicts_with = "probe_command")]
    pub probe_url: Option<String>,

    /// Probe by running this shell command (exit 0 is a success) instead
    /// of the probe the scenario builds. Its target is not checked.
    #[arg(long, value_name = "CMD")]
    pub probe_command: Option<String>,

    /// The VIP to probe (lb-kill) [default: the only one].
    #[arg(long, value_name = "NAME")]
    pub vip: Option<String>,

    /// The database to write to (primary-kill, switchover) [default: the
    /// only database that follows a primary].
    #[arg(long, value_name = "NAME")]
    pub database: Option<String>,

    /// The user to write as [default: the first PgBouncer user that is not
    /// an admin user]. A password comes from PGPASSWORD or ~/.pgpass.
    #[arg(long, value_name = "USER")]
    pub db_user: Option<String>,

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

    /// Fault: a Patroni switchover through this member's REST API
    /// (`http://10.0.0.5:8008`): the leader from `GET /cluster`, then
    /// `POST /switchover`.
    #[arg(long, value_name = "URL", group = "fault")]
    pub patroni_switchover: Option<String>,

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

/// Runs the drill on the manifests in `manifests`, with Consul at
/// `consul` (the global `--consul`); 0 PASS, 1 FAIL or error, 2 refused.
pub fn run(
    manifests: &Path,
    consul: Option<converge_consul::Config>,
    args: &DrillArgs,
) -> anyhow::Result<u8> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        let config = config(manifests, consul, args).await?;
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
/// unless the flags already say what to probe and what to break.
async fn config(
    manifests: &Path,
    consul: Option<converge_consul::Config>,
    args: &DrillArgs,
) -> Result<DrillConfig, DrillError> {
    check_flags(args)?;
    let consul = match consul {
        Some(config) => config,
        None => converge_consul::Config::new("http://127.0.0.1:8500")
            .map_err(|e| DrillError::Usage(format!("--consul: {e}")))?,
    };
    let consul = Consul::new(consul)?;
    let given = Given {
        manifests,
        fault: named_fault(args)?,
        probe: args.probe_command.as_ref().map(|cmd| {
            let sh = vec!["-c".to_string(), cmd.clone()];
            Probe::command("sh".into(), sh, None, args.probe_timeout)
        }),
    };
    let (probe, fault) = match args.scenario {
        Scenario::BackendKill => backend_kill(given, args, &consul).await?,
        Scenario::PrimaryKill | Scenario::Switchover => database(given, args)?,
        Scenario::LbKill => lb_kill(given, args)?,
    };
    Ok(DrillConfig {
        scenario: args.scenario.name(),
        probe,
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
        recovered_by: args.scenario.recovered_by(),
    })
}

/// Refuses a flag the scenario does not read, rather than drill something
/// other than what the operator meant (`--backend` on an lb-kill).
fn check_flags(args: &DrillArgs) -> Result<(), DrillError> {
    use Scenario::{BackendKill, LbKill, PrimaryKill, Switchover};
    const HTTP: &[Scenario] = &[BackendKill, LbKill];
    const DB: &[Scenario] = &[PrimaryKill, Switchover];
    let scoped = [
        ("--backend", args.backend.is_some(), &[BackendKill][..]),
        ("--probe-url", args.probe_url.is_some(), HTTP),
        ("--vip", args.vip.is_some(), &[LbKill]),
        ("--database", args.database.is_some(), DB),
        ("--db-user", args.db_user.is_some(), DB),
    ];
    match scoped
        .iter()
        .find(|(_, given, scenarios)| *given && !scenarios.contains(&args.scenario))
    {
        Some((flag, _, scenarios)) => {
            let names: Vec<String> = scenarios.iter().map(|s| s.name()).collect();
            let hint = match *flag {
                "--probe-url" => " (--probe-command replaces any probe)",
                _ => "",
            };
            Err(DrillError::Usage(format!(
                "{flag} is for {}, not {}{hint}",
                names.join(" and "),
                args.scenario.name()
            )))
        }
        None => Ok(()),
    }
}

/// What the flags give before a scenario fills in the rest.
struct Given<'a> {
    manifests: &'a Path,
    fault: Option<Fault>,
    probe: Option<Probe>,
}

impl Given<'_> {
    fn manifest(&self) -> Result<converge_model::Manifest, DrillError> {
        Manifests::load(self.manifests)
            .map(|m| m.manifest)
            .map_err(|e| DrillError::Usage(format!("{e}")))
    }
}

/// backend-kill: GET through the frontend (or `--probe-url`), and the
/// fault named or, on a local Consul, maintenance on an instance.
async fn backend_kill(
    given: Given<'_>,
    args: &DrillArgs,
    consul: &Consul,
) -> Result<(Probe, Fault), DrillError> {
    let probe_given = given.probe.is_some() || args.probe_url.is_some();
    let target = match (probe_given, &given.fault) {
        (true, Some(_)) => None,
        _ => Some(scenario::backend_kill(
            &given.manifest()?,
            args.backend.as_deref(),
        )?),
    };
    let timeout = args.probe_timeout;
    let probe = match (given.probe, &args.probe_url, &target) {
        (Some(p), _, _) => p,
        (None, Some(u), _) => Probe::http(url(u, "--probe-url")?, None, timeout)?,
        (None, None, Some(t)) => Probe::http(url(&t.url, "probe")?, t.host.clone(), timeout)?,
        (None, None, None) => return Err(DrillError::Usage("no probe".into())),
    };
    let fault = match (given.fault, &target) {
        (Some(f), _) => f,
        (None, Some(t)) => default_fault(consul, &t.service).await?,
        (None, None) => return Err(DrillError::Usage("no fault".into())),
    };
    Ok((probe, fault))
}

/// lb-kill: GET to the VIP (or `--probe-url`, `--probe-command`), and
/// the fault named.
fn lb_kill(mut given: Given<'_>, args: &DrillArgs) -> Result<(Probe, Fault), DrillError> {
    let timeout = args.probe_timeout;
    let probe = match (given.probe.take(), &args.probe_url) {
        (Some(p), _) => p,
        (None, Some(u)) => Probe::http(url(u, "--probe-url")?, None, timeout)?,
        (None, None) => {
            let target = scenario::lb_kill(&given.manifest()?, args.vip.as_deref())?;
            Probe::http(url(&target, "probe")?, None, timeout)?
        }
    };
    let fault = given.fault.ok_or_else(|| {
        DrillError::Usage(
            "name the fault: --fault-pid PID --signal TERM for the VIP holder's keepalived or \
             HAProxy, or --fault-command CMD"
                .into(),
        )
    })?;
    Ok((probe, fault))
}

/// primary-kill and switchover: a write through PgBouncer (or
/// `--probe-command`), and the fault named.
fn database(given: Given<'_>, args: &DrillArgs) -> Result<(Probe, Fault), DrillError> {
    let probe = match given.probe {
        Some(p) => p,
        None => write_probe(&given.manifest()?, args)?,
    };
    let fault = given.fault.ok_or_else(|| {
        DrillError::Usage(
            "name the fault: --fault-pid PID --signal KILL for the primary's Postgres or \
             Patroni, --patroni-switchover URL, or --fault-command CMD"
                .into(),
        )
    })?;
    Ok((probe, fault))
}

/// `psql` writing through this node's PgBouncer: `select txid_current()`
/// needs a transaction id, which a standby cannot give, so it succeeds
/// only on a primary, and it leaves no row behind.
fn write_probe(manifest: &converge_model::Manifest, args: &DrillArgs) -> Result<Probe, DrillError> {
    let t = scenario::database_write(manifest, args.database.as_deref())?;
    let user =
        args.db_user.clone().or(t.user).ok_or_else(|| {
            DrillError::Usage("no PgBouncer user to write as: give --db-user".into())
        })?;
    let timeout = args.probe_timeout.as_secs().max(1);
    let conninfo = format!(
        "host={} port={} dbname={} user={user} connect_timeout={timeout}",
        t.host, t.port, t.database
    );
    let psql_args = [
        "-X",
        "-q",
        "-w",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        &conninfo,
        "-c",
        "select txid_current()",
    ];
    Ok(Probe::command(
        "psql".into(),
        psql_args.iter().map(|a| a.to_string()).collect(),
        Some((t.host, t.port)),
        args.probe_timeout,
    ))
}

/// The fault the flags name, if any.
fn named_fault(args: &DrillArgs) -> Result<Option<Fault>, DrillError> {
    if let Some(run) = &args.fault_command {
        return Ok(Some(Fault::Command {
            run: run.clone(),
            undo: args.undo_command.clone(),
        }));
    }
    if let (Some(pid), Some(signal)) = (args.fault_pid, args.signal) {
        return Ok(Some(Fault::Signal { pid, signal }));
    }
    if let Some(u) = &args.patroni_switchover {
        return Ok(Some(Fault::PatroniSwitchover(url(
            u,
            "--patroni-switchover",
        )?)));
    }
    Ok(args
        .consul_maintenance
        .clone()
        .map(Fault::ConsulMaintenance)
        .or_else(|| args.fail_check.clone().map(Fault::ConsulCheck)))
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
