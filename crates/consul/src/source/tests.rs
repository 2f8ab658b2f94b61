//! Unit tests of the source that need no Consul: the check-view diff, the
//! client sizing, and the loop driven signal by signal. Behaviour against a
//! real agent is tested in `tests/`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use converge_model::{Freshness, Health, Instance};
use tokio::time::Instant;

use super::checks::{changed_services, CheckView};
use super::known::{Failure, Known};
use super::runner::Loop;
use super::settings::WATCHES;
use super::watches::{Signal, Watch};
use super::*;
use crate::backoff::Backoff;
use crate::blocking::IndexOutcome;
use crate::client::{QueryMeta, Response};

fn inst(id: &str, node: &str) -> Instance {
    Instance {
        id: id.into(),
        node: node.into(),
        address: "127.0.0.1".into(),
        port: 1,
        tags: Default::default(),
        meta: Default::default(),
        health: Health::Passing,
    }
}

fn view(entries: &[(&str, &str, &str, &str)]) -> CheckView {
    entries
        .iter()
        .map(|(node, id, svc, status)| {
            (
                (node.to_string(), id.to_string()),
                (svc.to_string(), status.to_string()),
            )
        })
        .collect()
}

fn known(pairs: &[(&str, &str)]) -> BTreeMap<String, Known> {
    let mut m: BTreeMap<String, Known> = BTreeMap::new();
    for (svc, node) in pairs {
        m.entry(svc.to_string())
            .or_default()
            .instances
            .push(inst("i", node));
    }
    m
}

#[test]
fn a_status_flip_names_only_its_service() {
    let old = view(&[
        ("n1", "c-web", "web", "passing"),
        ("n1", "c-db", "db", "passing"),
    ]);
    let new = view(&[
        ("n1", "c-web", "web", "critical"),
        ("n1", "c-db", "db", "passing"),
    ]);
    let got = changed_services(&old, &new, &known(&[("web", "n1"), ("db", "n1")]));
    assert_eq!(got, BTreeSet::from(["web".to_string()]));
}

#[test]
fn new_and_removed_checks_name_their_services() {
    let old = view(&[("n1", "c-web", "web", "passing")]);
    let new = view(&[("n1", "c-api", "api", "passing")]);
    let got = changed_services(&old, &new, &BTreeMap::new());
    assert_eq!(got, BTreeSet::from(["api".to_string(), "web".to_string()]));
}

#[test]
fn a_node_check_names_every_service_on_that_node() {
    let old = view(&[
        ("n1", "serfHealth", "", "passing"),
        ("n2", "serfHealth", "", "passing"),
    ]);
    let new = view(&[
        ("n1", "serfHealth", "", "critical"),
        ("n2", "serfHealth", "", "passing"),
    ]);
    let got = changed_services(
        &old,
        &new,
        &known(&[("web", "n1"), ("db", "n2"), ("api", "n1")]),
    );
    assert_eq!(got, BTreeSet::from(["api".to_string(), "web".to_string()]));
}

#[test]
fn unchanged_views_name_nothing() {
    let v = view(&[("n1", "c-web", "web", "passing")]);
    assert!(changed_services(&v, &v.clone(), &BTreeMap::new()).is_empty());
}

#[test]
fn the_sources_client_fits_both_watches_and_the_fetch_pool() {
    for asked in [
        0,
        1,
        12,
        MAX_FETCH_CONCURRENCY,
        MAX_FETCH_CONCURRENCY + 1,
        1000,
    ] {
        let mut config = SourceConfig::new(["web"]);
        config.fetch_concurrency = asked;
        let consul = Config::new("127.0.0.1:1").expect("config");
        let client = config.client(consul).expect("client");
        assert_eq!(
            client.max_requests(),
            WATCHES + config.concurrency(),
            "fetch_concurrency {asked}"
        );
        assert!(
            2 * client.max_requests() <= crate::client::MAX_CONNECTIONS,
            "fetch_concurrency {asked}: requests and idle connections exceed the bound"
        );
    }
}

fn lp() -> Loop {
    let config = SourceConfig::new(["web", "db"]);
    Loop {
        client: Client::new(Config::new("127.0.0.1:1").expect("config")).expect("client"),
        watched: config.services.clone(),
        config,
        known: BTreeMap::new(),
        checks: None,
        checks_index: 0,
        services_index: 0,
        watch_up: [true, true],
        watch_error: None,
        need_full: false,
        dirty: BTreeSet::new(),
        ahead: BTreeSet::new(),
        retry: Backoff::for_consul(),
        retry_at: None,
        resync_at: Instant::now(),
        rng: fastrand::Rng::with_seed(1),
    }
}

