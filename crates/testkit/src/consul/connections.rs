//! Counting this process's connections to a port, for tests that assert
//! converge's connection bound against a real agent.
//!
//! Read from `/proc` rather than from the client under test, so the count
//! includes connections the client does not know it holds (ones the HTTP
//! pool is still handing back, for instance).

use std::fs;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Open TCP connections from this process to `127.0.0.1:port`, counted
/// from `/proc/self/net/tcp` (established sockets whose remote port is
/// `port`) joined with this process's socket inodes in `/proc/self/fd`.
pub fn open_connections_to(port: u16) -> usize {
    let mut inodes = std::collections::HashSet::new();
    if let Ok(entries) = fs::read_dir("/proc/self/fd") {
        for e in entries.flatten() {
            if let Ok(target) = fs::read_link(e.path()) {
                let t = target.to_string_lossy();
                if let Some(inode) = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                    inodes.insert(inode.to_string());
                }
            }
        }
    }
    let mut count = 0;
    for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                continue;
            }
            let remote_port = f[2]
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            // State 01 is ESTABLISHED.
            if remote_port == Some(port) && f[3] == "01" && inodes.contains(f[9]) {
                count += 1;
            }
        }
    }
    count
}

/// The highest [`open_connections_to`] count seen while it runs: a
/// thread samples every 5 ms, so a burst of connections shorter than
/// that can be missed, never over-counted.
#[derive(Debug)]
pub struct PeakConnections {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicUsize>,
    sampler: Option<JoinHandle<()>>,
}

impl PeakConnections {
    /// Starts sampling this process's connections to `127.0.0.1:port`.
    pub fn start(port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicUsize::new(0));
        let sampler = {
            let (stop, peak) = (stop.clone(), peak.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    peak.fetch_max(open_connections_to(port), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        Self {
            stop,
            peak,
            sampler: Some(sampler),
        }
    }

    /// The peak so far; sampling goes on.
    pub fn so_far(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// Stops sampling and returns the peak.
    pub fn finish(mut self) -> usize {
        self.halt();
        self.so_far()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.sampler.take() {
            let _ = t.join();
        }
    }
}

impl Drop for PeakConnections {
    fn drop(&mut self) {
        self.halt();
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, TcpStream};

    use super::*;

    #[test]
    fn own_loopback_connection_is_counted() {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        assert_eq!(open_connections_to(port), 0);
        let _a = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect");
        let _b = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect");
        let (_sa, _) = listener.accept().expect("accept");
        let (_sb, _) = listener.accept().expect("accept");
        // The accepted ends have the client's port as remote, not `port`.
        assert_eq!(open_connections_to(port), 2);
    }
}
