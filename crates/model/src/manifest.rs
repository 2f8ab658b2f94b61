//! The manifest schema: what an operator writes in `manifests/*.yaml`.
//!
//! Every struct denies unknown fields, so a typo is an error with a location
//! rather than a silently ignored setting. Sections may be spread over any
//! number of files; the loader merges them and rejects a name defined twice.
//! Names are `BTreeMap` keys so that iteration, and therefore rendering, is
//! deterministic.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config_line::ConfigLine;
use crate::duration::HaproxyDuration;
use crate::secret::SecretRef;

/// The merged manifests of one repository; as a schema, what one manifest
/// file may hold (every section optional, nothing else allowed).
#[derive(Debug, Clone, Default, PartialEq, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
#[schemars(title = "converge manifest file")]
pub struct Manifest {
    /// Load-balancer nodes, by name (`lb1`, `lb2`).
    pub nodes: BTreeMap<String, Node>,
    /// Virtual IPs held by keepalived, by VRRP instance name.
    pub vips: BTreeMap<String, Vip>,
    /// HAProxy frontends, by name.
    pub frontends: BTreeMap<String, Frontend>,
    /// HAProxy backends fed by catalog services, by name.
    pub backends: BTreeMap<String, Backend>,
    /// PgBouncer databases fed by the Postgres service, by name.
    pub databases: BTreeMap<String, Database>,
    /// Program-wide HAProxy settings.
    pub haproxy: HaproxySettings,
    /// Program-wide PgBouncer settings.
    pub pgbouncer: PgbouncerSettings,
    /// Program-wide keepalived settings.
    pub keepalived: KeepalivedSettings,
    /// Files converge renders and owns, by name.
    pub targets: BTreeMap<String, Target>,
    /// How a new published revision spreads over the fleet.
    pub rollout: crate::rollout::Rollout,
}

/// One load-balancer node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// The node's own address, used for VRRP unicast peers.
    #[serde(default)]
    pub address: Option<String>,
    /// Targets this node renders; all targets when absent.
    #[serde(default)]
    pub targets: Option<Vec<String>>,
    /// Free-form per-node values for templates (`node.vars.x`).
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, serde_json::Value>")]
    pub vars: BTreeMap<String, serde_norway::Value>,
}

/// A keepalived VRRP instance and the addresses it floats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Vip {
    /// VRRP router id, 1..=255, unique per network segment.
    pub virtual_router_id: u8,
    /// Interface VRRP speaks on; a node var of the same name wins when set
    /// (`vrrp_interface`).
    pub interface: String,
    /// Addresses in CIDR form, e.g. `10.0.0.10/24`.
    pub addresses: Vec<String>,
    /// Priority per node; every node rendering keepalived must have one.
    pub priorities: BTreeMap<String, u8>,
    /// Advertisement interval in seconds.
    #[serde(default = "default_advert_int")]
    pub advert_int: u32,
    /// Send adverts to the other nodes' addresses instead of multicast.
    #[serde(default)]
    pub unicast: bool,
    /// Do not take the VIP back when a higher-priority node returns.
    #[serde(default)]
    pub nopreempt: bool,
    /// VRRP PASS authentication secret.
    #[serde(default, with = "serde_norway::with::singleton_map")]
    #[schemars(with = "Option<SecretRef>")]
    pub auth_pass: Option<SecretRef>,
    /// Track the local haproxy process; a dead haproxy gives the VIP away.
    #[serde(default = "yes")]
    pub track_haproxy: bool,
    /// Scripts keepalived runs on state changes.
    #[serde(default)]
    pub notify: Notify,
}

/// keepalived notify hooks (absolute paths of executables).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Notify {
    /// Run on becoming MASTER.
    #[serde(default)]
    pub master: Option<String>,
    /// Run on becoming BACKUP.
    #[serde(default)]
    pub backup: Option<String>,
    /// Run on FAULT.
    #[serde(default)]
    pub fault: Option<String>,
}

/// HAProxy proxy mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Layer 7.
    #[default]
    Http,
    /// Layer 4.
    Tcp,
}

/// An HAProxy frontend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Frontend {
    /// `http` or `tcp`.
    #[serde(default)]
    pub mode: Mode,
    /// Listen addresses, `ADDR:PORT` or `:PORT`.
    pub bind: Vec<String>,
    /// Backend for requests no route matches.
    pub default_backend: String,
    /// Host and path routes, tried in order (HTTP only).
    #[serde(default)]
    pub routes: Vec<Route>,
}

