//! The probe: what a user of the system would do, once.
//!
//! Either an HTTP request through an HAProxy frontend (with the `Host`
//! header a route needs; a 2xx answer is a success), or a command (a
//! success is exit status 0), such as a write through PgBouncer with
//! `psql`. Each probe has its own timeout, so a server that hangs counts
//! as a failure, not a stall; a command that outlasts it is killed.

use std::time::{Duration, Instant, SystemTime};

use super::timeline::Sample;
use super::DrillError;
use crate::daemon::events::unix_ms;

/// A probe, and the address it reaches (for the safety check).
#[derive(Debug, Clone)]
pub struct Probe {
    kind: Kind,
    target: Option<(String, u16)>,
    timeout: Duration,
}

#[derive(Debug, Clone)]
enum Kind {
    Http {
        url: reqwest::Url,
        host: Option<String>,
        client: reqwest::Client,
    },
    Command {
        program: String,
        args: Vec<String>,
    },
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
        let target = super::safety::url_host_port(&url)?;
        Ok(Self {
            kind: Kind::Http { url, host, client },
            target: Some(target),
            timeout,
        })
    }

    /// `program args…`, each within `timeout`; `target` is the address it
    /// reaches, when known, for the safety check.
    pub fn command(
        program: String,
        args: Vec<String>,
        target: Option<(String, u16)>,
        timeout: Duration,
    ) -> Self {
        Self {
            kind: Kind::Command { program, args },
            target,
            timeout,
        }
    }

    /// The address it reaches, when known.
    pub fn target(&self) -> Option<&(String, u16)> {
        self.target.as_ref()
    }

    /// The probe in words.
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Http {
                url, host: Some(h), ..
            } => format!("GET {url} (Host: {h})"),
            Kind::Http {
                url, host: None, ..
            } => format!("GET {url}"),
            Kind::Command { program, args } => format!("`{program} {}`", args.join(" ")),
        }
    }

    /// One probe, started now.
    pub async fn once(&self) -> Sample {
        let started = Instant::now();
        let unix = unix_ms(SystemTime::now());
        let (ok, detail) = match &self.kind {
            Kind::Http { url, host, client } => http(client, url, host.as_deref()).await,
            Kind::Command { program, args } => command(program, args, self.timeout).await,
        };
        Sample {
            unix_ms: unix,
            ok,
            latency_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            detail,
        }
    }
}

async fn http(client: &reqwest::Client, url: &reqwest::Url, host: Option<&str>) -> (bool, String) {
    let mut request = client.get(url.clone());
    if let Some(h) = host {
        request = request.header(reqwest::header::HOST, h);
    }
    match request.send().await {
        Ok(answer) => {
            let status = answer.status();
            // Reading the body is part of the request succeeding.
            match answer.bytes().await {
                Ok(_) => (status.is_success(), status.as_u16().to_string()),
                Err(e) => (false, short(&e)),
            }
        }
        Err(e) => (false, short(&e)),
    }
}

/// Runs the command; its last line of stderr says why it failed.
async fn command(program: &str, args: &[String], timeout: Duration) -> (bool, String) {
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(timeout, child).await {
        Err(_) => (false, "timeout".into()),
        Ok(Err(e)) => (false, format!("cannot run {program}: {e}")),
        Ok(Ok(out)) if out.status.success() => (true, "exit 0".into()),
        Ok(Ok(out)) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
            (false, last.unwrap_or("failed").trim().to_string())
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
