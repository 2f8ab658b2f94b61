//! Where Consul is and how to talk to it: address, ACL token, TLS,
//! datacenter, and the Enterprise namespace and admin partition.
//!
//! A namespace or partition set in the environment must never be dropped
//! silently: converge would read the default namespace and render the
//! wrong backends. They are sent as `?ns=` / `?partition=` on every
//! catalog, health and KV request; Consul OSS answers those with HTTP 400
//! ("Namespaces are a Consul Enterprise feature"), which the source
//! reports as a configuration error rather than reading the default.
//!
//! [`Config::from_env`] follows HashiCorp's environment conventions so an
//! operator's existing `CONSUL_HTTP_*` setup works unchanged; converge's own
//! configuration fills the same struct. The token is a
//! [`Secret`]: its `Debug` and `Display` print a
//! placeholder, it is sent only in the `X-Consul-Token` header (marked
//! sensitive), never in a URL, an error or a log line, and it is read from
//! the environment or a file, never from the command line where `ps` would
//! show it.

use std::path::PathBuf;
use std::time::Duration;

use converge_model::Secret;
use reqwest::Url;

use crate::error::Error;

/// The address used when none is configured (Consul's own default).
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:8500";

/// How to reach one Consul agent.
#[derive(Debug, Clone)]
pub struct Config {
    /// Base URL: scheme, host and port (`http://127.0.0.1:8500/`).
    pub address: Url,
    /// ACL token, sent as `X-Consul-Token`.
    pub token: Option<Secret>,
    /// The file `token` was read from, read again by [`Config::reread`]
    /// (a token rotated in place takes effect on SIGHUP).
    pub token_file: Option<PathBuf>,
    /// TLS files; used when `address` is `https`.
    pub tls: TlsConfig,
    /// Datacenter to query (`?dc=`); the agent's own when `None`.
    pub datacenter: Option<String>,
    /// Consul Enterprise namespace (`?ns=`, `CONSUL_NAMESPACE`); the
    /// token's own when `None`.
    pub namespace: Option<String>,
    /// Consul Enterprise admin partition (`?partition=`,
    /// `CONSUL_PARTITION`); the token's own when `None`.
    pub partition: Option<String>,
    /// Timeout of a non-blocking request. Blocking requests get
    /// `wait + wait/16 +` [`Config::blocking_margin`] instead.
    pub request_timeout: Duration,
    /// Extra time allowed past a blocking query's `wait` (plus the up to
    /// `wait/16` Consul adds) before the request is abandoned.
    pub blocking_margin: Duration,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
}

/// TLS settings (PEM files).
#[derive(Debug, Clone, Default)]
pub struct TlsConfig {
    /// CA bundle that signed Consul's certificate (`CONSUL_CACERT`).
    pub ca_cert: Option<PathBuf>,
    /// Client certificate for mutual TLS (`CONSUL_CLIENT_CERT`).
    pub client_cert: Option<PathBuf>,
    /// Key of the client certificate (`CONSUL_CLIENT_KEY`).
    pub client_key: Option<PathBuf>,
    /// Skip verification of Consul's certificate
    /// (`CONSUL_HTTP_SSL_VERIFY=false`). For tests only.
    pub insecure_skip_verify: bool,
    /// The name sent as SNI and verified against Consul's certificate
    /// instead of the address's host (`CONSUL_TLS_SERVER_NAME`), for an
    /// address that is an IP or a name the certificate does not carry
    /// (Consul's own certificates name `server.DC.consul`).
    pub server_name: Option<String>,
}

impl Config {
    /// A configuration for `address` (`host:port` or a `http(s)://` URL)
    /// with no token, no TLS files, and default timeouts.
    pub fn new(address: &str) -> Result<Self, Error> {
        Ok(Self {
            address: parse_address(address, false)?,
            token: None,
            token_file: None,
            tls: TlsConfig::default(),
            datacenter: None,
            namespace: None,
            partition: None,
            request_timeout: Duration::from_secs(15),
            blocking_margin: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
        })
    }

    /// This configuration with its token file read again, for a token
    /// rotated in place. (TLS files need nothing: every new [`Client`]
    /// reads them.)
    ///
    /// [`Client`]: crate::Client
    pub fn reread(&self) -> Result<Self, Error> {
        let mut fresh = self.clone();
        if let Some(file) = &self.token_file {
            fresh.token = Some(read_token_file(file)?);
        }
        Ok(fresh)
    }

    /// Sets the token.
    pub fn with_token(mut self, token: Secret) -> Self {
        self.token = Some(token);
        self
    }

