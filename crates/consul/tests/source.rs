//! The catalog source against a real agent: snapshots follow check flips
//! and (de)registrations, an outage keeps the last good snapshot (stale,
//! degraded) and recovers through an index reset, and 600 watched services
//! stay within the connection bound.

mod common;

use std::time::Duration;

use common::wait_state;
use converge_consul::{CatalogSource, Config, Pacing, SourceConfig, SourceHealth, SourceState};
use converge_model::{Freshness, Health};
use converge_testkit::consul::{open_connections_to, ConsulAgent, PeakConnections};
use converge_testkit::wait;

fn agent() -> ConsulAgent {
    ConsulAgent::start().unwrap_or_else(|e| panic!("cannot start the real consul agent: {e}"))
}

fn source(agent: &ConsulAgent, config: SourceConfig) -> CatalogSource {
    let consul = Config::new(&agent.http_url()).expect("config");
    CatalogSource::connect(consul, config).expect("source")
}

fn health(s: &SourceState, service: &str, id: &str) -> Option<Health> {
    s.catalog
        .service(service)?
        .instances
        .iter()
        .find(|i| i.id == id)
        .map(|i| i.health)
}

fn ids(s: &SourceState, service: &str) -> Vec<String> {
    s.catalog
        .service(service)
        .map(|e| e.instances.iter().map(|i| i.id.clone()).collect())
        .unwrap_or_default()
}

