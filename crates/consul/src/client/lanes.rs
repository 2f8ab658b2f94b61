//! Where a request goes: the HTTP clients ("lanes") a [`Client`](super::Client)
//! may send through, and the request slots on each, which together bound
//! the connections to Consul.
//!
//! Over HTTP/1.1 a connection carries one request at a time, so a long
//! poll holds a connection for its whole `wait`: one lane with
//! `max_requests` slots, keeping as many idle connections (see
//! [`MAX_CONNECTIONS`](super::MAX_CONNECTIONS)).
//!
//! Consul's HTTPS listener also speaks HTTP/2 (Go's server, negotiated
//! through ALPN), where one connection multiplexes many requests. Over
//! HTTP/2 a lane is one connection carrying at most [`H2_STREAMS`]
//! requests at once, below the 250 concurrent streams Go's server allows
//! per connection (a request beyond the server's limit would queue inside
//! the HTTP/2 client unsent, and a long poll that is never sent misses
//! every change). There are [`H2_CONNECTIONS`] lanes, filled in order, so
//! a client opens only as many connections as its requests need.
//!
//! A lane holds one connection at a time: hyper runs at most one HTTP/2
//! connect per pool, and the lane's pool keeps its connection for as long
//! as it is open, busy or not (see `connection`: hyper's idle timeout would
//! drop a connection whose streams were all long polls and open a second
//! one beside it). A new one is opened only once the agent has closed the
//! old one or sent it away with GOAWAY, after which the old one lives only
//! until its last streams end. So a client has at most [`H2_CONNECTIONS`]
//! connections in use, plus any the agent is sending away; 28 leaves four
//! of the 32 of [`MAX_CONNECTIONS`](super::MAX_CONNECTIONS) for those.
//!
//! Which of the two an `https` address gets is learnt once, by one request
//! (`/v1/status/leader`) over a client that offers both through ALPN; a
//! plain `http` address is always HTTP/1.1 (Consul does not speak
//! cleartext HTTP/2).

use std::sync::Arc;

use reqwest::Version;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::connection::{http_client, target_url, Wire};
use crate::config::Config;
use crate::error::Error;

/// Most HTTP/2 connections a client opens: each carries up to
/// [`H2_STREAMS`] requests, so [`H2_CONNECTIONS`] × [`H2_STREAMS`] long
/// polls fit, which is what lets a source watch thousands of services each
/// with its own blocking query.
pub const H2_CONNECTIONS: usize = 28;

/// Most requests one HTTP/2 connection carries at once: well below Go's
/// default of 250 concurrent streams per connection, which Consul keeps,
/// because the server counts a stream until its handler has returned,
/// which can be a moment after the client saw the answer; a request the
/// server refuses for that is retried by reqwest, on the lane's connection.
pub const H2_STREAMS: usize = 200;

/// One HTTP client and the slots of requests it may carry at once.
#[derive(Clone)]
struct Lane {
    http: reqwest::Client,
    slots: Arc<Semaphore>,
}

/// The lanes of a client, all of one HTTP version.
#[derive(Clone)]
pub(super) struct Lanes {
    lanes: Vec<Lane>,
    multiplexed: bool,
    capacity: usize,
}

impl Lanes {
    /// One HTTP/1.1 lane with `max_requests` slots.
    pub(super) fn http1(config: &Config, max_requests: usize) -> Result<Self, Error> {
        let lane = Lane {
            http: http_client(config, max_requests, Wire::Http1)?,
            slots: Arc::new(Semaphore::new(max_requests)),
        };
        Ok(Self {
            lanes: vec![lane],
            multiplexed: false,
            capacity: max_requests,
        })
    }

    /// [`H2_CONNECTIONS`] HTTP/2 lanes of [`H2_STREAMS`] slots each.
    fn http2(config: &Config) -> Result<Self, Error> {
        let lanes = (0..H2_CONNECTIONS)
            .map(|_| {
                Ok(Lane {
                    http: http_client(config, 1, Wire::Http2)?,
                    slots: Arc::new(Semaphore::new(H2_STREAMS)),
                })
            })
            .collect::<Result<_, Error>>()?;
        Ok(Self {
            lanes,
            multiplexed: true,
            capacity: H2_CONNECTIONS * H2_STREAMS,
        })
    }

    /// The lanes for an `https` address: asks the agent once which
    /// protocol it speaks, with a client offering both and dropped (its
    /// connection closed) right after.
    pub(super) async fn negotiate(config: &Config, max_requests: usize) -> Result<Self, Error> {
        let endpoint = "/v1/status/leader";
        let probe = http_client(config, 1, Wire::Negotiate)?;
        let mut url = target_url(config)?;
        url.set_path(endpoint);
        let ms = config.request_timeout.as_millis();
        let resp = probe
            .get(url)
            .timeout(config.request_timeout)
            .send()
            .await
            .map_err(|e| Error::from_transport(endpoint, ms, e))?;
        if resp.version() == Version::HTTP_2 {
            Self::http2(config)
        } else {
            Self::http1(config, max_requests)
        }
    }

    /// Whether requests share connections (HTTP/2).
    pub(super) fn multiplexed(&self) -> bool {
        self.multiplexed
    }

    /// How many requests, long polls included, can be in flight at once.
    pub(super) fn capacity(&self) -> usize {
        self.capacity
    }

    /// A slot on the first lane with one free (so connections open only
    /// as they are needed), waiting on the first lane when all are full.
    /// The permit must be held until the answer's body has been read.
    pub(super) async fn acquire(&self) -> (reqwest::Client, OwnedSemaphorePermit) {
        for lane in &self.lanes {
            if let Ok(permit) = lane.slots.clone().try_acquire_owned() {
                return (lane.http.clone(), permit);
            }
        }
        let lane = &self.lanes[0];
        let permit = lane
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the client never closes its request slots");
        (lane.http.clone(), permit)
    }
}
