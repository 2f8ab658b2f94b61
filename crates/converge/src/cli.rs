//! Command-line flags. Every command shares the input flags, so `plan`,
//! `apply` and `validate` always look at the same world.

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use converge_agent::fleet::plan::published_once;
use converge_agent::follow::{self, Follow, Store};
use converge_agent::publish::Keys;
use converge_agent::source::{self, CatalogFrom};
use converge_agent::{Inputs, Prepared, Revision};
use converge_model::Catalog;

/// Keep HAProxy, PgBouncer and keepalived on this node equal to the
/// manifests, using live facts from a catalog.
///
/// converge renders every target from templates, checks each candidate with
/// the real program, swaps it in atomically and reloads; a bad template,
/// manifest or catalog never replaces a working config.
///
/// Examples (from a checkout, on the bundled example repo):
///
///   converge plan --node lb1                   # what would change, as a diff
///
///   converge apply --once --node lb1 --root /tmp/demo   # do it, into a directory
///
///   converge validate                           # CI for the manifest repo
#[derive(Debug, Parser)]
#[command(name = "converge", version, verbatim_doc_comment)]
pub struct Cli {
    /// Directory of manifest files (*.yaml).
    #[arg(
        long,
        global = true,
        env = "CONVERGE_MANIFESTS",
        default_value = "manifests"
    )]
    pub manifests: PathBuf,

    /// Directory of Tera templates (*.tera).
    #[arg(
        long,
        global = true,
        env = "CONVERGE_TEMPLATES",
        default_value = "templates"
    )]
    pub templates: PathBuf,

    /// Catalog file: services and their instances with health.
    #[arg(
        long,
        global = true,
        env = "CONVERGE_CATALOG",
        default_value = "examples/catalog.yaml"
    )]
    pub catalog: PathBuf,

    /// Read the catalog from this Consul agent instead of --catalog
    /// (`http://127.0.0.1:8500`, `https://…` for TLS). The token comes from
    /// CONSUL_HTTP_TOKEN or --consul-token-file; CONSUL_HTTP_SSL and
    /// CONSUL_HTTP_SSL_VERIFY are read as Consul's own CLI reads them.
    #[arg(long, global = true, env = "CONSUL_HTTP_ADDR", value_name = "URL")]
    pub consul: Option<String>,

    /// File holding the Consul ACL token. There is no flag for the token
    /// itself, which would show in `ps`; CONSUL_HTTP_TOKEN wins when set.
    #[arg(
        long,
        global = true,
        env = "CONSUL_HTTP_TOKEN_FILE",
        value_name = "FILE"
    )]
    pub consul_token_file: Option<PathBuf>,

    /// CA certificate bundle that signed Consul's TLS certificate.
    #[arg(long, global = true, env = "CONSUL_CACERT", value_name = "FILE")]
    pub consul_cacert: Option<PathBuf>,

    /// Client certificate for Consul's TLS (with --consul-client-key).
    #[arg(long, global = true, env = "CONSUL_CLIENT_CERT", value_name = "FILE")]
    pub consul_client_cert: Option<PathBuf>,

    /// Client key for Consul's TLS (with --consul-client-cert).
    #[arg(long, global = true, env = "CONSUL_CLIENT_KEY", value_name = "FILE")]
    pub consul_client_key: Option<PathBuf>,

    /// Read the catalog of this Consul datacenter instead of the agent's
    /// own (`?dc=` on every read; the agent forwards across the WAN).
    #[arg(
        long,
        global = true,
        env = "CONVERGE_CONSUL_DATACENTER",
        value_name = "DC"
    )]
    pub consul_datacenter: Option<String>,

    /// Consul Enterprise namespace to read (`?ns=` on every catalog,
    /// health and KV read). Consul OSS refuses it.
    #[arg(long, global = true, env = "CONSUL_NAMESPACE", value_name = "NS")]
    pub consul_namespace: Option<String>,

    /// Consul Enterprise admin partition to read (`?partition=` on every
    /// catalog, health and KV read). Consul OSS refuses it.
    #[arg(
        long,
        global = true,
        env = "CONSUL_PARTITION",
        value_name = "PARTITION"
    )]
    pub consul_partition: Option<String>,

    /// Name to send as TLS SNI and to verify Consul's certificate against,
    /// instead of the host in --consul (e.g. `server.dc1.consul`).
    #[arg(
        long,
        global = true,
        env = "CONSUL_TLS_SERVER_NAME",
        value_name = "NAME"
    )]
    pub consul_tls_server_name: Option<String>,

    /// How long plan/apply/validate wait for a complete snapshot from Consul.
    #[arg(long, global = true, value_parser = humantime::parse_duration, default_value = "15s")]
    pub consul_timeout: Duration,

    /// This node's name in the manifests [default: the host name].
    #[arg(long, global = true, env = "CONVERGE_NODE")]
    pub node: Option<String>,

    /// Prefix for every destination, pidfile and socket path, so converge
    /// can run unprivileged against a directory. A relative path is made
    /// absolute against the working directory (a relative socket path in
    /// haproxy.cfg would read as host:port).
    #[arg(long, global = true, env = "CONVERGE_ROOT", default_value = "/", value_parser = absolute_path)]
    pub root: PathBuf,

    /// Take manifests and templates from the revision published in Consul
    /// KV (`converge publish`) instead of --manifests/--templates: `run`
    /// follows `<prefix>/desired` and reports to `<prefix>/nodes/<node>`;
    /// `apply --once` takes the published revision once, and `plan` and
    /// `validate` read it without taking it. Each
    /// revision is verified against its checksum and kept under
    /// `--root`/var/lib/converge/published, so a restart while Consul is
    /// down comes up on the last one applied. Needs --consul.
    #[arg(long, global = true, env = "CONVERGE_PUBLISHED")]
    pub published: bool,

    /// KV prefix of the fleet's keys (`<prefix>/desired`,
    /// `<prefix>/bundles/…`, `<prefix>/nodes/…`).
    #[arg(
        long,
        global = true,
        env = "CONVERGE_PREFIX",
        default_value = "converge"
    )]
    pub prefix: String,

    /// With --published: the directory on this node that `file:` secret
    /// references of the published manifests resolve against (a bundle
    /// never holds secret files).
    #[arg(
        long,
        global = true,
        env = "CONVERGE_SECRETS",
        default_value = "/etc/converge",
        value_name = "DIR",
        value_parser = absolute_path
    )]
    pub secrets: PathBuf,

    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// More log output (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the reconcile daemon: watch the catalog, manifests and templates,
    /// and keep this node converged until SIGTERM.
    ///
    /// SIGHUP reloads manifests and templates at once and, with --consul,
    /// reads the token file again and reconnects (a rotated token or TLS
    /// certificate takes effect; flags need a restart); SIGTERM/SIGINT let
    /// an apply in flight finish, then exit. Under systemd (Type=notify) it
    /// reports READY=1, STATUS= and watchdog pings.
    ///
    /// With --published the manifests and templates are the fleet's
    /// published revision: the daemon follows `<prefix>/desired`, keeps the
    /// last good revision on disk, and writes its report to
    /// `<prefix>/nodes/<node>` whenever it changes, e.g.
    /// `converge run --published --consul http://127.0.0.1:8500 --node lb1`.
    Run(RunArgs),
    /// Show what would change on this node as a unified diff; touch nothing.
    ///
    /// It makes every decision `run` would make here, through the same code:
    /// changes the guard holds back (a backend that would lose every server
    /// or too many at once, a database that would lose its primary) are
    /// listed with their reason, and catalog instances left out (a value
    /// that could break out of its field, a duplicated identity) are listed
    /// by service, instance and node. A database whose primary is unclear
    /// (none, or several claim it) is listed as `would pause`: `run`
    /// PAUSEs it in PgBouncer until the primary resolves.
    ///
    /// This compares the render with this node's live files. What a
    /// manifest change (a pull request's checkout) would do on every node
    /// against the published revision is `converge fleet plan`.
    ///
    /// Exit status: 0 nothing to change, 2 changes or a change held back,
    /// 1 error.
    Plan(PlanArgs),
    /// Render, validate, commit and reload this node's targets.
    ///
    /// Each changed target is staged next to its destination, checked by the
    /// real program, committed by rename and reloaded; a failed reload rolls
    /// the files back. Holds and left-out instances are decided as `run`
    /// decides them. A PgBouncer database `run` would PAUSE for an unclear
    /// primary is listed as `not paused`: this command exits, and nobody
    /// would be left to RESUME it.
    ///
    /// Exit status: 0 every target applied or unchanged, nothing held and
    /// nobody left out; 3 applied, but a change is held back or an instance
    /// left out, so the node is not at the desired state; 1 any failure.
    // Without this, clap's "missing --once" usage line lists the flags
    // that were given (`--lock-timeout <LOCK_TIMEOUT> --format <FORMAT>`)
    // as if they were required too.
    #[command(override_usage = "converge apply --once [OPTIONS]")]
    Apply(ApplyArgs),
    /// One screen for the on-call engineer: who is primary (per database,
    /// the instance Consul calls primary and the one PgBouncer routes to,
    /// flagged when they differ or the routed one is down), who is serving
    /// (HAProxy's live servers), where traffic goes (frontend → route →
    /// backend, database → host); per target the last apply, hash and
    /// error; whether this node holds its VIPs.
    ///
    /// Each section is gathered on its own: a program that cannot be asked
    /// shows its error without hiding the rest, and a program no target of
    /// this node is for is not asked. Touches nothing.
    ///
    /// Exit status (for a monitoring check): 0 the node serves what it
    /// should; 3 it does not: a change held back, a target whose last apply
    /// failed or whose file is missing, a routed primary that differs from
    /// Consul's or is down, an HAProxy backend with no server UP, a VRRP
    /// FAULT, a degraded catalog source; 1 nothing found wrong but
    /// something could not be checked (the daemon or a program of this
    /// node did not answer), or an error.
    Status(StatusArgs),
    /// Lint manifests and templates, render every node and check every file
    /// with the real programs in a scratch directory (for manifest-repo CI).
    ///
    /// Exit status: 0 all good, 1 problems (all of them are listed), 3
    /// every file passed but catalog instances were left out (listed).
    Validate(ValidateArgs),
    /// Validate the manifests and templates as `validate` does, then put
    /// them in Consul KV for the fleet and move its desired revision to
    /// them (for the manifest repo's CD).
    ///
    /// The bundle (manifests and templates, never a secret file: each node
    /// reads its own) goes to `<prefix>/bundles/<revision>`, its checksum
    /// beside it; `<prefix>/desired` then moves by check-and-set, so a
    /// publication made in between is never overwritten unless --force.
    /// A bounded history is kept; `--rollback` moves back to the previous
    /// revision.
    ///
    /// Exit status: 0 published (or already published), 1 refused or
    /// failed: nothing the fleet follows was changed.
    Publish(PublishArgs),
    /// The fleet as the nodes report it in Consul KV (which revision each
    /// node runs and whether it converged on the published one), and what
    /// a manifest change would do on every node (`fleet plan`); pausing
    /// and resuming the rollout of new revisions (`fleet pause|resume`).
    #[command(subcommand)]
    Fleet(FleetCommand),
    // Its help is the doc comment of `DrillArgs`, beside its flags.
    Drill(Box<crate::drill::DrillArgs>),
    /// Print a shell completion script to stdout.
    ///
    /// bash: `converge completions bash > /etc/bash_completion.d/converge`;
    /// zsh: into a directory on `$fpath` as `_converge`; fish: into
    /// `~/.config/fish/completions/converge.fish`.
    Completions(CompletionsArgs),
    /// Write the man pages (converge(1) and one per command) into a
    /// directory.
    Man(ManArgs),
    /// Print the JSON Schema of a manifest file, for editors.
    ///
    /// Generated from converge's own manifest types, so it accepts what
    /// converge accepts (minus the cross-references `converge validate`
    /// checks). With yaml-language-server, put
    /// `# yaml-language-server: $schema=PATH` on a manifest's first line.
    Schema,
}

