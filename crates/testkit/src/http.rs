//! A plain HTTP/1.1 client for loopback: enough to ask a test backend who
//! it is, or converge's own listener for `/status`, `/metrics` and
//! `/release`, without pulling an HTTP stack into every test.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Sends `METHOD PATH` (no body) to 127.0.0.1:`port` and returns the body
/// of a 2xx answer, or `None` when the request failed (refused, reset,
/// timed out after 5 s, or another status).
pub fn request(port: u16, method: &str, path: &str) -> Option<String> {
    request_at("127.0.0.1", port, method, path)
}

/// [`request`] to `host`:`port` (a loopback address other than
/// 127.0.0.1, say).
pub fn request_at(host: &str, port: u16, method: &str, path: &str) -> Option<String> {
    let mut conn = TcpStream::connect((host, port)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    // One segment, sent at once: `write!` on the bare stream sends each
    // formatted piece as its own small write, and Nagle holding the later
    // pieces until the peer's delayed ACK adds ~40 ms to every request —
    // which the flip benchmark would then measure as routing latency.
    conn.set_nodelay(true).ok()?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).ok()?;
    let mut out = String::new();
    conn.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    head.split(' ')
        .nth(1)?
        .starts_with('2')
        .then(|| body.to_string())
}

/// `GET PATH` through [`request`].
pub fn get(port: u16, path: &str) -> Option<String> {
    request(port, "GET", path)
}

/// Sends `METHOD PATH` with a JSON `body` to `host`:`port` (a loopback
/// address) as HTTP/1.0 (never chunked, closed after the answer), waiting
/// up to `timeout` for it; returns the status and the body, whatever the
/// status.
///
/// # Errors
///
/// The connection failed, or the answer is not HTTP.
pub fn exchange(
    host: &str,
    port: u16,
    method: &str,
    path: &str,
    body: &str,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let what = format!("{method} {host}:{port}{path}");
    let mut conn = TcpStream::connect((host, port)).map_err(|e| format!("{what}: {e}"))?;
    conn.set_read_timeout(Some(timeout))
        .map_err(|e| format!("{what}: {e}"))?;
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(request.as_bytes())
        .map_err(|e| format!("{what}: {e}"))?;
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw)
        .map_err(|e| format!("{what}: {e}"))?;
    status_and_body(&what, &raw)
}

/// The status and body of a raw HTTP/1.0 answer to request `what`.
///
/// # Errors
///
/// The answer is not HTTP.
pub(crate) fn status_and_body(what: &str, raw: &[u8]) -> Result<(u16, String), String> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{what}: not an HTTP answer: {head}"))?;
    Ok((status, body.to_string()))
}
