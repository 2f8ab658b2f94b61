//! The long polls, each a [`BlockingQuery`] in its own task: one per
//! watched service (`/v1/health/service/:name`, whose answer is that
//! service's instances), or, when there are more services than the client
//! can hold long polls for, the three shared watches: the critical checks
//! (`/v1/health/state/critical`), the warning ones
//! (`/v1/health/state/warning`) and the services (`/v1/catalog/services`).
//! See the [source](super) for which and why.
//!
//! A watch holds no catalog state: it sends what it saw to the loop as a
//! `Signal` on a channel, and the loop decides what it means, whichever
//! order signals arrive in. Every watch runs through one function,
//! `watch_index`, so all follow Consul's blocking-query rules, the slow
//! pace of refused requests and the parking of rejected ones the same way.

use std::future::Future;

use converge_model::Instance;
use tokio::sync::mpsc;

use crate::blocking::{BlockingQuery, IndexOutcome, Pacing, Update};
use crate::client::{Client, QueryOptions, Response};
use crate::error::{Error, Retry};

use super::arming::Ticket;
use super::checks::{check_view, CheckView};
use super::settings::SourceConfig;

/// Which shared watch a signal comes from; `as usize` indexes the loop's
/// per-watch state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Watch {
    Critical,
    Warning,
    Services,
}

pub(super) enum Signal {
    /// An answer of a checks watch ([`Watch::Critical`] or
    /// [`Watch::Warning`]).
    Checks {
        watch: Watch,
        outcome: IndexOutcome,
        index: u64,
        view: CheckView,
    },
    Services {
        outcome: IndexOutcome,
    },
    /// A per-service watch's answer (its instances) or failure.
    Service {
        name: String,
        result: Result<Response<Vec<Instance>>, Error>,
    },
    Failed {
        watch: Watch,
        error: Error,
    },
}

fn watch_options(config: &SourceConfig) -> (QueryOptions, Pacing) {
    (
        QueryOptions {
            consistency: config.consistency,
            ..QueryOptions::default()
        },
        config.pacing.clone(),
    )
}

/// Watches the checks in one state that is not passing (`which` is
/// [`Watch::Critical`] or [`Watch::Warning`]). Its blocking query wakes on
/// every check change in the datacenter (it blocks on the index of all
/// checks), but the agent finds the checks in that state through an index
/// and its answer holds only them. A check turning passing leaves the
/// answer, so every health change still shows in a diff of two answers; a
/// new passing check changes no instance's health, and the instance it
/// comes with moves the services watch.
pub(super) async fn watch_checks(
    client: Client,
    config: SourceConfig,
    which: Watch,
    tx: mpsc::Sender<Signal>,
) {
    let state = if which == Watch::Warning {
        "warning"
    } else {
        "critical"
    };
    let read =
        |client: Client, o: QueryOptions| async move { client.health_state(state, &o).await };
    let checks = |u: Update<_>| Signal::Checks {
        watch: which,
        outcome: u.outcome,
        index: u.meta.index,
        view: check_view(u.value),
    };
    watch_index(client, config, tx, read, checks, failed(which), None).await;
}

pub(super) async fn watch_services(client: Client, config: SourceConfig, tx: mpsc::Sender<Signal>) {
    let read = |client: Client, o: QueryOptions| async move { client.catalog_services(&o).await };
    let services = |u: Update<_>| Signal::Services { outcome: u.outcome };
    let failed = failed(Watch::Services);
    watch_index(client, config, tx, read, services, failed, None).await;
}

/// Watches one service's instances. Its index moves with that service's
/// instances and checks, and with the node and node checks of every node
/// it runs on, never with another service's changes.
///
/// An empty answer to a blocking query, under ACLs that deny by default,
/// is read again without blocking before it is believed: a blocking query
/// woken by the deletion of its token answers once with the anonymous
/// token's view (empty, and not marked as filtered) before Consul starts
/// refusing it, and "could not ask" must not become "no instances". The
/// plain read resolves the token afresh and is refused.
///
/// The long poll is armed only once every service of `ticket`'s batch has
/// had its first read (see `arming`).
pub(super) async fn watch_service(
    client: Client,
    config: SourceConfig,
    name: String,
    tx: mpsc::Sender<Signal>,
    ticket: Ticket,
) {
    let query = config.health.clone();
    let read = |client: Client, o: QueryOptions| {
        let (name, query) = (name.clone(), query.clone());
        async move {
            let answer = client.health_service(&name, &query, &o).await?;
            if answer.value.is_empty() && answer.meta.default_acl_deny && o.index > 0 {
                return client.health_service(&name, &query, &o.plain()).await;
            }
            Ok(answer)
        }
    };
    let answer = |u: Update<_>| Signal::Service {
        name: name.clone(),
        result: Ok(Response {
            value: u.value,
            meta: u.meta,
        }),
    };
    let failed = |error| Signal::Service {
        name: name.clone(),
        result: Err(error),
    };
    watch_index(client, config, tx, read, answer, failed, Some(ticket)).await;
}

/// The failure signal of a shared watch.
fn failed(watch: Watch) -> impl Fn(Error) -> Signal {
    move |error| Signal::Failed { watch, error }
}

/// One blocking query, repeated until the receiver is gone: `read` sends
/// it with this round's options, an answer whose index moved becomes the
/// signal `changed` builds, an unchanged index sends nothing, and a
/// failure (after the query's backoff) is the signal `failed` builds.
/// After a refusal ([`Retry::Slowly`]) the watch also waits out the
/// source's refusal backoff (so the pause is the longer of the two), and
/// asks again. A request Consul rejects for good ([`Retry::Never`]) is
/// reported once, and the watch then holds its sender without asking
/// Consul anything until the source stops.
///
/// With a `ticket`, the first answer (or failure) is signalled and then
/// the watch waits for the rest of its batch before it asks again; a
/// refused or rejected first read gives its ticket up at once, as it will
/// not ask again soon.
pub(super) async fn watch_index<T, F, Fut>(
    client: Client,
    config: SourceConfig,
    tx: mpsc::Sender<Signal>,
    read: F,
    changed: impl Fn(Update<T>) -> Signal,
    failed: impl Fn(Error) -> Signal,
    mut ticket: Option<Ticket>,
) where
    F: Fn(Client, QueryOptions) -> Fut,
    Fut: Future<Output = Result<Response<T>, Error>>,
{
    let (opts, pacing) = watch_options(&config);
    let mut refusals = config.refusal_backoff();
    let mut q = BlockingQuery::new(opts, pacing, config.retry_backoff(), fastrand::Rng::new());
    loop {
        let answer = q.next(|o| read(client.clone(), o)).await;
        if answer.is_ok() {
            refusals.reset();
        }
        let sig = match answer {
            Ok(u) if u.outcome == IndexOutcome::Unchanged => continue,
            Ok(u) => changed(u),
            Err(error) if error.retry() == Retry::Slowly => {
                drop(ticket.take());
                if tx.send(failed(error)).await.is_err() {
                    return;
                }
                tokio::time::sleep(refusals.next_delay()).await;
                continue;
            }
            Err(error) if error.retry() == Retry::Never => {
                drop(ticket.take());
                if tx.send(failed(error)).await.is_ok() {
                    tx.closed().await;
                }
                return;
            }
            Err(error) => failed(error),
        };
        if tx.send(sig).await.is_err() {
            return;
        }
        if let Some(ticket) = ticket.take() {
            ticket.first_read_done().await;
        }
    }
}
