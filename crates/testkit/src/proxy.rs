//! A counting TCP proxy in front of Consul: the measurement device for
//! "requests each tool sends to Consul, and bytes it reads back", used by
//! the benchmark and by the tests that bound what the catalog source
//! reads.
//!
//! Consul's own `/v1/agent/metrics` counters add up every client (the
//! harness's check flips included) and cannot tell two tools apart, so each
//! tool talks to Consul through its own proxy instead. The proxy forwards
//! bytes unchanged in both directions and, on the client-to-Consul side,
//! recognises HTTP/1.x request lines (`GET /v1/... HTTP/1.1`) to count
//! requests and the endpoints they hit; it counts the bytes each way. Over
//! plain HTTP/1.1 every request starts with such a line; over TLS the
//! proxy sees only ciphertext, so it counts bytes and connections but no
//! requests. It adds one loopback hop (tens of microseconds) to every
//! request, the same for every tool.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

/// One request seen by the proxy.
#[derive(Debug, Clone)]
pub struct Seen {
    /// When its request line arrived.
    pub at: Instant,
    /// Method and path, without the query (`GET /v1/health/service/web`).
    pub endpoint: String,
    /// True when the query carried `index=`: a blocking query.
    pub blocking: bool,
}

#[derive(Debug, Default)]
struct Shared {
    seen: Vec<Seen>,
    connections: usize,
    /// Both ends of every connection, shared with the threads that pump
    /// them rather than duplicated, so a connection costs two file
    /// descriptors (thousands of long polls stay within `ulimit -n`).
    open: Vec<Arc<TcpStream>>,
}

/// Bytes forwarded so far, each way.
#[derive(Debug, Default)]
struct Bytes {
    /// From the client to Consul.
    sent: AtomicU64,
    /// From Consul to the client.
    received: AtomicU64,
}