    /// Reads `CONSUL_HTTP_ADDR`, `CONSUL_HTTP_SSL`, `CONSUL_HTTP_TOKEN`,
    /// `CONSUL_HTTP_TOKEN_FILE`, `CONSUL_CACERT`, `CONSUL_CLIENT_CERT`,
    /// `CONSUL_CLIENT_KEY`, `CONSUL_HTTP_SSL_VERIFY`,
    /// `CONSUL_TLS_SERVER_NAME`, `CONSUL_NAMESPACE` and `CONSUL_PARTITION`
    /// from the process environment (an empty value is unset, as in
    /// Consul's own client).
    pub fn from_env() -> Result<Self, Error> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// Like [`Config::from_env`], with the variables looked up through
    /// `var` (so callers and tests need not touch the process environment).
    ///
    /// As in Consul's own client, `CONSUL_HTTP_TOKEN` wins over
    /// `CONSUL_HTTP_TOKEN_FILE`; the file's surrounding whitespace is
    /// stripped. `CONSUL_HTTP_SSL=true` selects `https` for an address
    /// given without a scheme.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let nonempty = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let ssl = match nonempty("CONSUL_HTTP_SSL") {
            Some(v) => parse_bool("CONSUL_HTTP_SSL", &v)?,
            None => false,
        };
        let addr = nonempty("CONSUL_HTTP_ADDR").unwrap_or_else(|| DEFAULT_ADDRESS.to_string());
        let mut config = Self::new(DEFAULT_ADDRESS)?;
        config.address = parse_address(&addr, ssl)?;

        match (
            nonempty("CONSUL_HTTP_TOKEN"),
            nonempty("CONSUL_HTTP_TOKEN_FILE"),
        ) {
            (Some(token), _) => config.token = Some(Secret::new(token.trim())),
            (None, Some(file)) => {
                let file = PathBuf::from(file);
                config.token = Some(read_token_file(&file)?);
                config.token_file = Some(file);
            }
            (None, None) => {}
        }
        config.tls = TlsConfig {
            ca_cert: nonempty("CONSUL_CACERT").map(PathBuf::from),
            client_cert: nonempty("CONSUL_CLIENT_CERT").map(PathBuf::from),
            client_key: nonempty("CONSUL_CLIENT_KEY").map(PathBuf::from),
            insecure_skip_verify: match nonempty("CONSUL_HTTP_SSL_VERIFY") {
                Some(v) => !parse_bool("CONSUL_HTTP_SSL_VERIFY", &v)?,
                None => false,
            },
            server_name: nonempty("CONSUL_TLS_SERVER_NAME").map(|v| v.trim().to_string()),
        };
        config.namespace = nonempty("CONSUL_NAMESPACE").map(|v| v.trim().to_string());
        config.partition = nonempty("CONSUL_PARTITION").map(|v| v.trim().to_string());
        Ok(config)
    }
}

/// Reads a token file (one token, surrounding whitespace stripped). The
/// error names the file, never its content.
pub fn read_token_file(path: &std::path::Path) -> Result<Secret, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::Config(format!(
            "cannot read Consul token file {}: {e}",
            path.display()
        ))
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(Error::Config(format!(
            "Consul token file {} is empty",
            path.display()
        )));
    }
    Ok(Secret::new(token))
}

