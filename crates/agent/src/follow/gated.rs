//! How the daemon takes a new revision: through the rollout
//! ([`crate::rollout`]) instead of at once. The bundle is fetched and
//! checked to load as always; then the node waits until the fleet lets it
//! go, takes its locks, switches, and keeps the locks until its health
//! gate passed. A failed gate switches back to the revision before and
//! halts the rollout. `plan --published` and `apply --once --published`
//! are an operator's explicit command on one node and take the revision
//! directly ([`super::take`]).

use std::path::PathBuf;
use std::pin::pin;
use std::time::Duration;

use converge_consul::{Client, IndexTracker, KvPair, QueryOptions, Response};
use converge_model::rollout::NodeRollout;
use converge_model::Layout;
use tokio::sync::watch;

use super::{fetch_unless_current, Follow, Installed, Taken};
use crate::fleet::{view, NodeReport};
use crate::publish::Desired;
use crate::revision::Revision;
use crate::rollout::serving::{Before, Serving};
use crate::rollout::{self, decide::decide, gate, lock, FleetState, Halt, RolloutKeys, Waiting};

/// Longest one read of [`wait_for_fleet`] blocks. Every key [`decide`]
/// reads is watched and none of its rules changes with time alone, so
/// this only bounds how long a request stays open, like the watch of
/// `desired`.
const FLEET_WAIT: Duration = Duration::from_secs(300);

/// What the daemon gives the follower for rolling out.
#[derive(Debug)]
pub struct Gated {
    /// The node's reports, as the daemon makes them after each pass.
    pub reports: watch::Receiver<Option<NodeReport>>,
    /// TTL of the locks' session.
    pub ttl: Duration,
    /// The node's `--root`: where the gate finds keepalived's pidfile and
    /// state reports, and PgBouncer's file and console.
    pub root: PathBuf,
}

/// Hooks into the daemon: what the node waits for, and a switch.
pub struct Hooks<'a> {
    /// Told what the node waits for.
    pub waiting: &'a (dyn Fn(Waiting) + Send + Sync),
    /// Told that `current` moved (the daemon runs a pass).
    pub switched: &'a (dyn Fn() + Send + Sync),
}

/// Takes `desired`'s revision through the rollout.
pub async fn take(
    client: &Client,
    follow: &Follow,
    desired: &Desired,
    gated: &mut Gated,
    hooks: &Hooks<'_>,
) -> Result<Taken, String> {
    let p = &desired.current;
    let Some((installed, files)) = fetch_unless_current(client, follow, p).await? else {
        return Ok(Taken::Already(p.revision.clone()));
    };
    let keys = RolloutKeys::new(&follow.keys);
    let prepared = match follow.store.prepare(&installed, &files, &follow.node) {
        Ok(prepared) => prepared,
        Err(e) => {
            let why = format!("revision {} does not load on this node: {e}", p.revision);
            halt(client, &keys, &p.revision, &follow.node, &why).await;
            return Err(why);
        }
    };
    let plan = prepared.manifest().node_rollout(&follow.node);
    let serving = Serving::of(prepared.manifest(), &follow.node, &Layout::new(&gated.root));
    let held = lock_when_allowed(client, follow, &p.revision, &plan, gated.ttl, hooks).await?;
    let locked_at = tokio::time::Instant::now();
    // Right before the switch: what moved is judged against this.
    let before = serving.before().await;
    let result = match prepared.commit() {
        Ok(previous) => {
            let unchecked = serving.unchecked();
            if unchecked.is_empty() {
                tracing::info!(revision = %p.revision, "switched to the published revision; health gate");
            } else {
                tracing::info!(revision = %p.revision, %unchecked, "switched to the published revision; health gate");
            }
            (hooks.switched)();
            let switch = Switch {
                revision: &p.revision,
                plan: &plan,
                previous,
                serving: &serving,
                before,
            };
            judge(client, follow, switch, gated, hooks).await
        }
        Err(e) => Err(e),
    };
    if held.any() {
        held.release().await;
        let held_ms = u64::try_from(locked_at.elapsed().as_millis()).unwrap_or(u64::MAX);
        tracing::info!(revision = %p.revision, held_ms, "released the rollout locks");
    }
    result
}