/// `completions` flags.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `man` flags.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Directory to write `converge.1`, `converge-plan.1`, ... into.
    #[arg(long, value_name = "DIR")]
    pub out_dir: PathBuf,
}

impl Command {
    /// The output format the command was asked for (`run`, `completions`
    /// and `man` have none).
    pub fn format(&self) -> Option<Format> {
        match self {
            Command::Run(_)
            | Command::Completions(_)
            | Command::Man(_)
            | Command::Schema
            | Command::Drill(_) => None,
            Command::Plan(a) => Some(a.format),
            Command::Apply(a) => Some(a.format),
            Command::Status(a) => Some(a.format),
            Command::Validate(a) => Some(a.format),
            Command::Publish(a) => Some(a.format),
            Command::Fleet(FleetCommand::Status(a)) => Some(a.format),
            Command::Fleet(FleetCommand::Wait(a)) => Some(a.format),
            Command::Fleet(FleetCommand::Plan(a)) => Some(a.format),
            Command::Fleet(FleetCommand::Pause(_) | FleetCommand::Resume(_)) => None,
        }
    }
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// For people.
    Text,
    /// For programs.
    Json,
}

/// Log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `plan` flags.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    #[command(flatten)]
    pub release: Release,
}

/// Holds an operator lets through once.
#[derive(Debug, Args)]
pub struct Release {
    /// Accept the current catalog for this backend or database once, even
    /// though the guard would hold it (the daemon's `POST /release/NAME`).
    /// Repeat for several.
    #[arg(long = "release", value_name = "NAME")]
    pub names: Vec<String>,
}

