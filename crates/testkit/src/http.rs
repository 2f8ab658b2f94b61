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
    let mut conn = TcpStream::connect(("127.0.0.1", port)).ok()?;
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
