//! A named stand-in for a fault a real Consul cannot produce on demand:
//! [`EmptyAnswerProxy`] forwards every request to a real agent, except that
//! it answers every service's health read with `200 []` — what a broken
//! proxy in front of Consul, or an agent restarted with an empty catalog,
//! says. Everything else (headers such as `X-Consul-Index`, other paths,
//! errors) is the real agent's answer.
//!
//! One thread accepts; each connection gets a thread, is forwarded as
//! HTTP/1.0 (so the agent never chunks and closes when done) and closed
//! after one answer, which every HTTP client handles.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// A loopback proxy to a Consul agent that empties every service.
pub struct EmptyAnswerProxy {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl EmptyAnswerProxy {
    /// Listens on a loopback port and forwards to `upstream`; reads of
    /// `/v1/health/service/NAME` that the agent answers with 200 get `[]`
    /// instead.
    ///
    /// # Errors
    ///
    /// The listener could not be bound.
    pub fn start(upstream: SocketAddr) -> Result<Self, String> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let acceptor = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                std::thread::spawn(move || {
                    let _ = serve(conn, upstream);
                });
            }
        });
        Ok(Self {
            addr,
            stop,
            acceptor: Some(acceptor),
        })
    }

    /// `http://127.0.0.1:PORT`, to pass as `--consul`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for EmptyAnswerProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the acceptor so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

/// Forwards one request on `conn` and writes back the (possibly emptied)
/// answer.
fn serve(mut conn: TcpStream, upstream: SocketAddr) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let (head, body) = read_request(&mut conn)?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (method, target) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let path = target.split('?').next().unwrap_or_default();
    let empties = method == "GET" && path.starts_with("/v1/health/service/");
    let mut up = TcpStream::connect(upstream)?;
    let mut forwarded = format!("{method} {target} HTTP/1.0\r\n");
    for line in lines.filter(|l| {
        let l = l.to_ascii_lowercase();
        !l.is_empty() && !l.starts_with("connection:") && !l.starts_with("keep-alive:")
    }) {
        forwarded.push_str(line);
        forwarded.push_str("\r\n");
    }
    forwarded.push_str("Connection: close\r\n\r\n");
    up.write_all(forwarded.as_bytes())?;
    up.write_all(&body)?;
    let mut answer = Vec::new();
    up.read_to_end(&mut answer)?;
    let split = find(&answer, b"\r\n\r\n").unwrap_or(answer.len());
    let answer_head = String::from_utf8_lossy(&answer[..split]).into_owned();
    let mut answer_body = answer.get(split + 4..).unwrap_or_default().to_vec();
    let ok = answer_head
        .split(' ')
        .nth(1)
        .is_some_and(|status| status == "200");
    let rewritten = empties && ok;
    if rewritten {
        answer_body = b"[]".to_vec();
    }
    let mut out = String::new();
    let dropped = |l: &str| {
        l.starts_with("content-length:")
            || l.starts_with("connection:")
            || l.starts_with("transfer-encoding:")
            // The agent gzips for a client that asks; `[]` is sent plain.
            || (rewritten && l.starts_with("content-encoding:"))
    };
    for line in answer_head
        .split("\r\n")
        .filter(|l| !dropped(&l.to_ascii_lowercase()))
    {
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        answer_body.len()
    ));
    conn.write_all(out.as_bytes())?;
    conn.write_all(&answer_body)?;
    conn.shutdown(Shutdown::Both)
}

/// The request head (up to the blank line) and its `Content-Length` body.
fn read_request(conn: &mut TcpStream) -> std::io::Result<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            break end;
        }
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let length: usize = head
        .split("\r\n")
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = buf[end + 4..].to_vec();
    while body.len() < length {
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok((head, body))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
