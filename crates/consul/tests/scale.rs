//! The source's cost follows what is watched, not the datacenter: against
//! a real agent holding a synthetic datacenter of external nodes, churn on
//! unwatched services costs nothing in per-service mode and two small
//! answers per flip in shared mode (counted through a proxy);
//! every kind of change to a watched service is still seen in both modes
//! and across a switch between them; and thousands of per-service long
//! polls over HTTP/2 fit in a few connections, which they keep past the
//! connection pool's idle timeout.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::wait_state;
use converge_consul::client::{QueryOptions, H2_STREAMS, MAX_CONNECTIONS, POOL_IDLE_TIMEOUT};
use converge_consul::{
    CatalogSource, Client, Config, Pacing, SourceConfig, SourceHealth, SourceState,
};
use converge_model::Health;
use converge_testkit::consul::{open_connections_to, ConsulAgent, External, PeakConnections};
use converge_testkit::proxy::{by_endpoint, CountingProxy};
use converge_testkit::wait;
use tokio::sync::watch;

const T: Duration = Duration::from_secs(30);

/// More services than the default source client holds long polls for over
/// HTTP/1.1 (3 + 12), so the source runs its shared watches.
const SHARED: usize = 40;

/// Few enough for one long poll each over HTTP/1.1.
const PER_SERVICE: usize = 5;

fn agent() -> ConsulAgent {
    ConsulAgent::start().unwrap_or_else(|e| panic!("cannot start the real consul agent: {e}"))
}

fn names(n: usize) -> BTreeSet<String> {
    (0..n).map(|i| format!("s{i}")).collect()
}

/// A source for `s0..s{n}` with a long wait, so nothing in a test window
/// comes from a wait running out.
fn source(client: Client, n: usize) -> CatalogSource {
    let mut cfg = SourceConfig::new(names(n));
    cfg.pacing = Pacing {
        wait: Duration::from_secs(300),
        ..Pacing::default()
    };
    CatalogSource::spawn(client, cfg)
}

fn client_for(url: &str) -> Client {
    SourceConfig::new(["x"])
        .client(Config::new(url).expect("config"))
        .expect("client")
}

fn instance(s: &SourceState, e: External) -> Option<&converge_model::Instance> {
    s.catalog
        .service(&e.service_name())?
        .instances
        .iter()
        .find(|i| i.id == e.id())
}

fn health(s: &SourceState, e: External) -> Option<Health> {
    instance(s, e).map(|i| i.health)
}

fn on(f: impl FnOnce() -> Result<(), String>) {
    tokio::task::block_in_place(f).expect("change the catalog");
}

