//! The template context: decisions made once, in code, so templates only
//! format.
//!
//! Which instances serve a backend (healthy, carrying every required tag,
//! passing [`crate::sanitize`]), which instance is a database's
//! primary, this node's VRRP role: all are decided here, from sorted inputs,
//! into sorted outputs.

use std::collections::BTreeMap;

use converge_model::config_line::ConfigLine;
use converge_model::desired::NodeVip;
use converge_model::manifest::{
    AfterDrain, Backend, CheckMethod, Database, DbRole, Frontend, HaproxySettings, Mode,
    PgbouncerSettings, PoolMode, SslVerify, TcpCheck,
};
use converge_model::{identity, Catalog, Health, Instance, Layout, NodeDesired, Rejection};
use serde::Serialize;

mod admit;
mod slots;
use admit::admit_referenced;
use slots::slot_servers;

/// The context plus what was left out on the way.
pub struct View {
    /// Serialized into Tera's context.
    pub context: Context,
    /// Instances refused by the sanitizer.
    pub rejections: Vec<Rejection>,
    /// Non-fatal conditions worth an operator's attention.
    pub warnings: Vec<String>,
}

/// Top-level template variables.
#[derive(Debug, Serialize)]
pub struct Context {
    /// This node.
    pub node: NodeView,
    /// `--root`, for paths a template builds itself.
    pub root: String,
    /// Global HAProxy settings, socket path rooted.
    pub haproxy: HaproxyView,
    /// Frontends in name order.
    pub frontends: Vec<FrontendView>,
    /// Backends in name order, with their servers.
    pub backends: Vec<BackendView>,
    /// PgBouncer settings and users.
    pub pgbouncer: PgbouncerView,
    /// PgBouncer databases in name order, resolved.
    pub databases: Vec<DatabaseView>,
    /// This node's VRRP instances in name order.
    pub vips: Vec<VipView>,
    /// Program-wide keepalived settings.
    pub keepalived: KeepalivedView,
    /// Every target's rooted destination, by target name.
    pub targets: BTreeMap<String, TargetView>,
}

/// This node.
#[derive(Debug, Serialize)]
pub struct NodeView {
    /// Name.
    pub name: String,
    /// Own address, if declared.
    pub address: Option<String>,
    /// Per-node variables.
    pub vars: BTreeMap<String, serde_norway::Value>,
}

/// Global HAProxy settings.
#[derive(Debug, Serialize)]
pub struct HaproxyView {
    /// Global maxconn.
    pub maxconn: u32,
    /// Rooted stats socket path.
    pub stats_socket: String,
    /// `timeout connect`.
    pub timeout_connect: String,
    /// `timeout client`.
    pub timeout_client: String,
    /// `timeout server`.
    pub timeout_server: String,
    /// `httpclient.ssl.verify`, when the manifest sets it.
    pub httpclient_ssl_verify: Option<&'static str>,
    /// Extra `global` lines.
    pub global_extra: Vec<String>,
    /// Extra `defaults` lines.
    pub defaults_extra: Vec<String>,
}

/// One frontend.
#[derive(Debug, Serialize)]
pub struct FrontendView {
    /// Name.
    pub name: String,
    /// `http` or `tcp`.
    pub mode: &'static str,
    /// Bind addresses.
    pub bind: Vec<String>,
    /// Fallback backend.
    pub default_backend: String,
    /// Routes in manifest order.
    pub routes: Vec<RouteView>,
}

/// One route, with the ACL names a template can use.
#[derive(Debug, Serialize)]
pub struct RouteView {
    /// Position in the frontend's list.
    pub index: usize,
    /// Exact Host header.
    pub host: Option<String>,
    /// Path prefix.
    pub path_prefix: Option<String>,
    /// Target backend.
    pub backend: String,
}

