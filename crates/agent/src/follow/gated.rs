//! How the daemon takes a new revision: through the rollout
//! ([`crate::rollout`]) instead of at once. The bundle is fetched and
//! checked to load as always; then the node waits until the fleet lets it
//! go, takes its locks, switches, and keeps the locks until its health
//! gate passed. A failed gate switches back to the revision before and
//! halts the rollout. `plan --published` and `apply --once --published`
//! are an operator's explicit command on one node and take the revision
//! directly ([`super::take`]).

use std::time::Duration;

use converge_consul::{Client, QueryOptions};
use tokio::sync::watch;

use super::{fetch, Follow, Installed, Taken};
use crate::fleet::NodeReport;
use crate::publish::Desired;
use crate::revision::Revision;
use crate::rollout::{self, decide::decide, gate, lock, Halt, RolloutKeys, Waiting};

/// Longest a wait for the fleet blocks before looking again (node reports
/// are read on every look, so this bounds how late an order is seen).
const FLEET_WAIT: Duration = Duration::from_secs(2);

/// What the daemon gives the follower for rolling out.
#[derive(Debug)]
pub struct Gated {
    /// The node's reports, as the daemon makes them after each pass.
    pub reports: watch::Receiver<Option<NodeReport>>,
    /// TTL of the locks' session.
    pub ttl: Duration,
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
    let installed = Installed {
        revision: p.revision.clone(),
        checksum: p.checksum.clone(),
    };
    if follow.store.current().as_ref() == Some(&installed) {
        return Ok(Taken::Already(p.revision.clone()));
    }
    let files = fetch(client, &follow.keys, p).await?;
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
    let held = loop {
        wait_for_fleet(client, follow, &p.revision, &plan, hooks).await?;
        let held =
            lock::acquire(client, &keys, &follow.node, &plan, gated.ttl, hooks.waiting).await?;
        // The fleet may have changed while this node waited for its locks.
        let (fleet, _) = rollout::read(client, &follow.keys, &QueryOptions::default())
            .await
            .map_err(|e| format!("rollout: {e}"))?;
        match decide(&plan, &follow.node, &p.revision, &fleet) {
            None => break held,
            Some(_) => held.release().await,
        }
    };
    let previous = match prepared.commit() {
        Ok(previous) => previous,
        Err(e) => {
            held.release().await;
            return Err(e);
        }
    };
    tracing::info!(revision = %p.revision, "switched to the published revision; health gate");
    (hooks.switched)();
    let hold = if plan.canary {
        plan.settle.max(plan.soak)
    } else {
        plan.settle
    };
    let verdict = gate::watch(
        &mut gated.reports,
        &p.revision,
        hold,
        plan.gate_timeout + hold,
    )
    .await;
    let result = match verdict {
        gate::Verdict::Pass => {
            if plan.canary {
                let key = keys.soaked(&follow.node);
                if let Err(e) = client
                    .kv_put(&key, p.revision.as_str().as_bytes(), None)
                    .await
                {
                    tracing::warn!(error = %e, "cannot mark the canary soaked");
                }
            }
            Ok(Taken::Switched(p.revision.clone()))
        }
        gate::Verdict::Fail(why) => {
            let back = previous.map(|prev| {
                let back = follow.store.switch_back(&prev.revision);
                (hooks.switched)();
                (prev.revision, back)
            });
            let why = match back {
                Some((prev, Ok(()))) => format!(
                    "revision {} failed its health gate: {why}; rolled back to {prev}",
                    p.revision
                ),
                Some((prev, Err(e))) => format!(
                    "revision {} failed its health gate: {why}; cannot roll back to {prev}: {e}",
                    p.revision
                ),
                None => format!(
                    "revision {} failed its health gate: {why}; no revision to roll back to",
                    p.revision
                ),
            };
            halt(client, &keys, &p.revision, &follow.node, &why).await;
            Err(why)
        }
    };
    held.release().await;
    result
}

/// Waits until [`decide`] lets this node go, telling what it waits for;
/// an error when `desired` moved on meanwhile (the caller starts over).
async fn wait_for_fleet(
    client: &Client,
    follow: &Follow,
    revision: &Revision,
    plan: &converge_model::rollout::NodeRollout,
    hooks: &Hooks<'_>,
) -> Result<(), String> {
    let consul = |e: converge_consul::Error| format!("rollout: {e}");
    let mut index = 0;
    loop {
        let opts = QueryOptions {
            index,
            wait: Some(FLEET_WAIT),
            ..QueryOptions::default()
        };
        let (fleet, at) = rollout::read(client, &follow.keys, &opts)
            .await
            .map_err(consul)?;
        index = at;
        let Some(waiting) = decide(plan, &follow.node, revision, &fleet) else {
            return Ok(());
        };
        let key = follow.keys.desired();
        let now = client
            .kv_get(&key, &QueryOptions::default())
            .await
            .map_err(consul)?;
        let still = now
            .value
            .and_then(|p| serde_json::from_slice::<Desired>(&p.value).ok())
            .is_some_and(|d| &d.current.revision == revision);
        if !still {
            return Err(format!(
                "revision {revision} was superseded while waiting ({waiting})"
            ));
        }
        (hooks.waiting)(waiting);
    }
}

/// Writes `<prefix>/rollout/halt` for `revision`.
async fn halt(client: &Client, keys: &RolloutKeys, revision: &Revision, node: &str, why: &str) {
    let halt = Halt {
        revision: revision.clone(),
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
