//! The client against a real `consul agent -dev`: health mapping and
//! filters, catalog, KV with CAS, agent and status endpoints, blocking
//! queries, index reset across an agent restart, and errors while the
//! agent is down.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use converge_consul::{
    BlockingQuery, Client, Config, Consistency, Error, HealthQuery, IndexOutcome, Pacing,
    QueryOptions,
};
use converge_model::Health;
use converge_testkit::consul::{open_connections_to, ConsulAgent};
use converge_testkit::wait;

fn agent() -> ConsulAgent {
    ConsulAgent::start().unwrap_or_else(|e| panic!("cannot start the real consul agent: {e}"))
}

fn client(agent: &ConsulAgent) -> Client {
    Client::new(Config::new(&agent.http_url()).expect("config")).expect("client")
}

fn q() -> QueryOptions {
    QueryOptions::default()
}

/// Registers `web-1` with a TTL check and waits until `c` reads it: its
/// check id, and the answer to block on.
async fn register_web_1(
    a: &ConsulAgent,
    c: &Client,
) -> (
    String,
    converge_consul::Response<Vec<converge_model::Instance>>,
) {
    let check = a
        .register_service_with_ttl("web-1", "web", 80, &[])
        .expect("register");
    let first = eventually("web-1 registered", Duration::from_secs(10), || async {
        let r = c
            .health_service("web", &HealthQuery::default(), &q())
            .await
            .ok()?;
        (!r.value.is_empty()).then_some(r)
    })
    .await;
    (check, first)
}

/// Polls `f` until it yields `Some`, failing the test at `deadline`.
async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until this process holds more established connections to the
/// agent than `before`: a request started on a client of its own (whose
/// pool is empty) is then on its way to the agent, and stopping the agent
/// cuts it.
fn wait_connected(agent: &ConsulAgent, before: usize) {
    let port = agent.http_addr().port();
    tokio::task::block_in_place(|| {
        wait::until(
            Duration::from_secs(10),
            "a new connection to the agent",
            || open_connections_to(port) > before,
        )
    })
    .expect("the request reaches the agent");
}