impl Release {
    /// The released names, as the pass takes them.
    pub fn set(&self) -> BTreeSet<String> {
        self.names.iter().cloned().collect()
    }
}

/// `apply` flags.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Reconcile once and exit (the daemon is `converge run`).
    #[arg(long, required = true)]
    pub once: bool,

    /// Seconds to wait for another apply on this node to finish.
    #[arg(long, default_value_t = 30)]
    pub lock_timeout: u64,

    /// Output format of the report.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    #[command(flatten)]
    pub release: Release,
}

/// `run` flags.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Quiet time that ends a burst of changes before a reconcile (like
    /// consul-template's wait min), e.g. `500ms`, `2s`.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    pub wait_min: Duration,

    /// Longest a burst may delay a reconcile (wait max).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    pub wait_max: Duration,

    /// Reconcile at least this often even if no watch fired.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
    pub resync: Duration,

    /// Loopback address of the /health, /metrics and /status listener.
    #[arg(long, default_value = "127.0.0.1:9181")]
    pub listen: SocketAddr,

    /// Seconds to wait for another apply on this node to finish.
    #[arg(long, default_value_t = 30)]
    pub lock_timeout: u64,

    /// With --published: TTL of the Consul session holding this node's
    /// report. It is renewed every half TTL; a node dead for longer (Consul
    /// may take up to twice the TTL) reads as stale in `fleet status`. At
    /// least 10s (Consul's minimum).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub report_ttl: Duration,
}

