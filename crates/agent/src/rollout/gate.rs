//! The health gate after a switch: the node's own passes, as its reports
//! tell them, must apply the new revision and keep it applied for a
//! settle time before the node releases its locks.
//!
//! A pass applies a revision only after each program checked its
//! candidate and took the reload (HAProxy's new worker answers, PgBouncer's
//! console answers, keepalived reloaded); a program that refuses is rolled
//! back by the pass and reported `rejected`, `failed` or `rolled_back`.
//! The gate reads exactly those outcomes, from the report the daemon
//! writes after every pass, so it can never disagree with `fleet status`.
//!
//! A reload the program took can still leave it unable to serve: keepalived
//! reloads a config whose track script then fails and goes to FAULT, or
//! whose adverts no longer reach its peer and takes the VIP; PgBouncer
//! keeps routing to an old host. So when the settle time is over, the gate
//! also asks the programs themselves, once (`programs`, which the daemon
//! builds from [`Serving`](super::serving::Serving)), and fails with their
//! answer. The gate itself knows nothing of any program.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;

use crate::fleet::NodeReport;
use crate::revision::Revision;

/// Target outcomes that fail the gate.
const FAILED: [&str; 3] = ["rejected", "failed", "rolled_back"];

/// What the gate found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Applied, and stayed applied for the settle time.
    Pass,
    /// Why not.
    Fail(String),
}

/// How a report reads for `revision`: `None` while it is not about it
/// yet, else whether it failed and why.
fn judge(report: &NodeReport, revision: &Revision) -> Option<Result<(), String>> {
    if report.revision.as_ref() != Some(revision) {
        return None;
    }
    let failed: Vec<String> = report
        .targets
        .iter()
        .filter(|(_, t)| t.outcome.as_deref().is_some_and(|o| FAILED.contains(&o)))
        .map(|(name, t)| format!("{name} {}", t.outcome.as_deref().unwrap_or_default()))
        .collect();
    if failed.is_empty() {
        return Some(Ok(()));
    }
    let why = report.error.as_deref().unwrap_or_default();
    Some(Err(format!("{} ({why})", failed.join(", "))))
}

/// Watches `reports` until the revision applied and stayed so for
/// `settle`, or failed, or `timeout` ran out first; at the end of
/// `settle`, `programs` says whether the programs serve (an error: why
/// not).
pub async fn watch<F>(
    reports: &mut watch::Receiver<Option<NodeReport>>,
    revision: &Revision,
    settle: Duration,
    timeout: Duration,
    programs: impl Fn() -> F,
) -> Verdict
where
    F: Future<Output = Result<(), String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut passing_until: Option<tokio::time::Instant> = None;
    loop {
        let judged = reports
            .borrow_and_update()
            .as_ref()
            .and_then(|r| judge(r, revision));
        match judged {
            Some(Err(why)) => return Verdict::Fail(why),
            Some(Ok(())) if passing_until.is_none() => {
                passing_until = Some(tokio::time::Instant::now() + settle);
            }
            _ => {}
        }
        let until = passing_until.unwrap_or(deadline);
        tokio::select! {
            changed = reports.changed() => if changed.is_err() {
                return Verdict::Fail("the daemon is stopping".into());
            },
            () = tokio::time::sleep_until(until) => {
                return match passing_until {
                    Some(_) => programs().await.map_or_else(Verdict::Fail, |()| Verdict::Pass),
                    None => Verdict::Fail(format!(
                        "no pass applied revision {revision} within {timeout:?}"
                    )),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::report::TargetReport;

    fn report(rev: &str, outcome: &str) -> NodeReport {
        NodeReport {
            node: "lb1".into(),
            revision: Revision::parse(rev),
            desired: Revision::parse(rev),
            converged: outcome != "rejected",
            catalog_index: 1,
            targets: [(
                "app".to_string(),
                TargetReport {
                    sha256: None,
                    outcome: Some(outcome.into()),
                    last_drift: None,
                    held_by: Vec::new(),
                },
            )]
            .into(),
            holds: Vec::new(),
            error: None,
            version: String::new(),
            last_apply: None,
            since: 0,
        }
    }

    /// The gate for revision `b2` with a settle time of 5 s and 60 s to
    /// see a pass, the programs fine, running on its own task.
    fn settle_5s_of_b2(
        mut rx: watch::Receiver<Option<NodeReport>>,
    ) -> tokio::task::JoinHandle<Verdict> {
        let rev = Revision::parse("b2").expect("rev");
        tokio::spawn(async move {
            watch(
                &mut rx,
                &rev,
                Duration::from_secs(5),
                Duration::from_secs(60),
                || async { Ok(()) },
            )
            .await
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_revision_applied_and_kept_for_the_settle_time_passes() {
        let (tx, rx) = watch::channel(Some(report("a1", "unchanged")));
        let gate = settle_5s_of_b2(rx);
        tokio::time::sleep(Duration::from_secs(1)).await;
        tx.send_replace(Some(report("b2", "applied")));
        assert_eq!(gate.await.expect("gate"), Verdict::Pass);
    }

    #[tokio::test(start_paused = true)]
    async fn a_rejection_during_the_settle_time_or_no_pass_fails() {
        let (tx, rx) = watch::channel(Some(report("b2", "applied")));
        let gate = settle_5s_of_b2(rx);
        tokio::time::sleep(Duration::from_secs(2)).await;
        tx.send_replace(Some(report("b2", "rolled_back")));
        assert!(
            matches!(gate.await.expect("gate"), Verdict::Fail(w) if w.contains("app rolled_back"))
        );

        let (_tx, rx) = watch::channel(Some(report("a1", "unchanged")));
        let v = settle_5s_of_b2(rx).await.expect("gate");
        assert!(matches!(v, Verdict::Fail(w) if w.contains("within")));
    }

    #[tokio::test(start_paused = true)]
    async fn programs_that_do_not_serve_at_the_end_of_the_settle_time_fail_it() {
        let (_tx, mut rx) = watch::channel(Some(report("b2", "applied")));
        let rev = Revision::parse("b2").expect("rev");
        let v = watch(
            &mut rx,
            &rev,
            Duration::from_secs(5),
            Duration::from_secs(60),
            || async { Err("keepalived (pid 700) reports VRRP instance edge in FAULT".into()) },
        )
        .await;
        assert_eq!(
            v,
            Verdict::Fail("keepalived (pid 700) reports VRRP instance edge in FAULT".into())
        );
    }
}
