//! The locks a node holds while it switches to a new revision, after
//! Consul's own recipes: a key per group taken with `?acquire=` (the
//! leader-election recipe) and, for `max_parallel`, Consul's semaphore
//! recipe (a contender key per session, and one `.lock` key listing the
//! holders, moved by check-and-set).
//!
//! Every lock is held by one session made for the switch: TTL'd, renewed
//! while held, tied to the node's `serfHealth` (Consul's default), with no
//! lock delay. When the node or its agent dies, the session is invalidated
//! and its keys released; a slot of the semaphore held by a dead session
//! is pruned by the next contender. A clean release destroys the session.

use std::time::Duration;

use converge_consul::{Client, Consistency, QueryOptions};
use converge_model::rollout::NodeRollout;
use serde::{Deserialize, Serialize};

use super::{RolloutKeys, Waiting};

/// Longest one wait for a lock blocks before looking again.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Locks held; released by [`Held::release`] (or by the session's TTL if
/// the process dies).
#[derive(Debug)]
pub struct Held {
    client: Client,
    /// `None` when the node has nothing to lock (no group, no limit): it
    /// then needs no session, nor the right to make one.
    session: Option<(String, tokio::task::JoinHandle<()>)>,
    semaphore: Option<String>,
}

/// `semaphore/.lock`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Slots {
    limit: u32,
    holders: Vec<String>,
}

/// Takes every lock of `plan` for `node`, waiting as long as it takes;
/// `waiting` hears which one it waits for.
pub async fn acquire(
    client: &Client,
    keys: &RolloutKeys,
    node: &str,
    plan: &NodeRollout,
    ttl: Duration,
    waiting: &(dyn Fn(Waiting) + Send + Sync),
) -> Result<Held, String> {
    let mut held = Held {
        client: client.clone(),
        session: None,
        semaphore: None,
    };
    if plan.locks.is_empty() && plan.max_parallel.is_none() {
        return Ok(held);
    }
    let consul = |e: converge_consul::Error| format!("rollout lock: {e}");
    let session = client
        .session_create(&format!("converge rollout {node}"), ttl)
        .await
        .map_err(consul)?;
    let renew = spawn_renew(client.clone(), session.clone(), ttl);
    held.session = Some((session.clone(), renew));
    let body = serde_json::json!({ "node": node }).to_string();
    let taken = async {
        for lock in &plan.locks {
            take_key(client, &keys.lock(lock), body.as_bytes(), &session, waiting).await?;
        }
        if let Some(limit) = plan.max_parallel {
            let key = format!("{}{session}", keys.semaphore());
            client.kv_acquire(&key, body.as_bytes(), &session).await?;
            held.semaphore = Some(keys.semaphore());
            take_slot(client, &keys.semaphore(), &session, limit, waiting).await?;
        }
        Ok(())
    };
    match taken.await {
        Ok(()) => Ok(held),
        Err(e) => {
            held.release().await;
            Err(consul(e))
        }
    }
}

/// Renews `session` every half TTL until aborted, or until Consul no
/// longer knows it: then the locks it held are free for others, and the
/// log says so loudly rather than renewing nothing.
fn spawn_renew(client: Client, session: String, ttl: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(ttl / 2);
        tick.tick().await;
        loop {
            tick.tick().await;
            match client.session_renew(&session).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::error!(
                        %session,
                        "the rollout lock's session expired: its locks are no longer held"
                    );
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "cannot renew the rollout lock's session"),
            }
        }
    })
}

/// Acquires `key` with `session`, waiting on the key while another holds it.
async fn take_key(
    client: &Client,
    key: &str,
    body: &[u8],
    session: &str,
    waiting: &(dyn Fn(Waiting) + Send + Sync),
) -> Result<(), converge_consul::Error> {
    let mut index = 0;
    loop {
        if client.kv_acquire(key, body, session).await? {
            return Ok(());
        }
        waiting(Waiting::Lock {
            key: key.to_string(),
        });
        let opts = QueryOptions {
            index,
            wait: Some(LOCK_WAIT),
            ..QueryOptions::default()
        };
        index = client.kv_get(key, &opts).await?.meta.index;
    }
}

/// Consul's semaphore recipe: adds `session` to the holders of
/// `<prefix>semaphore/.lock` when fewer than `limit` live sessions hold a
/// slot, by check-and-set; holders whose contender key lost its session
/// are pruned.
async fn take_slot(
    client: &Client,
    prefix: &str,
    session: &str,
    limit: u32,
    waiting: &(dyn Fn(Waiting) + Send + Sync),
) -> Result<(), converge_consul::Error> {
    let lock_key = format!("{prefix}.lock");
    let mut index = 0;
    loop {
        let opts = QueryOptions {
            index,
            wait: Some(LOCK_WAIT),
            consistency: Consistency::Consistent,
            ..QueryOptions::default()
        };
        let listed = client.kv_list(prefix, &opts).await?;
        index = listed.meta.index;
        let live: Vec<String> = listed
            .value
            .iter()
            .filter(|p| p.session.is_some())
            .filter_map(|p| p.key.strip_prefix(prefix).map(str::to_string))
            .collect();
        let current = listed.value.iter().find(|p| p.key == lock_key);
        let mut slots: Slots = current
            .and_then(|p| serde_json::from_slice(&p.value).ok())
            .unwrap_or_default();
        slots.holders.retain(|h| live.contains(h) && h != session);
        if slots.holders.len() < limit as usize {
            slots.limit = limit;
            slots.holders.push(session.to_string());
            let body = serde_json::to_vec(&slots).unwrap_or_default();
            let cas = current.map_or(0, |p| p.modify_index);
            if client.kv_put(&lock_key, &body, Some(cas)).await? {
                return Ok(());
            }
            index = 0;
            continue;
        }
        waiting(Waiting::Lock {
            key: lock_key.clone(),
        });
    }
}

impl Held {
    /// Whether anything is held (a node in no group, with no fleet-wide
    /// limit, switches without a session).
    pub fn any(&self) -> bool {
        self.session.is_some()
    }

    /// Gives up the slot and every lock: the session is destroyed, which
    /// releases its keys at once.
    pub async fn release(self) {
        let Some((session, renew)) = &self.session else {
            return;
        };
        if let Some(prefix) = &self.semaphore {
            if let Err(e) = self.leave_slots(prefix, session).await {
                tracing::warn!(error = %e, "cannot leave the rollout semaphore; the next contender prunes it");
            }
            let _ = self
                .client
                .kv_delete(&format!("{prefix}{session}"), None)
                .await;
        }
        renew.abort();
        if let Err(e) = self.client.session_destroy(session).await {
            tracing::warn!(error = %e, "cannot end the rollout lock's session; it expires with its TTL");
        }
    }

    async fn leave_slots(&self, prefix: &str, session: &str) -> Result<(), converge_consul::Error> {
        let lock_key = format!("{prefix}.lock");
        for _ in 0..5 {
            let Some(pair) = self
                .client
                .kv_get(&lock_key, &QueryOptions::default())
                .await?
                .value
            else {
                return Ok(());
            };
            let mut slots: Slots = serde_json::from_slice(&pair.value).unwrap_or_default();
            slots.holders.retain(|h| h != session);
            let body = serde_json::to_vec(&slots).unwrap_or_default();
            if self
                .client
                .kv_put(&lock_key, &body, Some(pair.modify_index))
                .await?
            {
                return Ok(());
            }
        }
        Ok(())
    }
}
