//! A tiny HTTP backend on loopback that answers every request with its own
//! name: the "application server" behind HAProxy in end-to-end tests, so a
//! test can tell which server a request reached. It is a test fixture, not
//! a stand-in for any program converge manages.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// A running backend; stops on drop.
#[derive(Debug)]
pub struct HttpBackend {
    name: String,
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpBackend {
    /// Starts a backend answering `200 <name>` on a free loopback port.
    pub fn start(name: &str) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let body = name.to_string();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(conn) = conn {
                    answer(conn, &body);
                }
            }
        });
        Ok(Self {
            name: name.to_string(),
            port,
            stop,
            thread: Some(thread),
        })
    }

    /// Its name (the response body).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }
}

fn answer(mut conn: TcpStream, body: &str) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 4096];
    let mut seen = Vec::new();
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.write_all(response.as_bytes());
    let _ = conn.shutdown(Shutdown::Both);
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so the thread sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends `GET /` to 127.0.0.1:`port` and returns the body (the name of
/// the backend that answered), or `None` when the request failed.
pub fn get(port: u16) -> Option<String> {
    crate::http::get(port, "/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_with_its_name_and_stops_on_drop() {
        let b = HttpBackend::start("alpha").expect("start");
        let port = b.port();
        assert_eq!(get(port).as_deref(), Some("alpha"));
        drop(b);
        assert_eq!(get(port), None);
    }
}