/// Waits until the proxy has seen a blocking query for each of `s0..s{n}`:
/// every per-service watch is armed. A watch still being armed when the
/// window opens would be counted as if an unwatched flip had woken it (on
/// a loaded machine the last of them can go out after the first flip).
fn armed(proxy: &CountingProxy, n: usize) {
    tokio::task::block_in_place(|| {
        wait::until(T, "every per-service watch armed", || {
            let seen = proxy.seen();
            (0..n).all(|i| {
                let endpoint = format!("GET /v1/health/service/s{i}");
                seen.iter().any(|r| r.blocking && r.endpoint == endpoint)
            })
        })
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", by_endpoint(&proxy.seen())));
}

/// Flips `e` to `status` and waits for the source to show `want`.
async fn flip(
    a: &ConsulAgent,
    rx: &mut watch::Receiver<SourceState>,
    e: External,
    status: &str,
    want: Health,
) {
    on(|| a.set_external(e, e.port(), status));
    wait_state(rx, &format!("{} {want:?}", e.id()), T, |s| {
        health(s, e) == Some(want)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwatched_churn_reads_nothing_per_service_and_under_10_kb_a_flip_shared() {
    const FLIPS: usize = 20;
    let a = agent();
    tokio::task::block_in_place(|| a.register_synthetic(300, 4)).expect("datacenter");
    let watched = External {
        service: 0,
        instance: 0,
    };
    let unwatched = External {
        service: 250,
        instance: 1,
    };
    for n in [PER_SERVICE, SHARED] {
        let proxy = CountingProxy::start(a.http_addr()).expect("proxy");
        let src = source(client_for(&proxy.url()), n);
        let mut rx = src.subscribe();
        wait_state(&mut rx, "every watched service read", T, |s| {
            s.health == SourceHealth::Healthy && s.catalog.services().len() == n
        })
        .await;
        // One watched change first, so whatever follows start-up (a read
        // to confirm, a re-armed watch) is over before the window opens.
        flip(&a, &mut rx, watched, "critical", Health::Critical).await;
        if n == PER_SERVICE {
            armed(&proxy, n);
        }

        let (bytes, requests) = (proxy.bytes_received(), proxy.seen().len());
        for k in 0..FLIPS {
            let status = if k % 2 == 0 { "critical" } else { "passing" };
            on(|| a.set_external(unwatched, unwatched.port(), status));
        }
        // A watched flip closes the window: once it shows, the agent has
        // applied (and the source has been woken by) every flip before it.
        flip(&a, &mut rx, watched, "passing", Health::Passing).await;
        let read = proxy.bytes_received() - bytes;
        let seen = proxy.seen()[requests..].to_vec();
        let endpoints = by_endpoint(&seen);
        eprintln!("{n} watched: {FLIPS} unwatched flips + 1 watched: {read} bytes, {endpoints:?}");
        if n == PER_SERVICE {
            assert!(
                seen.iter()
                    .all(|r| r.endpoint == "GET /v1/health/service/s0"),
                "an unwatched flip made the per-service source ask something: {endpoints:?}"
            );
            assert!(seen.len() <= 2, "{endpoints:?}");
            assert!(read < 10_000, "{read} bytes for one watched flip");
        } else {
            // The two watches may go round; no other service is read.
            let allowed = [
                "GET /v1/health/state/critical",
                "GET /v1/health/state/warning",
                "GET /v1/catalog/services",
                "GET /v1/health/service/s0",
            ];
            assert!(
                seen.iter().all(|r| allowed.contains(&r.endpoint.as_str())),
                "an unwatched flip made the shared source read a service: {endpoints:?}"
            );
            let per_flip = read / (FLIPS as u64 + 1);
            assert!(per_flip < 10_000, "{per_flip} bytes per flip");
        }
    }
}

/// Every kind of change to a watched service, in per-service mode, in
/// shared mode, and across switches between the two: a check flip through
/// critical and warning back to passing, a new port with no check change,
/// a node check, a deregistration and a registration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_watched_change_is_seen_in_both_modes() {
    let a = agent();
    tokio::task::block_in_place(|| a.register_synthetic(SHARED + 10, 3)).expect("datacenter");
    let e = |instance| External {
        service: 1,
        instance,
    };
    let src = source(client_for(&a.http_url()), PER_SERVICE);
    let mut rx = src.subscribe();
    for (round, n) in [(0, PER_SERVICE), (1, SHARED), (2, PER_SERVICE)] {
        src.set_services(names(n));
        wait_state(&mut rx, &format!("{n} services"), T, |s| {
            s.health == SourceHealth::Healthy && s.catalog.services().len() == n
        })
        .await;
        flip(&a, &mut rx, e(0), "critical", Health::Critical).await;
        flip(&a, &mut rx, e(0), "warning", Health::Warning).await;
        flip(&a, &mut rx, e(0), "passing", Health::Passing).await;

        let port = 9000 + round;
        on(|| a.set_external(e(1), port, "passing"));
        wait_state(&mut rx, "a new port with no check change", T, |s| {
            instance(s, e(1)).is_some_and(|i| i.port == port)
        })
        .await;

        on(|| a.set_external_node_check(e(2), "critical"));
        wait_state(&mut rx, "a node check", T, |s| {
            health(s, e(2)) == Some(Health::Critical)
        })
        .await;
        on(|| a.set_external_node_check(e(2), "passing"));
        wait_state(&mut rx, "the node check passing", T, |s| {
            health(s, e(2)) == Some(Health::Passing)
        })
        .await;

        on(|| a.deregister_external(e(0)));
        wait_state(&mut rx, "a deregistration", T, |s| {
            s.catalog.service("s1").is_some() && instance(s, e(0)).is_none()
        })
        .await;
        on(|| a.set_external(e(0), e(0).port(), "warning"));
        wait_state(&mut rx, "a registration", T, |s| {
            health(s, e(0)) == Some(Health::Warning)
        })
        .await;
        on(|| a.set_external(e(0), e(0).port(), "passing"));
    }
}

/// 2,000 services watched over HTTPS, where Consul speaks HTTP/2: each
/// has its own long poll, all in flight at once (so at least
/// 2,000 / [`H2_STREAMS`] connections), and still no more than 32.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_long_polls_over_http2_fit_in_a_few_connections() {
    const N: usize = 2000;
    let a = ConsulAgent::start_with_tls()
        .unwrap_or_else(|e| panic!("cannot start the real consul agent with TLS: {e}"));
    tokio::task::block_in_place(|| a.register_synthetic(N, 1)).expect("datacenter");
    let config = tls_config(&a);
    let port = a.ports().https;

    let peak = PeakConnections::start(port);

    let client = SourceConfig::new(["x"]).client(config).expect("client");
    let src = source(client.clone(), N);
    let mut rx = src.subscribe();
    wait_state(&mut rx, "all 2,000 services read", T, |s| {
        s.health == SourceHealth::Healthy && s.catalog.services().len() == N
    })
    .await;
    assert!(
        client.multiplexed().await.expect("asked"),
        "HTTP/2 expected"
    );
    let last = External {
        service: N - 1,
        instance: 0,
    };
    flip(&a, &mut rx, last, "critical", Health::Critical).await;

    let peak = peak.finish();
    eprintln!("{N} long polls over HTTP/2: peak {peak} connections");
    assert!(
        peak >= N.div_ceil(H2_STREAMS),
        "{peak} connections cannot carry {N} long polls at once"
    );
    assert!(peak <= 32, "{peak} connections to consul, bound is 32");
}

/// The bound holds after the connection pool's idle timeout: 5,000 long
/// polls (25 lanes) stay in flight for longer than
/// [`POOL_IDLE_TIMEOUT`], then half of them are replaced by new ones,
/// which go to every lane. A lane whose connection the pool had forgotten
/// while its polls were in flight would open a second one beside it
/// (about 50 connections in all); each lane keeps its one.
///
/// Takes about 45 s, most of it the idle timeout the polls must outlast.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_lanes_keep_their_connections_past_the_pool_idle_timeout() {
    const N: usize = 25 * H2_STREAMS;
    let a = ConsulAgent::start_with_tls()
        .unwrap_or_else(|e| panic!("cannot start the real consul agent with TLS: {e}"));
    let client = Client::new(tls_config(&a)).expect("client");
    client.kv_put("k", b"0", None).await.expect("put");
    let index = client
        .kv_get("k", &QueryOptions::default())
        .await
        .expect("read")
        .meta
        .index;
    assert!(
        client.multiplexed().await.expect("asked"),
        "HTTP/2 expected"
    );
    let port = a.ports().https;
    let peak = PeakConnections::start(port);

    let opts = QueryOptions {
        index,
        wait: Some(Duration::from_secs(300)),
        ..QueryOptions::default()
    };
    let poll = || {
        let (client, opts) = (client.clone(), opts.clone());
        tokio::spawn(async move { client.kv_get("k", &opts).await })
    };
    let sent = client.requests_sent();
    let mut polls: Vec<_> = (0..N).map(|_| poll()).collect();
    let in_flight = |n: usize| {
        let client = client.clone();
        move || client.requests_sent() >= sent + n as u64
    };
    until("every long poll sent", in_flight(N));
    tokio::time::sleep(POOL_IDLE_TIMEOUT + Duration::from_secs(2)).await;

    // Every other poll ends and is replaced: each lane frees about half
    // its slots and gets about as many new requests.
    for p in polls.iter().skip(1).step_by(2) {
        p.abort();
    }
    polls.extend((0..N / 2).map(|_| poll()));
    until("every new long poll sent", in_flight(N + N / 2));
    until("the connections settled", settled(port));

    let peak = peak.finish();
    eprintln!("{N} long polls over HTTP/2 past the pool idle timeout: peak {peak} connections");
    assert!(
        peak <= MAX_CONNECTIONS,
        "{peak} connections to consul, bound is {MAX_CONNECTIONS}"
    );

    // The polls still in flight all answer the change. A poll whose
    // request failed (on a loaded machine a connection can end under its
    // polls) is sent again, as the source does, and must see it too.
    client.kv_put("k", b"1", None).await.expect("put");
    let (mut answered, mut resent) = (0, Vec::new());
    for p in polls {
        match p.await {
            Ok(Ok(r)) => {
                assert!(r.meta.index > index, "a poll answered without the change");
                answered += 1;
            }
            Ok(Err(e)) => resent.push(e.to_string()),
            Err(e) => assert!(e.is_cancelled(), "a poll panicked: {e}"),
        }
    }
    if let Some(first) = resent.first() {
        eprintln!(
            "{} long polls failed and were sent again; the first: {first}",
            resent.len()
        );
    }
    for _ in 0..resent.len() {
        let r = client.kv_get("k", &opts).await.expect("a poll sent again");
        assert!(r.meta.index > index, "a poll sent again missed the change");
        answered += 1;
    }
    assert_eq!(answered, N, "every poll still in flight answers");
}

fn until(what: &str, cond: impl FnMut() -> bool) {
    tokio::task::block_in_place(|| wait::until(T, what, cond)).unwrap_or_else(|e| panic!("{e}"));
}

/// True once this process's connections to `port` have not changed for a
/// second, polled every 50 ms.
fn settled(port: u16) -> impl FnMut() -> bool {
    let mut last = (usize::MAX, std::time::Instant::now());
    move || {
        let now = open_connections_to(port);
        if now != last.0 {
            last = (now, std::time::Instant::now());
        }
        last.1.elapsed() >= Duration::from_secs(1)
    }
}

/// A client config for `a`'s HTTPS listener, which speaks HTTP/2.
fn tls_config(a: &ConsulAgent) -> Config {
    let vars = a.tls_client_vars(&a.https_url());
    Config::from_vars(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()))
        .expect("config")
}