/// One backend with its resolved servers.
#[derive(Debug, PartialEq, Serialize)]
pub struct BackendView {
    /// Name.
    pub name: String,
    /// `http` or `tcp`.
    pub mode: &'static str,
    /// Balance algorithm keyword.
    pub balance: String,
    /// HTTP check path.
    pub check_path: Option<String>,
    /// HTTP check method (`GET`, `HEAD`, `OPTIONS`).
    pub check_method: Option<&'static str>,
    /// Expected HTTP status.
    pub check_status: Option<u16>,
    /// Port checks go to instead of each server's own (`check port N`).
    pub check_port: Option<u16>,
    /// Built-in TCP check script: `redis_primary`.
    pub tcp_check: Option<&'static str>,
    /// The check's `AUTH` password (a secret: plans and logs mask it).
    pub check_password: Option<String>,
    /// Extra server options, space-joined.
    pub server_options: String,
    /// Per-server maxconn.
    pub maxconn: Option<u32>,
    /// Stickiness cookie name.
    pub sticky_cookie: Option<String>,
    /// Membership changes go through the runtime API: `servers` are the
    /// backend's fixed slots (then any overflow), and the template marks
    /// the backend with [`RUNTIME_API_MARKER`] so the applier knows.
    pub runtime_api: bool,
    /// For a runtime-API backend, the drain policy the template writes
    /// after [`RUNTIME_API_MARKER`] for the applier (`drain=5s
    /// then=reload`); empty otherwise.
    pub runtime_api_policy: String,
    /// Extra lines at the end of the backend.
    pub extra: Vec<String>,
    /// Servers, sorted by instance id; for a runtime-API backend, its slots
    /// in slot order, then instances that found no slot. Serialized apart
    /// from the rest, so that a render reuses the values of servers the
    /// last render had too.
    #[serde(skip)]
    pub servers: Vec<ServerView>,
}

/// The comment line a template puts in a runtime-API backend (defined in
/// the model, which the applier reads it from too).
pub use converge_model::RUNTIME_API_MARKER;

/// Address and port of an empty runtime-API slot. Loopback port 1 rather
/// than `0.0.0.0`, which HAProxy reads as "the client's destination", and
/// rather than port 0, which it reads as "the client's port" and which then
/// refuses a port change at runtime: a slot enabled by hand by mistake
/// connects nowhere.
pub const EMPTY_SLOT: (&str, u16) = ("127.0.0.1", 1);

/// One server line.
#[derive(Debug, PartialEq, Serialize)]
pub struct ServerView {
    /// Server name: the instance's [`identity::name`], or the slot name
    /// `<backend>-sN`.
    pub name: String,
    /// The [`identity::name`] of the instance behind it; `None` for an
    /// empty slot.
    pub instance: Option<String>,
    /// Address.
    pub address: String,
    /// Port.
    pub port: u16,
    /// `address:port`, IPv6 bracketed.
    pub endpoint: String,
    /// Health as the catalog reported it (`critical` for an empty slot).
    pub health: Health,
    /// An empty slot: rendered `disabled` (maintenance), no traffic, no
    /// checks, until the runtime API or a reload gives it an instance.
    pub disabled: bool,
}

/// PgBouncer settings.
#[derive(Debug, Serialize)]
pub struct PgbouncerView {
    /// Listen address.
    pub listen_addr: String,
    /// Listen port.
    pub listen_port: u16,
    /// Auth type.
    pub auth_type: String,
    /// Admin users, comma-joined.
    pub admin_users: String,
    /// Client connection limit.
    pub max_client_conn: u32,
    /// Default pool size.
    pub default_pool_size: u32,
    /// Users with their passwords, by name.
    pub users: Vec<UserView>,
    /// Rooted pidfile path (`/run/postgresql/pgbouncer.pid`).
    pub pidfile: String,
    /// Rooted unix socket directory (`/run/postgresql`).
    pub unix_socket_dir: String,
    /// `pgbouncer.settings` over [`PGBOUNCER_DEFAULTS`], in key order.
    pub settings: Vec<SettingView>,
}

/// One `key = value` line of `[pgbouncer]`.
#[derive(Debug, Serialize)]
pub struct SettingView {
    /// PgBouncer's name for it.
    pub key: String,
    /// Its value, as PgBouncer reads it.
    pub value: String,
}

/// Settings rendered unless `pgbouncer.settings` names them: PgBouncer
/// started with `-d` logs nowhere without `logfile` or `syslog`, so the
/// shipped default is syslog (the journal, on a systemd host), which
/// needs no directory that could be missing and make it refuse to start.
pub const PGBOUNCER_DEFAULTS: &[(&str, &str)] = &[("syslog", "1")];

