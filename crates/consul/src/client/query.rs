//! What goes with every read: the options a caller sets ([`QueryOptions`],
//! [`Consistency`], [`HealthQuery`]) and what Consul says back about the
//! answer ([`QueryMeta`], carried by every [`Response`]).
//!
//! These are plain data so the [blocking-query rules](crate::blocking) and
//! the source can be driven and tested without a network; the one function
//! that touches HTTP, `query_meta`, only reads a header map.

use std::time::Duration;

use reqwest::header::HeaderMap;

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
    /// `?dc=`, overriding [`Config::datacenter`](crate::Config::datacenter).
    pub datacenter: Option<String>,
}

impl QueryOptions {
    /// The same read without blocking: index and wait cleared.
    pub fn plain(&self) -> Self {
        Self {
            index: 0,
            wait: None,
            ..self.clone()
        }
    }
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

/// Consul's `X-Consul-*` answer headers; a header that is absent or not
/// understood reads as its zero value.
pub(super) fn query_meta(headers: &HeaderMap) -> QueryMeta {
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
