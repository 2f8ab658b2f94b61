//! The HTTP client: one method per Consul endpoint converge uses.
//!
//! Every read takes [`QueryOptions`] (blocking index and wait, consistency
//! mode, datacenter) and returns a [`Response`] carrying Consul's
//! [`QueryMeta`]. The client itself never retries or sleeps: pacing belongs
//! to the caller ([`BlockingQuery`](crate::BlockingQuery), the
//! [source](crate::source)), which knows whether waiting is useful.
//!
//! The things the client does enforce because only it can see them:
//!
//! - **Connections are bounded.** At most `max_requests` requests (long
//!   polls included) are in flight at once, however many tasks share the
//!   client, and at most as many idle connections are kept; see
//!   [`MAX_CONNECTIONS`] for why that bounds the connections to Consul.
//! - **Request timeouts follow `wait`.** A blocking request may legitimately
//!   take `wait` plus up to `wait/16` of Consul's jitter, so its timeout is
//!   `wait + wait/16 +` [`Config::blocking_margin`]; plain reads use
//!   [`Config::request_timeout`].
//! - **Stale reads are bounded.** With [`Consistency::Stale`] any server may
//!   answer; when its `X-Consul-LastContact` with the leader is older than
//!   `max_stale`, the answer is thrown away and the read is repeated as a
//!   `consistent` read (non-blocking, so the fallback adds one round trip,
//!   not a second `wait`).
//! - **ACL-filtered health is an error.** Consul answers a health query the
//!   token may not fully read with a *shorter list* and
//!   `X-Consul-Results-Filtered-By-ACLs: true`, not with a 403. Returning
//!   that list would turn "not allowed to see" into "no instances", so
//!   [`Client::health_service`] reports it as
//!   [`Error::PermissionDenied`]. Consul does not set that header for the
//!   anonymous token, so with no token configured and
//!   `X-Consul-Default-Acl-Policy: deny`, an *empty* health answer is
//!   reported the same way (a non-empty one is used: the anonymous token
//!   evidently may read the service).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use converge_model::{Health, Instance};
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::config::Config;
use crate::error::Error;

/// Most TCP connections a [`Client`] and its clones hold to Consul, whose
/// default limit is 200 per client address, shared with everything else
/// on the node.
///
/// It holds by construction, whatever the callers do, but for the one
/// moment described below: a connection either carries a request or sits
/// idle in the pool. Every request, long poll or read, holds one of
/// `max_requests` ≤ [`MAX_REQUESTS`] slots from before it is sent until
/// its body has been read, and the pool keeps at most `max_requests` idle
/// connections, so there are at most `2 × MAX_REQUESTS` = 32.
///
/// One moment falls outside that count: hyper hands a finished connection
/// back to the pool from a spawned task, and a request starting before that
/// task runs opens a new one; whichever connection the pool then has no
/// room for is closed. The overshoot lasts one task wake-up and needs a
/// request to start in it, which is why the source does not run at the
/// bound (see [`source`](crate::source)).
pub const MAX_CONNECTIONS: usize = 32;

/// Most requests a client lets through at once
/// ([`Client::with_max_requests`] clamps to it).
pub const MAX_REQUESTS: usize = MAX_CONNECTIONS / 2;

/// Per-request options of a read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryOptions {
    /// `?index=`: block until Consul's index for this data passes it.
    /// 0 means a plain read.
    pub index: u64,
    /// `?wait=`: longest time to block (Consul caps it at 10 minutes).
    pub wait: Option<Duration>,
    /// Which servers may answer.
    pub consistency: Consistency,
    /// `?dc=`, overriding [`Config::datacenter`].
    pub datacenter: Option<String>,
}

/// Consul's consistency modes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Consistency {
    /// The leader answers, usually without a quorum round trip.
    #[default]
    Default,
    /// The leader answers after confirming leadership (`?consistent`).
    Consistent,
    /// Any server answers (`?stale`); an answer whose server has not heard
    /// from the leader for longer than `max_stale` is re-read consistently.
    Stale {
        /// Oldest acceptable `X-Consul-LastContact`.
        max_stale: Duration,
    },
}

/// What Consul said about an answer, from its response headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryMeta {
    /// `X-Consul-Index` (0 if absent).
    pub index: u64,
    /// `X-Consul-LastContact`: how long since the answering server heard
    /// from the leader.
    pub last_contact: Duration,
    /// `X-Consul-KnownLeader`.
    pub known_leader: bool,
    /// `X-Consul-Results-Filtered-By-ACLs`: the token could not see
    /// everything.
    pub filtered_by_acls: bool,
    /// `X-Consul-Default-Acl-Policy: deny`: ACLs are on and deny by
    /// default.
    pub default_acl_deny: bool,
    /// A stale answer was too old and this one came from a consistent
    /// re-read.
    pub consistent_fallback: bool,
}

