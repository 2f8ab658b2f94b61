//! A node for runtime-API tests: a real HAProxy in master-worker mode on
//! loopback whose backend `web` is marked for the runtime API, the config
//! it runs written from a list of servers, and `apply` of another list.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use converge_apply::{apply, ApplyOptions, Outcome};
use converge_testkit::backend::{get, HttpBackend};
use converge_testkit::{free_port, wait, Haproxy};

pub const DEADLINE: Duration = Duration::from_secs(10);

/// A server line of `web`: a slot holding an HTTP backend's port, an
/// empty slot, or a line of its own (a dynamic server) with its name.
#[derive(Clone, Copy)]
pub enum Slot {
    To(u16),
    Empty,
    Own(&'static str, u16),
}

pub struct Node {
    pub root: tempfile::TempDir,
    pub front: u16,
    pub haproxy: Haproxy,
}

impl Node {
    pub fn start(slots: &[Slot]) -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(root.path().join("run")).expect("mkdir run");
        std::fs::create_dir_all(root.path().join("etc/haproxy")).expect("mkdir etc");
        let front = free_port();
        let cfg = root.path().join("etc/haproxy/haproxy.cfg");
        std::fs::write(&cfg, config(root.path(), front, slots, "")).expect("write");
        let haproxy = Haproxy::start(
            &cfg,
            &root.path().join("run/haproxy.pid"),
            &root.path().join("run/admin.sock"),
        )
        .expect("haproxy starts");
        Self {
            root,
            front,
            haproxy,
        }
    }

    pub fn apply(&self, slots: &[Slot], extra: &str) -> Outcome {
        self.apply_config(config(self.root.path(), self.front, slots, extra))
    }

    /// Applies `cfg`, which must go live one way or another.
    pub fn apply_config(&self, cfg: String) -> Outcome {
        let set = crate::common::set(self.root.path(), cfg);
        let report = apply(&set, &ApplyOptions::default()).expect("apply");
        assert!(
            report.ok(),
            "{report}\nhaproxy log:\n{}",
            self.haproxy.log()
        );
        assert_eq!(
            self.live(),
            String::from_utf8(set.files["haproxy"].bytes.clone()).expect("utf8"),
            "the file on disk is the candidate"
        );
        report.bundle("haproxy").expect("bundle").outcome.clone()
    }

    pub fn live(&self) -> String {
        std::fs::read_to_string(self.haproxy.config()).expect("config")
    }

    /// Backends reached by requests through HAProxy, once they are `want`.
    pub fn wait_reached(&self, want: &[&str]) {
        let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
        wait::until(DEADLINE, &format!("requests to reach {want:?}"), || {
            (0..8)
                .filter_map(|_| get(self.front))
                .collect::<BTreeSet<_>>()
                == want
        })
        .unwrap_or_else(|e| {
            panic!(
                "{e}\n{}\nconfig:\n{}",
                self.haproxy.command("show servers state web"),
                self.live()
            )
        });
    }

    /// `show servers state web` as name, address, port, whether in
    /// maintenance (HAProxy's forced-maintenance bit: a `disabled` slot
    /// also carries a "configured" bit the runtime API leaves alone),
    /// weights and check state (whether checks run).
    pub fn servers(&self) -> Vec<String> {
        let answer = self.haproxy.command("show servers state web");
        answer
            .lines()
            .filter(|l| !l.starts_with('#') && l.split_whitespace().count() > 5)
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let admin: u32 = f[6].parse().expect("srv_admin_state");
                format!(
                    "{} {}:{} maint={} weight={}/{} check={}",
                    f[3],
                    f[4],
                    f[18],
                    admin & 1 != 0,
                    f[7],
                    f[8],
                    f[13]
                )
            })
            .collect()
    }
}

pub fn config(root: &Path, front: u16, slots: &[Slot], extra: &str) -> String {
    let mut cfg = format!(
        "global\n    stats socket {}/run/admin.sock mode 600 level admin expose-fd listeners\n\
         defaults\n    mode http\n    timeout connect 1s\n    timeout client 5s\n    timeout server 5s\n\
         frontend fe\n    bind 127.0.0.1:{front}\n    default_backend web\n\
         backend web\n    balance roundrobin\n{extra}    # converge: runtime-api\n",
        root.display()
    );
    for (i, slot) in slots.iter().enumerate() {
        let (name, endpoint, disabled) = match slot {
            Slot::To(port) => (format!("web-s{}", i + 1), format!("127.0.0.1:{port}"), ""),
            Slot::Empty => (
                format!("web-s{}", i + 1),
                "127.0.0.1:1".to_string(),
                " disabled",
            ),
            Slot::Own(name, port) => (name.to_string(), format!("127.0.0.1:{port}"), ""),
        };
        cfg.push_str(&format!(
            "    server {name} {endpoint} check inter 500ms{disabled}\n"
        ));
    }
    cfg
}

pub fn backends() -> (HttpBackend, HttpBackend, HttpBackend) {
    let b = |n: &str| HttpBackend::start(n).expect("backend");
    (b("b1"), b("b2"), b("b3"))
}

/// An application server that holds each request until the test answers
/// it: a connection still in use when its server leaves HAProxy.
pub struct Held {
    listener: TcpListener,
}

impl Held {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        Self { listener }
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().expect("addr").port()
    }

    /// The first connection that carries a request (HAProxy's health
    /// checks connect and close without one).
    pub fn request(&self) -> TcpStream {
        wait::until_some(DEADLINE, "a request to the held server", || {
            let (mut conn, _) = self.listener.accept().ok()?;
            conn.set_nonblocking(false).ok()?;
            conn.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
            let mut buf = [0u8; 1024];
            matches!(conn.read(&mut buf), Ok(n) if n > 0).then_some(conn)
        })
        .expect("a request")
    }
}

/// Answers a held request with `body`.
pub fn answer(mut conn: TcpStream, body: &str) {
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(response.as_bytes()).expect("answer");
}