/// A PgBouncer user.
#[derive(Debug, Serialize)]
pub struct UserView {
    /// User name.
    pub name: String,
    /// Password or SCRAM secret.
    pub password: String,
}

/// A resolved PgBouncer database.
#[derive(Debug, Serialize)]
pub struct DatabaseView {
    /// Entry name clients connect to.
    pub name: String,
    /// Server-side database name.
    pub dbname: String,
    /// `primary` or `replica`.
    pub role: &'static str,
    /// Host, or comma-separated hosts for replicas; `None` when no
    /// instance qualifies (the entry should then be left out).
    pub host: Option<String>,
    /// Port.
    pub port: Option<u16>,
    /// [`identity::name`]s of the instances chosen, sorted.
    pub instances: Vec<String>,
    /// Pool mode keyword.
    pub pool_mode: &'static str,
    /// Pool size.
    pub pool_size: Option<u32>,
    /// Reserve pool.
    pub reserve_pool: Option<u32>,
    /// Max server connections.
    pub max_db_connections: Option<u32>,
}

/// keepalived's program-wide settings.
#[derive(Debug, Serialize)]
pub struct KeepalivedView {
    /// Extra `global_defs` lines.
    pub global_defs: Vec<String>,
}

/// A VRRP instance as this node runs it.
#[derive(Debug, Serialize)]
pub struct VipView {
    /// Instance name.
    pub name: String,
    /// Interface on this node.
    pub interface: String,
    /// Router id.
    pub virtual_router_id: u8,
    /// This node's priority.
    pub priority: u8,
    /// `MASTER` or `BACKUP`.
    pub state: &'static str,
    /// Advert interval, seconds.
    pub advert_int: u32,
    /// CIDR addresses.
    pub addresses: Vec<String>,
    /// Unicast peers (empty for multicast).
    pub unicast_peers: Vec<String>,
    /// This node's address when unicast.
    pub unicast_src: Option<String>,
    /// Don't preempt.
    pub nopreempt: bool,
    /// PASS authentication secret.
    pub auth_pass: Option<String>,
    /// Track the haproxy process.
    pub track_haproxy: bool,
    /// Notify hooks.
    pub notify_master: Option<String>,
    /// Notify hooks.
    pub notify_backup: Option<String>,
    /// Notify hooks.
    pub notify_fault: Option<String>,
}

/// A target as seen by templates.
#[derive(Debug, Serialize)]
pub struct TargetView {
    /// Rooted destination.
    pub path: String,
}

fn mode_str(m: Mode) -> &'static str {
    match m {
        Mode::Http => "http",
        Mode::Tcp => "tcp",
    }
}

/// Builds the context for `desired` against `catalog`.
pub fn build(desired: &NodeDesired, catalog: &Catalog, layout: &Layout) -> View {
    let m = &desired.manifest;
    let mut rejections = Vec::new();
    let mut warnings = Vec::new();

    let safe = admit_referenced(desired, catalog, &mut rejections);

    let backends = m
        .backends
        .iter()
        .map(|(name, b)| {
            let mut view = backend_view(name, b, &safe[b.service.as_str()], &mut warnings);
            view.check_password = desired
                .secrets
                .get(&format!("backends.{name}.tcp_check_password"))
                .map(|s| s.expose().to_string());
            view
        })
        .collect();
    let databases = m
        .databases
        .iter()
        .map(|(name, d)| {
            database_view(
                name,
                d,
                &m.pgbouncer,
                &safe[d.service.as_str()],
                &mut warnings,
            )
        })
        .collect();
    let context = Context {
        node: NodeView {
            name: desired.name.clone(),
            address: desired.node.address.clone(),
            vars: desired.node.vars.clone(),
        },
        root: layout.root.display().to_string(),
        haproxy: haproxy_view(&m.haproxy, layout),
        frontends: m
            .frontends
            .iter()
            .map(|(name, f)| frontend_view(name, f))
            .collect(),
        backends,
        pgbouncer: pgbouncer_view(desired, layout),
        databases,
        keepalived: KeepalivedView {
            global_defs: lines(&m.keepalived.global_defs),
        },
        vips: desired
            .vips
            .values()
            .map(|v| vip_view(desired, v))
            .collect(),
        targets: m
            .targets
            .iter()
            .map(|(name, t)| {
                (
                    name.clone(),
                    TargetView {
                        path: layout.path(&t.destination).display().to_string(),
                    },
                )
            })
            .collect(),
    };
    View {
        context,
        rejections,
        warnings,
    }
}