/// One HTTP routing rule: all given conditions must match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Match the `Host` header exactly (port ignored).
    #[serde(default)]
    pub host: Option<String>,
    /// Match requests whose path begins with this.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Where matching requests go.
    pub backend: String,
}

/// Load-balancing algorithm.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Balance {
    /// Weighted round robin.
    #[default]
    Roundrobin,
    /// Fewest connections.
    Leastconn,
    /// Hash of the client address.
    Source,
    /// First server with free slots.
    First,
}

/// An HAProxy backend whose servers come from a catalog service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    /// `http` or `tcp`.
    #[serde(default)]
    pub mode: Mode,
    /// Catalog service feeding this backend.
    pub service: String,
    /// Only instances carrying every one of these tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Balancing algorithm.
    #[serde(default)]
    pub balance: Balance,
    /// Active HTTP health check (also in `mode: tcp`, e.g. Patroni's REST
    /// API); TCP connect check when neither this nor `tcp_check` is set.
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    /// A built-in TCP check script instead of an HTTP check.
    #[serde(default)]
    pub tcp_check: Option<TcpCheck>,
    /// Password of a Redis/Valkey with `requirepass`, for `tcp_check:
    /// redis_primary`: the check sends `AUTH` with it first. A secret
    /// reference, never shown in plans, diffs or logs; it may hold
    /// letters, digits and `-_.~+=/@%:,!*^` only (HAProxy reads it on the
    /// check's line).
    #[serde(default, with = "serde_norway::with::singleton_map")]
    #[schemars(with = "Option<SecretRef>")]
    pub tcp_check_password: Option<SecretRef>,
    /// Extra `server` line options, e.g. `["inter 2s", "fall 3"]`.
    #[serde(default)]
    pub server_options: Vec<String>,
    /// Per-server connection limit.
    #[serde(default)]
    pub maxconn: Option<u32>,
    /// Cookie-based stickiness.
    #[serde(default)]
    pub sticky: Option<Sticky>,
    /// Fewest healthy instances a change may leave; below it the change is
    /// held back and the last good set stays live.
    #[serde(default)]
    pub min_healthy: u32,
    /// Largest fraction of instances one change may remove (0..=1); held
    /// back above it. `1.0` disables the guard.
    #[serde(default = "default_max_drop")]
    pub max_drop_fraction: f64,
    /// Also route to instances whose checks are `warning`.
    #[serde(default)]
    pub include_warning: bool,
    /// List every registered instance, `critical` ones too, and let
    /// HAProxy's own check decide which one takes traffic. For a primary
    /// chosen by HAProxy's check (Patroni's `/primary`, Redis `role:master`)
    /// rather than by the catalog's health or tags. Implies
    /// `include_warning`; the guard then counts listed instances, not
    /// healthy ones.
    #[serde(default)]
    pub include_critical: bool,
    /// Let a change leave this backend with no server at all. By default
    /// a backend that had servers and would have none is held at its last
    /// servers: an empty answer is far more often a broken source (an
    /// agent restarted empty, a proxy answering `[]`) than a service that
    /// really went away.
    #[serde(default)]
    pub allow_empty: bool,
    /// Render a fixed number of server slots and apply membership changes
    /// (instances added, removed, health changed) through HAProxy's runtime
    /// API instead of a reload.
    #[serde(default)]
    pub runtime_api: Option<RuntimeApi>,
    /// Extra lines at the end of the backend, as HAProxy reads them.
    #[serde(default)]
    pub extra: Vec<ConfigLine>,
}

/// Opt-in to membership changes without reloads.
///
/// The backend is rendered as `slots` server lines with fixed names
/// (`<backend>-s1` ...), so adding, removing or failing an instance only
/// changes a slot's address or its `disabled` flag, which a running HAProxy
/// can take with `set server ... addr/state`. Healthy instances beyond the
/// slots get server lines of their own, named by the instance, which join
/// and leave a running HAProxy (≥ 2.4) as dynamic servers (`add server`,
/// `del server`) when HAProxy allows it for the backend (a dynamic
/// `balance`: roundrobin, leastconn or random; no `sticky` cookie; no
/// `default-server` options), and through a reload otherwise. `slots: 0`
/// makes every instance a dynamic server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuntimeApi {
    /// Server lines rendered for the backend, 0..=1024.
    pub slots: u32,
    /// How long a server leaving at runtime may keep open connections:
    /// HAProxy deletes a server only once none uses it.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout: HaproxyDuration,
    /// What happens to connections still open after `drain_timeout`:
    /// `reload` (the default) gives up the runtime update and reloads, so
    /// the old worker keeps them until they end, as any reload does;
    /// `shutdown` closes them and deletes the server.
    #[serde(default)]
    pub after_drain: AfterDrain,
}