#[tokio::test]
async fn never_read_is_missing_not_empty_and_failures_keep_last_good() {
    let mut l = lp();
    let s = l.state();
    assert!(s.catalog.service("web").is_none());
    assert_eq!(s.missing.len(), 2);
    assert_eq!(s.health, SourceHealth::Starting);

    let since = SystemTime::now();
    l.known.insert(
        "web".into(),
        Known {
            instances: vec![inst("w1", "n1")],
            last_ok: Some(since),
            error: Some(Failure {
                message: "cannot reach Consul".into(),
                parked: false,
            }),
        },
    );
    let s = l.state();
    let web = s.catalog.service("web").expect("web kept");
    assert_eq!(web.instances.len(), 1, "last good instances are kept");
    assert!(matches!(&web.freshness, Freshness::Stale { since: t, .. } if *t == since));
    assert_eq!(s.missing, BTreeSet::from(["db".to_string()]));
}

#[tokio::test]
async fn a_failed_watch_marks_everything_stale_and_degraded() {
    let mut l = lp();
    for name in ["web", "db"] {
        l.known.insert(
            name.into(),
            Known {
                instances: vec![inst("x", "n1")],
                last_ok: Some(SystemTime::now()),
                error: None,
            },
        );
    }
    assert_eq!(l.state().health, SourceHealth::Healthy);
    l.on_signal(Signal::Failed {
        watch: Watch::Checks,
        error: Error::Connect {
            endpoint: "/v1/health/state/any".into(),
            message: "connection refused".into(),
        },
    });
    let s = l.state();
    assert!(matches!(
        s.health,
        SourceHealth::Degraded {
            config_error: false,
            ..
        }
    ));
    for e in s.catalog.services().values() {
        assert!(matches!(e.freshness, Freshness::Stale { .. }));
        assert_eq!(e.instances.len(), 1);
    }
    // While the watch is down, nothing is fetched (and nothing dropped).
    l.fetch().await;
    assert!(l.need_full, "recovery must refetch everything");
}

/// The checks watch answers with web passing (index 10); the read it
/// triggers runs after web went critical (index 11); the next answer
/// (index 12) has web passing again, the same as the first. Compared
/// view to view nothing changed, but the catalog says critical: web
/// must be read again, or the flip back is lost until something else
/// changes.
#[tokio::test]
async fn a_read_past_its_check_view_is_read_again_at_the_next_view() {
    let checks = |l: &mut Loop, index: u64| {
        l.on_signal(Signal::Checks {
            outcome: IndexOutcome::Moved,
            index,
            view: view(&[("n1", "c-web", "web", "passing")]),
        });
    };
    let read = |index: u64, health: Health| {
        Ok(Response {
            value: vec![Instance {
                health,
                ..inst("w1", "n1")
            }],
            meta: QueryMeta {
                index,
                ..QueryMeta::default()
            },
        })
    };
    let mut l = lp();
    checks(&mut l, 10);
    l.dirty.clear();
    assert!(!l.record_read("web".into(), read(11, Health::Critical)));
    checks(&mut l, 12);
    assert_eq!(l.dirty, BTreeSet::from(["web".to_string()]));

    // A read no newer than the view it follows needs no second look.
    l.dirty.clear();
    assert!(!l.record_read("web".into(), read(12, Health::Passing)));
    checks(&mut l, 13);
    assert!(l.dirty.is_empty(), "{:?}", l.dirty);
}

fn denied(endpoint: &str) -> Error {
    Error::PermissionDenied {
        endpoint: endpoint.into(),
        message: "Permission denied: token lacks 'service:read'".into(),
    }
}

fn refused(endpoint: &str) -> Error {
    Error::Connect {
        endpoint: endpoint.into(),
        message: "connection refused".into(),
    }
}

fn assert_parked_reason(s: &SourceState, endpoint: &str) {
    match &s.health {
        SourceHealth::Degraded {
            reason,
            config_error,
        } => {
            assert!(*config_error, "{reason}");
            assert!(reason.contains(endpoint), "{reason}");
            assert!(reason.contains("not asked again"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_refused_read_is_not_retried_and_outranks_a_retryable_one() {
    let mut l = lp();
    l.known.insert(
        "web".into(),
        Known {
            instances: vec![inst("w1", "n1")],
            last_ok: Some(SystemTime::now()),
            error: Some(Failure::new(&denied("/v1/health/service/web"))),
        },
    );
    l.known.insert(
        "db".into(),
        Known {
            error: Some(Failure::new(&refused("/v1/health/service/db"))),
            ..Known::default()
        },
    );
    l.on_retry();
    assert_eq!(l.dirty, BTreeSet::from(["db".to_string()]));
    let s = l.state();
    assert_parked_reason(&s, "/v1/health/service/web");
    let web = s.catalog.service("web").expect("last good web kept");
    assert_eq!(web.instances.len(), 1);
    assert!(matches!(web.freshness, Freshness::Stale { .. }));
}

#[tokio::test]
async fn a_refused_watch_stays_the_reported_failure() {
    let mut l = lp();
    for (watch, error) in [
        (Watch::Checks, denied("/v1/health/state/any")),
        (Watch::Services, refused("/v1/catalog/services")),
    ] {
        l.on_signal(Signal::Failed { watch, error });
    }
    assert_parked_reason(&l.state(), "/v1/health/state/any");
}
