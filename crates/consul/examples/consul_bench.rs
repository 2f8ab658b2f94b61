//! Measures the catalog source against a real `consul agent -dev`:
//!
//! - latency from a TTL check flip (the agent API call) to the snapshot
//!   that shows it, p50/p99 over `--flips` flips;
//! - requests per minute to Consul while nothing changes;
//! - open connections to Consul (peak and idle) for `--services` watched
//!   services.
//!
//! ```text
//! cargo run --release -p converge-consul --example consul_bench -- \
//!     --services 600 --flips 200 --gap-ms 200 --idle-secs 60
//! ```

use std::time::{Duration, Instant};

use converge_consul::{
    CatalogSource, Config, HealthQuery, QueryOptions, SourceConfig, SourceHealth,
};
use converge_model::Health;
use converge_testkit::consul::{open_connections_to, ConsulAgent, PeakConnections};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number"))
        })
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let services = arg("--services", 600) as usize;
    let flips = arg("--flips", 200) as usize;
    let idle_secs = arg("--idle-secs", 60);
    // Pause before each flip, so a flip does not land inside the watch's
    // minimum interval after the previous one (that floor is measured
    // with --gap-ms 0).
    let gap = Duration::from_millis(arg("--gap-ms", 200));
    // --direct 1: measure when a direct poll of the catalog sees the flip
    // instead (the floor set by the agent itself).
    let direct = arg("--direct", 0) == 1;

    let agent = ConsulAgent::start().unwrap_or_else(|e| panic!("cannot start consul: {e}"));
    let port = agent.http_addr().port();
    let mut checks = Vec::with_capacity(services);
    for i in 0..services {
        checks.push(
            agent
                .register_service_with_ttl(&format!("s{i}-1"), &format!("s{i}"), 20_000, &[])
                .expect("register"),
        );
    }

    let peak = PeakConnections::start(port);

    let cfg = SourceConfig::new((0..services).map(|i| format!("s{i}")));
    let client = cfg
        .client(Config::new(&agent.http_url()).expect("config"))
        .expect("client");
    let started = Instant::now();
    let source = CatalogSource::spawn(client.clone(), cfg);
    let mut rx = source.subscribe();
    rx.wait_for(|s| s.health == SourceHealth::Healthy && s.catalog.services().len() == services)
        .await
        .expect("source");
    println!(
        "initial snapshot of {services} services in {:?} ({} requests)",
        started.elapsed(),
        client.requests_sent()
    );

    let mut latencies = Vec::with_capacity(flips);
    for k in 0..flips {
        let i = k % services;
        let name = format!("s{i}");
        let current = rx.borrow().catalog.service(&name).expect("svc").instances[0].health;
        let want = if current == Health::Passing {
            Health::Critical
        } else {
            Health::Passing
        };
        tokio::time::sleep(gap).await;
        let t0 = Instant::now();
        tokio::task::block_in_place(|| {
            if want == Health::Critical {
                agent.fail(&checks[i])
            } else {
                agent.pass(&checks[i])
            }
        })
        .expect("flip");
        if direct {
            // Reference: how soon the catalog itself shows the flip, by
            // polling it directly every millisecond (no blocking query).
            loop {
                let r = client
                    .health_service(&name, &HealthQuery::default(), &QueryOptions::default())
                    .await
                    .expect("read");
                if r.value[0].health == want {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let reached = t0.elapsed();
            rx.wait_for(|s| {
                s.catalog
                    .service(&name)
                    .is_some_and(|e| e.instances[0].health == want)
            })
            .await
            .expect("source");
            latencies.push(reached);
        } else {
            rx.wait_for(|s| {
                s.catalog
                    .service(&name)
                    .is_some_and(|e| e.instances[0].health == want)
            })
            .await
            .expect("source");
            latencies.push(t0.elapsed());
        }
    }
    latencies.sort();
    if !latencies.is_empty() {
        println!(
            "flip -> {} over {} flips ({gap:?} apart): p50 {:?}, p99 {:?}, max {:?}",
            if direct {
                "direct catalog poll"
            } else {
                "snapshot"
            },
            latencies.len(),
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.99),
            latencies[latencies.len() - 1]
        );
    }

    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = client.requests_sent();
    tokio::time::sleep(Duration::from_secs(idle_secs)).await;
    let idle = client.requests_sent() - before;
    println!(
        "idle: {idle} requests in {idle_secs} s = {:.1} requests/minute",
        idle as f64 * 60.0 / idle_secs as f64
    );

    let now = open_connections_to(port);
    println!(
        "connections to consul with {services} watched services: peak {}, idle {now}",
        peak.finish()
    );
}
