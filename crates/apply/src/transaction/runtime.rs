//! The HAProxy runtime API's part in a bundle's transaction: whether it
//! stands in for the reload, and what the transaction owes HAProxy when it
//! stopped half-way.

use converge_programs::haproxy::runtime_api;

use super::Txn;

/// What the HAProxy runtime API did for a bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Runtime {
    /// Nothing: HAProxy runs the live files, the reload follows the commit.
    NotTried,
    /// It stood in for the reload, changing this many servers.
    Updated(usize),
    /// It failed after changing HAProxy: the reload that follows the
    /// commit puts HAProxy in line, and a rejected candidate reloads the
    /// live files.
    Touched,
}

impl Txn<'_> {
    /// Hands a membership-only change of runtime-API backends to the
    /// running HAProxy instead of reloading it (see
    /// [`runtime_api`](converge_programs::haproxy::runtime_api)). Not after
    /// an interrupted apply: HAProxy may not run the live file then. Runs
    /// only once the pending-reload marker is durable, so a crash before
    /// the commit leaves the next apply a reload onto the files on disk.
    pub(super) fn runtime_update(&self) -> Runtime {
        if self.owed {
            return Runtime::NotTried;
        }
        let Some(plan) = runtime_api::plan(self.members.iter().map(|m| runtime_api::MemberView {
            file: m.file,
            live: m.live.as_ref().map(|l| l.bytes.as_slice()),
            rewrites: m.change.rewrites(),
        })) else {
            return Runtime::NotTried;
        };
        let actions: Vec<String> = plan.actions().flat_map(|(_, a)| a).collect();
        match runtime_api::run(&plan) {
            Ok(servers) => {
                tracing::info!(bundle = self.name, actions = %actions.join(", "), "HAProxy runtime API");
                Runtime::Updated(servers)
            }
            Err(e) => {
                tracing::warn!(bundle = self.name, reason = %self.set.redact(&e.to_string()), "runtime API update not possible; reloading instead");
                if e.touched {
                    Runtime::Touched
                } else {
                    Runtime::NotTried
                }
            }
        }
    }
}