async fn health_of(c: &Client, service: &str, id: &str) -> Option<Health> {
    let resp = c
        .health_service(service, &HealthQuery::default(), &q())
        .await
        .ok()?;
    resp.value
        .into_iter()
        .find(|i| i.id == id)
        .map(|i| i.health)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_check_states_map_to_instance_health() {
    let a = agent();
    let c = client(&a);
    let check = a
        .register_service_with_ttl("web-1", "web", 8080, &["blue", "api"])
        .expect("register");

    let inst = eventually("web-1 in the catalog", Duration::from_secs(10), || async {
        c.health_service("web", &HealthQuery::default(), &q())
            .await
            .ok()
            .and_then(|r| r.value.into_iter().find(|i| i.id == "web-1"))
    })
    .await;
    assert_eq!(inst.address, "127.0.0.1");
    assert_eq!(inst.port, 8080);
    assert_eq!(inst.node, "converge-test");
    assert_eq!(
        inst.tags,
        BTreeSet::from(["api".to_string(), "blue".to_string()])
    );
    assert_eq!(inst.health, Health::Passing);

    for (set, want) in [
        (
            ConsulAgent::warn as fn(&ConsulAgent, &str) -> Result<(), String>,
            Health::Warning,
        ),
        (ConsulAgent::fail, Health::Critical),
        (ConsulAgent::pass, Health::Passing),
    ] {
        set(&a, &check).expect("update check");
        eventually(
            &format!("web-1 {want:?}"),
            Duration::from_secs(10),
            || async { (health_of(&c, "web", "web-1").await == Some(want)).then_some(()) },
        )
        .await;
    }

    a.deregister("web-1").expect("deregister");
    eventually("web-1 gone", Duration::from_secs(10), || async {
        let r = c
            .health_service("web", &HealthQuery::default(), &q())
            .await
            .ok()?;
        r.value.is_empty().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passing_tag_and_filter_expression_select_instances() {
    let a = agent();
    let c = client(&a);
    let c1 = a
        .register_service_with_ttl("db-1", "db", 5432, &["primary"])
        .expect("r1");
    a.register_service_with_ttl("db-2", "db", 5433, &["replica"])
        .expect("r2");
    a.fail(&c1).expect("fail db-1");

    let ids = |r: Vec<converge_model::Instance>| -> Vec<String> {
        let mut v: Vec<String> = r.into_iter().map(|i| i.id).collect();
        v.sort();
        v
    };
    let all = eventually("both db instances", Duration::from_secs(10), || async {
        let r = c
            .health_service("db", &HealthQuery::default(), &q())
            .await
            .ok()?;
        (r.value.len() == 2 && r.value.iter().any(|i| i.health == Health::Critical))
            .then_some(r.value)
    })
    .await;
    assert_eq!(ids(all), vec!["db-1", "db-2"]);

    let passing = HealthQuery {
        passing_only: true,
        ..HealthQuery::default()
    };
    let r = c
        .health_service("db", &passing, &q())
        .await
        .expect("passing");
    assert_eq!(ids(r.value), vec!["db-2"]);

    let tagged = HealthQuery {
        tags: vec!["primary".into()],
        ..HealthQuery::default()
    };
    let r = c.health_service("db", &tagged, &q()).await.expect("tag");
    assert_eq!(ids(r.value), vec!["db-1"]);

    let filtered = HealthQuery {
        filter: Some("Service.Port == 5433".into()),
        ..HealthQuery::default()
    };
    let r = c
        .health_service("db", &filtered, &q())
        .await
        .expect("filter");
    assert_eq!(ids(r.value), vec!["db-2"]);

    // A malformed filter (Consul says 500) is named and not retryable.
    let bad = HealthQuery {
        filter: Some("Service.Port ==".into()),
        ..HealthQuery::default()
    };
    let e = c
        .health_service("db", &bad, &q())
        .await
        .expect_err("bad filter");
    assert!(matches!(e, Error::InvalidRequest { .. }), "{e:?}");
    assert!(e.is_config_error());
    assert!(!e.is_retryable());
    assert!(e.to_string().contains("/v1/health/service/db"), "{e}");

    // Datacenter: the agent's own works, an unknown one is Consul's error.
    let own = QueryOptions {
        datacenter: Some("dc1".into()),
        ..q()
    };
    let r = c
        .health_service("db", &HealthQuery::default(), &own)
        .await
        .expect("dc1");
    assert_eq!(r.value.len(), 2);
    let other = QueryOptions {
        datacenter: Some("nowhere".into()),
        ..q()
    };
    let e = c
        .health_service("db", &HealthQuery::default(), &other)
        .await
        .expect_err("unknown dc");
    assert!(e.to_string().to_lowercase().contains("datacenter"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_agent_status_and_consistency_modes() {
    let a = agent();
    let c = client(&a);
    a.register_service_with_ttl("api-1", "api", 9000, &["v2"])
        .expect("register");
    let services = eventually("api in catalog", Duration::from_secs(10), || async {
        let r = c.catalog_services(&q()).await.ok()?;
        r.value.contains_key("api").then_some(r)
    })
    .await;
    assert_eq!(services.value["api"], vec!["v2".to_string()]);
    assert!(services.value.contains_key("consul"));
    assert!(services.meta.index > 0);
    assert!(services.meta.known_leader);

    let me = c.agent_self().await.expect("agent self");
    assert_eq!(me.datacenter, "dc1");
    assert_eq!(me.node_name, "converge-test");
    assert!(me.server);
    assert!(!me.version.is_empty());

    let leader = c.status_leader().await.expect("leader");
    assert!(leader.starts_with("127.0.0.1:"), "{leader}");

    for consistency in [
        Consistency::Consistent,
        Consistency::Stale {
            max_stale: Duration::from_secs(5),
        },
    ] {
        let opts = QueryOptions { consistency, ..q() };
        let r = c.catalog_services(&opts).await.expect("read");
        assert!(r.value.contains_key("api"));
        assert!(!r.meta.consistent_fallback);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_get_recurse_and_compare_and_set() {
    let a = agent();
    let c = client(&a);
    assert!(c
        .kv_get("fleet/lb1", &q())
        .await
        .expect("get")
        .value
        .is_none());
    assert!(c
        .kv_list("fleet/", &q())
        .await
        .expect("list")
        .value
        .is_empty());

    // cas=0: create only if absent.
    assert!(c.kv_put("fleet/lb1", b"v1", Some(0)).await.expect("create"));
    assert!(!c
        .kv_put("fleet/lb1", b"v1-again", Some(0))
        .await
        .expect("exists"));
    let p = c
        .kv_get("fleet/lb1", &q())
        .await
        .expect("get")
        .value
        .expect("present");
    assert_eq!(p.value, b"v1");

    // cas=<modify index>: only if nobody wrote in between.
    assert!(!c
        .kv_put("fleet/lb1", b"stale", Some(p.modify_index + 1000))
        .await
        .expect("cas"));
    assert!(c
        .kv_put("fleet/lb1", b"v2", Some(p.modify_index))
        .await
        .expect("cas ok"));
    assert!(c
        .kv_put("fleet/lb2", &[0, 159, 255], None)
        .await
        .expect("put"));
    assert!(c.kv_put("other/x", b"x", None).await.expect("put"));

    let list = c.kv_list("fleet/", &q()).await.expect("list").value;
    let keys: Vec<&str> = list.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, vec!["fleet/lb1", "fleet/lb2"]);
    assert_eq!(list[0].value, b"v2");
    assert_eq!(list[1].value, vec![0, 159, 255], "binary values survive");

    // Delete: with a stale cas nothing goes; without, the key goes, and
    // deleting it again is no error.
    assert!(!c
        .kv_delete("fleet/lb1", Some(list[0].modify_index + 1000))
        .await
        .expect("cas delete"));
    assert!(c
        .kv_delete("fleet/lb1", Some(list[0].modify_index))
        .await
        .expect("delete"));
    assert!(c.kv_delete("fleet/lb2", None).await.expect("delete"));
    assert!(c.kv_delete("fleet/lb2", None).await.expect("absent"));
    let left = c.kv_list("fleet/", &q()).await.expect("list").value;
    assert_eq!(left, [], "every key deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_query_wakes_on_change_not_before() {
    let a = agent();
    let c = client(&a);
    let (_, first) = register_web_1(&a, &c).await;

    // Nothing changes: the query holds for its wait.
    let opts = QueryOptions {
        index: first.meta.index,
        wait: Some(Duration::from_millis(700)),
        ..q()
    };
    let t = Instant::now();
    let same = c
        .health_service("web", &HealthQuery::default(), &opts)
        .await
        .expect("same");
    assert!(
        t.elapsed() >= Duration::from_millis(600),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(same.meta.index, first.meta.index);

    // A check flips while the query waits: it returns long before its
    // wait runs out, with the moved index. (Had the flip beaten the
    // request to the agent, the old index would make it return at once,
    // with the same answer.)
    let opts = QueryOptions {
        index: first.meta.index,
        wait: Some(Duration::from_secs(300)),
        ..q()
    };
    let before = open_connections_to(a.http_addr().port());
    let own = client(&a);
    let waiter = tokio::spawn(async move {
        own.health_service("web", &HealthQuery::default(), &opts)
            .await
    });
    wait_connected(&a, before);
    assert!(!waiter.is_finished(), "returned before anything changed");
    tokio::task::block_in_place(|| a.fail("ttl:web-1")).expect("fail");
    let got = tokio::time::timeout(Duration::from_secs(15), waiter)
        .await
        .expect("the change wakes the query")
        .expect("join")
        .expect("woke");
    assert!(got.meta.index > first.meta.index);
    assert_eq!(got.value[0].health, Health::Critical);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_clients_limit_wait_for_a_free_slot() {
    let a = agent();
    let c =
        Client::with_max_requests(Config::new(&a.http_url()).expect("config"), 3).expect("client");
    let (check, first) = register_web_1(&a, &c).await;
    let sent_before = c.requests_sent();

    // Eight long polls on a client that lets three through: three reach
    // the agent and park there, five wait for a slot.
    let opts = QueryOptions {
        index: first.meta.index,
        wait: Some(Duration::from_secs(300)),
        ..q()
    };
    let waiters: Vec<_> = (0..8)
        .map(|_| {
            let (c, opts) = (c.clone(), opts.clone());
            tokio::spawn(async move {
                c.health_service("web", &HealthQuery::default(), &opts)
                    .await
            })
        })
        .collect();
    tokio::task::block_in_place(|| {
        wait::until(Duration::from_secs(10), "three long polls sent", || {
            c.requests_sent() >= sent_before + 3
        })
    })
    .expect("the first three go out");
    assert_eq!(
        c.requests_sent(),
        sent_before + 3,
        "a fourth request went out while three long polls held every slot"
    );

    // The change wakes the three; the five then go out in turn.
    tokio::task::block_in_place(|| a.fail(&check)).expect("fail");
    for w in waiters {
        let got = tokio::time::timeout(Duration::from_secs(15), w)
            .await
            .expect("every long poll returns on the change, not after its 300 s wait")
            .expect("join")
            .expect("read");
        assert!(got.meta.index > first.meta.index);
        assert_eq!(got.value[0].health, Health::Critical);
    }
    assert_eq!(c.requests_sent(), sent_before + 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_survives_an_agent_restart_whose_index_went_backwards() {
    let mut a = agent();
    let c = client(&a);
    // Push the index up so the restarted agent's index is clearly lower.
    for i in 0..30 {
        c.kv_put(&format!("pad/{i}"), b"x", None)
            .await
            .expect("pad");
    }
    a.register_service_with_ttl("web-1", "web", 80, &[])
        .expect("register");
    let pacing = Pacing {
        wait: Duration::from_secs(120),
        ..Pacing::default()
    };
    let mut watch = BlockingQuery::new(
        q(),
        pacing,
        converge_consul::Backoff::new(
            Duration::from_millis(50),
            Duration::from_millis(500),
            0.5,
            fastrand_rng(),
        ),
        fastrand_rng(),
    );
    // Baseline, then wait until the instance is visible.
    let mut before = 0;
    for _ in 0..50 {
        let u = tokio::time::timeout(Duration::from_secs(10), next_web(&mut watch, &c))
            .await
            .expect("no hang")
            .expect("read");
        before = u.meta.index;
        if !u.value.is_empty() {
            break;
        }
    }
    assert!(before > 30, "index {before}");

    // The watch is waiting on `before` when the agent restarts: the cut
    // request is a retryable error, and the next one is a plain read. It
    // goes out on a client of its own, so its connection shows.
    let connected = open_connections_to(a.http_addr().port());
    let own = client(&a);
    let in_flight = tokio::spawn(async move {
        let r = next_web(&mut watch, &own).await;
        (watch, r)
    });
    wait_connected(&a, connected);
    assert!(!in_flight.is_finished(), "the watch should be blocking");
    tokio::task::block_in_place(|| a.restart()).expect("restart");
    let (mut watch, cut) = in_flight.await.expect("join");
    let e = cut.expect_err("the restart cuts the blocking request");
    assert!(e.is_retryable(), "{e}");
    assert_eq!(
        watch.index(),
        0,
        "after an error the next read must not block"
    );
    a.register_service_with_ttl("web-2", "web", 81, &[])
        .expect("register after restart");

    // With a 120 s wait, a client that kept blocking on the old index would
    // see nothing for two minutes. It must see web-2 within seconds.
    let mut saw_reset = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(
            Instant::now() < deadline,
            "never saw web-2 after the restart"
        );
        let r = tokio::time::timeout(Duration::from_secs(15), next_web(&mut watch, &c))
            .await
            .expect("a watch must not block on an index from before the restart");
        match r {
            Err(e) => assert!(e.is_retryable(), "{e}"),
            Ok(u) => {
                saw_reset |= matches!(
                    u.outcome,
                    IndexOutcome::Baseline | IndexOutcome::WentBackwards
                );
                if u.value.iter().any(|i| i.id == "web-2") {
                    assert!(u.meta.index < before, "{} !< {before}", u.meta.index);
                    break;
                }
            }
        }
    }
    assert!(saw_reset);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_while_the_agent_is_down_are_retryable_and_name_the_endpoint() {
    let mut a = agent();
    let c = client(&a);
    c.status_leader().await.expect("up");
    tokio::task::block_in_place(|| a.stop());
    let e = c
        .health_service("web", &HealthQuery::default(), &q())
        .await
        .expect_err("down");
    assert!(e.is_retryable(), "{e:?}");
    assert!(!e.is_config_error());
    assert!(e.to_string().contains("/v1/health/service/web"), "{e}");
    tokio::task::block_in_place(|| a.start_again()).expect("start again");
    c.status_leader().await.expect("back");
}

async fn next_web(
    watch: &mut BlockingQuery,
    c: &Client,
) -> Result<converge_consul::Update<Vec<converge_model::Instance>>, Error> {
    watch
        .next(|o| async move { c.health_service("web", &HealthQuery::default(), &o).await })
        .await
}

fn fastrand_rng() -> fastrand::Rng {
    fastrand::Rng::new()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shot_catalog_read_for_plan() {
    let a = agent();
    let c = client(&a);
    a.register_service_with_ttl("web-2", "web", 81, &[])
        .expect("web-2");
    a.register_service_with_ttl("web-1", "web", 80, &[])
        .expect("web-1");
    let services: BTreeSet<String> = ["web".to_string(), "absent".to_string()].into();
    let cat = eventually("both web instances", Duration::from_secs(10), || async {
        let cat = converge_consul::read_catalog(
            &c,
            &services,
            &HealthQuery::default(),
            Consistency::Default,
            4,
        )
        .await
        .ok()?;
        (cat.service("web")?.instances.len() == 2).then_some(cat)
    })
    .await;
    let web: Vec<&str> = cat
        .service("web")
        .expect("web")
        .instances
        .iter()
        .map(|i| i.id.as_str())
        .collect();
    assert_eq!(web, vec!["web-1", "web-2"], "sorted");
    assert!(cat.service("absent").expect("read").instances.is_empty());
    assert!(cat.index > 0);

    // One failed read fails the whole snapshot: a plan never runs on half
    // an answer.
    let mut a = a;
    tokio::task::block_in_place(|| a.stop());
    let e = converge_consul::read_catalog(
        &c,
        &services,
        &HealthQuery::default(),
        Consistency::Default,
        4,
    )
    .await
    .expect_err("agent down");
    assert!(e.is_retryable(), "{e}");
}

/// Consul OSS has no namespaces or partitions, and says so: it answers
/// `?ns=` and `?partition=` with HTTP 400 on every catalog, health and KV
/// path, even for `default`. converge must then report a configuration
/// error, never fall back to reading the default namespace (what the
/// README's Consul section promises).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_oss_rejects_a_namespace_or_partition_and_the_source_says_so() {
    let a = agent();
    for (field, value, words) in [
        (
            "ns",
            "default",
            "Namespaces are a Consul Enterprise feature",
        ),
        (
            "partition",
            "team-a",
            "Partitions are a Consul Enterprise feature",
        ),
    ] {
        let mut config = Config::new(&a.http_url()).expect("config");
        match field {
            "ns" => config.namespace = Some(value.into()),
            _ => config.partition = Some(value.into()),
        }
        let c = Client::new(config.clone()).expect("client");
        let e = c
            .health_service("consul", &HealthQuery::default(), &q())
            .await
            .expect_err("OSS rejects the parameter");
        assert!(matches!(e, Error::InvalidRequest { .. }), "{e:?}");
        assert_eq!(e.retry(), converge_consul::Retry::Never, "{e}");
        assert!(e.to_string().contains(words), "{e}");
        let e = c.kv_get("fleet/lb1", &q()).await.expect_err("kv too");
        assert!(e.to_string().contains(words), "{e}");
        c.status_leader().await.expect("status is not scoped");

        let source = converge_consul::CatalogSource::connect(
            config,
            converge_consul::SourceConfig::new(["consul"]),
        )
        .expect("source");
        let mut rx = source.subscribe();
        let state = tokio::time::timeout(
            Duration::from_secs(15),
            rx.wait_for(|s| s.health != converge_consul::SourceHealth::Starting),
        )
        .await
        .expect("the source reports within 15 s")
        .expect("source alive")
        .clone();
        match &state.health {
            converge_consul::SourceHealth::Degraded {
                reason,
                config_error,
            } => {
                assert!(*config_error, "{reason}");
                assert!(reason.contains(words), "{reason}");
            }
            other => panic!("{field}: {other:?}"),
        }
        assert!(
            state.missing.contains("consul"),
            "nothing read: {:?}",
            state.missing
        );
    }
}
