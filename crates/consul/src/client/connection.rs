//! The HTTP client under [`Client`](super::Client): the token header, TLS
//! roots and client identity, the TLS server name, and a connection pool
//! sized to the request limit.
//!
//! A TLS server name ([`TlsConfig::server_name`], `CONSUL_TLS_SERVER_NAME`)
//! must be both the SNI and the name the certificate is verified against,
//! as in Consul's own client. rustls takes both from the URL's host, so
//! requests go to a URL whose host is the server name (`target_url`), and
//! a resolver (`PinnedHost`) connects that name to the configured
//! address's host and port. Verification itself stays rustls's own.
//!
//! Built once per lane (see `lanes`) and shared by the client's clones, so
//! the pool's idle limit is one half of the HTTP/1.1 connection bound (see
//! [`MAX_CONNECTIONS`](super::MAX_CONNECTIONS)). A client asks for gzip
//! unless its agent is on the loopback interface (`compresses`): Consul
//! compresses its JSON about fifteen-fold, which matters when the answers
//! cross a network, but compressing costs the agent about a third more CPU
//! per answer (a service of ten instances: ~1.0 ms against ~0.7 ms, 15 kB
//! against 1 kB), and over loopback the bytes saved cost nothing to move
//! (numbers in `BENCHMARKS.md`, section "Consul source at scale"). The local
//! agent is how Consul is meant to be used, and at start-up in a large
//! datacenter the agent's CPU is what the first snapshot waits for. Every problem with the
//! configuration (an unreadable PEM file, half a client identity, a token
//! that cannot be a header) is an [`Error::Config`] naming the file or
//! variable, found here before any request is sent.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::Url;

use crate::config::{Config, TlsConfig};
use crate::error::Error;

/// How long an idle HTTP/1.1 connection stays in the pool. HTTP/2 lanes
/// keep theirs for as long as it is open (see `http_client`).
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How often an HTTP/2 connection is pinged, busy or idle, so a dead one
/// is closed and replaced (see [`http_client`]).
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);

/// How long a ping's answer may take before the connection is closed,
/// with every request on it: longer than a plain read may take (the
/// default request timeout, 15 s), so an agent too busy to answer soon
/// fails reads one by one before it loses a connection's 200 long polls
/// at once.
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// Which HTTP versions a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wire {
    /// HTTP/1.1 only: one request per connection at a time.
    Http1,
    /// HTTP/2 only (ALPN `h2` alone over TLS): many requests share one
    /// connection.
    Http2,
    /// Whatever the server picks through ALPN; used once, to learn which.
    Negotiate,
}

/// A `reqwest` client for `config` speaking `wire`, that keeps at most
/// `max_idle` idle connections, asks for gzip from an agent that is not on
/// loopback, and sends the token, if any, as a sensitive header.
pub(super) fn http_client(
    config: &Config,
    max_idle: usize,
    wire: Wire,
) -> Result<reqwest::Client, Error> {
    let mut headers = HeaderMap::new();
    if let Some(token) = &config.token {
        let mut value = HeaderValue::from_str(token.expose()).map_err(|_| {
            Error::Config("the Consul token contains characters not allowed in a header".into())
        })?;
        value.set_sensitive(true);
        headers.insert("X-Consul-Token", value);
    }
    let builder = reqwest::Client::builder()
        .use_rustls_tls()
        .default_headers(headers)
        .connect_timeout(config.connect_timeout)
        .pool_max_idle_per_host(max_idle)
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .tcp_nodelay(true)
        .gzip(compresses(&config.address))
        .user_agent(concat!("converge/", env!("CARGO_PKG_VERSION")));
    let builder = match wire {
        Wire::Http1 => builder.http1_only(),
        // hyper's pool forgets a shared HTTP/2 connection once no request
        // has been started on it for the idle timeout, even while its
        // streams are still in flight, and the next request opens a second
        // connection beside it: a lane whose long polls all outlast the
        // timeout (a 60 s `wait` against 30 s) would hold two connections
        // until the old one's last poll returns, one lane after another,
        // past the connection bound (seen as 40–44 connections for 25
        // lanes in use at W = 5,000). So a lane's connection is never
        // forgotten while open: it is replaced only once closed (or sent
        // away by the agent's GOAWAY, after which its last streams end).
        // Pings close one whose agent stopped answering, so a lane does not
        // keep a dead connection for ever.
        Wire::Http2 => builder
            .http2_prior_knowledge()
            .pool_idle_timeout(None)
            .http2_keep_alive_interval(H2_PING_INTERVAL)
            .http2_keep_alive_timeout(H2_PING_TIMEOUT)
            .http2_keep_alive_while_idle(true),
        Wire::Negotiate => builder,
    };
    let builder = match pinned_host(config) {
        Some(pinned) => builder.dns_resolver(Arc::new(pinned)),
        None => builder,
    };
    with_tls(builder, &config.tls)?
        .build()
        .map_err(|e| Error::Config(format!("cannot build HTTP client: {e}")))
}