/// An answer and its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response<T> {
    /// The decoded body.
    pub value: T,
    /// Consul's headers.
    pub meta: QueryMeta,
}

/// Filters of `/v1/health/service/:name`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthQuery {
    /// `?passing`: only instances whose checks all pass.
    pub passing_only: bool,
    /// `?tag=` (repeatable): only instances carrying every tag.
    pub tags: Vec<String>,
    /// `?filter=`: a Consul filter expression.
    pub filter: Option<String>,
}

/// One health check, as `/v1/health/state/:state` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthCheck {
    /// Node the check runs on.
    pub node: String,
    /// Check id, unique per node.
    #[serde(rename = "CheckID")]
    pub check_id: String,
    /// `passing`, `warning` or `critical`.
    pub status: String,
    /// Service instance the check belongs to; empty for a node check.
    #[serde(rename = "ServiceID", default)]
    pub service_id: String,
    /// Service the check belongs to; empty for a node check.
    #[serde(default)]
    pub service_name: String,
    /// Raft index of the check's last change.
    #[serde(default)]
    pub modify_index: u64,
}

impl HealthCheck {
    /// The status as converge's [`Health`].
    pub fn health(&self) -> Health {
        status_health(&self.status)
    }
}

/// One KV entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvPair {
    /// Full key.
    pub key: String,
    /// Value bytes (decoded from Consul's base64).
    pub value: Vec<u8>,
    /// Opaque client flags.
    pub flags: u64,
    /// Index that created the key.
    pub create_index: u64,
    /// Index of the last write: the `cas` value for the next write.
    pub modify_index: u64,
    /// Session holding a lock on the key, if any.
    pub session: Option<String>,
}

/// What converge reads from `/v1/agent/self`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSelf {
    /// The agent's datacenter.
    pub datacenter: String,
    /// The agent's node name.
    pub node_name: String,
    /// Consul version.
    pub version: String,
    /// Whether the agent is a server.
    pub server: bool,
}

