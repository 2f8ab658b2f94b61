//! ACLs against a real agent with `default_policy = "deny"`: a token
//! without the needed permission is a clear configuration error (never an
//! empty answer) that the source reports and asks again only at its slow
//! refusal pace, so it recovers by itself once the token works again (a
//! deleted token restored with the same SecretID); a token with the
//! permission works; the token travels in a header and never shows up in
//! what converge prints.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use converge_consul::{
    CatalogSource, Client, Config, Error, HealthQuery, Pacing, QueryOptions, Retry, SourceConfig,
    SourceHealth, SourceState,
};
use converge_model::Secret;
use converge_testkit::consul::ConsulAgent;
use converge_testkit::wait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn client_with(url: &str, token: &str) -> Client {
    let config = Config::new(url)
        .expect("config")
        .with_token(Secret::new(token));
    Client::new(config).expect("client")
}

/// A loopback TCP proxy in front of the real agent that records the head
/// of every request passing through it. It answers nothing itself: every
/// byte goes on to the agent and back, so its record is what the agent
/// received. Request heads are found at blank lines, which holds for the
/// bodiless GETs the source sends.
struct RecordingProxy {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RecordingProxy {
    async fn start(agent: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let heads = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let heads = heads.clone();
            async move {
                let mut relays = tokio::task::JoinSet::new();
                while let Ok((client, _)) = listener.accept().await {
                    relays.spawn(relay(client, agent, heads.clone()));
                }
            }
        });
        Self { addr, heads, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().expect("lock").clone()
    }

    /// Requests the agent received for `path` (whatever the query string).
    fn count(&self, path: &str) -> usize {
        let line = |h: &String| h.lines().next().unwrap_or_default().to_string();
        self.heads()
            .iter()
            .map(line)
            .filter(|l| l.split([' ', '?']).nth(1) == Some(path))
            .count()
    }
}

impl Drop for RecordingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(client: TcpStream, agent: SocketAddr, heads: Arc<Mutex<Vec<String>>>) {
    let Ok(upstream) = TcpStream::connect(agent).await else {
        return;
    };
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_agent, mut to_agent) = upstream.into_split();
    let requests = async move {
        let mut pending = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = match from_client.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            pending.extend_from_slice(&buf[..n]);
            while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = pending.drain(..end + 4).collect();
                let head = String::from_utf8_lossy(&head[..end]).into_owned();
                heads.lock().expect("lock").push(head);
            }
            if to_agent.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let answers = tokio::io::copy(&mut from_agent, &mut to_client);
    let _ = tokio::join!(requests, answers);
}

/// Watches `web` retrying faults every 10–40 ms and waking its watches
/// every 100 ms or so, but refusals no sooner than every 15 s: a source
/// that retried a refusal like a fault would show it many times within a
/// few rounds of its own watches.
fn eager_source(client: Client) -> CatalogSource {
    let mut config = eager_config(Duration::from_secs(30), Duration::from_secs(60));
    config.services.insert("other".into());
    CatalogSource::spawn(client, config)
}

/// Watches `web` retrying faults every 10–40 ms, waking its watches every
/// 100 ms or so, and asking again after a refusal at `refused_base`
/// doubling to `refused_cap`.
fn eager_config(refused_base: Duration, refused_cap: Duration) -> SourceConfig {
    let mut config = SourceConfig::new(["web"]);
    config.retry_base = Duration::from_millis(10);
    config.retry_cap = Duration::from_millis(40);
    config.refused_retry_base = refused_base;
    config.refused_retry_cap = refused_cap;
    config.pacing = Pacing {
        wait: Duration::from_millis(100),
        unchanged_interval: Duration::from_millis(100),
        ..Pacing::default()
    };
    config
}

/// Waits for the source to report a configuration error, and checks it
/// names ACLs, keeps the token out, and publishes no `web`.
async fn assert_config_error(source: &CatalogSource, token: &str) -> SourceState {
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
            assert!(reason.contains("asked again at a slowing pace"), "{reason}");
            assert!(!reason.contains(token), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        state.catalog.service("web").is_none(),
        "{:?}",
        state.catalog
    );
    assert!(state.missing.contains("web"));
    state
}

