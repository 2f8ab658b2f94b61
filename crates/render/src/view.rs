//! The template context: decisions made once, in code, so templates only
//! format.
//!
//! Which instances serve a backend (healthy, carrying every required tag,
//! passing [`sanitize`](crate::sanitize)), which instance is a database's
//! primary, this node's VRRP role: all are decided here, from sorted inputs,
//! into sorted outputs.

use std::collections::BTreeMap;

use converge_model::desired::NodeVip;
use converge_model::manifest::{Backend, DbRole, Mode, PoolMode};
use converge_model::{Catalog, Health, Instance, Layout, NodeDesired, Rejection};
use serde::Serialize;

use crate::sanitize;

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
    pub vars: BTreeMap<String, serde_yaml::Value>,
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
#[derive(Debug, Serialize)]
pub struct BackendView {
    /// Name.
    pub name: String,
    /// `http` or `tcp`.
    pub mode: &'static str,
    /// Balance algorithm keyword.
    pub balance: String,
    /// HTTP check path.
    pub check_path: Option<String>,
    /// Expected HTTP status.
    pub check_status: Option<u16>,
    /// Extra server options, space-joined.
    pub server_options: String,
    /// Per-server maxconn.
    pub maxconn: Option<u32>,
    /// Stickiness cookie name.
    pub sticky_cookie: Option<String>,
    /// Servers, sorted by instance id.
    pub servers: Vec<ServerView>,
}

/// One server line.
#[derive(Debug, Serialize)]
pub struct ServerView {
    /// Server name (the instance id).
    pub name: String,
    /// Address.
    pub address: String,
    /// Port.
    pub port: u16,
    /// `address:port`, IPv6 bracketed.
    pub endpoint: String,
    /// Health as the catalog reported it.
    pub health: Health,
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
}

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
    /// Instance ids chosen, sorted.
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

    // Sanitize each referenced service once, so a rejection is reported once
    // however many backends use the service.
    let mut safe: BTreeMap<&str, Vec<&Instance>> = BTreeMap::new();
    let referenced = m
        .backends
        .values()
        .map(|b| b.service.as_str())
        .chain(m.databases.values().map(|d| d.service.as_str()));
    for service in referenced {
        if safe.contains_key(service) {
            continue;
        }
        let mut ok = Vec::new();
        if let Some(entry) = catalog.service(service) {
            for inst in &entry.instances {
                match sanitize::check(service, inst) {
                    Ok(()) => ok.push(inst),
                    Err(r) => rejections.push(r),
                }
            }
        }
        safe.insert(service, ok);
    }

    let backends = m
        .backends
        .iter()
        .map(|(name, b)| {
            let servers: Vec<ServerView> = safe[b.service.as_str()]
                .iter()
                .filter(|i| {
                    i.health == Health::Passing
                        || (b.include_warning && i.health == Health::Warning)
                })
                .filter(|i| b.tags.iter().all(|t| i.tags.contains(t)))
                .map(|i| ServerView {
                    name: i.id.clone(),
                    address: i.address.clone(),
                    port: i.port,
                    endpoint: endpoint(&i.address, i.port),
                    health: i.health,
                })
                .collect();
            if servers.is_empty() {
                warnings.push(format!(
                    "backend {name}: no healthy instance of service `{}`",
                    b.service
                ));
            }
            BackendView {
                name: name.clone(),
                mode: mode_str(b.mode),
                balance: format!("{:?}", b.balance).to_lowercase(),
                check_path: b.health_check.as_ref().map(|h| h.path.clone()),
                check_status: b.health_check.as_ref().map(|h| h.expect_status),
                server_options: b.server_options.join(" "),
                maxconn: b.maxconn,
                sticky_cookie: b.sticky.as_ref().map(|s| s.cookie.clone()),
                servers,
            }
        })
        .collect();

    let databases = m
        .databases
        .iter()
        .map(|(name, d)| {
            let tags = match d.role {
                DbRole::Primary => &m.pgbouncer.primary_tags,
                DbRole::Replica => &m.pgbouncer.replica_tags,
            };
            let mut chosen: Vec<&Instance> = safe[d.service.as_str()]
                .iter()
                .copied()
                .filter(|i| i.health == Health::Passing)
                .filter(|i| tags.iter().any(|t| i.tags.contains(t)))
                .collect();
            let role = match d.role {
                DbRole::Primary => "primary",
                DbRole::Replica => "replica",
            };
            if d.role == DbRole::Primary && chosen.len() > 1 {
                let ids: Vec<&str> = chosen.iter().map(|i| i.id.as_str()).collect();
                warnings.push(format!(
                    "database {name}: {} instances of `{}` claim to be primary ({}); routing to none until one does",
                    chosen.len(),
                    d.service,
                    ids.join(", ")
                ));
                chosen.clear();
            }
            // PgBouncer takes one port for a host list: keep the replicas on
            // the first one's port.
            if let Some(port) = chosen.first().map(|i| i.port) {
                let before = chosen.len();
                chosen.retain(|i| i.port == port);
                if chosen.len() < before {
                    warnings.push(format!(
                        "database {name}: replicas listen on different ports; using those on {port}"
                    ));
                }
            }
            if chosen.is_empty() && warnings.iter().all(|w| !w.starts_with(&format!("database {name}:"))) {
                warnings.push(format!("database {name}: no healthy {role} of `{}`", d.service));
            }
            DatabaseView {
                name: name.clone(),
                dbname: d.dbname.clone().unwrap_or_else(|| name.clone()),
                role,
                host: (!chosen.is_empty())
                    .then(|| chosen.iter().map(|i| i.address.as_str()).collect::<Vec<_>>().join(",")),
                port: chosen.first().map(|i| i.port),
                instances: chosen.iter().map(|i| i.id.clone()).collect(),
                pool_mode: match d.pool_mode {
                    PoolMode::Session => "session",
                    PoolMode::Transaction => "transaction",
                    PoolMode::Statement => "statement",
                },
                pool_size: d.pool_size,
                reserve_pool: d.reserve_pool,
                max_db_connections: d.max_db_connections,
            }
        })
        .collect();

    let p = &m.pgbouncer;
    let pgbouncer = PgbouncerView {
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
    };

    let vips = desired
        .vips
        .values()
        .map(|v| vip_view(desired, v))
        .collect();

    let h = &m.haproxy;
    let context = Context {
        node: NodeView {
            name: desired.name.clone(),
            address: desired.node.address.clone(),
            vars: desired.node.vars.clone(),
        },
        root: layout.root.display().to_string(),
        haproxy: HaproxyView {
            maxconn: h.maxconn,
            stats_socket: layout.path(&h.stats_socket).display().to_string(),
            timeout_connect: h.timeouts.connect.clone(),
            timeout_client: h.timeouts.client.clone(),
            timeout_server: h.timeouts.server.clone(),
        },
        frontends: m
            .frontends
            .iter()
            .map(|(name, f)| FrontendView {
                name: name.clone(),
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
            })
            .collect(),
        backends,
        pgbouncer,
        databases,
        vips,
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

/// Whether `inst` may serve backend `b` by health and tags (the sanitizer
/// decides separately whether its values are safe to render). The guard
/// counts servers with the same rule the render uses.
pub fn serves(b: &Backend, inst: &Instance) -> bool {
    let healthy =
        inst.health == Health::Passing || (b.include_warning && inst.health == Health::Warning);
    healthy && b.tags.iter().all(|t| inst.tags.contains(t))
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

fn endpoint(address: &str, port: u16) -> String {
    if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}