/// A Consul HTTP API client. Cheap to clone; clones share one connection
/// pool.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    slots: Arc<Semaphore>,
    max_requests: usize,
    base: Url,
    datacenter: Option<String>,
    request_timeout: Duration,
    blocking_margin: Duration,
    requests: Arc<AtomicU64>,
    has_token: bool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .field("datacenter", &self.datacenter)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Builds a client: reads TLS files, prepares the token header. It
    /// lets [`MAX_REQUESTS`] requests through at once.
    pub fn new(config: Config) -> Result<Self, Error> {
        Self::with_max_requests(config, MAX_REQUESTS)
    }

    /// Like [`Client::new`], letting at most `max_requests` (clamped to
    /// 1..=[`MAX_REQUESTS`]) requests through at once and keeping at most
    /// as many idle connections; further requests wait for a slot.
    pub fn with_max_requests(config: Config, max_requests: usize) -> Result<Self, Error> {
        let max_requests = max_requests.clamp(1, MAX_REQUESTS);
        let has_token = config.token.is_some();
        let mut headers = HeaderMap::new();
        if let Some(token) = &config.token {
            let mut value = HeaderValue::from_str(token.expose()).map_err(|_| {
                Error::Config("the Consul token contains characters not allowed in a header".into())
            })?;
            value.set_sensitive(true);
            headers.insert("X-Consul-Token", value);
        }
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .default_headers(headers)
            .connect_timeout(config.connect_timeout)
            .pool_max_idle_per_host(max_requests)
            .pool_idle_timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .http1_only()
            .user_agent(concat!("converge/", env!("CARGO_PKG_VERSION")));
        let tls = &config.tls;
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
        let http = builder
            .build()
            .map_err(|e| Error::Config(format!("cannot build HTTP client: {e}")))?;
        Ok(Self {
            http,
            slots: Arc::new(Semaphore::new(max_requests)),
            max_requests,
            base: config.address,
            datacenter: config.datacenter,
            request_timeout: config.request_timeout,
            blocking_margin: config.blocking_margin,
            requests: Arc::new(AtomicU64::new(0)),
            has_token,
        })
    }

    /// Requests sent so far by this client and its clones (for load
    /// measurements); one waiting for a slot is not sent yet.
    pub fn requests_sent(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Most requests this client and its clones have in flight at once.
    pub fn max_requests(&self) -> usize {
        self.max_requests
    }

    /// The agent's base URL.
    pub fn address(&self) -> &Url {
        &self.base
    }

    /// `/v1/health/service/:name`: the service's instances with their
    /// aggregated health.
    ///
    /// An instance's address is the service address, or the node's when
    /// the service has none; its health is the worst of the node's and the
    /// service's checks. An answer Consul filtered by ACL is an
    /// [`Error::PermissionDenied`], never a shorter list.
    pub async fn health_service(
        &self,
        name: &str,
        query: &HealthQuery,
        opts: &QueryOptions,
    ) -> Result<Response<Vec<Instance>>, Error> {
        let endpoint = format!("/v1/health/service/{name}");
        let mut params: Vec<(&str, String)> = Vec::new();
        if query.passing_only {
            params.push(("passing", String::new()));
        }
        for tag in &query.tags {
            params.push(("tag", tag.clone()));
        }
        if let Some(filter) = &query.filter {
            params.push(("filter", filter.clone()));
        }
        let resp: Response<Vec<wire::HealthEntry>> = self
            .read(&["v1", "health", "service", name], &endpoint, &params, opts)
            .await?;
        if resp.meta.filtered_by_acls {
            return Err(Error::PermissionDenied {
                endpoint,
                message: format!(
                    "the token may not read service {name:?} or some of its nodes; Consul hid \
                     instances (X-Consul-Results-Filtered-By-ACLs), so the answer is incomplete \
                     and was not used"
                ),
            });
        }
        // Without a token Consul filters silently: the anonymous token's
        // empty answer carries no filtered header. Under a deny-by-default
        // policy, empty is then indistinguishable from "not allowed".
        if !self.has_token && resp.meta.default_acl_deny && resp.value.is_empty() {
            return Err(Error::PermissionDenied {
                endpoint,
                message: format!(
                    "no ACL token is configured and Consul denies by default, so the empty answer \
                     for service {name:?} may only mean the anonymous token cannot read it"
                ),
            });
        }
        let instances = resp
            .value
            .into_iter()
            .map(wire::HealthEntry::into_instance)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|message| Error::Decode {
                endpoint: endpoint.clone(),
                message,
            })?;
        Ok(Response {
            value: instances,
            meta: resp.meta,
        })
    }

    /// `/v1/health/state/:state` (`any`, `passing`, `warning`,
    /// `critical`): every check in that state.
    pub async fn health_state(
        &self,
        state: &str,
        opts: &QueryOptions,
    ) -> Result<Response<Vec<HealthCheck>>, Error> {
        let endpoint = format!("/v1/health/state/{state}");
        self.read(&["v1", "health", "state", state], &endpoint, &[], opts)
            .await
    }

    /// `/v1/catalog/services`: service names and the union of their tags.
    /// Services the token may not read are absent (see
    /// [`QueryMeta::filtered_by_acls`]).
    pub async fn catalog_services(
        &self,
        opts: &QueryOptions,
    ) -> Result<Response<BTreeMap<String, Vec<String>>>, Error> {
        let resp: Response<BTreeMap<String, Option<Vec<String>>>> = self
            .read(
                &["v1", "catalog", "services"],
                "/v1/catalog/services",
                &[],
                opts,
            )
            .await?;
        Ok(Response {
            value: resp
                .value
                .into_iter()
                .map(|(k, v)| (k, v.unwrap_or_default()))
                .collect(),
            meta: resp.meta,
        })
    }

    /// `GET /v1/kv/:key`: one key, `None` if absent.
    pub async fn kv_get(
        &self,
        key: &str,
        opts: &QueryOptions,
    ) -> Result<Response<Option<KvPair>>, Error> {
        let endpoint = format!("/v1/kv/{key}");
        let segments = kv_segments(key);
        let resp: Response<Option<Vec<wire::KvPair>>> =
            self.read_opt(&segments, &endpoint, &[], opts).await?;
        let pair = match resp.value.and_then(|v| v.into_iter().next()) {
            Some(p) => Some(p.decode().map_err(|message| Error::Decode {
                endpoint: endpoint.clone(),
                message,
            })?),
            None => None,
        };
        Ok(Response {
            value: pair,
            meta: resp.meta,
        })
    }

    /// `GET /v1/kv/:prefix?recurse`: every key under a prefix, in key
    /// order (empty if none).
    pub async fn kv_list(
        &self,
        prefix: &str,
        opts: &QueryOptions,
    ) -> Result<Response<Vec<KvPair>>, Error> {
        let endpoint = format!("/v1/kv/{prefix}");
        let segments = kv_segments(prefix);
        let resp: Response<Option<Vec<wire::KvPair>>> = self
            .read_opt(&segments, &endpoint, &[("recurse", String::new())], opts)
            .await?;
        let mut pairs = resp
            .value
            .unwrap_or_default()
            .into_iter()
            .map(wire::KvPair::decode)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|message| Error::Decode {
                endpoint: endpoint.clone(),
                message,
            })?;
        pairs.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Response {
            value: pairs,
            meta: resp.meta,
        })
    }

    /// `PUT /v1/kv/:key`, with `?cas=` when given (`Some(0)`: only if the
    /// key does not exist). Returns whether Consul applied the write.
    pub async fn kv_put(&self, key: &str, value: &[u8], cas: Option<u64>) -> Result<bool, Error> {
        let endpoint = format!("/v1/kv/{key}");
        let mut url = self.url(&kv_segments(key));
        {
            let mut q = url.query_pairs_mut();
            if let Some(cas) = cas {
                q.append_pair("cas", &cas.to_string());
            }
            if let Some(dc) = &self.datacenter {
                q.append_pair("dc", dc);
            }
        }
        let (status, _, body) = self
            .send(
                Method::PUT,
                url,
                &endpoint,
                self.request_timeout,
                Some(value.to_vec()),
            )
            .await?;
        if status != StatusCode::OK {
            return Err(Error::from_status(&endpoint, status, &body_text(&body)));
        }
        decode(&endpoint, &body)
    }

    /// `/v1/agent/self`: who the agent is.
    pub async fn agent_self(&self) -> Result<AgentSelf, Error> {
        let resp: Response<wire::AgentSelf> = self
            .read(
                &["v1", "agent", "self"],
                "/v1/agent/self",
                &[],
                &QueryOptions::default(),
            )
            .await?;
        let c = resp.value.config;
        Ok(AgentSelf {
            datacenter: c.datacenter,
            node_name: c.node_name,
            version: c.version,
            server: c.server,
        })
    }

    /// `/v1/status/leader`: the Raft leader's address, empty while there
    /// is none.
    pub async fn status_leader(&self) -> Result<String, Error> {
        let resp: Response<String> = self
            .read(
                &["v1", "status", "leader"],
                "/v1/status/leader",
                &[],
                &QueryOptions::default(),
            )
            .await?;
        Ok(resp.value)
    }

    /// A read whose 404 is an error.
    async fn read<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        endpoint: &str,
        params: &[(&str, String)],
        opts: &QueryOptions,
    ) -> Result<Response<T>, Error> {
        let resp: Response<Option<T>> = self
            .read_inner(segments, endpoint, params, opts, false)
            .await?;
        match resp.value {
            Some(value) => Ok(Response {
                value,
                meta: resp.meta,
            }),
            None => Err(Error::Status {
                endpoint: endpoint.to_string(),
                status: 404,
                body: String::new(),
            }),
        }
    }

    /// A read whose 404 means "absent" (KV).
    async fn read_opt<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        endpoint: &str,
        params: &[(&str, String)],
        opts: &QueryOptions,
    ) -> Result<Response<Option<T>>, Error> {
        self.read_inner(segments, endpoint, params, opts, true)
            .await
    }

    async fn read_inner<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        endpoint: &str,
        params: &[(&str, String)],
        opts: &QueryOptions,
        not_found_is_none: bool,
    ) -> Result<Response<Option<T>>, Error> {
        let first = self
            .read_once(segments, endpoint, params, opts, not_found_is_none)
            .await?;
        let Consistency::Stale { max_stale } = opts.consistency else {
            return Ok(first);
        };
        if first.meta.last_contact <= max_stale {
            return Ok(first);
        }
        tracing::debug!(
            endpoint,
            last_contact_ms = first.meta.last_contact.as_millis() as u64,
            max_stale_ms = max_stale.as_millis() as u64,
            "stale answer too old; re-reading consistently"
        );
        let fallback = QueryOptions {
            index: 0,
            wait: None,
            consistency: Consistency::Consistent,
            datacenter: opts.datacenter.clone(),
        };
        let mut again = self
            .read_once(segments, endpoint, params, &fallback, not_found_is_none)
            .await?;
        again.meta.consistent_fallback = true;
        Ok(again)
    }

    async fn read_once<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        endpoint: &str,
        params: &[(&str, String)],
        opts: &QueryOptions,
        not_found_is_none: bool,
    ) -> Result<Response<Option<T>>, Error> {
        let mut url = self.url(segments);
        let timeout = self.timeout_for(opts);
        {
            let mut q = url.query_pairs_mut();
            for (k, v) in params {
                if v.is_empty() {
                    q.append_key_only(k);
                } else {
                    q.append_pair(k, v);
                }
            }
            if let Some(dc) = opts.datacenter.as_ref().or(self.datacenter.as_ref()) {
                q.append_pair("dc", dc);
            }
            match opts.consistency {
                Consistency::Default => {}
                Consistency::Consistent => {
                    q.append_key_only("consistent");
                }
                Consistency::Stale { .. } => {
                    q.append_key_only("stale");
                }
            }
            if opts.index > 0 {
                q.append_pair("index", &opts.index.to_string());
                if let Some(wait) = opts.wait {
                    q.append_pair("wait", &format!("{}ms", wait.as_millis().max(1)));
                }
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        let (status, headers, body) = self.send(Method::GET, url, endpoint, timeout, None).await?;
        let meta = query_meta(&headers);
        if status == StatusCode::NOT_FOUND && not_found_is_none {
            return Ok(Response { value: None, meta });
        }
        if status != StatusCode::OK {
            return Err(Error::from_status(endpoint, status, &body_text(&body)));
        }
        Ok(Response {
            value: Some(decode(endpoint, &body)?),
            meta,
        })
    }

    /// `wait + wait/16 + margin` for a blocking read, else the plain
    /// request timeout.
    fn timeout_for(&self, opts: &QueryOptions) -> Duration {
        match opts.wait {
            Some(wait) if opts.index > 0 => wait + wait / 16 + self.blocking_margin,
            _ => self.request_timeout,
        }
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.clear();
            path.extend(segments);
        }
        url
    }

    async fn send(
        &self,
        method: Method,
        url: Url,
        endpoint: &str,
        timeout: Duration,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, HeaderMap, Vec<u8>), Error> {
        let mut req = self.http.request(method, url).timeout(timeout);
        if let Some(body) = body {
            req = req.body(body);
        }
        let ms = timeout.as_millis();
        // Held until the body is read: see MAX_CONNECTIONS.
        let _slot = self
            .slots
            .acquire()
            .await
            .expect("the client never closes its request slots");
        self.requests.fetch_add(1, Ordering::Relaxed);
        let resp = req
            .send()
            .await
            .map_err(|e| Error::from_transport(endpoint, ms, e))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .bytes()
            .await
            .map_err(|e| Error::from_transport(endpoint, ms, e))?;
        Ok((status, headers, body.to_vec()))
    }
}

