//! Scenarios, built from the manifests: what to probe and, for a local
//! test environment, which fault to inject when the operator names none.

use converge_model::manifest::Mode;
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
}
