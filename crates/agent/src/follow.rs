//! `--published`: a node takes its manifests and templates from the
//! revision published in Consul KV (see [`crate::publish`]) instead of a
//! directory.
//!
//! The daemon watches `<prefix>/desired` with a blocking query. When it
//! names a revision the node does not run, the node fetches its bundle,
//! checks the bytes against the checksum `desired` records (a bundle
//! altered or cut short in KV is refused), unpacks it into its
//! [`Store`] under `--root`, checks that it loads for this node, and only
//! then switches to it and wakes the reconcile loop, which reads the
//! store's `current` revision like any manifests directory. Whatever goes
//! wrong, the node stays on its last good revision and says why in its
//! status and report; a restart comes up on the stored revision without
//! asking Consul.
//!
//! `apply --once --published` takes the published revision into the same
//! store through the same [`take`], once; `plan --published` and
//! `validate --published` only read it (see
//! [`crate::fleet::plan::published_once`]), so they change nothing on the
//! node.

pub mod gated;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use converge_consul::{Backoff, BlockingQuery, Client, Pacing, QueryOptions};

use serde::{Deserialize, Serialize};

use crate::error::AgentError;
use crate::fleet::view::{self, parse_desired};
use crate::publish::bundle;
use crate::publish::{Desired, Keys, Publication};
use crate::revision::Revision;
pub use store::{Installed, Store};

/// Longest a watch of `<prefix>/desired` blocks in one request.
const WATCH_WAIT: Duration = Duration::from_secs(300);

/// What a node follows: the keys, its store, its name.
#[derive(Debug, Clone)]
pub struct Follow {
    /// The fleet's keys.
    pub keys: Keys,
    /// Where revisions are kept on this node.
    pub store: Store,
    /// This node, as the manifests name it (a revision must load for it).
    pub node: String,
}

/// What [`take`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    /// The node already ran the revision.
    Already(Revision),
    /// The revision was fetched, verified, unpacked and made current.
    Switched(Revision),
}

/// Makes `desired`'s current revision the node's, unless it already is.
/// On any error the store is unchanged.
pub async fn take(client: &Client, follow: &Follow, desired: &Desired) -> Result<Taken, String> {
    let p = &desired.current;
    let Some((installed, files)) = fetch_unless_current(client, follow, p).await? else {
        return Ok(Taken::Already(p.revision.clone()));
    };
    follow
        .store
        .install(&installed, &files, &follow.node)
        .map_err(|e| format!("revision {} does not load on this node: {e}", p.revision))?;
    Ok(Taken::Switched(p.revision.clone()))
}

/// `p` as the store records it and its bundle's files, or `None` when
/// the node already runs it: the first step of taking a revision, with
/// or without the rollout.
pub(crate) async fn fetch_unless_current(
    client: &Client,
    follow: &Follow,
    p: &Publication,
) -> Result<Option<(Installed, Vec<(String, Vec<u8>)>)>, String> {
    let installed = Installed {
        revision: p.revision.clone(),
        checksum: p.checksum.clone(),
    };
    if follow.store.current().as_ref() == Some(&installed) {
        return Ok(None);
    }
    let files = fetch(client, &follow.keys, p).await?;
    Ok(Some((installed, files)))
}

/// The files of `p`'s bundle, after checking its bytes against `p`'s
/// checksum.
pub(crate) async fn fetch(
    client: &Client,
    keys: &Keys,
    p: &Publication,
) -> Result<Vec<(String, Vec<u8>)>, String> {
    let key = keys.bundle(&p.revision);
    let pair = client
        .kv_get(&key, &QueryOptions::default())
        .await
        .map_err(|e| format!("cannot fetch {key}: {e}"))?
        .value
        .ok_or_else(|| format!("revision {}: its bundle {key} is gone", p.revision))?;
    let found = bundle::checksum(&pair.value);
    if found != p.checksum {
        return Err(format!(
            "revision {}: bundle {key} is {} bytes with checksum {found}, not the published {} \
             ({} bytes); refused",
            p.revision,
            pair.value.len(),
            p.checksum,
            p.size
        ));
    }
    bundle::unpack(&pair.value).map_err(|e| format!("revision {}: {e}", p.revision))
}

/// For `plan` and `apply --once`: reads `desired` once (consistently)
/// and takes it, within `timeout`. Returns the revision now current.
pub fn sync_once(
    config: converge_consul::Config,
    follow: &Follow,
    timeout: Duration,
) -> Result<Revision, AgentError> {
    once(config, timeout, |client| async move {
        let desired = view::desired(&client, &follow.keys)
            .await?
            .ok_or_else(|| format!("nothing is published at {} yet", follow.keys.desired()))?;
        match take(&client, follow, &desired).await? {
            Taken::Already(r) | Taken::Switched(r) => Ok(r),
        }
    })
}

