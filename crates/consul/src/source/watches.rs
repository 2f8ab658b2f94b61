//! The two long polls: the checks watch (`/v1/health/state/any`) and the
//! services watch (`/v1/catalog/services`), each a [`BlockingQuery`] in its
//! own task.
//!
//! A watch only tells the loop that something may have changed, as a
//! `Signal` on a channel; it holds no catalog state, so the loop decides
//! what to read from what it knows, whichever order signals arrive in.
//! Both watches share one function, `watch_index`, so they follow
//! Consul's blocking-query rules, the slow pace of refused requests and
//! the parking of rejected ones the same way.

use std::future::Future;

use tokio::sync::mpsc;

use crate::blocking::{BlockingQuery, IndexOutcome, Pacing, Update};
use crate::client::{Client, QueryOptions, Response};
use crate::error::{Error, Retry};

use super::checks::{check_view, CheckView};
use super::settings::SourceConfig;

/// Which watch a signal comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Watch {
    Checks,
    Services,
}

pub(super) enum Signal {
    Checks {
        outcome: IndexOutcome,
        index: u64,
        view: CheckView,
    },
    Services {
        outcome: IndexOutcome,
        index: u64,
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

pub(super) async fn watch_checks(client: Client, config: SourceConfig, tx: mpsc::Sender<Signal>) {
    let read =
        |client: Client, o: QueryOptions| async move { client.health_state("any", &o).await };
    watch_index(client, config, tx, Watch::Checks, read, |u| {
        Signal::Checks {
            outcome: u.outcome,
            index: u.meta.index,
            view: check_view(u.value),
        }
    })
    .await;
}

pub(super) async fn watch_services(client: Client, config: SourceConfig, tx: mpsc::Sender<Signal>) {
    let read = |client: Client, o: QueryOptions| async move { client.catalog_services(&o).await };
    watch_index(client, config, tx, Watch::Services, read, |u| {
        Signal::Services {
            outcome: u.outcome,
            index: u.meta.index,
        }
    })
    .await;
}

/// One blocking query, repeated until the receiver is gone: `read` sends
/// it with this round's options, an answer whose index moved becomes the
/// signal `changed` builds, an unchanged index sends nothing, and a
/// failure (after the query's backoff) is [`Signal::Failed`] for `which`.
/// After a refusal ([`Retry::Slowly`]) the watch also waits out the
/// source's refusal backoff (so the pause is the longer of the two), and
/// asks again. A request Consul rejects for good ([`Retry::Never`]) is
/// reported once, and the watch then holds its sender without asking
/// Consul anything until the source stops.
async fn watch_index<T, F, Fut>(
    client: Client,
    config: SourceConfig,
    tx: mpsc::Sender<Signal>,
    which: Watch,
    read: F,
    changed: impl Fn(Update<T>) -> Signal,
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
                let failed = Signal::Failed {
                    watch: which,
                    error,
                };
                if tx.send(failed).await.is_err() {
                    return;
                }
                tokio::time::sleep(refusals.next_delay()).await;
                continue;
            }
            Err(error) if error.retry() == Retry::Never => {
                let failed = Signal::Failed {
                    watch: which,
                    error,
                };
                if tx.send(failed).await.is_ok() {
                    tx.closed().await;
                }
                return;
            }
            Err(error) => Signal::Failed {
                watch: which,
                error,
            },
        };
        if tx.send(sig).await.is_err() {
            return;
        }
    }
}