/// Waits until the fleet lets this node go, then takes its locks; looks
/// again once they are held, since the fleet may have changed meanwhile.
async fn lock_when_allowed(
    client: &Client,
    follow: &Follow,
    revision: &Revision,
    plan: &NodeRollout,
    ttl: Duration,
    hooks: &Hooks<'_>,
) -> Result<lock::Held, String> {
    let keys = RolloutKeys::new(&follow.keys);
    loop {
        wait_for_fleet(client, follow, revision, plan, hooks).await?;
        let held = lock::acquire(client, &keys, &follow.node, plan, ttl, hooks.waiting).await?;
        let fleet = rollout::read(client, &follow.keys).await;
        match fleet.map(|fleet| decide(plan, &follow.node, revision, &fleet)) {
            Ok(None) => return Ok(held),
            Ok(Some(_)) => held.release().await,
            Err(e) => {
                held.release().await;
                return Err(format!("rollout: {e}"));
            }
        }
    }
}

/// A switch the health gate judges.
struct Switch<'a> {
    /// The revision switched to.
    revision: &'a Revision,
    /// Its rollout for this node.
    plan: &'a NodeRollout,
    /// The revision before, to switch back to.
    previous: Option<Installed>,
    /// What to ask the programs at the end of the settle time.
    serving: &'a Serving,
    /// What they said just before the switch.
    before: Before,
}

/// The health gate after a switch, and what follows from it: a canary
/// marks itself soaked; a failure switches back to the previous revision
/// and halts the rollout of the new one.
async fn judge(
    client: &Client,
    follow: &Follow,
    switch: Switch<'_>,
    gated: &mut Gated,
    hooks: &Hooks<'_>,
) -> Result<Taken, String> {
    let Switch {
        revision,
        plan,
        previous,
        serving,
        before,
    } = switch;
    let keys = RolloutKeys::new(&follow.keys);
    let hold = if plan.canary {
        plan.settle.max(plan.soak)
    } else {
        plan.settle
    };
    let programs = || serving.serves(&before);
    let timeout = plan.gate_timeout + hold;
    let why = match gate::watch(&mut gated.reports, revision, hold, timeout, programs).await {
        gate::Verdict::Pass => {
            if plan.canary {
                let key = keys.soaked(&follow.node);
                if let Err(e) = client
                    .kv_put(&key, revision.as_str().as_bytes(), None)
                    .await
                {
                    tracing::warn!(error = %e, "cannot mark the canary soaked");
                }
            }
            return Ok(Taken::Switched(revision.clone()));
        }
        gate::Verdict::Fail(why) => why,
    };
    let why = match previous {
        Some(prev) => {
            let back = follow.store.switch_back(&prev.revision);
            (hooks.switched)();
            match back {
                Ok(()) => format!(
                    "revision {revision} failed its health gate: {why}; rolled back to {}",
                    prev.revision
                ),
                Err(e) => format!("revision {revision} failed its health gate: {why}; {e}"),
            }
        }
        None => format!(
            "revision {revision} failed its health gate: {why}; no revision to roll back to"
        ),
    };
    halt(client, &keys, revision, &follow.node, &why).await;
    Err(why)
}