const T: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_follow_check_flips_and_registrations() {
    let a = agent();
    let web1 = a
        .register_service_with_ttl("web-1", "web", 8081, &["a"])
        .expect("web-1");
    a.register_service_with_ttl("web-2", "web", 8082, &["b"])
        .expect("web-2");
    a.register_service_with_ttl("db-1", "db", 5432, &[])
        .expect("db-1");
    let mut cfg = SourceConfig::new(["web", "db", "ghost"]);
    // A long wait: every change below must arrive through a wake-up, not
    // through the wait running out.
    cfg.pacing = Pacing {
        wait: Duration::from_secs(300),
        ..Pacing::default()
    };
    let src = source(&a, cfg);
    let mut rx = src.subscribe();

    let s = wait_state(&mut rx, "web-1, web-2 and db-1", T, |s| {
        s.health == SourceHealth::Healthy && ids(s, "web").len() == 2 && ids(s, "db").len() == 1
    })
    .await;
    assert_eq!(ids(&s, "web"), vec!["web-1", "web-2"], "sorted");
    // A service nobody registered is really empty, and fresh.
    let ghost = s.catalog.service("ghost").expect("ghost was read");
    assert!(ghost.instances.is_empty());
    assert_eq!(ghost.freshness, Freshness::Fresh);
    assert!(s.is_complete());
    let db_before = s.catalog.service("db").cloned();

    for (what, want) in [
        ("warn", Health::Warning),
        ("fail", Health::Critical),
        ("pass", Health::Passing),
    ] {
        tokio::task::block_in_place(|| match what {
            "warn" => a.warn(&web1),
            "fail" => a.fail(&web1),
            _ => a.pass(&web1),
        })
        .expect(what);
        let s = wait_state(&mut rx, &format!("web-1 {want:?}"), T, |s| {
            health(s, "web", "web-1") == Some(want)
        })
        .await;
        assert_eq!(health(&s, "web", "web-2"), Some(Health::Passing));
        assert_eq!(s.catalog.service("db").cloned(), db_before, "db untouched");
    }

    tokio::task::block_in_place(|| a.deregister("web-2")).expect("deregister");
    wait_state(&mut rx, "web-2 gone", T, |s| ids(s, "web") == vec!["web-1"]).await;

    // An instance with no check changes no check: the catalog watch has to
    // catch it.
    tokio::task::block_in_place(|| a.register_service("web-3", "web", 8083)).expect("web-3");
    let s = wait_state(&mut rx, "check-less web-3", T, |s| {
        ids(s, "web") == vec!["web-1", "web-3"]
    })
    .await;
    assert_eq!(health(&s, "web", "web-3"), Some(Health::Passing));

    // The watched set can change at run time.
    src.set_services(["db".to_string()].into());
    let s = wait_state(&mut rx, "only db watched", T, |s| {
        s.catalog.services().keys().collect::<Vec<_>>() == vec!["db"]
    })
    .await;
    assert!(s.is_complete());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_keeps_last_good_snapshot_then_recovers_through_an_index_reset() {
    let mut a = agent();
    a.register_service_with_ttl("web-1", "web", 8081, &[])
        .expect("web-1");
    let mut cfg = SourceConfig::new(["web"]);
    cfg.pacing = Pacing {
        wait: Duration::from_secs(300),
        ..Pacing::default()
    };
    cfg.retry_cap = Duration::from_secs(1);
    let client = cfg
        .client(Config::new(&a.http_url()).expect("config"))
        .expect("client");
    let src = CatalogSource::spawn(client.clone(), cfg);
    let mut rx = src.subscribe();
    wait_state(&mut rx, "web-1 fresh", T, |s| {
        s.health == SourceHealth::Healthy && ids(s, "web") == vec!["web-1"]
    })
    .await;
    // Push the Raft index well past where a fresh agent starts, so the
    // restart below really moves it backwards, and let the watches see it.
    tokio::task::block_in_place(|| {
        for i in 0..50 {
            a.kv_put(&format!("pad/{i}"), "x").expect("pad");
        }
    });
    tokio::task::block_in_place(|| a.warn("ttl:web-1")).expect("warn");
    let good = wait_state(&mut rx, "web-1 warning", T, |s| {
        health(s, "web", "web-1") == Some(Health::Warning)
    })
    .await;
    let index_before = good.catalog.index;
    assert!(index_before > 50, "{index_before}");

    tokio::task::block_in_place(|| a.stop());
    let s = wait_state(&mut rx, "degraded while consul is down", T, |s| {
        matches!(s.health, SourceHealth::Degraded { .. })
    })
    .await;
    let web = s.catalog.service("web").expect("web kept");
    assert_eq!(
        web.instances,
        good.catalog.service("web").expect("web").instances
    );
    match &web.freshness {
        Freshness::Stale { error, .. } => assert!(error.contains("cannot reach Consul"), "{error}"),
        Freshness::Fresh => panic!("must be stale while consul is down"),
    }
    match &s.health {
        SourceHealth::Degraded { config_error, .. } => assert!(!config_error),
        other => panic!("{other:?}"),
    }

    // Still the last good instances after both watches asked again, and
    // failed, twice each.
    let tried = client.requests_sent();
    tokio::task::block_in_place(|| {
        wait::until(T, "four more requests to the stopped agent", || {
            client.requests_sent() >= tried + 4
        })
    })
    .expect("the watches keep retrying");
    let s = rx.borrow().clone();
    assert_eq!(ids(&s, "web"), vec!["web-1"]);
    assert!(
        matches!(
            s.catalog.service("web").expect("web").freshness,
            Freshness::Stale { .. }
        ),
        "{s:#?}"
    );

    // Back, with an empty in-memory catalog and a lower index.
    tokio::task::block_in_place(|| a.start_again()).expect("start again");
    tokio::task::block_in_place(|| a.register_service_with_ttl("web-9", "web", 8089, &[]))
        .expect("web-9");
    // The agent restores its own registrations from its data dir; the
    // Raft index starts again from scratch.
    let s = wait_state(&mut rx, "recovered with web-9", T, |s| {
        s.health == SourceHealth::Healthy && ids(s, "web") == vec!["web-1", "web-9"]
    })
    .await;
    assert_eq!(
        s.catalog.service("web").expect("web").freshness,
        Freshness::Fresh
    );
    assert!(
        s.catalog.index < index_before,
        "index {} should have gone back from {index_before}",
        s.catalog.index
    );

    // And it keeps following changes after the reset.
    tokio::task::block_in_place(|| a.fail("ttl:web-9")).expect("fail");
    wait_state(&mut rx, "web-9 critical after recovery", T, |s| {
        health(s, "web", "web-9") == Some(Health::Critical)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_hundred_watched_services_stay_within_32_connections() {
    const N: usize = 600;
    let a = agent();
    let port = a.http_addr().port();
    let mut checks = Vec::new();
    tokio::task::block_in_place(|| {
        for i in 0..N {
            checks.push(
                a.register_service_with_ttl(
                    &format!("s{i}-1"),
                    &format!("s{i}"),
                    10_000 + i as u16,
                    &[],
                )
                .expect("register"),
            );
        }
    });

    // Sample this process's connections to the agent all along.
    let peak = PeakConnections::start(port);

    let names: Vec<String> = (0..N).map(|i| format!("s{i}")).collect();
    let consul = Config::new(&a.http_url()).expect("config");
    let mut cfg = SourceConfig::new(names);
    cfg.pacing = Pacing {
        wait: Duration::from_secs(300),
        ..Pacing::default()
    };
    let client = cfg.client(consul).expect("client");
    let src = CatalogSource::spawn(client.clone(), cfg);
    let mut rx = src.subscribe();
    let s = wait_state(
        &mut rx,
        "all 600 services read",
        Duration::from_secs(60),
        |s| s.health == SourceHealth::Healthy && s.catalog.services().len() == N,
    )
    .await;
    assert!(s
        .catalog
        .services()
        .values()
        .all(|e| e.instances.len() == 1));
    let after_start = peak.so_far();

    // A burst of flips, then a check-less registration that forces a full
    // refetch of all 600 through the pool.
    for check in checks.iter().take(50) {
        tokio::task::block_in_place(|| a.fail(check)).expect("fail");
    }
    wait_state(&mut rx, "50 flips", T, |s| {
        (0..50).all(|i| health(s, &format!("s{i}"), &format!("s{i}-1")) == Some(Health::Critical))
    })
    .await;
    tokio::task::block_in_place(|| a.register_service("s7-extra", "s7", 9999)).expect("extra");
    wait_state(&mut rx, "full refetch", T, |s| ids(s, "s7").len() == 2).await;

    let steady = open_connections_to(port);
    let peak = peak.finish();
    eprintln!(
        "connections to consul with {N} watched services: peak during start {after_start}, \
         peak overall {peak}, idle now {steady}; requests sent {}",
        client.requests_sent()
    );
    assert!(
        peak > 2,
        "the sampler saw no fetch burst at all ({peak}); is it counting?"
    );
    assert!(peak <= 32, "{peak} connections to consul, bound is 32");
}