/// Runs `work` with a client of `config` on a runtime of its own, within
/// `timeout`: a one-shot command's reads of the fleet's keys. Errors say
/// they come from `--published`.
pub(crate) fn once<T, F, W>(
    config: converge_consul::Config,
    timeout: Duration,
    work: W,
) -> Result<T, AgentError>
where
    W: FnOnce(Client) -> F,
    F: std::future::Future<Output = Result<T, String>>,
{
    let fail = |e: String| AgentError::Source(format!("--published: {e}"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(format!("cannot start a runtime: {e}")))?;
    let client = Client::new(config).map_err(|e| fail(e.to_string()))?;
    // The timer needs the runtime: it is made inside it.
    match runtime.block_on(async { tokio::time::timeout(timeout, work(client)).await }) {
        Ok(result) => result.map_err(fail),
        Err(_) => Err(fail(format!("no answer from Consul within {timeout:?}"))),
    }
}

/// What a following node knows of the published revision.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Following {
    /// The revision `<prefix>/desired` names, once read.
    pub desired: Option<Revision>,
    /// Why the node is not on it (a bundle that fails its checksum or does
    /// not load here, Consul out of reach); `None` once it is.
    pub error: Option<String>,
    /// What the rollout makes the node wait for before it takes the
    /// revision (a pause, a halt, canaries, its turn, a lock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<crate::rollout::Waiting>,
}

/// Told every change of the node's [`Following`] state (a switch to a new
/// revision is one).
pub type OnChange = Arc<dyn Fn(&Following) + Send + Sync>;

/// Starts the daemon's watch of `<prefix>/desired`; `on_change` hears of
/// every change of what the node knows, a switch included. A new
/// revision is taken through the rollout (`gated`). Needs a running
/// tokio runtime.
pub fn spawn(
    client: Client,
    follow: Follow,
    mut gated: gated::Gated,
    on_change: OnChange,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut query = BlockingQuery::new(
            QueryOptions::default(),
            Pacing {
                wait: WATCH_WAIT,
                ..Pacing::default()
            },
            Backoff::for_consul(),
            fastrand::Rng::new(),
        );
        let key = follow.keys.desired();
        let mut last = Following::default();
        // What `on_change` last heard, the rollout's waits included: the
        // state after a wait is told even when it equals `last`.
        let told = Arc::new(std::sync::Mutex::new(Following::default()));
        let on_change: OnChange = {
            let told = told.clone();
            Arc::new(move |state: &Following| {
                let mut told = told
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if *told != *state {
                    on_change(state);
                    *told = state.clone();
                }
            })
        };
        loop {
            let read = query
                .next(|opts| {
                    let (client, key) = (client.clone(), key.clone());
                    async move { client.kv_get(&key, &opts).await }
                })
                .await;
            // A revision not taken (Consul went away between the reads, a
            // corrupt bundle) is tried again on every answer, changed or not.
            let state = match read {
                Ok(update) if !update.outcome.may_have_changed() && last.error.is_none() => {
                    continue
                }
                Ok(update) => {
                    let desired = parse_desired(&follow.keys, update.value.map(|p| p.value));
                    follow_once(&client, &follow, desired, &mut gated, &on_change).await
                }
                Err(e) => Following {
                    desired: last.desired.clone(),
                    error: Some(format!(
                        "cannot read {key} ({e}); staying on the revision on disk"
                    )),
                    waiting: None,
                },
            };
            if state != last {
                if let Some(e) = &state.error {
                    tracing::error!(error = %e, "cannot follow the published revision; staying on the last good one");
                }
            }
            on_change(&state);
            last = state;
        }
    })
}

/// One answer of the watch turned into the node's following state;
/// `on_change` hears what the rollout makes the node wait for meanwhile.
async fn follow_once(
    client: &Client,
    follow: &Follow,
    desired: Result<Option<Desired>, String>,
    gated: &mut gated::Gated,
    on_change: &OnChange,
) -> Following {
    let desired = match desired {
        Ok(Some(d)) => d,
        Ok(None) => {
            return Following {
                desired: None,
                error: Some(format!("nothing is published at {}", follow.keys.desired())),
                waiting: None,
            }
        }
        Err(e) => {
            return Following {
                desired: None,
                error: Some(e),
                waiting: None,
            }
        }
    };
    let revision = desired.current.revision.clone();
    let told = std::sync::Mutex::new(None);
    let waiting = |w: crate::rollout::Waiting| {
        let mut told = told
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if told.as_ref() != Some(&w) {
            tracing::info!(revision = %revision, "not taking the revision yet: {w}");
            on_change(&Following {
                desired: Some(revision.clone()),
                error: None,
                waiting: Some(w.clone()),
            });
            *told = Some(w);
        }
    };
    // A switch (or a switch back) runs a pass; the node stays in its gate
    // until `take` returns.
    let switched = || {
        on_change(&Following {
            desired: Some(revision.clone()),
            error: None,
            waiting: Some(crate::rollout::Waiting::Gate),
        })
    };
    let hooks = gated::Hooks {
        waiting: &waiting,
        switched: &switched,
    };
    let error = match gated::take(client, follow, &desired, gated, &hooks).await {
        Ok(Taken::Switched(r)) => {
            tracing::info!(revision = %r, "switched to the published revision");
            None
        }
        Ok(Taken::Already(_)) => None,
        Err(e) => Some(e),
    };
    Following {
        desired: Some(desired.current.revision),
        error,
        waiting: None,
    }
}