/// `a/b/c` → `["v1", "kv", "a", "b", "c"]`; a trailing `/` is kept as an
/// empty last segment.
fn kv_segments(key: &str) -> Vec<&str> {
    let mut segments = vec!["v1", "kv"];
    segments.extend(key.split('/'));
    segments
}

fn read_pem(what: &str, path: &std::path::Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path)
        .map_err(|e| Error::Config(format!("cannot read {what} {}: {e}", path.display())))
}

fn body_text(body: &[u8]) -> String {
    String::from_utf8_lossy(body).into_owned()
}

fn decode<T: DeserializeOwned>(endpoint: &str, body: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(body).map_err(|e| Error::Decode {
        endpoint: endpoint.to_string(),
        message: e.to_string(),
    })
}

fn query_meta(headers: &HeaderMap) -> QueryMeta {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    QueryMeta {
        index: get("X-Consul-Index")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        last_contact: Duration::from_millis(
            get("X-Consul-LastContact")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        ),
        known_leader: get("X-Consul-KnownLeader") == Some("true"),
        filtered_by_acls: get("X-Consul-Results-Filtered-By-ACLs") == Some("true"),
        default_acl_deny: get("X-Consul-Default-Acl-Policy") == Some("deny"),
        consistent_fallback: false,
    }
}