/// `status` flags.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Address of the daemon's status listener (`converge run --listen`).
    #[arg(long, default_value = "127.0.0.1:9181")]
    pub daemon: String,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

/// `validate` flags.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Only these nodes (repeatable) [default: every node].
    #[arg(long = "only", value_name = "NODE")]
    pub only: Vec<String>,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

/// `publish` flags.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Move the desired revision back to the previous one in the history
    /// (no validation: that revision was validated when published).
    #[arg(long)]
    pub rollback: bool,

    /// Refuse unless `<prefix>/desired` names this revision now (what the
    /// pipeline last published); a check-and-set protects the move itself
    /// either way.
    #[arg(long, value_name = "REVISION", value_parser = parse_revision)]
    pub expect_revision: Option<Revision>,

    /// Replace the desired revision even if someone published in between.
    #[arg(long)]
    pub force: bool,

    /// Earlier publications kept, with their bundles; older bundles are
    /// deleted.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=100))]
    pub history: u16,

    /// Who publishes, as `desired` records it (by default `$USER` at the
    /// node name or host name).
    #[arg(long, env = "CONVERGE_PUBLISHER")]
    pub publisher: Option<String>,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

/// `fleet` subcommands.
#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// One table for the whole fleet: per node of the published manifests,
    /// whether its report is alive (its Consul session holds it), the
    /// revision it runs, whether it converged on the desired one, its held
    /// and failing targets, its last apply and drift.
    ///
    /// The nodes are those the published revision's manifests list under
    /// `nodes:`; a node without a report counts as not converged, and a
    /// report whose session is gone (the node or its agent died) as stale.
    ///
    /// Exit status: 0 every node of the manifests is alive and converged on
    /// the desired revision; 2 some are not (listed); 1 error, or Consul
    /// cannot be asked.
    Status(FleetStatusArgs),
    /// Block until every node of the manifests reports the revision
    /// converged: what a CD pipeline runs after `converge publish`.
    ///
    /// Follows the node reports with blocking queries (no polling loop).
    ///
    /// Exit status: 0 every node converged on the revision; 2 the timeout
    /// passed first (the stragglers are listed with their errors); 1
    /// error, or Consul cannot be asked.
    Wait(FleetWaitArgs),
    /// What a manifest change would do on every node, for reviewing it
    /// before it is merged (and for CI to post on the pull request).
    ///
    /// Every node of the manifests is rendered at the proposed revision
    /// (--manifests and --templates: the pull request's checkout) and at
    /// the published one (`<prefix>/desired`, its bundle checked against
    /// its checksum), against one catalog, and the two renders compared.
    /// Per node: the unified diff (secrets masked) and the actions, decided
    /// by the code `plan` uses: changes the HAProxy runtime API takes
    /// without a reload, reloads, PgBouncer settings that need a restart;
    /// targets and nodes added or dropped. With nothing published yet,
    /// every target is new, and it says so.
    ///
    /// Unlike `converge plan`, which compares one node's render with its
    /// live files, this reads no live file and needs no --node or --root:
    /// it is the change between two revisions, the same on any machine,
    /// not what a node would do now (that also depends on drift and on
    /// holds, which only a node knows). `file:` secrets of both revisions
    /// resolve against the manifests directory, as in `validate`.
    ///
    ///   converge fleet plan --consul http://127.0.0.1:8500
    ///
    ///   converge fleet plan --catalog-source file --catalog ci/catalog.yaml --format json
    ///
    /// Exit status: 0 no node changes; 2 some node changes; 1 error (a
    /// manifest or template that does not load, named by file:line; a node
    /// that does not render; Consul cannot be asked).
    #[command(verbatim_doc_comment)]
    Plan(FleetPlanArgs),
    /// Stop nodes taking new revisions (all, or one with `--node`): they
    /// stay on the revision they run, and catalog changes still apply.
    ///
    /// Writes `<prefix>/rollout/pause` (or `pause/<node>`); `fleet status`
    /// shows it, and a paused node's `/metrics` has
    /// `converge_rollout_paused 1`. A node in the middle of a switch
    /// finishes it.
    Pause(FleetPauseArgs),
    /// Undo `fleet pause` (all, or one with `--node`); nodes take the
    /// desired revision through the rollout as usual.
    Resume(FleetPauseArgs),
}

