//! Unit tests of the source that need no Consul: the check-view diff, the
//! client sizing, and the loop driven signal by signal. Behaviour against a
//! real agent is tested in `tests/`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use converge_model::{Freshness, Health, Instance};
use tokio::time::Instant;

use super::checks::{changed_services, CheckView};
use super::known::{Failure, Known};
use super::runner::Loop;
use super::settings::WATCHES;
use super::tasks::Mode;
use super::watches::{Signal, Watch};
use super::*;
use crate::backoff::Backoff;
use crate::blocking::IndexOutcome;
use crate::client::{QueryMeta, Response};
use crate::error::Retry;

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
        mode: Mode::Shared,
        known: BTreeMap::new(),
        checks: [None, None],
        checks_index: [0, 0],
        watch_up: [true; 3],
        watch_error: None,
        need_full: false,
        dirty: BTreeSet::new(),
        ahead: BTreeSet::new(),
        retry: Backoff::for_consul(),
        retry_at: None,
        refusals: Backoff::for_refusals(),
        refused_at: None,
        refused_due: false,
        resync_at: Instant::now(),
        rng: fastrand::Rng::with_seed(1),
        generation: 0,
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
            index: 0,
            error: Some(Failure {
                message: "cannot reach Consul".into(),
                retry: Retry::Soon,
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
                index: 0,
                error: None,
            },
        );
    }
    assert_eq!(l.state().health, SourceHealth::Healthy);
    l.on_signal(Signal::Failed {
        watch: Watch::Critical,
        error: Error::Connect {
            endpoint: "/v1/health/state/critical".into(),
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

/// The checks watches answer with web passing (no critical or warning
/// check, index 10); the read that follows runs after web went critical
/// (index 11); the next answers (index 12) have web passing again, the
/// same as the first. Compared view to view nothing changed, but the
/// catalog says critical: web must be read again, or the flip back is
/// lost until something else changes.
#[tokio::test]
async fn a_read_past_its_check_view_is_read_again_at_the_next_view() {
    // Every check change wakes both checks watches.
    let checks = |l: &mut Loop, index: u64| {
        for watch in [Watch::Critical, Watch::Warning] {
            l.on_signal(Signal::Checks {
                watch,
                outcome: IndexOutcome::Moved,
                index,
                view: view(&[]),
            });
        }
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

fn rejected(endpoint: &str) -> Error {
    Error::InvalidRequest {
        endpoint: endpoint.into(),
        message: "HTTP 400: Invalid query parameter".into(),
    }
}

fn failure(error: &Error) -> Option<Failure> {
    Some(Failure::new(error, Duration::from_secs(60)))
}

/// Checks the source reports a configuration error for `endpoint` whose
/// reason says what the source does about it (`what`).
fn assert_config_reason(s: &SourceState, endpoint: &str, what: &str) {
    match &s.health {
        SourceHealth::Degraded {
            reason,
            config_error,
        } => {
            assert!(*config_error, "{reason}");
            assert!(reason.contains(endpoint), "{reason}");
            assert!(reason.contains(what), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

const SLOWLY: &str = "asked again at a slowing pace, at least every 60 s";

/// web refused (it had been read once), db unreachable.
fn refused_web_unreachable_db() -> Loop {
    let mut l = lp();
    l.known.insert(
        "web".into(),
        Known {
            instances: vec![inst("w1", "n1")],
            last_ok: Some(SystemTime::now()),
            index: 0,
            error: failure(&denied("/v1/health/service/web")),
        },
    );
    l.known.insert(
        "db".into(),
        Known {
            error: failure(&refused("/v1/health/service/db")),
            ..Known::default()
        },
    );
    l
}

#[tokio::test]
async fn a_refused_read_waits_for_the_slow_pace_and_outranks_a_retryable_one() {
    let mut l = refused_web_unreachable_db();
    l.on_retry();
    assert_eq!(l.dirty, BTreeSet::from(["db".to_string()]));
    let s = l.state();
    assert_config_reason(&s, "/v1/health/service/web", SLOWLY);
    let web = s.catalog.service("web").expect("last good web kept");
    assert_eq!(web.instances.len(), 1);
    assert!(matches!(web.freshness, Freshness::Stale { .. }));
}

/// The refusal timer runs at [`Backoff::for_refusals`]'s pace: armed
/// once per round of refusals, it makes the next fetch ask for the
/// refused services, and a round with none left disarms and resets it.
#[tokio::test(start_paused = true)]
async fn a_refusal_is_asked_again_at_the_slow_pace_until_it_is_lifted() {
    let mut l = refused_web_unreachable_db();
    let start = Instant::now();
    l.pace_refusals();
    let at = l.refused_at.expect("armed while web is refused");
    let first = at - start;
    assert!(first >= crate::backoff::REFUSAL_BASE / 2, "{first:?}");
    assert!(first <= crate::backoff::REFUSAL_BASE, "{first:?}");
    l.pace_refusals();
    assert_eq!(l.refused_at, Some(at), "one timer, not one per round");

    tokio::time::sleep_until(at).await;
    l.on_refused_retry();
    assert_eq!(l.dirty, BTreeSet::from(["web".to_string()]));
    assert!(l.refused_due);
    l.pace_refusals();
    assert_eq!(l.refused_at, None, "not re-armed before web is asked");

    // Still refused: the next pause is longer.
    l.refused_due = false;
    l.record_read("web".into(), Err(denied("/v1/health/service/web")));
    l.pace_refusals();
    let second = l.refused_at.expect("armed again") - Instant::now();
    assert!(second >= crate::backoff::REFUSAL_BASE, "{second:?}");
    assert_eq!(l.refusals.failures(), 2);

    // Lifted: nothing refused is left, so the timer and its pace reset.
    let ok = Response {
        value: vec![inst("w1", "n1")],
        meta: QueryMeta::default(),
    };
    assert!(!l.record_read("web".into(), Ok(ok)));
    l.pace_refusals();
    assert_eq!(l.refused_at, None);
    assert_eq!(l.refusals.failures(), 0);
}

#[tokio::test]
async fn a_rejected_read_is_not_asked_again_until_restart() {
    let mut l = lp();
    l.known.insert(
        "web".into(),
        Known {
            error: failure(&rejected("/v1/health/service/web")),
            ..Known::default()
        },
    );
    l.on_retry();
    l.on_refused_retry();
    assert!(!l.dirty.contains("web"), "{:?}", l.dirty);
    l.pace_refusals();
    assert_eq!(l.refused_at, None, "nothing to pace");
    assert_config_reason(&l.state(), "/v1/health/service/web", "not asked again");
}

#[tokio::test]
async fn a_refused_watch_stays_the_reported_failure() {
    let mut l = lp();
    for (watch, error) in [
        (Watch::Critical, denied("/v1/health/state/critical")),
        (Watch::Services, refused("/v1/catalog/services")),
    ] {
        l.on_signal(Signal::Failed { watch, error });
    }
    assert_config_reason(&l.state(), "/v1/health/state/critical", SLOWLY);
}

/// In per-service mode a watch's answer is the data: it is kept as read,
/// an answer from a watch stopped since is dropped, a failure keeps the
/// last good instances (stale), and the fetch pool never reads (a read
/// here would fail: the client points at a closed port).
#[tokio::test]
async fn per_service_answers_are_the_data_and_nothing_is_fetched() {
    let answer = |health: Health| {
        Ok(Response {
            value: vec![Instance {
                health,
                ..inst("w1", "n1")
            }],
            meta: QueryMeta {
                index: 7,
                ..QueryMeta::default()
            },
        })
    };
    let mut l = lp();
    l.enter(Mode::PerService);
    l.on_signal(Signal::Service {
        name: "web".into(),
        result: answer(Health::Critical),
    });
    l.on_signal(Signal::Service {
        name: "gone".into(),
        result: answer(Health::Passing),
    });
    l.need_full = true;
    l.fetch().await;
    let s = l.state();
    let web = s.catalog.service("web").expect("web kept as answered");
    assert_eq!(web.instances[0].health, Health::Critical);
    assert_eq!(web.freshness, Freshness::Fresh);
    assert!(s.catalog.service("gone").is_none());
    assert_eq!(s.missing, BTreeSet::from(["db".to_string()]));
    assert_eq!(s.catalog.index, 7);

    l.on_signal(Signal::Service {
        name: "web".into(),
        result: Err(refused("/v1/health/service/web")),
    });
    let s = l.state();
    let web = s.catalog.service("web").expect("last good web kept");
    assert_eq!(web.instances[0].health, Health::Critical);
    assert!(matches!(web.freshness, Freshness::Stale { .. }));
    assert!(matches!(s.health, SourceHealth::Degraded { .. }));
}

/// Two per-service watches of one start-up batch, driven by fake reads in
/// paused time: `fast` is answered at once, `slow` only when the test
/// says. `fast` must not arm its long poll (a request with an index)
/// while `slow`'s first read is still out, and must arm it as soon as that
/// read is answered. Waiting an hour of paused time ends only when every
/// task is idle, so "nothing was sent" is decided, not hoped for.
#[tokio::test(start_paused = true)]
async fn per_service_watches_arm_only_after_every_first_read_of_their_batch() {
    use std::sync::Arc;

    use tokio::sync::{mpsc, Notify};

    use super::arming::Ticket;
    use super::watches::watch_index;
    use crate::client::QueryOptions;

    let client = SourceConfig::new(["x"])
        .client(crate::Config::new("http://127.0.0.1:1").expect("config"))
        .expect("client");
    let (signals, mut signalled) = mpsc::channel(16);
    let (requests, mut requested) = mpsc::unbounded_channel();
    let answer_slow = Arc::new(Notify::new());
    let mut tickets = Ticket::batch(2);
    for name in ["fast", "slow"] {
        let (requests, answer_slow) = (requests.clone(), Arc::clone(&answer_slow));
        let read = move |_: Client, o: QueryOptions| {
            let (requests, answer_slow) = (requests.clone(), Arc::clone(&answer_slow));
            async move {
                requests.send((name, o.index)).expect("test alive");
                if o.index > 0 {
                    std::future::pending::<()>().await;
                }
                if name == "slow" {
                    answer_slow.notified().await;
                }
                Ok(Response {
                    value: Vec::<Instance>::new(),
                    meta: QueryMeta {
                        index: 7,
                        ..QueryMeta::default()
                    },
                })
            }
        };
        let changed = move |u: crate::blocking::Update<Vec<Instance>>| Signal::Service {
            name: name.into(),
            result: Ok(Response {
                value: u.value,
                meta: u.meta,
            }),
        };
        let failed = move |error| Signal::Service {
            name: name.into(),
            result: Err(error),
        };
        let ticket = tickets.next();
        let (client, config, signals) =
            (client.clone(), SourceConfig::new([name]), signals.clone());
        tokio::spawn(watch_index(
            client, config, signals, read, changed, failed, ticket,
        ));
    }
    let mut first = [requested.recv().await, requested.recv().await];
    first.sort();
    assert_eq!(first, [Some(("fast", 0)), Some(("slow", 0))]);
    let Some(Signal::Service { name, .. }) = signalled.recv().await else {
        panic!("fast's first answer is signalled");
    };
    assert_eq!(name, "fast");

    let early = tokio::time::timeout(Duration::from_secs(3600), requested.recv()).await;
    assert!(early.is_err(), "armed before slow was read: {early:?}");

    answer_slow.notify_one();
    let mut armed = [requested.recv().await, requested.recv().await];
    armed.sort();
    assert_eq!(armed, [Some(("fast", 7)), Some(("slow", 7))]);
}

/// A watch stopped before its first read (its service dropped by a
/// manifest reload) gives its ticket up, so the rest of its batch still
/// arms.
#[tokio::test]
async fn a_dropped_ticket_counts_as_read() {
    let mut tickets = super::arming::Ticket::batch(2);
    let (kept, dropped) = (tickets.next().expect("one"), tickets.next().expect("two"));
    drop(dropped);
    tokio::time::timeout(Duration::from_secs(10), kept.first_read_done())
        .await
        .expect("the gate opens once every other ticket is gone");
}
