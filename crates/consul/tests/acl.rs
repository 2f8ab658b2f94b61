//! ACLs against a real agent with `default_policy = "deny"`: a token
//! without the needed permission is a clear, non-retryable configuration
//! error (never an empty answer); a token with it works; the token never
//! shows up in what converge prints.

use std::time::{Duration, Instant};

use converge_consul::{
    CatalogSource, Client, Config, Error, HealthQuery, QueryOptions, SourceConfig, SourceHealth,
};
use converge_model::Secret;
use converge_testkit::consul::ConsulAgent;

fn client_with(agent: &ConsulAgent, token: &str) -> Client {
    let config = Config::new(&agent.http_url())
        .expect("config")
        .with_token(Secret::new(token));
    Client::new(config).expect("client")
}

fn assert_denied(e: &Error, endpoint: &str, token: &str) {
    assert!(
        matches!(e, Error::PermissionDenied { .. }),
        "expected a permission error, got {e:?}"
    );
    assert!(!e.is_retryable(), "{e}");
    assert!(e.is_config_error(), "{e}");
    let msg = e.to_string();
    assert!(msg.contains(endpoint), "{msg}");
    assert!(msg.contains("ACL"), "{msg}");
    assert!(!msg.contains(token), "token leaked into {msg}");
    assert!(!format!("{e:?}").contains(token), "token leaked into Debug");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_without_permission_is_a_configuration_error_not_an_empty_answer() {
    let a = ConsulAgent::start_with_acl()
        .unwrap_or_else(|e| panic!("cannot start the real consul agent with ACLs: {e}"));
    a.register_service_with_ttl("web-1", "web", 8080, &[])
        .expect("register");
    let admin = client_with(&a, a.management_token().expect("management token"));
    let start = Instant::now();
    loop {
        let r = admin
            .health_service("web", &HealthQuery::default(), &QueryOptions::default())
            .await
            .expect("management token reads");
        if !r.value.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "web-1 never synced"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A token that may read some other service only.
    let narrow =
        tokio::task::block_in_place(|| a.create_token(r#"service "other" { policy = "read" }"#))
            .expect("narrow token");
    let c = client_with(&a, &narrow);
    let e = c
        .health_service("web", &HealthQuery::default(), &QueryOptions::default())
        .await
        .expect_err("web is not readable with this token");
    assert_denied(&e, "/v1/health/service/web", &narrow);

    let e = c
        .kv_get("fleet/lb1", &QueryOptions::default())
        .await
        .expect_err("kv not readable");
    assert_denied(&e, "/v1/kv/fleet/lb1", &narrow);
    let e = c.agent_self().await.expect_err("agent:read missing");
    assert_denied(&e, "/v1/agent/self", &narrow);

    // No token at all: Consul's answer for the anonymous token is an empty
    // list without any "filtered" mark; under default deny that must not
    // read as "no instances".
    let anonymous = Client::new(Config::new(&a.http_url()).expect("config")).expect("client");
    let e = anonymous
        .health_service("web", &HealthQuery::default(), &QueryOptions::default())
        .await
        .expect_err("anonymous cannot read web");
    assert_denied(&e, "/v1/health/service/web", "no-token");
    assert!(e.to_string().contains("no ACL token"), "{e}");

    // A token Consul does not know.
    let bogus = "00000000-1111-4222-8333-444444444444";
    let e = client_with(&a, bogus)
        .health_service("web", &HealthQuery::default(), &QueryOptions::default())
        .await
        .expect_err("unknown token");
    assert_denied(&e, "/v1/health/service/web", bogus);

    // The source reports the configuration error and does not publish
    // "web has no instances".
    let source = CatalogSource::spawn(c.clone(), SourceConfig::new(["web"]));
    let mut rx = source.subscribe();
    let state = tokio::time::timeout(
        Duration::from_secs(15),
        rx.wait_for(|s| matches!(s.health, SourceHealth::Degraded { .. })),
    )
    .await
    .expect("source reports the ACL problem")
    .expect("source alive")
    .clone();
    match &state.health {
        SourceHealth::Degraded {
            reason,
            config_error,
        } => {
            assert!(*config_error, "{reason}");
            assert!(reason.contains("ACL"), "{reason}");
            assert!(!reason.contains(&narrow), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        state.catalog.service("web").is_none(),
        "{:?}",
        state.catalog
    );
    assert!(state.missing.contains("web"));

    // With the permission, the same calls work.
    let wide = tokio::task::block_in_place(|| {
        a.create_token(
            r#"service "web" { policy = "read" }
               node_prefix "" { policy = "read" }
               key_prefix "fleet/" { policy = "write" }
               agent_prefix "" { policy = "read" }"#,
        )
    })
    .expect("wide token");
    let c = client_with(&a, &wide);
    let r = c
        .health_service("web", &HealthQuery::default(), &QueryOptions::default())
        .await
        .expect("web readable");
    assert_eq!(r.value.len(), 1);
    assert!(c.kv_put("fleet/lb1", b"ok", None).await.expect("kv write"));
    let got = c
        .kv_get("fleet/lb1", &QueryOptions::default())
        .await
        .expect("kv read")
        .value
        .expect("present");
    assert_eq!(got.value, b"ok");
    assert_eq!(c.agent_self().await.expect("agent self").datacenter, "dc1");

    let source = CatalogSource::spawn(c, SourceConfig::new(["web"]));
    let mut rx = source.subscribe();
    let state = tokio::time::timeout(
        Duration::from_secs(15),
        rx.wait_for(|s| s.health == SourceHealth::Healthy),
    )
    .await
    .expect("source healthy with the right token")
    .expect("source alive")
    .clone();
    assert_eq!(
        state.catalog.service("web").map(|s| s.instances.len()),
        Some(1)
    );
}