/// Consul's check status → converge's health. Anything unknown counts as
/// critical: an instance is never healthier than converge can tell.
pub(crate) fn status_health(status: &str) -> Health {
    match status {
        "passing" => Health::Passing,
        "warning" => Health::Warning,
        _ => Health::Critical,
    }
}

/// Consul's JSON shapes, kept private: the public API speaks converge's
/// model types.
mod wire {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "PascalCase")]
    pub(super) struct HealthEntry {
        pub node: Node,
        pub service: Service,
        #[serde(default)]
        pub checks: Option<Vec<Check>>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "PascalCase")]
    pub(super) struct Node {
        pub node: String,
        #[serde(default)]
        pub address: String,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "PascalCase")]
    pub(super) struct Service {
        #[serde(rename = "ID")]
        pub id: String,
        #[serde(default)]
        pub tags: Option<Vec<String>>,
        #[serde(default)]
        pub address: String,
        #[serde(default)]
        pub meta: Option<BTreeMap<String, String>>,
        pub port: i64,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "PascalCase")]
    pub(super) struct Check {
        pub status: String,
    }

    impl HealthEntry {
        pub(super) fn into_instance(self) -> Result<Instance, String> {
            let port = u16::try_from(self.service.port).map_err(|_| {
                format!(
                    "service instance {:?} on node {:?} has port {}, outside 0..=65535",
                    self.service.id, self.node.node, self.service.port
                )
            })?;
            let address = if self.service.address.is_empty() {
                self.node.address
            } else {
                self.service.address
            };
            let health = self
                .checks
                .unwrap_or_default()
                .iter()
                .map(|c| status_health(&c.status))
                .max()
                .unwrap_or(Health::Passing);
            Ok(Instance {
                id: self.service.id,
                node: self.node.node,
                address,
                port,
                tags: self.service.tags.unwrap_or_default().into_iter().collect(),
                meta: self.service.meta.unwrap_or_default(),
                health,
            })
        }
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "PascalCase")]
    pub(super) struct KvPair {
        pub key: String,
        #[serde(default)]
        pub value: Option<String>,
        #[serde(default)]
        pub flags: u64,
        #[serde(default)]
        pub create_index: u64,
        #[serde(default)]
        pub modify_index: u64,
        #[serde(default)]
        pub session: Option<String>,
    }

    impl KvPair {
        pub(super) fn decode(self) -> Result<super::KvPair, String> {
            let value = match self.value {
                Some(v) => base64::engine::general_purpose::STANDARD
                    .decode(v.as_bytes())
                    .map_err(|e| format!("value of key {:?} is not base64: {e}", self.key))?,
                None => Vec::new(),
            };
            Ok(super::KvPair {
                key: self.key,
                value,
                flags: self.flags,
                create_index: self.create_index,
                modify_index: self.modify_index,
                session: self.session.filter(|s| !s.is_empty()),
            })
        }
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "PascalCase")]
    pub(super) struct AgentSelf {
        pub config: AgentConfig,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "PascalCase")]
    pub(super) struct AgentConfig {
        pub datacenter: String,
        pub node_name: String,
        #[serde(default)]
        pub version: String,
        #[serde(default)]
        pub server: bool,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use converge_model::Secret;

    fn entry(json: &str) -> Instance {
        let e: wire::HealthEntry = serde_json::from_str(json).expect("json");
        e.into_instance().expect("instance")
    }

    const ENTRY: &str = r#"{
        "Node": {"Node": "n1", "Address": "10.0.0.1", "Datacenter": "dc1"},
        "Service": {"ID": "web-1", "Service": "web", "Tags": ["b", "a"], "Address": "",
                    "Meta": {"v": "1"}, "Port": 8080},
        "Checks": [
            {"Node": "n1", "CheckID": "serfHealth", "Status": "passing", "ServiceID": ""},
            {"Node": "n1", "CheckID": "service:web-1", "Status": "STATUS", "ServiceID": "web-1"}
        ]}"#;

    #[test]
    fn instance_falls_back_to_node_address_and_sorts_tags() {
        let i = entry(&ENTRY.replace("STATUS", "passing"));
        assert_eq!(i.address, "10.0.0.1");
        assert_eq!(i.port, 8080);
        assert_eq!(i.tags.iter().collect::<Vec<_>>(), vec!["a", "b"]);
        assert_eq!(i.meta.get("v").map(String::as_str), Some("1"));
        assert_eq!(i.health, Health::Passing);
        let i = entry(&ENTRY.replace(r#""Address": """#, r#""Address": "192.0.2.7""#));
        assert_eq!(i.address, "192.0.2.7");
    }

    #[test]
    fn health_is_the_worst_check_and_unknown_is_critical() {
        assert_eq!(
            entry(&ENTRY.replace("STATUS", "warning")).health,
            Health::Warning
        );
        assert_eq!(
            entry(&ENTRY.replace("STATUS", "critical")).health,
            Health::Critical
        );
        assert_eq!(
            entry(&ENTRY.replace("STATUS", "maintenance")).health,
            Health::Critical
        );
        // A failing node check makes the instance critical too.
        let node_down = ENTRY.replace("STATUS", "passing").replacen(
            r#""Status": "passing""#,
            r#""Status": "critical""#,
            1,
        );
        assert_eq!(entry(&node_down).health, Health::Critical);
    }

    #[test]
    fn null_tags_meta_checks_are_empty() {
        let json = r#"{"Node": {"Node": "n", "Address": "h"},
            "Service": {"ID": "s", "Tags": null, "Address": "", "Meta": null, "Port": 1},
            "Checks": null}"#;
        let i = entry(json);
        assert!(i.tags.is_empty() && i.meta.is_empty());
        assert_eq!(i.health, Health::Passing);
    }

    #[test]
    fn out_of_range_port_is_refused() {
        let json = ENTRY.replace("8080", "70000");
        let e: wire::HealthEntry = serde_json::from_str(&json).expect("json");
        let err = e.into_instance().expect_err("port");
        assert!(err.contains("70000") && err.contains("web-1"), "{err}");
    }

    #[test]
    fn kv_values_are_base64_decoded() {
        let p: wire::KvPair = serde_json::from_str(
            r#"{"Key": "fleet/lb1", "Value": "aGVsbG8=", "Flags": 0, "CreateIndex": 3, "ModifyIndex": 9}"#,
        )
        .expect("json");
        let p = p.decode().expect("decode");
        assert_eq!(p.value, b"hello");
        assert_eq!(p.modify_index, 9);
        assert_eq!(p.session, None);
    }

    #[test]
    fn blocking_timeout_exceeds_wait_plus_consul_jitter() {
        let client = Client::new(Config::new("127.0.0.1:1").expect("config")).expect("client");
        let wait = Duration::from_secs(160);
        let opts = QueryOptions {
            index: 5,
            wait: Some(wait),
            ..QueryOptions::default()
        };
        let t = client.timeout_for(&opts);
        assert!(t > wait + wait / 16, "{t:?}");
        let plain = QueryOptions::default();
        assert_eq!(client.timeout_for(&plain), Duration::from_secs(15));
    }

    #[test]
    fn request_limit_is_clamped_to_what_the_connection_bound_allows() {
        let config = || Config::new("127.0.0.1:1").expect("config");
        for (asked, want) in [
            (0, 1),
            (3, 3),
            (MAX_REQUESTS, MAX_REQUESTS),
            (1000, MAX_REQUESTS),
        ] {
            let client = Client::with_max_requests(config(), asked).expect("client");
            assert_eq!(client.max_requests(), want, "asked for {asked}");
        }
        assert_eq!(
            Client::new(config()).expect("client").max_requests(),
            MAX_REQUESTS
        );
    }

    #[test]
    fn path_segments_are_escaped() {
        let client = Client::new(Config::new("127.0.0.1:8500").expect("config")).expect("client");
        let url = client.url(&["v1", "health", "service", "we b?x"]);
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:8500/v1/health/service/we%20b%3Fx"
        );
        let url = client.url(&kv_segments("fleet/lb1/"));
        assert_eq!(url.as_str(), "http://127.0.0.1:8500/v1/kv/fleet/lb1/");
    }

    #[test]
    fn debug_of_client_never_shows_the_token() {
        let config = Config::new("127.0.0.1:8500")
            .expect("config")
            .with_token(Secret::new("t0ps3cret-abc"));
        let client = Client::new(config).expect("client");
        let dbg = format!("{client:?}");
        assert!(!dbg.contains("t0ps3cret"), "{dbg}");
    }

    #[test]
    fn meta_headers_are_parsed() {
        let mut h = HeaderMap::new();
        h.insert("X-Consul-Index", HeaderValue::from_static("77"));
        h.insert("X-Consul-LastContact", HeaderValue::from_static("1500"));
        h.insert("X-Consul-KnownLeader", HeaderValue::from_static("true"));
        h.insert(
            "X-Consul-Results-Filtered-By-ACLs",
            HeaderValue::from_static("true"),
        );
        let m = query_meta(&h);
        assert_eq!(m.index, 77);
        assert_eq!(m.last_contact, Duration::from_millis(1500));
        assert!(m.known_leader && m.filtered_by_acls);
        assert_eq!(query_meta(&HeaderMap::new()).index, 0);
    }

    /// A stand-in for the agent, for the answers a dev agent cannot give on
    /// demand: a stale read whose server lost the leader long ago (a dev
    /// agent is its own leader, so its `X-Consul-LastContact` is always 0)
    /// and a 200 whose body is not Consul's (a proxy in the way). A
    /// loopback listener owned by the test that answers the n-th request
    /// with the n-th scripted answer and records each request head.
    /// Everything a real agent can answer, a 403 included, is tested
    /// against one in `tests/`.
    async fn stand_in_agent(
        answers: Vec<(&'static str, &'static str, &'static str)>,
    ) -> (String, tokio::task::JoinHandle<Vec<String>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let task = tokio::spawn(async move {
            let mut seen = Vec::new();
            for (status, headers, body) in answers {
                let (mut sock, _) = listener.accept().await.expect("accept");
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = sock.read(&mut chunk).await.expect("read");
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                seen.push(String::from_utf8_lossy(&buf).into_owned());
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{headers}\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                sock.write_all(resp.as_bytes()).await.expect("write");
            }
            seen
        });
        (addr, task)
    }

    #[tokio::test]
    async fn stale_answer_older_than_max_stale_is_reread_consistently() {
        let (addr, server) = stand_in_agent(vec![
            (
                "200 OK",
                "X-Consul-Index: 10\r\nX-Consul-LastContact: 9000\r\n",
                r#"{"old": []}"#,
            ),
            (
                "200 OK",
                "X-Consul-Index: 12\r\nX-Consul-LastContact: 0\r\n",
                r#"{"new": []}"#,
            ),
        ])
        .await;
        let client = Client::new(Config::new(&addr).expect("config")).expect("client");
        let opts = QueryOptions {
            consistency: Consistency::Stale {
                max_stale: Duration::from_secs(5),
            },
            ..QueryOptions::default()
        };
        let resp = client.catalog_services(&opts).await.expect("services");
        assert!(resp.value.contains_key("new"), "{resp:?}");
        assert!(resp.meta.consistent_fallback);
        assert_eq!(resp.meta.index, 12);
        let seen = server.await.expect("server");
        assert!(
            seen[0].starts_with("GET /v1/catalog/services?stale "),
            "{}",
            seen[0]
        );
        assert!(
            seen[1].starts_with("GET /v1/catalog/services?consistent "),
            "{}",
            seen[1]
        );
    }

    /// The other side of the test above, on the same stand-in so the two
    /// differ only in `X-Consul-LastContact`. (The real agent's stale
    /// reads are in `tests/client.rs`.)
    #[tokio::test]
    async fn fresh_enough_stale_answer_is_used() {
        let (addr, server) = stand_in_agent(vec![(
            "200 OK",
            "X-Consul-Index: 10\r\nX-Consul-LastContact: 20\r\n",
            r#"{"web": ["a"]}"#,
        )])
        .await;
        let client = Client::new(Config::new(&addr).expect("config")).expect("client");
        let opts = QueryOptions {
            consistency: Consistency::Stale {
                max_stale: Duration::from_secs(5),
            },
            index: 9,
            wait: Some(Duration::from_secs(30)),
            ..QueryOptions::default()
        };
        let resp = client.catalog_services(&opts).await.expect("services");
        assert!(!resp.meta.consistent_fallback);
        let seen = server.await.expect("server");
        assert!(
            seen[0].starts_with("GET /v1/catalog/services?stale&index=9&wait=30000ms "),
            "{}",
            seen[0]
        );
    }

    #[tokio::test]
    async fn garbage_is_a_retryable_decode_error() {
        let (addr, _server) = stand_in_agent(vec![(
            "200 OK",
            "X-Consul-Index: 3\r\n",
            "<html>proxy</html>",
        )])
        .await;
        let client = Client::new(Config::new(&addr).expect("config")).expect("client");
        let err = client
            .health_service("web", &HealthQuery::default(), &QueryOptions::default())
            .await
            .expect_err("garbage");
        assert!(matches!(err, Error::Decode { .. }), "{err:?}");
        assert!(err.is_retryable());
    }

    #[tokio::test]
    async fn refused_connection_is_retryable() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let client = Client::new(Config::new(&format!("127.0.0.1:{port}")).expect("config"))
            .expect("client");
        let err = client.status_leader().await.expect_err("refused");
        assert!(matches!(err, Error::Connect { .. }), "{err:?}");
        assert!(err.is_retryable());
        assert!(err.to_string().contains("/v1/status/leader"), "{err}");
    }
}