/// A running proxy; stops accepting and closes every connection on drop.
#[derive(Debug)]
pub struct CountingProxy {
    port: u16,
    shared: Arc<Mutex<Shared>>,
    bytes: Arc<Bytes>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl CountingProxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    ///
    /// # Errors
    ///
    /// When the loopback port cannot be bound.
    pub fn start(upstream: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let bytes = Arc::new(Bytes::default());
        let stop = Arc::new(AtomicBool::new(false));
        let accept = std::thread::spawn({
            let shared = shared.clone();
            let bytes = bytes.clone();
            let stop = stop.clone();
            move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(client) = conn else { continue };
                    if let Err(e) = forward(client, upstream, &shared, &bytes) {
                        eprintln!("counting proxy: cannot reach consul at {upstream}: {e}");
                    }
                }
            }
        });
        Ok(Self {
            port,
            shared,
            bytes,
            stop,
            accept: Some(accept),
        })
    }

    /// `http://127.0.0.1:PORT`, for converge's `--consul`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// `127.0.0.1:PORT`, for consul-template's `-consul-addr`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Every request seen so far, oldest first.
    pub fn seen(&self) -> Vec<Seen> {
        self.lock().seen.clone()
    }

    /// Requests seen since `from`.
    pub fn seen_since(&self, from: Instant) -> Vec<Seen> {
        self.lock()
            .seen
            .iter()
            .filter(|s| s.at >= from)
            .cloned()
            .collect()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.lock().connections
    }

    /// The proxy's loopback port (count a tool's open connections to it
    /// with [`open_connections_to`](crate::consul::open_connections_to)).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Bytes Consul sent back to the client so far: what the tool read.
    pub fn bytes_received(&self) -> u64 {
        self.bytes.received.load(Ordering::Relaxed)
    }

    /// Bytes the client sent to Consul so far.
    pub fn bytes_sent(&self) -> u64 {
        self.bytes.sent.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Requests per endpoint, for the report.
pub fn by_endpoint(seen: &[Seen]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for s in seen {
        let key = if s.blocking {
            format!("{} (blocking)", s.endpoint)
        } else {
            s.endpoint.clone()
        };
        *out.entry(key).or_insert(0) += 1;
    }
    out
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        for s in self.lock().open.drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

fn forward(
    client: TcpStream,
    upstream: SocketAddr,
    shared: &Arc<Mutex<Shared>>,
    bytes: &Arc<Bytes>,
) -> io::Result<()> {
    let server = TcpStream::connect(upstream)?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (client, server) = (Arc::new(client), Arc::new(server));
    {
        let mut s = shared.lock().unwrap_or_else(PoisonError::into_inner);
        s.connections += 1;
        // Keep handles so drop can close connections a tool left open;
        // one no pump holds any more is closed and forgotten.
        s.open.retain(|c| Arc::strong_count(c) > 1);
        s.open.push(client.clone());
        s.open.push(server.clone());
    }
    let (c_read, s_write) = (client.clone(), server.clone());
    let (shared, up, down) = (shared.clone(), bytes.clone(), bytes.clone());
    std::thread::spawn(move || {
        let mut scan = RequestLines::default();
        pump(&c_read, &s_write, |chunk| {
            up.sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            for seen in scan.feed(chunk) {
                shared
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .seen
                    .push(seen);
            }
        });
    });
    std::thread::spawn(move || {
        pump(&server, &client, |chunk| {
            down.received
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        })
    });
    Ok(())
}

/// Copies `from` to `to` until either side closes, then closes both.
fn pump(from: &TcpStream, to: &TcpStream, mut observe: impl FnMut(&[u8])) {
    let (mut from, mut to) = (from, to);
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                observe(&buf[..n]);
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// Finds HTTP/1.x request lines in a client's byte stream.
#[derive(Debug, Default)]
struct RequestLines {
    line: Vec<u8>,
    overflow: bool,
}

const METHODS: [&str; 5] = ["GET ", "PUT ", "POST ", "DELETE ", "HEAD "];

impl RequestLines {
    fn feed(&mut self, bytes: &[u8]) -> Vec<Seen> {
        let mut out = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                if !self.overflow {
                    if let Some(s) = parse_request_line(&self.line) {
                        out.push(s);
                    }
                }
                self.line.clear();
                self.overflow = false;
            } else if self.line.len() < 8192 {
                self.line.push(b);
            } else {
                self.overflow = true;
            }
        }
        out
    }
}

fn parse_request_line(line: &[u8]) -> Option<Seen> {
    let text = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    if !METHODS.iter().any(|m| text.starts_with(m)) {
        return None;
    }
    let mut parts = text.split(' ');
    let method = parts.next()?;
    let target = parts.next()?;
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") || parts.next().is_some() {
        return None;
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Some(Seen {
        at: Instant::now(),
        endpoint: format!("{method} {path}"),
        blocking: query.split('&').any(|kv| kv.starts_with("index=")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_request_lines_split_across_reads() {
        let mut scan = RequestLines::default();
        let mut seen = scan.feed(b"GET /v1/health/service/web?index=12&wait=60");
        assert!(seen.is_empty());
        seen.extend(scan.feed(b"000ms HTTP/1.1\r\nHost: x\r\n\r\nPUT /v1/kv/a HTTP/1.1\r\n"));
        seen.extend(scan.feed(b"Content-Length: 3\r\n\r\nGET"));
        let got: Vec<_> = seen
            .iter()
            .map(|s| (s.endpoint.as_str(), s.blocking))
            .collect();
        assert_eq!(
            got,
            vec![
                ("GET /v1/health/service/web", true),
                ("PUT /v1/kv/a", false)
            ]
        );
    }

    #[test]
    fn forwards_and_counts_through_a_real_socket() {
        let upstream = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let addr = upstream.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            let (mut c, _) = upstream.accept().expect("accept");
            let mut buf = [0u8; 256];
            let n = c.read(&mut buf).expect("read");
            c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .expect("write");
            n
        });
        let proxy = CountingProxy::start(addr).expect("proxy");
        let mut c = TcpStream::connect(proxy.addr()).expect("connect");
        c.write_all(b"GET /v1/status/leader HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("write");
        let mut answer = [0u8; 64];
        let n = c.read(&mut answer).expect("read");
        assert!(answer[..n].ends_with(b"ok"));
        assert!(server.join().expect("server") > 0);
        assert_eq!(proxy.connections(), 1);
        assert_eq!(proxy.bytes_received(), n as u64);
        assert_eq!(
            by_endpoint(&proxy.seen()).get("GET /v1/status/leader"),
            Some(&1)
        );
    }
}
