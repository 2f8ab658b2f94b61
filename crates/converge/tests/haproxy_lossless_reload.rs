//! Reloads that converge performs lose no request: keep-alive clients
//! keep sending through a real HAProxy (master-worker) while `converge
//! apply --once` changes its server set and reloads it, round after round.
//!
//! HAProxy's soft stop closes idle keep-alive connections of the old
//! worker; a client that sends on one at that moment gets no answer
//! (`remote end closed connection`). The shipped template's `option
//! idle-close-on-response` makes the old worker answer the next request
//! with `Connection: close` instead, so the client moves to the new worker
//! without losing anything. Each client here is as naive as the ones that
//! reported the loss: it sends on its open connection and only reconnects
//! when told to close.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use common::{assert_exit, haproxy_site, http_backends, stdout, Workspace};
use converge_testkit::{free_port, wait};

/// Keep-alive connections, as in the report.
const CLIENTS: usize = 50;
/// Reloads converge performs under load.
const RELOADS: usize = 50;
/// Each client's pause between two requests: long enough to be idle when
/// a soft stop comes, short enough to send again soon after.
const PACE: Duration = Duration::from_millis(20);

fn catalog(ports: &[u16]) -> String {
    let mut s = String::from("services:\n  web:\n");
    for (i, p) in ports.iter().enumerate() {
        s.push_str(&format!(
            "    - {{id: web-{i}, node: app{i}, address: 127.0.0.1, port: {p}, health: passing}}\n"
        ));
    }
    s
}

/// What the clients have seen, shared with the test.
#[derive(Default)]
struct Tally {
    /// Answered requests, per client.
    ok: Vec<AtomicU64>,
    /// Requests that got no complete answer, with why.
    failed: Mutex<Vec<String>>,
}

/// One client: HTTP/1.1 keep-alive requests on one connection until told
/// to stop; a new connection only after `Connection: close` or a failure.
fn client(port: u16, me: usize, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    let mut conn: Option<BufReader<TcpStream>> = None;
    while !stop.load(Ordering::SeqCst) {
        let c = match conn.take() {
            Some(c) => c,
            None => match connect(port) {
                Ok(c) => c,
                Err(e) => {
                    tally
                        .failed
                        .lock()
                        .expect("tally")
                        .push(format!("client {me}: connect: {e}"));
                    std::thread::sleep(PACE);
                    continue;
                }
            },
        };
        match exchange(c) {
            Ok(keep) => {
                tally.ok[me].fetch_add(1, Ordering::SeqCst);
                conn = keep;
            }
            Err(e) => tally
                .failed
                .lock()
                .expect("tally")
                .push(format!("client {me}: {e}")),
        }
        std::thread::sleep(PACE);
    }
}

fn connect(port: u16) -> std::io::Result<BufReader<TcpStream>> {
    let s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    Ok(BufReader::new(s))
}

/// Sends `GET /` and reads the whole answer; returns the connection when
/// the server keeps it open.
fn exchange(mut c: BufReader<TcpStream>) -> Result<Option<BufReader<TcpStream>>, String> {
    c.get_mut()
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .map_err(|e| format!("send: {e}"))?;
    let mut status = String::new();
    match c.read_line(&mut status) {
        Ok(0) => return Err("remote end closed connection without response".into()),
        Ok(_) => {}
        Err(e) => return Err(format!("read status: {e}")),
    }
    if !status.starts_with("HTTP/1.1 200") {
        return Err(format!("status {}", status.trim_end()));
    }
    let (mut len, mut close) = (0usize, false);
    loop {
        let mut line = String::new();
        match c.read_line(&mut line) {
            Ok(0) => return Err("closed in the headers".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("read headers: {e}")),
        }
        let line = line.trim_end().to_ascii_lowercase();
        if line.is_empty() {
            break;
        }
        if let Some(v) = line.strip_prefix("content-length:") {
            len = v
                .trim()
                .parse()
                .map_err(|e| format!("content-length: {e}"))?;
        }
        if line.starts_with("connection:") && line.contains("close") {
            close = true;
        }
    }
    let mut body = vec![0u8; len];
    c.read_exact(&mut body)
        .map_err(|e| format!("read body: {e}"))?;
    Ok((!close).then_some(c))
}

#[test]
fn reloads_under_keep_alive_load_lose_no_request() {
    let backends = http_backends(3);
    let ports: Vec<u16> = backends.iter().map(|b| b.port()).collect();
    let front = free_port();
    let ws = Workspace::custom(
        &haproxy_site(front, "", "haproxy", true),
        &catalog(&ports[..2]),
    );
    assert_exit(&ws.converge(&["apply", "--once", "--node", "lb1"]), 0);
    let haproxy = ws.start_haproxy();
    let loaded = |n: usize| haproxy.log().matches("Loading success.").count() >= n;

    let tally = Arc::new(Tally {
        ok: (0..CLIENTS).map(|_| AtomicU64::new(0)).collect(),
        failed: Mutex::default(),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<JoinHandle<()>> = (0..CLIENTS)
        .map(|me| {
            let (tally, stop) = (tally.clone(), stop.clone());
            std::thread::spawn(move || client(front, me, tally, stop))
        })
        .collect();
    // Every client has been answered since `since`, at least twice: its
    // connection from before the last reload has been used and, told to
    // close, replaced.
    let all_answered_twice = |since: &[u64]| {
        tally
            .ok
            .iter()
            .zip(since)
            .all(|(n, s)| n.load(Ordering::SeqCst) >= s + 2)
    };
    let snapshot = || -> Vec<u64> { tally.ok.iter().map(|n| n.load(Ordering::SeqCst)).collect() };
    let zero = vec![0; CLIENTS];
    wait::until(
        Duration::from_secs(10),
        "every client to be answered",
        || all_answered_twice(&zero),
    )
    .unwrap_or_else(|e| panic!("{e}\nfailed: {:?}", tally.failed.lock().expect("tally")));

    for round in 1..=RELOADS {
        // Two or three servers, alternately: a change that needs a reload.
        let n = if round % 2 == 1 { 3 } else { 2 };
        ws.write("catalog.yaml", &catalog(&ports[..n]));
        let before = snapshot();
        let out = ws.converge(&["apply", "--once", "--node", "lb1"]);
        assert_exit(&out, 0);
        assert!(stdout(&out).contains("reloaded"), "{}", stdout(&out));
        // The next SIGUSR2 is acted on only once the new master catches it
        // (see the testkit's haproxy module); the clients must have used
        // their connections across this reload before the next one.
        wait::until(
            Duration::from_secs(10),
            "haproxy to load the change",
            || loaded(round + 1) && haproxy.master_catches_sigusr2(),
        )
        .unwrap_or_else(|e| panic!("round {round}: {e}\nhaproxy log:\n{}", haproxy.log()));
        wait::until(
            Duration::from_secs(10),
            "every client to be answered after the reload",
            || all_answered_twice(&before),
        )
        .unwrap_or_else(|e| panic!("round {round}: {e}"));
    }

    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().expect("client thread");
    }
    let answered: u64 = snapshot().iter().sum();
    let failed = tally.failed.lock().expect("tally");
    assert!(
        failed.is_empty(),
        "{} of {} requests failed across {RELOADS} reloads:\n{}",
        failed.len(),
        answered + failed.len() as u64,
        failed.join("\n")
    );
}
