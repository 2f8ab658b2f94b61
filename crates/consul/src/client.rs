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
//!
//! # Layout
//!
//! This file holds the connection bound and one method per endpoint, so
//! what converge asks Consul for reads in one place. The rest is split by
//! what it owns, each private and re-exported here where public:
//!
//! - `query`: the options of a read and the metadata of its answer;
//! - `records`: the public data types (check, KV entry, agent identity);
//! - `wire`: Consul's JSON shapes and their conversion, never public;
//! - `connection`: the HTTP client with its token header, TLS and gzip;
//! - `lanes`: the HTTP clients a request may go through (one HTTP/1.1
//!   pool, or HTTP/2 connections each carrying many requests);
//! - `session`: sessions and the KV writes tied to them (node reports);
//! - `transport`: the one way a request is sent (slots, timeouts, the
//!   stale fallback, decoding), so no endpoint can bypass the bound.

mod agent;
mod connection;
mod lanes;
mod query;
mod records;
mod session;
mod transport;
mod wire;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use converge_model::Instance;
use reqwest::Url;

use crate::config::Config;
use crate::error::Error;
use transport::{kv_segments, Transport};

pub use agent::CheckStatus;
pub use connection::POOL_IDLE_TIMEOUT;
pub use lanes::{H2_CONNECTIONS, H2_STREAMS};
pub use query::{Consistency, HealthQuery, QueryMeta, QueryOptions, Response};
pub use records::{AgentSelf, HealthCheck, KvPair};

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
/// When the agent speaks HTTP/2 (an `https` address; see `lanes`), a
/// request is a stream, not a connection: each of [`H2_CONNECTIONS`] lanes
/// keeps one connection, for as long as the agent keeps it open, carrying
/// at most [`H2_STREAMS`] requests, so thousands of long polls fit in 28
/// connections.
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

/// A Consul HTTP API client. Cheap to clone; clones share one connection
/// pool.
#[derive(Clone)]
pub struct Client {
    transport: Transport,
    max_requests: usize,
    has_token: bool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.transport.base().as_str())
            .field("datacenter", &self.transport.datacenter())
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
        Ok(Self {
            transport: Transport::new(config, max_requests)?,
            max_requests,
            has_token,
        })
    }

    /// Requests sent so far by this client and its clones (for load
    /// measurements); one waiting for a slot is not sent yet.
    pub fn requests_sent(&self) -> u64 {
        self.transport.requests_sent()
    }

    /// Most requests this client and its clones have in flight at once
    /// over HTTP/1.1.
    pub fn max_requests(&self) -> usize {
        self.max_requests
    }

    /// How many requests, long polls included, this client and its clones
    /// can have in flight at once: [`Client::max_requests`] over HTTP/1.1,
    /// [`H2_CONNECTIONS`] × [`H2_STREAMS`] when the agent speaks HTTP/2
    /// (asked once, by the first request to an `https` address).
    pub async fn capacity(&self) -> Result<usize, Error> {
        self.transport.capacity().await
    }

    /// Whether requests share connections: the agent speaks HTTP/2 (asked
    /// once, by the first request to an `https` address).
    pub async fn multiplexed(&self) -> Result<bool, Error> {
        self.transport.multiplexed().await
    }

    /// The agent's base URL.
    pub fn address(&self) -> &Url {
        self.transport.base()
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
            .transport
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
        self.transport
            .read(&["v1", "health", "state", state], &endpoint, &[], opts)
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
            .transport
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
        let resp: Response<Option<Vec<wire::KvPair>>> = self
            .transport
            .read_opt(&segments, &endpoint, &[], opts)
            .await?;
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
            .transport
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
        let params: Vec<(&str, String)> = cas.map(|c| ("cas", c.to_string())).into_iter().collect();
        self.transport
            .put(&kv_segments(key), &endpoint, &params, value.to_vec())
            .await
    }

    /// `DELETE /v1/kv/:key`, with `?cas=` when given (then only if the
    /// key's modify index still is that). Returns whether Consul deleted
    /// it; deleting an absent key succeeds.
    pub async fn kv_delete(&self, key: &str, cas: Option<u64>) -> Result<bool, Error> {
        let endpoint = format!("/v1/kv/{key}");
        let params: Vec<(&str, String)> = cas.map(|c| ("cas", c.to_string())).into_iter().collect();
        self.transport
            .delete(&kv_segments(key), &endpoint, &params)
            .await
    }

    /// `/v1/agent/self`: who the agent is.
    pub async fn agent_self(&self) -> Result<AgentSelf, Error> {
        let resp: Response<wire::AgentSelf> = self
            .transport
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
            .transport
            .read(
                &["v1", "status", "leader"],
                "/v1/status/leader",
                &[],
                &QueryOptions::default(),
            )
            .await?;
        Ok(resp.value)
    }
}