/// One backend with its servers: the admitted instances that serve it,
/// as plain server lines or in runtime-API slots.
fn backend_view(
    name: &str,
    b: &Backend,
    admitted: &[&Instance],
    warnings: &mut Vec<String>,
) -> BackendView {
    let serving: Vec<&Instance> = admitted.iter().copied().filter(|i| b.serves(i)).collect();
    if serving.is_empty() {
        warnings.push(format!(
            "backend {name}: no healthy instance of service `{}`",
            b.service
        ));
    }
    let servers = match &b.runtime_api {
        None => serving.iter().map(|i| instance_server(i)).collect(),
        Some(rt) => slot_servers(name, b, rt.slots, &serving, warnings),
    };
    BackendView {
        name: name.to_string(),
        mode: mode_str(b.mode),
        balance: format!("{:?}", b.balance).to_lowercase(),
        check_path: b.health_check.as_ref().map(|h| h.path.clone()),
        check_method: b.health_check.as_ref().map(|h| match h.method {
            CheckMethod::Get => "GET",
            CheckMethod::Head => "HEAD",
            CheckMethod::Options => "OPTIONS",
        }),
        check_status: b.health_check.as_ref().map(|h| h.expect_status),
        check_port: b.health_check.as_ref().and_then(|h| h.port),
        tcp_check: b.tcp_check.map(|t| match t {
            TcpCheck::RedisPrimary => "redis_primary",
        }),
        check_password: None,
        server_options: b.server_options.join(" "),
        maxconn: b.maxconn,
        sticky_cookie: b.sticky.as_ref().map(|s| s.cookie.clone()),
        runtime_api: b.runtime_api.is_some(),
        runtime_api_policy: b
            .runtime_api
            .as_ref()
            .map(|rt| {
                let then = match rt.after_drain {
                    AfterDrain::Reload => "reload",
                    AfterDrain::Shutdown => "shutdown",
                };
                format!("drain={} then={then}", rt.drain_timeout)
            })
            .unwrap_or_default(),
        extra: lines(&b.extra),
        servers,
    }
}

/// One PgBouncer database: its primary, or its replicas on one port. Two
/// instances claiming primary route to none; the guard keeps the last
/// primary instead whenever there was one, so this happens only with
/// nothing to keep. Each reason for an empty entry is warned once.
fn database_view(
    name: &str,
    d: &Database,
    settings: &PgbouncerSettings,
    admitted: &[&Instance],
    warnings: &mut Vec<String>,
) -> DatabaseView {
    let mut chosen: Vec<&Instance> = admitted
        .iter()
        .copied()
        .filter(|i| settings.fills_role(d.role, i))
        .collect();
    let role = match d.role {
        DbRole::Primary => "primary",
        DbRole::Replica => "replica",
    };
    // Whether a warning already says why the entry has no host.
    let mut explained = false;
    if d.role == DbRole::Primary && chosen.len() > 1 {
        let names: Vec<String> = chosen.iter().map(|i| identity::name(i)).collect();
        warnings.push(format!(
            "database {name}: {} instances of `{}` claim to be primary ({}); routing to none until one does",
            chosen.len(),
            d.service,
            names.join(", ")
        ));
        chosen.clear();
        explained = true;
    }
    // PgBouncer takes one port for a host list: keep the replicas on the
    // first one's port.
    if let Some(port) = chosen.first().map(|i| i.port) {
        let before = chosen.len();
        chosen.retain(|i| i.port == port);
        if chosen.len() < before {
            warnings.push(format!(
                "database {name}: replicas listen on different ports; using those on {port}"
            ));
        }
    }
    if chosen.is_empty() && !explained {
        warnings.push(format!(
            "database {name}: no healthy {role} of `{}`",
            d.service
        ));
    }
    DatabaseView {
        name: name.to_string(),
        dbname: d.dbname.clone().unwrap_or_else(|| name.to_string()),
        role,
        host: (!chosen.is_empty()).then(|| {
            chosen
                .iter()
                .map(|i| i.address.as_str())
                .collect::<Vec<_>>()
                .join(",")
        }),
        port: chosen.first().map(|i| i.port),
        instances: chosen.iter().map(|i| identity::name(i)).collect(),
        pool_mode: match d.pool_mode {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
            PoolMode::Statement => "statement",
        },
        pool_size: d.pool_size,
        reserve_pool: d.reserve_pool,
        max_db_connections: d.max_db_connections,
    }
}