/// Adds the CA bundle (replacing the built-in roots), the client identity
/// and the verification switch of `tls` to `builder`.
fn with_tls(
    mut builder: reqwest::ClientBuilder,
    tls: &TlsConfig,
) -> Result<reqwest::ClientBuilder, Error> {
    if let Some(ca) = &tls.ca_cert {
        let pem = read_pem("CA certificate (CONSUL_CACERT)", ca)?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| Error::Config(format!("CA certificate {}: {e}", ca.display())))?;
        if certs.is_empty() {
            return Err(Error::Config(format!(
                "CA certificate {} holds no certificate",
                ca.display()
            )));
        }
        builder = builder.tls_built_in_root_certs(false);
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => {
            let mut pem = read_pem("client certificate (CONSUL_CLIENT_CERT)", cert)?;
            pem.push(b'\n');
            pem.extend(read_pem("client key (CONSUL_CLIENT_KEY)", key)?);
            let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                Error::Config(format!(
                    "client certificate {} / key {}: {e}",
                    cert.display(),
                    key.display()
                ))
            })?;
            builder = builder.identity(identity);
        }
        (None, None) => {}
        _ => {
            return Err(Error::Config(
                "CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY must be set together".into(),
            ))
        }
    }
    if tls.insecure_skip_verify {
        builder = builder.danger_accept_invalid_certs(true);
    }
    Ok(builder)
}

/// The URL requests are sent to: the configured address, with the TLS
/// server name as its host when one is set for an `https` address (which
/// makes rustls send and verify that name).
pub(super) fn target_url(config: &Config) -> Result<Url, Error> {
    let mut url = config.address.clone();
    if let (Some(name), "https") = (&config.tls.server_name, url.scheme()) {
        url.set_host(Some(name)).map_err(|e| {
            Error::Config(format!(
                "TLS server name {name:?} (CONSUL_TLS_SERVER_NAME) is not a host name: {e}"
            ))
        })?;
    }
    Ok(url)
}

/// The resolver that sends the TLS server name to the configured host,
/// when there is one to send (`https` with a server name).
/// The host of `address`, an IPv6 address without the brackets a URL
/// puts around it.
fn bare_host(address: &Url) -> Option<&str> {
    let host = address.host_str()?;
    Some(host.trim_start_matches('[').trim_end_matches(']'))
}

/// Whether answers from the agent at `address` are asked gzipped: unless
/// its host is a loopback address or `localhost` (see the module
/// documentation for why).
pub(super) fn compresses(address: &Url) -> bool {
    let Some(host) = bare_host(address) else {
        return true;
    };
    match host.parse::<IpAddr>() {
        Ok(ip) => !ip.is_loopback(),
        Err(_) => !host.eq_ignore_ascii_case("localhost"),
    }
}

fn pinned_host(config: &Config) -> Option<PinnedHost> {
    config.tls.server_name.as_ref()?;
    if config.address.scheme() != "https" {
        return None;
    }
    let host = bare_host(&config.address)?.to_string();
    Some(PinnedHost {
        host,
        port: config.address.port_or_known_default()?,
    })
}

/// Resolves whatever name is asked (the client only ever asks for the TLS
/// server name) to the configured address's host: an IP as is, a host name
/// through the system resolver, at every new connection so a moved Consul
/// is found.
struct PinnedHost {
    host: String,
    port: u16,
}

impl Resolve for PinnedHost {
    fn resolve(&self, _name: Name) -> Resolving {
        let (host, port) = (self.host.clone(), self.port);
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
                Ok(ip) => vec![SocketAddr::new(ip, port)],
                Err(_) => {
                    tokio::task::spawn_blocking(move || (host.as_str(), port).to_socket_addrs())
                        .await??
                        .collect()
                }
            };
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

fn read_pem(what: &str, path: &std::path::Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path)
        .map_err(|e| Error::Config(format!("cannot read {what} {}: {e}", path.display())))
}
