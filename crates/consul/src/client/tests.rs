//! Unit tests of the client that need no Consul: decoding Consul's JSON
//! and headers, URL building, timeouts, the request limit, and two answers
//! a real agent cannot give on demand, from a loopback stand-in. Everything
//! a real agent can answer is tested against one in `tests/`.

use std::time::Duration;

use converge_model::{Health, Instance, Secret};
use reqwest::header::{HeaderMap, HeaderValue};

use super::query::query_meta;
use super::transport::kv_segments;
use super::wire;
use super::*;

fn entry(json: &str) -> Instance {
    let e: wire::HealthEntry = serde_json::from_str(json).expect("json");
    e.into_instance().expect("instance")
}

const ENTRY: &str = r#"{
    "Node": {"Node": "n1", "Address": "10.0.0.1", "Datacenter": "dc1"},
    "Service": {"ID": "web-1", "Service": "web", "Tags": ["b", "a"], "Address": "",
                "Meta": {"v": "1"}, "Port": 8080},
    "Checks": [
        {"Node": "n1", "CheckID": "serfHealth", "Status": "passing", "ServiceID": ""},
        {"Node": "n1", "CheckID": "service:web-1", "Status": "STATUS", "ServiceID": "web-1"}
    ]}"#;

#[test]
fn instance_falls_back_to_node_address_and_sorts_tags() {
    let i = entry(&ENTRY.replace("STATUS", "passing"));
    assert_eq!(i.address, "10.0.0.1");
    assert_eq!(i.port, 8080);
    assert_eq!(i.tags.iter().collect::<Vec<_>>(), vec!["a", "b"]);
    assert_eq!(i.meta.get("v").map(String::as_str), Some("1"));
    assert_eq!(i.health, Health::Passing);
    let i = entry(&ENTRY.replace(r#""Address": """#, r#""Address": "192.0.2.7""#));
    assert_eq!(i.address, "192.0.2.7");
}

#[test]
fn health_is_the_worst_check_and_unknown_is_critical() {
    assert_eq!(
        entry(&ENTRY.replace("STATUS", "warning")).health,
        Health::Warning
    );
    assert_eq!(
        entry(&ENTRY.replace("STATUS", "critical")).health,
        Health::Critical
    );
    assert_eq!(
        entry(&ENTRY.replace("STATUS", "maintenance")).health,
        Health::Critical
    );
    // A failing node check makes the instance critical too.
    let node_down = ENTRY.replace("STATUS", "passing").replacen(
        r#""Status": "passing""#,
        r#""Status": "critical""#,
        1,
    );
    assert_eq!(entry(&node_down).health, Health::Critical);
}

#[test]
fn null_tags_meta_checks_are_empty() {
    let json = r#"{"Node": {"Node": "n", "Address": "h"},
        "Service": {"ID": "s", "Tags": null, "Address": "", "Meta": null, "Port": 1},
        "Checks": null}"#;
    let i = entry(json);
    assert!(i.tags.is_empty() && i.meta.is_empty());
    assert_eq!(i.health, Health::Passing);
}

#[test]
fn out_of_range_port_is_refused() {
    let json = ENTRY.replace("8080", "70000");
    let e: wire::HealthEntry = serde_json::from_str(&json).expect("json");
    let err = e.into_instance().expect_err("port");
    assert!(err.contains("70000") && err.contains("web-1"), "{err}");
}

#[test]
fn kv_values_are_base64_decoded() {
    let p: wire::KvPair = serde_json::from_str(
        r#"{"Key": "fleet/lb1", "Value": "aGVsbG8=", "Flags": 0, "CreateIndex": 3, "ModifyIndex": 9}"#,
    )
    .expect("json");
    let p = p.decode().expect("decode");
    assert_eq!(p.value, b"hello");
    assert_eq!(p.modify_index, 9);
    assert_eq!(p.session, None);
}

#[test]
fn blocking_timeout_exceeds_wait_plus_consul_jitter() {
    let client = Client::new(Config::new("127.0.0.1:1").expect("config")).expect("client");
    let wait = Duration::from_secs(160);
    let opts = QueryOptions {
        index: 5,
        wait: Some(wait),
        ..QueryOptions::default()
    };
    let t = client.transport.timeout_for(&opts);
    assert!(t > wait + wait / 16, "{t:?}");
    let plain = QueryOptions::default();
    assert_eq!(
        client.transport.timeout_for(&plain),
        Duration::from_secs(15)
    );
}

#[test]
fn request_limit_is_clamped_to_what_the_connection_bound_allows() {
    let config = || Config::new("127.0.0.1:1").expect("config");
    for (asked, want) in [
        (0, 1),
        (3, 3),
        (MAX_REQUESTS, MAX_REQUESTS),
        (1000, MAX_REQUESTS),
    ] {
        let client = Client::with_max_requests(config(), asked).expect("client");
        assert_eq!(client.max_requests(), want, "asked for {asked}");
    }
    assert_eq!(
        Client::new(config()).expect("client").max_requests(),
        MAX_REQUESTS
    );
}

#[test]
fn path_segments_are_escaped() {
    let client = Client::new(Config::new("127.0.0.1:8500").expect("config")).expect("client");
    let url = client.transport.url(&["v1", "health", "service", "we b?x"]);
    assert_eq!(
        url.as_str(),
        "http://127.0.0.1:8500/v1/health/service/we%20b%3Fx"
    );
    let url = client.transport.url(&kv_segments("fleet/lb1/"));
    assert_eq!(url.as_str(), "http://127.0.0.1:8500/v1/kv/fleet/lb1/");
}

/// Answers are asked gzipped only from an agent beyond loopback: there the
/// bytes cost, here compressing costs the agent more than moving them.
#[test]
fn gzip_is_asked_only_from_an_agent_beyond_loopback() {
    use super::connection::compresses;
    let url = |u: &str| reqwest::Url::parse(u).expect("url");
    for local in [
        "http://127.0.0.1:8500",
        "https://127.0.0.2:8501",
        "http://[::1]:8500",
        "http://LocalHost:8500",
    ] {
        assert!(!compresses(&url(local)), "{local}");
    }
    for remote in [
        "http://10.0.0.5:8500",
        "https://[2001:db8::1]:8501",
        "https://consul.example:8501",
    ] {
        assert!(compresses(&url(remote)), "{remote}");
    }
}

#[test]
fn debug_of_client_never_shows_the_token() {
    let config = Config::new("127.0.0.1:8500")
        .expect("config")
        .with_token(Secret::new("t0ps3cret-abc"));
    let client = Client::new(config).expect("client");
    let dbg = format!("{client:?}");
    assert!(!dbg.contains("t0ps3cret"), "{dbg}");
}

#[test]
fn meta_headers_are_parsed() {
    let mut h = HeaderMap::new();
    h.insert("X-Consul-Index", HeaderValue::from_static("77"));
    h.insert("X-Consul-LastContact", HeaderValue::from_static("1500"));
    h.insert("X-Consul-KnownLeader", HeaderValue::from_static("true"));
    h.insert(
        "X-Consul-Results-Filtered-By-ACLs",
        HeaderValue::from_static("true"),
    );
    let m = query_meta(&h);
    assert_eq!(m.index, 77);
    assert_eq!(m.last_contact, Duration::from_millis(1500));
    assert!(m.known_leader && m.filtered_by_acls);
    assert_eq!(query_meta(&HeaderMap::new()).index, 0);
}

/// A stand-in for the agent, for the answers a dev agent cannot give on
/// demand: a stale read whose server lost the leader long ago (a dev
/// agent is its own leader, so its `X-Consul-LastContact` is always 0)
/// and a 200 whose body is not Consul's (a proxy in the way). A
/// loopback listener owned by the test that answers the n-th request
/// with the n-th scripted answer and records each request head.
/// Everything a real agent can answer, a 403 included, is tested
/// against one in `tests/`.
async fn stand_in_agent(
    answers: Vec<(&'static str, &'static str, &'static str)>,
) -> (String, tokio::task::JoinHandle<Vec<String>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let task = tokio::spawn(async move {
        let mut seen = Vec::new();
        for (status, headers, body) in answers {
            let (mut sock, _) = listener.accept().await.expect("accept");
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = sock.read(&mut chunk).await.expect("read");
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            seen.push(String::from_utf8_lossy(&buf).into_owned());
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{headers}\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            sock.write_all(resp.as_bytes()).await.expect("write");
        }
        seen
    });
    (addr, task)
}

#[tokio::test]
async fn stale_answer_older_than_max_stale_is_reread_consistently() {
    let (addr, server) = stand_in_agent(vec![
        (
            "200 OK",
            "X-Consul-Index: 10\r\nX-Consul-LastContact: 9000\r\n",
            r#"{"old": []}"#,
        ),
        (
            "200 OK",
            "X-Consul-Index: 12\r\nX-Consul-LastContact: 0\r\n",
            r#"{"new": []}"#,
        ),
    ])
    .await;
    let client = Client::new(Config::new(&addr).expect("config")).expect("client");
    let opts = QueryOptions {
        consistency: Consistency::Stale {
            max_stale: Duration::from_secs(5),
        },
        ..QueryOptions::default()
    };
    let resp = client.catalog_services(&opts).await.expect("services");
    assert!(resp.value.contains_key("new"), "{resp:?}");
    assert!(resp.meta.consistent_fallback);
    assert_eq!(resp.meta.index, 12);
    let seen = server.await.expect("server");
    assert!(
        seen[0].starts_with("GET /v1/catalog/services?stale "),
        "{}",
        seen[0]
    );
    assert!(
        seen[1].starts_with("GET /v1/catalog/services?consistent "),
        "{}",
        seen[1]
    );
}

/// The other side of the test above, on the same stand-in so the two
/// differ only in `X-Consul-LastContact`. (The real agent's stale
/// reads are in `tests/client.rs`.)
#[tokio::test]
async fn fresh_enough_stale_answer_is_used() {
    let (addr, server) = stand_in_agent(vec![(
        "200 OK",
        "X-Consul-Index: 10\r\nX-Consul-LastContact: 20\r\n",
        r#"{"web": ["a"]}"#,
    )])
    .await;
    let client = Client::new(Config::new(&addr).expect("config")).expect("client");
    let opts = QueryOptions {
        consistency: Consistency::Stale {
            max_stale: Duration::from_secs(5),
        },
        index: 9,
        wait: Some(Duration::from_secs(30)),
        ..QueryOptions::default()
    };
    let resp = client.catalog_services(&opts).await.expect("services");
    assert!(!resp.meta.consistent_fallback);
    let seen = server.await.expect("server");
    assert!(
        seen[0].starts_with("GET /v1/catalog/services?stale&index=9&wait=30000ms "),
        "{}",
        seen[0]
    );
}

#[tokio::test]
async fn garbage_is_a_retryable_decode_error() {
    let (addr, _server) = stand_in_agent(vec![(
        "200 OK",
        "X-Consul-Index: 3\r\n",
        "<html>proxy</html>",
    )])
    .await;
    let client = Client::new(Config::new(&addr).expect("config")).expect("client");
    let err = client
        .health_service("web", &HealthQuery::default(), &QueryOptions::default())
        .await
        .expect_err("garbage");
    assert!(matches!(err, Error::Decode { .. }), "{err:?}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn refused_connection_is_retryable() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let client =
        Client::new(Config::new(&format!("127.0.0.1:{port}")).expect("config")).expect("client");
    let err = client.status_leader().await.expect_err("refused");
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert!(err.is_retryable());
    assert!(err.to_string().contains("/v1/status/leader"), "{err}");
}

/// Consul Enterprise scopes catalog, health and KV data by namespace and
/// partition; a configured one must reach every such request, or converge
/// reads the default namespace. Agent and status paths are not scoped.
#[tokio::test]
async fn namespace_and_partition_go_on_every_catalog_health_and_kv_request() {
    let (addr, server) = stand_in_agent(vec![
        ("200 OK", "", "[]"),
        ("200 OK", "", "[]"),
        ("200 OK", "", "{}"),
        ("404 Not Found", "", ""),
        ("404 Not Found", "", ""),
        ("200 OK", "", "true"),
        ("200 OK", "", "\"127.0.0.1:8300\""),
    ])
    .await;
    let mut config = Config::new(&addr).expect("config");
    config.namespace = Some("team-a".into());
    config.partition = Some("part 1".into());
    let c = Client::new(config).expect("client");
    let o = QueryOptions::default();
    c.health_service("web", &HealthQuery::default(), &o)
        .await
        .expect("health");
    c.health_state("any", &o).await.expect("checks");
    c.catalog_services(&o).await.expect("services");
    c.kv_get("fleet/lb1", &o).await.expect("kv get");
    c.kv_list("fleet/", &o).await.expect("kv list");
    c.kv_put("fleet/lb1", b"x", Some(0)).await.expect("kv put");
    c.status_leader().await.expect("leader");
    let seen = server.await.expect("server");
    let lines: Vec<&str> = seen.iter().filter_map(|h| h.lines().next()).collect();
    for line in &lines[..6] {
        assert!(line.contains("ns=team-a&partition=part+1 "), "{line}");
    }
    assert_eq!(lines[6], "GET /v1/status/leader HTTP/1.1", "{lines:?}");
}