/// `fleet pause` and `fleet resume` flags.
#[derive(Debug, Args)]
pub struct FleetPauseArgs {
    /// Only this node [default: the whole fleet].
    #[arg(long, value_name = "NODE")]
    pub node: Option<String>,
}

/// `fleet plan` flags.
#[derive(Debug, Args)]
pub struct FleetPlanArgs {
    /// Where the one catalog both revisions render against comes from:
    /// `consul` (one read of every service either revision references) or
    /// `file` (--catalog: a fixed catalog, for a runner that may read
    /// converge's keys but not the catalog, or a review that must not move
    /// with the live catalog). The published revision is read from Consul
    /// either way.
    #[arg(long, value_enum, default_value_t = CatalogSource::Consul)]
    pub catalog_source: CatalogSource,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

/// Where `fleet plan` reads the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CatalogSource {
    /// Consul's catalog (--consul).
    Consul,
    /// The catalog file (--catalog).
    File,
}

/// `fleet status` flags.
#[derive(Debug, Args)]
pub struct FleetStatusArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

/// `fleet wait` flags.
#[derive(Debug, Args)]
pub struct FleetWaitArgs {
    /// The revision to wait for [default: the desired revision].
    ///
    /// Without it, `fleet wait` waits for what `<prefix>/desired` names.
    #[arg(long, value_name = "REVISION", value_parser = parse_revision)]
    pub revision: Option<Revision>,

    /// Give up after this long (`90s`, `10m`).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10m")]
    pub timeout: Duration,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

/// A revision name from the command line.
fn parse_revision(s: &str) -> Result<Revision, String> {
    Revision::parse(s).ok_or_else(|| format!("`{s}` is not a revision name"))
}

impl Cli {
    /// The fleet's keys under `--prefix`.
    pub fn keys(&self) -> anyhow::Result<Keys> {
        Keys::new(&self.prefix)
            .with_context(|| format!("--prefix {:?} is not a KV prefix", self.prefix))
    }

    /// What `--published` follows on this node.
    pub fn follow(&self) -> anyhow::Result<Follow> {
        Ok(Follow {
            keys: self.keys()?,
            store: Store::new(&self.root, self.secrets.clone()),
            node: self.node()?,
        })
    }

    /// The Consul settings; an error naming `what` without --consul.
    pub fn consul(&self, what: &str) -> anyhow::Result<converge_consul::Config> {
        self.consul_given()?.ok_or_else(|| {
            anyhow::anyhow!(
                "{what} needs a Consul agent: pass --consul URL or set CONSUL_HTTP_ADDR"
            )
        })
    }