/// PgBouncer's settings, with the users' secrets and rooted paths.
fn pgbouncer_view(desired: &NodeDesired, layout: &Layout) -> PgbouncerView {
    let p = &desired.manifest.pgbouncer;
    PgbouncerView {
        listen_addr: p.listen_addr.clone(),
        listen_port: p.listen_port,
        auth_type: p.auth_type.clone(),
        admin_users: p.admin_users.join(","),
        max_client_conn: p.max_client_conn,
        default_pool_size: p.default_pool_size,
        users: p
            .users
            .keys()
            .filter_map(|u| {
                desired
                    .secrets
                    .get(&format!("pgbouncer.users.{u}"))
                    .map(|s| UserView {
                        name: u.clone(),
                        password: s.expose().to_string(),
                    })
            })
            .collect(),
        pidfile: layout
            .path("/run/postgresql/pgbouncer.pid")
            .display()
            .to_string(),
        unix_socket_dir: layout.path("/run/postgresql").display().to_string(),
        settings: PGBOUNCER_DEFAULTS
            .iter()
            .filter(|(k, _)| !p.settings.contains(k))
            .map(|&(k, v)| (k.to_string(), v.to_string()))
            .chain(p.settings.0.clone())
            .collect::<std::collections::BTreeMap<_, _>>()
            .into_iter()
            .map(|(key, value)| SettingView { key, value })
            .collect(),
    }
}

fn haproxy_view(h: &HaproxySettings, layout: &Layout) -> HaproxyView {
    HaproxyView {
        maxconn: h.maxconn,
        stats_socket: layout.path(&h.stats_socket).display().to_string(),
        timeout_connect: h.timeouts.connect.to_string(),
        timeout_client: h.timeouts.client.to_string(),
        timeout_server: h.timeouts.server.to_string(),
        httpclient_ssl_verify: h.httpclient_ssl_verify.map(SslVerify::as_str),
        global_extra: lines(&h.global_extra),
        defaults_extra: lines(&h.defaults_extra),
    }
}

fn frontend_view(name: &str, f: &Frontend) -> FrontendView {
    FrontendView {
        name: name.to_string(),
        mode: mode_str(f.mode),
        bind: f.bind.clone(),
        default_backend: f.default_backend.clone(),
        routes: f
            .routes
            .iter()
            .enumerate()
            .map(|(index, r)| RouteView {
                index,
                host: r.host.clone(),
                path_prefix: r.path_prefix.clone(),
                backend: r.backend.clone(),
            })
            .collect(),
    }
}

fn instance_server(i: &Instance) -> ServerView {
    let name = identity::name(i);
    ServerView {
        instance: Some(name.clone()),
        name,
        address: i.address.clone(),
        port: i.port,
        endpoint: endpoint(&i.address, i.port),
        health: i.health,
        disabled: false,
    }
}

fn vip_view(desired: &NodeDesired, v: &NodeVip) -> VipView {
    VipView {
        name: v.name.clone(),
        interface: v.node_interface.clone(),
        virtual_router_id: v.vip.virtual_router_id,
        priority: v.priority,
        state: v.initial_state,
        advert_int: v.vip.advert_int,
        addresses: v.vip.addresses.clone(),
        unicast_peers: if v.vip.unicast {
            v.peers.clone()
        } else {
            Vec::new()
        },
        unicast_src: if v.vip.unicast {
            desired.node.address.clone()
        } else {
            None
        },
        nopreempt: v.vip.nopreempt,
        auth_pass: desired
            .secrets
            .get(&format!("vips.{}.auth_pass", v.name))
            .map(|s| s.expose().to_string()),
        track_haproxy: v.vip.track_haproxy,
        notify_master: v.vip.notify.master.clone(),
        notify_backup: v.vip.notify.backup.clone(),
        notify_fault: v.vip.notify.fault.clone(),
    }
}

