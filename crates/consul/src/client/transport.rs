//! One request to Consul, done the same way for every endpoint: the URL
//! and its query parameters (the configured datacenter, and on catalog,
//! health and KV paths the namespace and partition), the timeout, a
//! request slot, the stale-read fallback, status and body decoding.
//!
//! `Transport` owns what bounds the connections: the lanes (HTTP clients)
//! and their request slots (see `lanes`). Every request holds a slot from
//! before it is sent until its body has been read, which is the half of the
//! bound the pool's idle limit does not cover (see
//! [`MAX_CONNECTIONS`](super::MAX_CONNECTIONS)). Keeping it in one type
//! means no endpoint can send a request around the bound.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use tokio::sync::OnceCell;

use super::connection::{http_client, target_url, Wire};
use super::lanes::Lanes;
use super::query::{query_meta, Consistency, QueryOptions, Response};
use crate::config::Config;
use crate::error::Error;

/// The HTTP client, its request slots, and where and how long to ask.
#[derive(Clone)]
pub(super) struct Transport {
    /// The lanes, known at once for `http`, learnt at the first request
    /// for `https` (whether the agent speaks HTTP/2).
    lanes: Arc<OnceCell<Lanes>>,
    /// What the lanes are built from, kept for that first request.
    config: Arc<Config>,
    max_requests: usize,
    /// The configured address, as shown to people.
    base: Url,
    /// Where requests go: `base`, with the TLS server name as its host
    /// when one is configured (see `connection`).
    target: Url,
    datacenter: Option<String>,
    /// `?ns=` and `?partition=`, in that order, for scoped paths.
    scope: Vec<(&'static str, String)>,
    request_timeout: Duration,
    blocking_margin: Duration,
    requests: Arc<AtomicU64>,
}

impl Transport {
    /// A transport letting `max_requests` requests through at once and
    /// keeping as many idle connections.
    pub(super) fn new(config: Config, max_requests: usize) -> Result<Self, Error> {
        let scope = [("ns", &config.namespace), ("partition", &config.partition)]
            .into_iter()
            .filter_map(|(k, v)| Some((k, v.clone()?)))
            .collect();
        let lanes = if config.address.scheme() == "https" {
            // Finds a bad TLS file now rather than at the first request.
            http_client(&config, 1, Wire::Negotiate)?;
            OnceCell::new()
        } else {
            OnceCell::new_with(Some(Lanes::http1(&config, max_requests)?))
        };
        Ok(Self {
            lanes: Arc::new(lanes),
            config: Arc::new(config.clone()),
            max_requests,
            target: target_url(&config)?,
            base: config.address,
            datacenter: config.datacenter,
            scope,
            request_timeout: config.request_timeout,
            blocking_margin: config.blocking_margin,
            requests: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Requests sent so far through this transport and its clones.
    pub(super) fn requests_sent(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// The lanes, asking an `https` agent once whether it speaks HTTP/2.
    async fn lanes(&self) -> Result<&Lanes, Error> {
        self.lanes
            .get_or_try_init(|| Lanes::negotiate(&self.config, self.max_requests))
            .await
    }

    /// How many requests, long polls included, can be in flight at once:
    /// `max_requests` over HTTP/1.1, many more over HTTP/2.
    pub(super) async fn capacity(&self) -> Result<usize, Error> {
        Ok(self.lanes().await?.capacity())
    }

    /// Whether requests share connections (the agent speaks HTTP/2).
    pub(super) async fn multiplexed(&self) -> Result<bool, Error> {
        Ok(self.lanes().await?.multiplexed())
    }

    /// The agent's base URL.
    pub(super) fn base(&self) -> &Url {
        &self.base
    }

    /// The configured `?dc=`, if any.
    pub(super) fn datacenter(&self) -> Option<&str> {
        self.datacenter.as_deref()
    }

    /// A read whose 404 is an error.
    pub(super) async fn read<T: DeserializeOwned>(
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
    pub(super) async fn read_opt<T: DeserializeOwned>(
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
            for (k, v) in self.scope_for(segments) {
                q.append_pair(k, v);
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

    /// A `PUT` of `body` whose answer must be 200, with `params` (in
    /// order) and the configured `?dc=` in the query.
    pub(super) async fn put<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        endpoint: &str,
        params: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<T, Error> {
        self.write(Method::PUT, segments, endpoint, params, Some(body))
            .await
    }

    /// A `DELETE` whose answer must be 200, with `params` (in order) and
    /// the configured `?dc=` in the query.
    pub(super) async fn delete<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        endpoint: &str,
        params: &[(&str, String)],
    ) -> Result<T, Error> {
        self.write(Method::DELETE, segments, endpoint, params, None)
            .await
    }

    async fn write<T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        endpoint: &str,
        params: &[(&str, String)],
        body: Option<Vec<u8>>,
    ) -> Result<T, Error> {
        let mut url = self.url(segments);
        {
            let mut q = url.query_pairs_mut();
            for (k, v) in params {
                q.append_pair(k, v);
            }
            if let Some(dc) = &self.datacenter {
                q.append_pair("dc", dc);
            }
            for (k, v) in self.scope_for(segments) {
                q.append_pair(k, v);
            }
        }
        let (status, _, body) = self
            .send(method, url, endpoint, self.request_timeout, body)
            .await?;
        if status != StatusCode::OK {
            return Err(Error::from_status(endpoint, status, &body_text(&body)));
        }
        // The agent's write endpoints answer 200 with no body: `null`,
        // which only `()` (and `Option`s) accept.
        let body: &[u8] = if body.is_empty() { b"null" } else { &body };
        decode(endpoint, body)
    }

    /// `wait + wait/16 + margin` for a blocking read, else the plain
    /// request timeout.
    pub(super) fn timeout_for(&self, opts: &QueryOptions) -> Duration {
        match opts.wait {
            Some(wait) if opts.index > 0 => wait + wait / 16 + self.blocking_margin,
            _ => self.request_timeout,
        }
    }

    /// The namespace and partition parameters of a request for a path
    /// Consul scopes by them (catalog, health, KV); agent and status
    /// paths are not scoped and get neither.
    fn scope_for(&self, segments: &[&str]) -> &[(&'static str, String)] {
        if matches!(segments, ["v1", "catalog" | "health" | "kv", ..]) {
            &self.scope
        } else {
            &[]
        }
    }

    pub(super) fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.target.clone();
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
        let ms = timeout.as_millis();
        // Held until the body is read: see MAX_CONNECTIONS.
        let (http, _slot) = self.lanes().await?.acquire().await;
        let mut req = http.request(method, url).timeout(timeout);
        if let Some(body) = body {
            req = req.body(body);
        }
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
pub(super) fn kv_segments(key: &str) -> Vec<&str> {
    let mut segments = vec!["v1", "kv"];
    segments.extend(key.split('/'));
    segments
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
