//! Scenarios, built from the manifests: what to probe and, for a local
//! test environment, which fault to inject when the operator names none.
//!
//! - `backend-kill`: an HTTP request through the frontend that routes to
//!   the backend;
//! - `primary-kill`, `switchover`: a write through PgBouncer to a database
//!   that follows its primary;
//! - `lb-kill`: an HTTP request to a VIP on the port of an HTTP frontend.

use converge_model::manifest::{DbRole, Mode};
use converge_model::Manifest;

use super::DrillError;

/// A probe target found in the manifests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTarget {
    /// The backend the drill breaks.
    pub backend: String,
    /// Its catalog service.
    pub service: String,
    /// `http://ADDR:PORT/PATH` through the frontend that routes to it.
    pub url: String,
    /// The `Host` header its route needs.
    pub host: Option<String>,
}

/// `backend-kill`: the backend named (or the only HTTP backend a frontend
/// serves) and a URL through the frontend that routes to it.
pub fn backend_kill(manifest: &Manifest, backend: Option<&str>) -> Result<HttpTarget, DrillError> {
    let served: Vec<&String> = manifest
        .backends
        .iter()
        .filter(|(_, b)| b.mode == Mode::Http)
        .map(|(name, _)| name)
        .filter(|name| route_to(manifest, name).is_some())
        .collect();
    let name = match backend {
        Some(b) => b.to_string(),
        None if served.len() == 1 => served[0].clone(),
        None => {
            return Err(DrillError::Usage(format!(
                "name the backend to break with --backend (HTTP backends behind a frontend: {})",
                list(&served)
            )))
        }
    };
    let Some(b) = manifest.backends.get(&name) else {
        return Err(DrillError::Usage(format!(
            "no backend `{name}` in the manifests (HTTP backends behind a frontend: {})",
            list(&served)
        )));
    };
    let (bind, path, host) = route_to(manifest, &name).ok_or_else(|| {
        DrillError::Usage(format!(
            "no HTTP frontend routes to backend `{name}`; give --probe-url"
        ))
    })?;
    Ok(HttpTarget {
        backend: name,
        service: b.service.clone(),
        url: format!("http://{}{path}", local_address(&bind)),
        host,
    })
}

/// `lb-kill`: `http://VIP:PORT/` with the VIP named (or the only one)
/// and the port of the first HTTP frontend.
pub fn lb_kill(manifest: &Manifest, vip: Option<&str>) -> Result<String, DrillError> {
    let names: Vec<&String> = manifest.vips.keys().collect();
    let name = match vip {
        Some(v) => v.to_string(),
        None if names.len() == 1 => names[0].clone(),
        None => {
            return Err(DrillError::Usage(format!(
                "name the VIP with --vip (VIPs: {})",
                list(&names)
            )))
        }
    };
    let address = manifest
        .vips
        .get(&name)
        .and_then(|v| v.addresses.first())
        .ok_or_else(|| {
            DrillError::Usage(format!(
                "no VIP `{name}` with an address (VIPs: {})",
                list(&names)
            ))
        })?;
    let address = address.split('/').next().unwrap_or(address);
    let port = manifest
        .frontends
        .values()
        .filter(|f| f.mode == Mode::Http)
        .find_map(|f| f.bind.first())
        .and_then(|b| b.rsplit_once(':'))
        .map(|(_, port)| port.to_string())
        .ok_or_else(|| {
            DrillError::Usage("no HTTP frontend to probe the VIP on; give --probe-url".into())
        })?;
    let host = if address.contains(':') {
        format!("[{address}]")
    } else {
        address.to_string()
    };
    Ok(format!("http://{host}:{port}/"))
}

/// A database write target found in the manifests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbTarget {
    /// The database as PgBouncer serves it.
    pub database: String,
    /// PgBouncer's address from this node.
    pub host: String,
    /// PgBouncer's port.
    pub port: u16,
    /// A PgBouncer user that is not an admin user, to write as.
    pub user: Option<String>,
}

