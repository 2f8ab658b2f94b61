//! The probe: what a user of the system would do, once.
//!
//! An HTTP request through an HAProxy frontend (with the `Host` header a
//! route needs); a 2xx answer is a success. Each probe has its own
//! timeout, so a server that hangs counts as a failure, not a stall.

use std::time::{Duration, Instant, SystemTime};

use super::timeline::Sample;
use super::DrillError;
use crate::daemon::events::unix_ms;

/// A probe.
#[derive(Debug, Clone)]
pub struct Probe {
    url: reqwest::Url,
    host: Option<String>,
    client: reqwest::Client,
}

impl Probe {
    /// `GET url` (with `Host: host` when given), each within `timeout`.
    pub fn http(
        url: reqwest::Url,
        host: Option<String>,
        timeout: Duration,
    ) -> Result<Self, DrillError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            // A fresh connection per probe: a kept-alive connection would
            // stay on one server and hide the others.
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|e| DrillError::Usage(format!("HTTP client: {e}")))?;
        Ok(Self { url, host, client })
    }

    /// The target URL.
    pub fn url(&self) -> &reqwest::Url {
        &self.url
    }

    /// The probe in words.
    pub fn describe(&self) -> String {
        match &self.host {
            Some(h) => format!("GET {} (Host: {h})", self.url),
            None => format!("GET {}", self.url),
        }
    }

    /// One probe, started now.
    pub async fn once(&self) -> Sample {
        let started = Instant::now();
        let unix = unix_ms(SystemTime::now());
        let mut request = self.client.get(self.url.clone());
        if let Some(h) = &self.host {
            request = request.header(reqwest::header::HOST, h);
        }
        let (ok, detail) = match request.send().await {
            Ok(answer) => {
                let status = answer.status();
                // Reading the body is part of the request succeeding.
                match answer.bytes().await {
                    Ok(_) => (status.is_success(), status.as_u16().to_string()),
                    Err(e) => (false, short(&e)),
                }
            }
            Err(e) => (false, short(&e)),
        };
        Sample {
            unix_ms: unix,
            ok,
            latency_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            detail,
        }
    }
}

/// A request error in a few words (reqwest's chain, without the URL that
/// every sample would repeat).
fn short(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timeout".into();
    }
    if e.is_connect() {
        return "connect failed".into();
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text = s.to_string();
        source = s.source();
    }
    text
}
