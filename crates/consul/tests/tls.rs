//! TLS against a real agent serving HTTPS with mutual TLS: the CA and
//! client certificate from the HashiCorp variables are used, and
//! `CONSUL_TLS_SERVER_NAME` is the name verified; without the client
//! certificate or the CA the connection is refused.

use converge_consul::{Client, Config};
use converge_testkit::consul::ConsulAgent;

fn vars(pairs: Vec<(&'static str, String)>) -> impl Fn(&str) -> Option<String> {
    move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_the_consul_env_variables() {
    let a = ConsulAgent::start_with_tls()
        .unwrap_or_else(|e| panic!("cannot start the real consul agent with TLS: {e}"));
    let (ca, cert, key) = a.tls_files();
    let path = |p: &std::path::Path| p.display().to_string();
    let addr = a.https_url().trim_start_matches("https://").to_string();

    // host:port plus CONSUL_HTTP_SSL=true selects https.
    let config = Config::from_vars(vars(vec![
        ("CONSUL_HTTP_ADDR", addr.clone()),
        ("CONSUL_HTTP_SSL", "true".into()),
        ("CONSUL_CACERT", path(&ca)),
        ("CONSUL_CLIENT_CERT", path(&cert)),
        ("CONSUL_CLIENT_KEY", path(&key)),
    ]))
    .expect("config");
    assert_eq!(config.address.scheme(), "https");
    let c = Client::new(config).expect("client");
    let leader = c.status_leader().await.expect("leader over mutual TLS");
    assert!(leader.starts_with("127.0.0.1:"), "{leader}");

    // CONSUL_TLS_SERVER_NAME is the name sent and verified: the agent's
    // certificate names server.dc1.consul (which no DNS resolves), so the
    // request reaching it proves the name was used and the address kept;
    // a name the certificate lacks fails verification.
    let with_name = |name: &str| {
        Config::from_vars(vars(vec![
            ("CONSUL_HTTP_ADDR", format!("https://{addr}")),
            ("CONSUL_CACERT", path(&ca)),
            ("CONSUL_CLIENT_CERT", path(&cert)),
            ("CONSUL_CLIENT_KEY", path(&key)),
            ("CONSUL_TLS_SERVER_NAME", name.to_string()),
        ]))
        .expect("config")
    };
    let c = Client::new(with_name("server.dc1.consul")).expect("client");
    assert_eq!(c.address().as_str(), format!("https://{addr}/"));
    c.status_leader()
        .await
        .expect("leader through the certificate's own name");
    let e = Client::new(with_name("other.dc1.consul"))
        .expect("client")
        .status_leader()
        .await
        .expect_err("the certificate does not name other.dc1.consul");
    let msg = e.to_string().to_lowercase();
    assert!(msg.contains("certificate"), "{msg}");

    // No client certificate: the agent refuses the handshake.
    let config = Config::from_vars(vars(vec![
        ("CONSUL_HTTP_ADDR", format!("https://{addr}")),
        ("CONSUL_CACERT", path(&ca)),
    ]))
    .expect("config");
    let e = Client::new(config)
        .expect("client")
        .status_leader()
        .await
        .expect_err("client certificate required");
    assert!(e.to_string().contains("/v1/status/leader"), "{e}");

    // No CA: Consul's certificate is not trusted.
    let config = Config::from_vars(vars(vec![
        ("CONSUL_HTTP_ADDR", format!("https://{addr}")),
        ("CONSUL_CLIENT_CERT", path(&cert)),
        ("CONSUL_CLIENT_KEY", path(&key)),
    ]))
    .expect("config");
    let e = Client::new(config)
        .expect("client")
        .status_leader()
        .await
        .expect_err("unknown CA");
    let msg = e.to_string().to_lowercase();
    assert!(msg.contains("certificate") || msg.contains("tls"), "{msg}");

    // Half a client identity is a configuration error, found up front.
    let config = Config::from_vars(vars(vec![
        ("CONSUL_HTTP_ADDR", format!("https://{addr}")),
        ("CONSUL_CLIENT_CERT", path(&cert)),
    ]))
    .expect("config");
    let e = Client::new(config).expect_err("cert without key");
    assert!(e.is_config_error(), "{e}");
}

/// The agent's write endpoints a failover drill injects its faults
/// through go over the same mutual TLS as the reads: a TTL check failed
/// and passed, an instance put into and out of maintenance, each seen in
/// the instance's health.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_faults_reach_an_agent_that_wants_mutual_tls() {
    use converge_consul::{CheckStatus, HealthQuery, QueryOptions};
    use converge_model::Health;

    let a = ConsulAgent::start_with_tls()
        .unwrap_or_else(|e| panic!("cannot start the real consul agent with TLS: {e}"));
    let check = a
        .register_service_with_ttl("web-1", "web", 8080, &[])
        .expect("register web-1");
    let c =
        Client::new(Config::from_vars(vars(a.tls_client_vars(&a.https_url()))).expect("config"))
            .expect("client");
    let health = || async {
        let answer = c
            .health_service("web", &HealthQuery::default(), &QueryOptions::default())
            .await
            .expect("health of web");
        answer.value.iter().map(|i| i.health).collect::<Vec<_>>()
    };
    assert_eq!(health().await, [Health::Passing]);

    c.agent_check_update(&check, CheckStatus::Fail, "converge drill")
        .await
        .expect("fail the check");
    assert_eq!(health().await, [Health::Critical]);
    c.agent_check_update(&check, CheckStatus::Pass, "converge drill")
        .await
        .expect("pass the check");
    assert_eq!(health().await, [Health::Passing]);

    c.agent_service_maintenance("web-1", true, "converge drill")
        .await
        .expect("maintenance on");
    assert_eq!(health().await, [Health::Critical]);
    c.agent_service_maintenance("web-1", false, "converge drill")
        .await
        .expect("maintenance off");
    assert_eq!(health().await, [Health::Passing]);

    let e = c
        .agent_check_update("no-such-check", CheckStatus::Fail, "converge drill")
        .await
        .expect_err("an unknown check is refused");
    assert!(
        e.to_string().contains("/v1/agent/check/fail/no-such-check"),
        "{e}"
    );
}