/// `host:port`, `http://host:port` or `https://host:port` → base URL.
fn parse_address(addr: &str, ssl: bool) -> Result<Url, Error> {
    let addr = addr.trim();
    if addr.starts_with("unix://") {
        return Err(Error::Config(format!(
            "Consul address {addr:?}: unix sockets are not supported; use host:port"
        )));
    }
    let with_scheme = if addr.contains("://") {
        addr.to_string()
    } else if ssl {
        format!("https://{addr}")
    } else {
        format!("http://{addr}")
    };
    let mut url = Url::parse(&with_scheme)
        .map_err(|e| Error::Config(format!("Consul address {addr:?} is not valid: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Error::Config(format!(
            "Consul address {addr:?}: scheme must be http or https"
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(Error::Config(format!(
            "Consul address {addr:?} has no host"
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Error::Config(format!(
            "Consul address {:?} must not carry credentials; use CONSUL_HTTP_TOKEN",
            url.host_str().unwrap_or_default()
        )));
    }
    if url.path() != "/" || url.query().is_some() {
        return Err(Error::Config(format!(
            "Consul address {addr:?} must be scheme://host:port with no path or query"
        )));
    }
    url.set_fragment(None);
    Ok(url)
}

/// Go's `strconv.ParseBool`, which the HashiCorp tools use for these
/// variables.
fn parse_bool(name: &str, value: &str) -> Result<bool, Error> {
    match value.trim() {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        other => Err(Error::Config(format!(
            "{name}={other:?} is not a boolean (true/false)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn default_address_is_local_agent() {
        let c = Config::from_vars(vars(&[])).expect("config");
        assert_eq!(c.address.as_str(), "http://127.0.0.1:8500/");
        assert!(c.token.is_none());
    }

    #[test]
    fn host_port_url_and_ssl_flag() {
        let c = Config::from_vars(vars(&[("CONSUL_HTTP_ADDR", "consul.local:8501")])).expect("c");
        assert_eq!(c.address.as_str(), "http://consul.local:8501/");
        let c = Config::from_vars(vars(&[
            ("CONSUL_HTTP_ADDR", "consul.local:8501"),
            ("CONSUL_HTTP_SSL", "true"),
        ]))
        .expect("c");
        assert_eq!(c.address.as_str(), "https://consul.local:8501/");
        let c =
            Config::from_vars(vars(&[("CONSUL_HTTP_ADDR", "https://10.1.2.3:8501")])).expect("c");
        assert_eq!(c.address.scheme(), "https");
        assert_eq!(c.address.port(), Some(8501));
    }

    #[test]
    fn bad_addresses_are_config_errors() {
        for bad in [
            "unix:///tmp/consul.sock",
            "ftp://x:1",
            "http://",
            "http://u:p@h:1",
            "h:1/v1",
        ] {
            let e = Config::from_vars(vars(&[("CONSUL_HTTP_ADDR", bad)])).expect_err(bad);
            assert!(e.is_config_error(), "{bad}: {e}");
        }
        let e = Config::from_vars(vars(&[("CONSUL_HTTP_SSL", "yes")])).expect_err("bool");
        assert!(e.to_string().contains("CONSUL_HTTP_SSL"), "{e}");
    }

    #[test]
    fn token_env_wins_over_token_file_and_file_is_trimmed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("token");
        std::fs::write(&file, "  file-token-123\n").expect("write");
        let f = file.to_str().expect("utf8");
        let c = Config::from_vars(vars(&[("CONSUL_HTTP_TOKEN_FILE", f)])).expect("c");
        assert_eq!(c.token.as_ref().map(Secret::expose), Some("file-token-123"));
        let c = Config::from_vars(vars(&[
            ("CONSUL_HTTP_TOKEN_FILE", f),
            ("CONSUL_HTTP_TOKEN", "env-token-456"),
        ]))
        .expect("c");
        assert_eq!(c.token.as_ref().map(Secret::expose), Some("env-token-456"));
        assert_eq!(
            c.reread().expect("reread").token,
            c.token,
            "no file to read"
        );
    }

    #[test]
    fn reread_picks_up_a_token_rotated_in_its_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("token");
        std::fs::write(&file, "old-token\n").expect("write");
        let f = file.to_str().expect("utf8");
        let c = Config::from_vars(vars(&[("CONSUL_HTTP_TOKEN_FILE", f)])).expect("c");
        std::fs::write(&file, "new-token\n").expect("rotate");
        assert_eq!(c.token.as_ref().map(Secret::expose), Some("old-token"));
        let fresh = c.reread().expect("reread");
        assert_eq!(fresh.token.as_ref().map(Secret::expose), Some("new-token"));
        std::fs::remove_file(&file).expect("rm");
        let e = c.reread().expect_err("file gone");
        assert!(e.to_string().contains(f), "{e}");
    }

    #[test]
    fn missing_token_file_error_names_file() {
        let e = Config::from_vars(vars(&[("CONSUL_HTTP_TOKEN_FILE", "/nonexistent/tok")]))
            .expect_err("missing");
        assert!(e.to_string().contains("/nonexistent/tok"), "{e}");
    }

    #[test]
    fn tls_paths_and_verify_flag() {
        let c = Config::from_vars(vars(&[
            ("CONSUL_CACERT", "/etc/consul/ca.pem"),
            ("CONSUL_CLIENT_CERT", "/etc/consul/cli.pem"),
            ("CONSUL_CLIENT_KEY", "/etc/consul/cli-key.pem"),
            ("CONSUL_HTTP_SSL_VERIFY", "false"),
        ]))
        .expect("c");
        assert_eq!(c.tls.ca_cert, Some(PathBuf::from("/etc/consul/ca.pem")));
        assert_eq!(
            c.tls.client_cert,
            Some(PathBuf::from("/etc/consul/cli.pem"))
        );
        assert_eq!(
            c.tls.client_key,
            Some(PathBuf::from("/etc/consul/cli-key.pem"))
        );
        assert!(c.tls.insecure_skip_verify);
    }

    #[test]
    fn namespace_partition_and_tls_server_name_are_read_and_empty_is_unset() {
        let c = Config::from_vars(vars(&[
            ("CONSUL_NAMESPACE", "team-a"),
            ("CONSUL_PARTITION", "part-1"),
            ("CONSUL_TLS_SERVER_NAME", "server.dc1.consul"),
        ]))
        .expect("c");
        assert_eq!(c.namespace.as_deref(), Some("team-a"));
        assert_eq!(c.partition.as_deref(), Some("part-1"));
        assert_eq!(c.tls.server_name.as_deref(), Some("server.dc1.consul"));
        let c = Config::from_vars(vars(&[("CONSUL_NAMESPACE", ""), ("CONSUL_PARTITION", " ")]))
            .expect("c");
        assert_eq!((c.namespace, c.partition), (None, None));
    }

    #[test]
    fn debug_never_shows_the_token() {
        let c = Config::from_vars(vars(&[("CONSUL_HTTP_TOKEN", "b1gs3cr3t-token")])).expect("c");
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("b1gs3cr3t"), "{dbg}");
    }
}