/// Waits until [`decide`] lets this node go, telling what it waits for;
/// an error when `desired` moved on meanwhile (the caller starts over) or
/// does not parse.
///
/// A wait ends on a change of one of three things, and each is watched
/// with a blocking query of its own index: `<prefix>/rollout/` (pauses,
/// the halt, canary marks, released locks), `<prefix>/nodes/` (the
/// BACKUPs' reports a MASTER waits for) and `<prefix>/desired` (a new
/// publication supersedes the wait). The node looks again as soon as any
/// of them answers, so a MASTER goes the moment its BACKUP reports. One
/// query on their common parent `<prefix>/` would wake on all three as
/// well, but every answer of it would carry every stored bundle
/// (`<prefix>/bundles/`, the largest values under the prefix) and it
/// would wake on every publication's writes there.
async fn wait_for_fleet(
    client: &Client,
    follow: &Follow,
    revision: &Revision,
    plan: &NodeRollout,
    hooks: &Hooks<'_>,
) -> Result<(), String> {
    let rk = RolloutKeys::new(&follow.keys);
    let nodes = follow.keys.nodes();
    let desired = follow.keys.desired();
    let (mut rollout_at, mut nodes_at, mut desired_at) = (
        IndexTracker::new(),
        IndexTracker::new(),
        IndexTracker::new(),
    );
    let (listed, reports, current) = tokio::try_join!(
        list(client, rk.prefix(), 0),
        list(client, &nodes, 0),
        get(client, &desired, 0),
    )?;
    rollout_at.observe(listed.meta.index);
    nodes_at.observe(reports.meta.index);
    desired_at.observe(current.meta.index);
    let mut fleet = FleetState::new(
        &rk,
        listed.value,
        view::parse_reports(&follow.keys, reports.value),
    );
    let published = |value: Option<KvPair>| {
        view::parse_desired(&follow.keys, value.map(|p| p.value))
            .map(|d| d.map(|d| d.current.revision))
            .map_err(|e| format!("while revision {revision} waited for the fleet: {e}"))
    };
    let mut now = published(current.value)?;
    let mut listed = pin!(list(client, rk.prefix(), rollout_at.request_index()));
    let mut reports = pin!(list(client, &nodes, nodes_at.request_index()));
    let mut changed = pin!(get(client, &desired, desired_at.request_index()));
    loop {
        if now.as_ref() != Some(revision) {
            let by = now.map_or_else(|| "nothing published".into(), |r| format!("revision {r}"));
            return Err(format!(
                "revision {revision} was superseded by {by} while waiting"
            ));
        }
        let Some(waiting) = decide(plan, &follow.node, revision, &fleet) else {
            return Ok(());
        };
        (hooks.waiting)(waiting);
        tokio::select! {
            read = &mut listed => {
                let read = read?;
                rollout_at.observe(read.meta.index);
                let reports = std::mem::take(&mut fleet.reports);
                fleet = FleetState::new(&rk, read.value, reports);
                listed.set(list(client, rk.prefix(), rollout_at.request_index()));
            }
            read = &mut reports => {
                let read = read?;
                nodes_at.observe(read.meta.index);
                fleet.reports = view::parse_reports(&follow.keys, read.value);
                reports.set(list(client, &nodes, nodes_at.request_index()));
            }
            read = &mut changed => {
                let read = read?;
                desired_at.observe(read.meta.index);
                now = published(read.value)?;
                changed.set(get(client, &desired, desired_at.request_index()));
            }
        }
    }
}

/// One read of `prefix`'s keys for [`wait_for_fleet`], blocking while
/// `index` is current.
async fn list(client: &Client, prefix: &str, index: u64) -> Result<Response<Vec<KvPair>>, String> {
    client
        .kv_list(prefix, &blocking(index))
        .await
        .map_err(|e| format!("rollout: cannot read {prefix}: {e}"))
}

/// One read of `key` for [`wait_for_fleet`], blocking while `index` is
/// current.
async fn get(client: &Client, key: &str, index: u64) -> Result<Response<Option<KvPair>>, String> {
    client
        .kv_get(key, &blocking(index))
        .await
        .map_err(|e| format!("rollout: cannot read {key}: {e}"))
}

fn blocking(index: u64) -> QueryOptions {
    QueryOptions {
        index,
        wait: Some(FLEET_WAIT),
        ..QueryOptions::default()
    }
}

/// Writes `<prefix>/rollout/halt` for `revision`.
async fn halt(client: &Client, keys: &RolloutKeys, revision: &Revision, node: &str, why: &str) {
    let halt = Halt {
        revision: Some(revision.clone()),
        node: node.to_string(),
        reason: why.to_string(),
        at: rollout::unix_now(),
    };
    let body = serde_json::to_vec(&halt).unwrap_or_default();
    match client.kv_put(&keys.halt(), &body, None).await {
        Ok(_) => tracing::error!(revision = %revision, reason = %why, "rollout halted"),
        Err(e) => tracing::error!(error = %e, "cannot halt the rollout"),
    }
}