fn default_drain_timeout() -> HaproxyDuration {
    HaproxyDuration::from("5s")
}

/// The end of a drain that timed out (see [`RuntimeApi::after_drain`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AfterDrain {
    /// Reload instead; the old worker keeps the connections.
    #[default]
    Reload,
    /// `shutdown sessions server`, then delete it.
    Shutdown,
}

/// HTTP health check of a backend's servers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// Request path, e.g. `/up`.
    pub path: String,
    /// Request method; `OPTIONS` keeps Patroni from logging every check.
    #[serde(default)]
    pub method: CheckMethod,
    /// Expected HTTP status.
    #[serde(default = "default_status")]
    pub expect_status: u16,
    /// Send the check to this port of each server instead of its service
    /// port (`check port N`), e.g. Patroni's REST API, 8008.
    #[serde(default)]
    pub port: Option<u16>,
}

/// Method of an HTTP health check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum CheckMethod {
    /// `GET`.
    #[default]
    Get,
    /// `HEAD`.
    Head,
    /// `OPTIONS`.
    Options,
}

/// A built-in TCP check script (`option tcp-check` and its steps).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TcpCheck {
    /// Up only while the server is a Redis/Valkey primary: `PING` answered
    /// `+PONG`, `INFO replication` showing `role:master`, `QUIT`.
    RedisPrimary,
}

/// Cookie stickiness.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Sticky {
    /// Cookie name HAProxy inserts.
    pub cookie: String,
}

/// PgBouncer pool mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// Server released after the client disconnects.
    Session,
    /// Server released after each transaction.
    #[default]
    Transaction,
    /// Server released after each statement.
    Statement,
}

/// Which members of the Postgres service a database routes to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DbRole {
    /// The single instance tagged as primary.
    #[default]
    Primary,
    /// Every healthy replica.
    Replica,
}

/// A PgBouncer database entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Database {
    /// Catalog service of the Postgres cluster.
    pub service: String,
    /// Follow the primary or the replicas.
    #[serde(default)]
    pub role: DbRole,
    /// Database name on the server; the entry name when absent.
    #[serde(default)]
    pub dbname: Option<String>,
    /// Pool mode for this database.
    #[serde(default)]
    pub pool_mode: PoolMode,
    /// Server connections per user/database pair.
    #[serde(default)]
    pub pool_size: Option<u32>,
    /// Extra connections allowed under load.
    #[serde(default)]
    pub reserve_pool: Option<u32>,
    /// Cap on server connections to this database.
    #[serde(default)]
    pub max_db_connections: Option<u32>,
    /// Let a change leave this database with no host. By default a
    /// database that had a host (its primary, or one replica at least) and
    /// would have none keeps its last hosts, for the reason backends do.
    #[serde(default)]
    pub allow_empty: bool,
}

/// Program-wide HAProxy settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HaproxySettings {
    /// Global connection limit.
    #[serde(default = "default_maxconn")]
    pub maxconn: u32,
    /// Admin stats socket, relative to `--root`.
    #[serde(default = "default_stats_socket")]
    pub stats_socket: String,
    /// `timeout connect/client/server`.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// `httpclient.ssl.verify` in `global`. HAProxy loads the system CA
    /// store for its internal HTTP client on every start, `haproxy -c` and
    /// reload (about 35 ms on Debian 12, most of a check's time); `none`
    /// skips that where nothing uses the HTTP client (Lua `httpclient`).
    /// Unset keeps HAProxy's default (`required`).
    #[serde(default)]
    pub httpclient_ssl_verify: Option<SslVerify>,
    /// Extra lines at the end of `global`, as HAProxy reads them.
    #[serde(default)]
    pub global_extra: Vec<ConfigLine>,
    /// Extra lines at the end of `defaults`.
    #[serde(default)]
    pub defaults_extra: Vec<ConfigLine>,
}