fn assert_denied(e: &Error, endpoint: &str, token: &str) {
    assert!(
        matches!(e, Error::PermissionDenied { .. }),
        "expected a permission error, got {e:?}"
    );
    assert!(!e.is_retryable(), "{e}");
    assert_eq!(e.retry(), Retry::Slowly, "{e}");
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
    let admin = client_with(
        &a.http_url(),
        a.management_token().expect("management token"),
    );
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
    let c = client_with(&a.http_url(), &narrow);
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
    let e = client_with(&a.http_url(), bogus)
        .health_service("web", &HealthQuery::default(), &QueryOptions::default())
        .await
        .expect_err("unknown token");
    assert_denied(&e, "/v1/health/service/web", bogus);

    // A source reports the configuration error, does not publish "web
    // has no instances", and does not ask again before its slow refusal
    // pace says so (the recovery is tested below). Through recording
    // proxies, each source watching web and other: with `narrow` other's
    // watch runs but web is refused, with `bogus` both are refused (HTTP
    // 403).
    let narrow_proxy = RecordingProxy::start(a.http_addr()).await;
    let bogus_proxy = RecordingProxy::start(a.http_addr()).await;
    let narrow_source = eager_source(client_with(&narrow_proxy.url(), &narrow));
    let bogus_source = eager_source(client_with(&bogus_proxy.url(), bogus));
    assert_config_error(&narrow_source, &narrow).await;
    assert_config_error(&bogus_source, bogus).await;
    // The narrow source's watch of other keeps going round; five more
    // rounds are long enough for a dozen retries, had there been any.
    let rounds = narrow_proxy.count("/v1/health/service/other");
    tokio::task::block_in_place(|| {
        wait::until(
            Duration::from_secs(15),
            "five more rounds of other's watch",
            || narrow_proxy.count("/v1/health/service/other") >= rounds + 5,
        )
    })
    .expect("the narrow source keeps watching");
    assert_eq!(
        narrow_proxy.count("/v1/health/service/web"),
        1,
        "web was read again after the refusal: {:#?}",
        narrow_proxy.heads()
    );
    assert_eq!(
        bogus_proxy.heads().len(),
        2,
        "one request per watch, none after the 403 within the refusal pace: {:#?}",
        bogus_proxy.heads()
    );
    assert!(matches!(
        narrow_source.current().health,
        SourceHealth::Degraded {
            config_error: true,
            ..
        }
    ));
    // The token travelled in a header, never in a request line.
    for head in narrow_proxy.heads() {
        let (request_line, headers) = head.split_once("\r\n").expect("head");
        assert!(!request_line.contains(&narrow), "{request_line}");
        assert!(
            headers
                .to_ascii_lowercase()
                .contains(&format!("x-consul-token: {narrow}")),
            "{headers}"
        );
    }

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
    let c = client_with(&a.http_url(), &wide);
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

/// A token with permission to read everything converge reads.
const READER: &str = r#"service_prefix "" { policy = "read" }
                        node_prefix "" { policy = "read" }"#;

/// A request to the agent's ACL API with `token`: status and JSON body.
async fn acl_call(
    a: &ConsulAgent,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("{}{path}", a.http_url()))
        .header("X-Consul-Token", token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.expect("ACL API reachable");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("ACL API body");
    (status, serde_json::from_str(&text).unwrap_or_default())
}

/// Waits up to `secs` for a state `what` describes.
async fn wait_state(
    source: &CatalogSource,
    secs: u64,
    what: &str,
    ok: impl FnMut(&SourceState) -> bool,
) -> SourceState {
    let mut rx = source.subscribe();
    let state = tokio::time::timeout(Duration::from_secs(secs), rx.wait_for(ok))
        .await
        .unwrap_or_else(|_| panic!("{what} within {secs} s: {:?}", source.current().health))
        .expect("source alive")
        .clone();
    state
}

/// The transient `ACL not found` of issue 15: the token the source runs
/// with is deleted (as replication lag on a secondary datacenter looks to
/// converge), then created again with the same SecretID. The source
/// reports the refusal as a configuration error, keeps the last good
/// `web`, and, without a restart, follows Consul again once the token
/// works. The refusal pace is shortened so this takes seconds, not the
/// default minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_token_restored_with_the_same_secret_is_followed_again_without_restart() {
    let a = ConsulAgent::start_with_acl()
        .unwrap_or_else(|e| panic!("cannot start the real consul agent with ACLs: {e}"));
    let admin = a.management_token().expect("management token").to_string();
    a.register_service_with_ttl("web-1", "web", 8080, &[])
        .expect("register");
    let secret = tokio::task::block_in_place(|| a.create_token(READER)).expect("token");
    let (status, me) = acl_call(
        &a,
        reqwest::Method::GET,
        "/v1/acl/token/self",
        &secret,
        None,
    )
    .await;
    assert_eq!(status, 200, "{me}");
    let accessor = me["AccessorID"].as_str().expect("AccessorID").to_string();
    let policies = me["Policies"].clone();

    let config = eager_config(Duration::from_millis(200), Duration::from_secs(1));
    let source = CatalogSource::spawn(client_with(&a.http_url(), &secret), config);
    let healthy = |s: &SourceState| {
        s.health == SourceHealth::Healthy
            && s.catalog
                .service("web")
                .is_some_and(|w| w.instances.len() == 1)
    };
    wait_state(&source, 20, "healthy with the token", healthy).await;

    let path = format!("/v1/acl/token/{accessor}");
    let (status, body) = acl_call(&a, reqwest::Method::DELETE, &path, &admin, None).await;
    assert_eq!(status, 200, "deleting the token: {body}");
    let refused = wait_state(&source, 20, "the refusal reported", |s| {
        matches!(&s.health, SourceHealth::Degraded { config_error: true, reason } if reason.contains("ACL not found"))
    })
    .await;
    let SourceHealth::Degraded { reason, .. } = &refused.health else {
        unreachable!()
    };
    assert!(reason.contains("asked again at a slowing pace"), "{reason}");
    assert!(!reason.contains(&secret), "{reason}");
    let web = refused.catalog.service("web").expect("last good web kept");
    assert_eq!(web.instances.len(), 1);
    assert!(matches!(
        web.freshness,
        converge_model::Freshness::Stale { .. }
    ));

    let restore = serde_json::json!({ "SecretID": secret, "Policies": policies });
    let (status, body) = acl_call(
        &a,
        reqwest::Method::PUT,
        "/v1/acl/token",
        &admin,
        Some(restore),
    )
    .await;
    assert_eq!(status, 200, "restoring the token: {body}");
    let state = wait_state(
        &source,
        20,
        "followed again after the token came back",
        healthy,
    )
    .await;
    let web = state.catalog.service("web").expect("web");
    assert_eq!(web.freshness, converge_model::Freshness::Fresh);
}