/// An operator's extra config lines as the template writes them.
fn lines(extra: &[ConfigLine]) -> Vec<String> {
    extra.iter().map(ToString::to_string).collect()
}

fn endpoint(address: &str, port: u16) -> String {
    if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

/// An instance of node `n` at 10.0.0.1, for the view's tests.
#[cfg(test)]
fn test_instance(id: &str, port: u16, health: Health) -> Instance {
    Instance {
        id: id.into(),
        node: "n".into(),
        address: "10.0.0.1".into(),
        port,
        tags: Default::default(),
        meta: Default::default(),
        health,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    use converge_model::{Catalog, Health, Layout, Manifests};

    use super::test_instance as inst;
    use super::*;

    #[test]
    fn the_drain_policy_is_written_for_the_applier() {
        let policy = |yaml: &str| {
            let b: Backend = serde_norway::from_str(yaml).expect("backend");
            backend_view("web", &b, &[], &mut Vec::new()).runtime_api_policy
        };
        assert_eq!(policy("service: web\n"), "");
        assert_eq!(
            policy("service: web\nruntime_api: {slots: 2}\n"),
            "drain=5s then=reload"
        );
        assert_eq!(
            policy(
                "service: web\nruntime_api: {slots: 0, drain_timeout: 30s, after_drain: shutdown}\n"
            ),
            "drain=30s then=shutdown"
        );
    }

    #[test]
    fn the_shipped_template_marks_the_backend_and_renders_its_slots() {
        let manifest = r#"
nodes:
  lb1: {}
frontends:
  fe:
    bind: [":80"]
    default_backend: web
backends:
  web:
    service: web
    runtime_api: {slots: 3}
    server_options: ["inter 1s"]
  api:
    service: web
targets:
  haproxy:
    template: haproxy.cfg.tera
    destination: /etc/haproxy/haproxy.cfg
    validate: haproxy
"#;
        let m = Manifests::from_sources(
            Path::new("m"),
            &[(PathBuf::from("m/a.yaml"), manifest.to_string())],
        )
        .expect("manifest");
        m.validate().expect("valid");
        let desired = m.for_node("lb1").expect("node");
        let catalog = Catalog::fresh(
            1,
            BTreeMap::from([(
                "web".to_string(),
                vec![
                    inst("web-a", 8001, Health::Passing),
                    inst("web-b", 8002, Health::Critical),
                ],
            )]),
        );
        let templates =
            crate::Templates::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../templates"))
                .expect("templates");
        let set =
            crate::render(&desired, &catalog, &templates, &Layout::new("/r")).expect("render");
        let cfg = String::from_utf8(set.files["haproxy"].bytes.clone()).expect("utf8");
        let web = cfg.split("\nbackend web\n").nth(1).expect("web backend");
        let lines: Vec<&str> = web
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("server ") || l.starts_with('#'))
            .collect();
        assert_eq!(lines.len(), 4, "{cfg}");
        assert!(
            lines[0].starts_with(&format!("{RUNTIME_API_MARKER} drain=5s then=reload ")),
            "{cfg}"
        );
        assert_eq!(
            lines[1..]
                .iter()
                .filter(|l| l.contains("10.0.0.1:8001 check inter 1s"))
                .count(),
            1,
            "{cfg}"
        );
        assert_eq!(
            lines[1..]
                .iter()
                .filter(|l| l.ends_with("127.0.0.1:1 check inter 1s disabled"))
                .count(),
            2,
            "{cfg}"
        );
        let api = cfg
            .split("\nbackend api\n")
            .nth(1)
            .and_then(|rest| rest.split("\nbackend web\n").next())
            .expect("api backend");
        assert!(!api.contains(RUNTIME_API_MARKER), "{cfg}");
        assert!(api.contains("server web-a:n 10.0.0.1:8001 check"), "{cfg}");
    }
}