/// Program-wide keepalived settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeepalivedSettings {
    /// Extra lines at the end of `global_defs`, as keepalived reads them.
    #[serde(default)]
    pub global_defs: Vec<ConfigLine>,
}

/// A value for HAProxy's `httpclient.ssl.verify`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SslVerify {
    /// Do not verify (and do not load the CA store).
    None,
    /// Verify against the CA store (HAProxy's default).
    Required,
}

impl SslVerify {
    /// The keyword HAProxy expects.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Required => "required",
        }
    }
}

impl Default for HaproxySettings {
    fn default() -> Self {
        Self {
            maxconn: default_maxconn(),
            stats_socket: default_stats_socket(),
            timeouts: Timeouts::default(),
            httpclient_ssl_verify: None,
            global_extra: Vec::new(),
            defaults_extra: Vec::new(),
        }
    }
}

/// HAProxy timeouts, in HAProxy's own time syntax (`5s`, `30s`), checked
/// at load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// `timeout connect`.
    pub connect: HaproxyDuration,
    /// `timeout client`.
    pub client: HaproxyDuration,
    /// `timeout server`.
    pub server: HaproxyDuration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: "5s".into(),
            client: "30s".into(),
            server: "30s".into(),
        }
    }
}

/// Program-wide PgBouncer settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PgbouncerSettings {
    /// Address PgBouncer listens on.
    #[serde(default = "default_pgb_addr")]
    pub listen_addr: String,
    /// Port PgBouncer listens on.
    #[serde(default = "default_pgb_port")]
    pub listen_port: u16,
    /// `auth_type`, e.g. `scram-sha-256`, `md5`, `trust`.
    #[serde(default = "default_auth_type")]
    pub auth_type: String,
    /// Users allowed on the admin console.
    #[serde(default)]
    pub admin_users: Vec<String>,
    /// Users and their password secrets, rendered into the auth file.
    #[serde(default, with = "serde_norway::with::singleton_map_recursive")]
    #[schemars(with = "BTreeMap<String, SecretRef>")]
    pub users: BTreeMap<String, SecretRef>,
    /// Tags that mark the primary (Patroni: `primary`, legacy `master`).
    #[serde(default = "default_primary_tags")]
    pub primary_tags: Vec<String>,
    /// Tags that mark a replica.
    #[serde(default = "default_replica_tags")]
    pub replica_tags: Vec<String>,
    /// Client connection limit.
    #[serde(default = "default_max_client_conn")]
    pub max_client_conn: u32,
    /// Default server pool size.
    #[serde(default = "default_pool_size")]
    pub default_pool_size: u32,
    /// Any other `[pgbouncer]` setting PgBouncer knows, rendered as given
    /// (keys checked at load, values by the trial start).
    #[serde(default)]
    pub settings: crate::pgbouncer_settings::PassThrough,
}

impl Default for PgbouncerSettings {
    fn default() -> Self {
        Self {
            listen_addr: default_pgb_addr(),
            listen_port: default_pgb_port(),
            auth_type: default_auth_type(),
            admin_users: Vec::new(),
            users: BTreeMap::new(),
            primary_tags: default_primary_tags(),
            replica_tags: default_replica_tags(),
            max_client_conn: default_max_client_conn(),
            default_pool_size: default_pool_size(),
            settings: Default::default(),
        }
    }
}

/// How a staged candidate is checked before it may replace the live file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Validator {
    /// `haproxy -c -f FILE`.
    Haproxy,
    /// `keepalived -t -f FILE`, inside a scratch network namespace that has
    /// the interfaces the config names.
    Keepalived,
    /// Start the real pgbouncer on the candidate with its listeners moved
    /// to a scratch directory, and wait for it to come up.
    Pgbouncer,
    /// An argv; `{}` is replaced by the staged file's path.
    Command(Vec<String>),
    /// No check (for files a bundle sibling's validator covers).
    None,
}

/// How the program picks up a committed file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Reload {
    /// Send a signal to the pid in `pidfile` (relative to `--root`).
    Signal {
        /// Pidfile path.
        pidfile: String,
        /// Signal name, e.g. `SIGHUP`, `SIGUSR2`.
        signal: String,
    },
    /// Run an argv, no shell.
    Command(Vec<String>),
    /// Run a string with `/bin/sh -c`; only when the manifest asks for it.
    Shell(String),
    /// `RELOAD` over PgBouncer's admin console, between `PAUSE` and
    /// `RESUME` when `pause` is set, so transactions open at the switch
    /// finish instead of being cut.
    Pgbouncer(PgbouncerAdmin),
    /// Nothing to do.
    None,
}