/// `primary-kill` and `switchover`: the database named (or the only one
/// that follows a primary) through this node's PgBouncer.
pub fn database_write(manifest: &Manifest, database: Option<&str>) -> Result<DbTarget, DrillError> {
    let primaries: Vec<&String> = manifest
        .databases
        .iter()
        .filter(|(_, d)| d.role == DbRole::Primary)
        .map(|(name, _)| name)
        .collect();
    let name = match database {
        Some(d) if manifest.databases.contains_key(d) => d.to_string(),
        None if primaries.len() == 1 => primaries[0].clone(),
        _ => {
            return Err(DrillError::Usage(format!(
                "name the database to write to with --database (databases following a primary: {})",
                list(&primaries)
            )))
        }
    };
    let p = &manifest.pgbouncer;
    let user = p.users.keys().find(|u| !p.admin_users.contains(u)).cloned();
    let host = match p.listen_addr.as_str() {
        "" | "*" | "0.0.0.0" => "127.0.0.1".to_string(),
        "::" => "::1".to_string(),
        a => a.to_string(),
    };
    Ok(DbTarget {
        database: name,
        host,
        port: p.listen_port,
        user,
    })
}

fn list(names: &[&String]) -> String {
    if names.is_empty() {
        return "none".into();
    }
    names
        .iter()
        .map(|n| n.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The first bind, path and host of an HTTP frontend that sends requests
/// to `backend`: as its default backend, else by a route.
fn route_to(manifest: &Manifest, backend: &str) -> Option<(String, String, Option<String>)> {
    let http = || manifest.frontends.values().filter(|f| f.mode == Mode::Http);
    if let Some(f) = http().find(|f| f.default_backend == backend) {
        return Some((f.bind.first()?.clone(), "/".into(), None));
    }
    http().find_map(|f| {
        let r = f.routes.iter().find(|r| r.backend == backend)?;
        let path = r.path_prefix.clone().unwrap_or_else(|| "/".into());
        Some((f.bind.first()?.clone(), path, r.host.clone()))
    })
}

/// Where to reach a bind address from this node: a wildcard becomes
/// loopback.
fn local_address(bind: &str) -> String {
    let (addr, port) = bind.rsplit_once(':').unwrap_or(("", bind));
    let addr = match addr {
        "" | "*" | "0.0.0.0" => "127.0.0.1",
        "[::]" | "::" => "[::1]",
        a => a,
    };
    format!("{addr}:{port}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(yaml: &str) -> Manifest {
        let dir = std::path::Path::new("/m");
        converge_model::Manifests::from_sources(dir, &[(dir.join("site.yaml"), yaml.into())])
            .expect("manifest")
            .manifest
    }

    #[test]
    fn the_probe_goes_through_the_frontend_that_routes_to_the_backend() {
        let m = manifest(
            "frontends:\n  f:\n    bind: [':8080']\n    default_backend: web\n    routes:\n      - {host: api.example.com, path_prefix: /v1/, backend: api}\n\
             backends:\n  web: {service: web}\n  api: {service: api-svc}\n",
        );
        let api = backend_kill(&m, Some("api")).expect("api");
        assert_eq!(api.url, "http://127.0.0.1:8080/v1/");
        assert_eq!(api.host.as_deref(), Some("api.example.com"));
        assert_eq!(api.service, "api-svc");
        let web = backend_kill(&m, Some("web")).expect("web");
        assert_eq!(
            (web.url.as_str(), web.host),
            ("http://127.0.0.1:8080/", None)
        );
        let unnamed = backend_kill(&m, None);
        assert!(
            matches!(&unnamed, Err(DrillError::Usage(msg)) if msg.contains("api, web")),
            "{unnamed:?}"
        );
        assert!(backend_kill(&m, Some("nope")).is_err());
    }

    #[test]
    fn lb_kill_probes_the_vip_on_the_frontends_port() {
        let m = manifest(
            "vips:\n  edge:\n    virtual_router_id: 51\n    interface: eth0\n    addresses: [10.0.0.100/24]\n    priorities: {lb1: 150}\n\
             frontends:\n  f:\n    bind: [':8080']\n    default_backend: web\n\
             backends:\n  web: {service: web}\n",
        );
        assert_eq!(lb_kill(&m, None).expect("url"), "http://10.0.0.100:8080/");
        assert!(lb_kill(&m, Some("nope")).is_err());
    }

    #[test]
    fn the_write_goes_through_this_nodes_pgbouncer_as_a_non_admin_user() {
        let m = manifest(
            "pgbouncer:\n  listen_addr: '*'\n  listen_port: 6432\n  admin_users: [admin]\n  users:\n    admin: {file: a}\n    app: {file: b}\n\
             databases:\n  app: {service: postgres, role: primary}\n  reports: {service: postgres, role: replica}\n",
        );
        let t = database_write(&m, None).expect("the only primary database");
        assert_eq!(
            t,
            DbTarget {
                database: "app".into(),
                host: "127.0.0.1".into(),
                port: 6432,
                user: Some("app".into())
            }
        );
        assert!(database_write(&m, Some("nope")).is_err());
    }
}