    /// The Consul settings when --consul (or CONSUL_HTTP_ADDR) is given,
    /// with every other `--consul-*` flag applied.
    pub fn consul_given(&self) -> anyhow::Result<Option<converge_consul::Config>> {
        Ok(match self.catalog_from()? {
            CatalogFrom::Consul(config) => Some(*config),
            CatalogFrom::File(_) => None,
        })
    }

    /// The input locations: --manifests and --templates, or with
    /// --published the store's current revision.
    pub fn inputs(&self) -> Inputs {
        if self.published {
            return Store::new(&self.root, self.secrets.clone())
                .inputs(self.catalog.clone(), self.root.clone());
        }
        Inputs {
            manifests: self.manifests.clone(),
            templates: self.templates.clone(),
            catalog: self.catalog.clone(),
            root: self.root.clone(),
            unpacked: None,
        }
    }

    /// Where the catalog comes from: `--consul`, else `--catalog`.
    pub fn catalog_from(&self) -> anyhow::Result<CatalogFrom> {
        match &self.consul {
            Some(addr) => {
                // clap has already folded each variable into its flag.
                let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
                let flags = [
                    ("CONSUL_HTTP_ADDR", Some(addr.clone())),
                    ("CONSUL_HTTP_TOKEN_FILE", path(&self.consul_token_file)),
                    ("CONSUL_CACERT", path(&self.consul_cacert)),
                    ("CONSUL_CLIENT_CERT", path(&self.consul_client_cert)),
                    ("CONSUL_CLIENT_KEY", path(&self.consul_client_key)),
                    ("CONSUL_NAMESPACE", self.consul_namespace.clone()),
                    ("CONSUL_PARTITION", self.consul_partition.clone()),
                    (
                        "CONSUL_TLS_SERVER_NAME",
                        self.consul_tls_server_name.clone(),
                    ),
                ];
                let mut config = converge_consul::Config::from_vars(|k| {
                    match flags.iter().find(|(name, _)| *name == k) {
                        Some((_, value)) => value.clone(),
                        None => std::env::var(k).ok(),
                    }
                })?;
                config.datacenter = self.consul_datacenter.clone();
                Ok(CatalogFrom::Consul(Box::new(config)))
            }
            None => Ok(CatalogFrom::File(self.catalog.clone())),
        }
    }

    /// Manifests and templates, and one complete catalog snapshot: the
    /// catalog file, or every service the manifests reference read once
    /// from Consul.
    ///
    /// With --published, `apply --once` makes the published revision the
    /// node's (as the daemon would); every other command only reads it.
    pub fn prepare(&self) -> anyhow::Result<(Prepared, Catalog)> {
        let prepared = match (&self.command, self.published) {
            (Command::Apply(_), true) => {
                let consul = self.consul("--published")?;
                follow::sync_once(consul, &self.follow()?, self.consul_timeout)?;
                self.inputs().prepare()?
            }
            (_, true) => published_once(
                self.consul("--published")?,
                &self.keys()?,
                &self.secrets,
                &self.root,
                self.consul_timeout,
            )?,
            (_, false) => self.inputs().prepare()?,
        };
        let catalog = source::read_once(
            &self.catalog_from()?,
            source::referenced_services(&prepared.manifests.manifest),
            self.consul_timeout,
        )?;
        Ok((prepared, catalog))
    }

    /// `--node`, or this machine's host name.
    pub fn node(&self) -> anyhow::Result<String> {
        if let Some(n) = &self.node {
            return Ok(n.clone());
        }
        let host = nix::unistd::gethostname()
            .map_err(|e| anyhow::anyhow!("cannot read the host name ({e}); pass --node"))?;
        let host = host.to_string_lossy();
        Ok(host.split('.').next().unwrap_or(&host).to_string())
    }

    /// Logs to stderr, text or JSON, at the level `-v` asks for
    /// (`RUST_LOG` wins when set).
    pub fn init_logging(&self) {
        let level = match self.verbose {
            // The daemon's one line per reload, rollback, hold and
            // recovery (its report) shows by default; the rest at warn.
            0 => "warn,converge_agent::daemon::report=info",
            1 => "info",
            _ => "debug",
        };
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr);
        match self.log_format {
            LogFormat::Text => builder.init(),
            LogFormat::Json => builder.json().init(),
        }
    }
}

/// `--root` as an absolute path.
fn absolute_path(s: &str) -> Result<PathBuf, String> {
    std::path::absolute(s).map_err(|e| format!("cannot make `{s}` absolute: {e}"))
}