/// How converge reaches PgBouncer's admin console (database `pgbouncer`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PgbouncerAdmin {
    /// A TCP host, or an absolute directory holding the unix socket
    /// (prefixed with `--root`, like every path).
    #[serde(default = "default_admin_host")]
    pub host: String,
    /// PgBouncer's `listen_port` (also the unix socket's port suffix).
    pub port: u16,
    /// An `admin_users` member. Authenticates as any libpq client of the
    /// converge process would: trust or `auth_type = hba` peer on the unix
    /// socket, or a password in converge's `~/.pgpass` / `PGPASSFILE`; no
    /// password is kept in the manifest.
    pub user: String,
    /// `PAUSE` before the `RELOAD` and `RESUME` after it.
    #[serde(default)]
    pub pause: bool,
    /// Longest wait, in seconds, for `PAUSE` (open transactions to finish)
    /// and for each admin command; past it the reload fails and PgBouncer
    /// is resumed.
    #[serde(default = "default_admin_timeout")]
    pub timeout_secs: u64,
    /// Longest time, in seconds, `converge run` keeps a database `PAUSE`d
    /// while its primary is unclear (no instance claims it, or several
    /// do), so clients wait instead of failing; past it the database is
    /// `RESUME`d at its last primary and the timeout reported. `0`: never
    /// pause for that. The default, 60, outlasts a failover under
    /// Patroni's default timing (`ttl: 30`, `loop_wait: 10`).
    #[serde(default = "default_unclear_primary_pause")]
    pub unclear_primary_pause_secs: u64,
}

/// A file converge renders and owns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Template file name under `templates/`.
    pub template: String,
    /// Absolute destination path, prefixed with `--root` at apply time.
    pub destination: String,
    /// Owner user name, applied when converge runs as root.
    #[serde(default)]
    pub owner: Option<String>,
    /// Group name, applied when converge runs as root.
    #[serde(default)]
    pub group: Option<String>,
    /// Octal permission bits, e.g. `"0640"`.
    #[serde(default = "default_mode")]
    pub mode: String,
    /// Check run on the staged candidate.
    #[serde(with = "serde_norway::with::singleton_map")]
    #[schemars(with = "Validator")]
    pub validate: Validator,
    /// Action after commit.
    #[serde(default = "default_reload", with = "serde_norway::with::singleton_map")]
    #[schemars(with = "Reload")]
    pub reload: Reload,
    /// Targets sharing a bundle name validate, commit, reload and roll back
    /// as one unit (a config and its userlist or map files).
    #[serde(default)]
    pub bundle: Option<String>,
    /// Node vars the template needs; a node lacking one is a manifest error.
    #[serde(default)]
    pub requires_vars: Vec<String>,
    /// Contents are never shown in plans or diffs.
    #[serde(default)]
    pub secret: bool,
    /// Previous versions kept as backups (0..=50).
    #[serde(default = "default_backups")]
    pub backups: u32,
}

fn default_advert_int() -> u32 {
    1
}
fn yes() -> bool {
    true
}
fn default_max_drop() -> f64 {
    1.0
}
fn default_status() -> u16 {
    200
}
fn default_maxconn() -> u32 {
    4096
}
fn default_stats_socket() -> String {
    "/run/haproxy/admin.sock".into()
}
fn default_pgb_addr() -> String {
    "127.0.0.1".into()
}
fn default_pgb_port() -> u16 {
    6432
}
fn default_auth_type() -> String {
    "scram-sha-256".into()
}
fn default_primary_tags() -> Vec<String> {
    vec!["primary".into(), "master".into()]
}
fn default_replica_tags() -> Vec<String> {
    vec!["replica".into()]
}
fn default_max_client_conn() -> u32 {
    1000
}
fn default_pool_size() -> u32 {
    20
}
fn default_mode() -> String {
    "0644".into()
}
fn default_reload() -> Reload {
    Reload::None
}
fn default_admin_host() -> String {
    "127.0.0.1".into()
}
fn default_admin_timeout() -> u64 {
    30
}
fn default_unclear_primary_pause() -> u64 {
    60
}
fn default_backups() -> u32 {
    5
}
