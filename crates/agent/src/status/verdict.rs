//! Whether the node serves what it should: the one answer of
//! `converge status` a monitoring check acts on.
//!
//! Two lists, because a check must tell them apart: `degraded` holds what
//! the report shows to be wrong (a hold, a failed apply, a routed primary
//! that is not Consul's or is down, a backend with every server down, a
//! degraded catalog source), `unknown` what could not be asked (the
//! daemon, a program this node runs). The binary maps them to its exit
//! codes; nothing here decides a number.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{NodeReport, Section, VrrpState};

/// What is wrong on the node, and what could not be checked.
#[derive(Debug, Default, Serialize)]
pub struct Verdict {
    /// Found wrong: the node does not serve what it should.
    pub degraded: Vec<String>,
    /// Could not be checked.
    pub unknown: Vec<String>,
}

impl Verdict {
    /// Nothing found wrong and everything could be checked.
    pub fn serving(&self) -> bool {
        self.degraded.is_empty() && self.unknown.is_empty()
    }

    /// The verdict on `r`.
    pub fn of(r: &NodeReport) -> Self {
        let mut v = Self::default();
        v.daemon(r);
        for t in &r.targets {
            if let Some(e) = &t.last_error {
                v.degraded
                    .push(format!("target {}: last apply failed: {e}", t.target));
            }
            if t.sha256.is_none() {
                v.degraded.push(format!(
                    "target {}: {} does not exist",
                    t.target,
                    t.destination.display()
                ));
            }
        }
        v.section("HAProxy", &r.haproxy, |servers, degraded| {
            let mut by_backend: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
            for s in servers {
                let (up, down) = by_backend.entry(&s.backend).or_default();
                match s.state {
                    "UP" => *up += 1,
                    "DOWN" => *down += 1,
                    _ => {}
                }
            }
            for (backend, _) in by_backend
                .iter()
                .filter(|(_, (up, down))| *up == 0 && *down > 0)
            {
                degraded.push(format!("HAProxy backend {backend}: no server is UP"));
            }
        });
        v.section("PgBouncer", &r.pgbouncer, |_, _| {});
        v.section("primaries", &r.primaries, |checks, degraded| {
            for c in checks.iter().filter(|c| !c.problems.is_empty()) {
                let problems: Vec<String> = c.problems.iter().map(ToString::to_string).collect();
                degraded.push(format!("database {}: {}", c.database, problems.join(", ")));
            }
        });
        v.section("keepalived", &r.keepalived, |vips, degraded| {
            for vip in vips.iter().filter(|v| v.state == VrrpState::Fault) {
                degraded.push(format!("VRRP instance {}: FAULT", vip.name));
            }
        });
        v
    }

    fn daemon(&mut self, r: &NodeReport) {
        match &r.daemon {
            Section::Ok(s) => {
                for h in &s.holds {
                    self.degraded.push(format!("held: {}", h.reason));
                }
                if let Some(e) = &s.source_error {
                    self.degraded.push(format!("catalog source degraded: {e}"));
                }
                if let Some(e) = &s.input_error {
                    self.degraded.push(format!("inputs invalid: {e}"));
                }
            }
            Section::Error(e) => self.unknown.push(e.clone()),
            Section::Absent(_) => {}
        }
    }

    fn section<T>(&mut self, what: &str, s: &Section<T>, judge: impl FnOnce(&T, &mut Vec<String>)) {
        match s {
            Section::Ok(v) => judge(v, &mut self.degraded),
            Section::Error(e) => self.unknown.push(format!("{what}: {e}")),
            Section::Absent(_) => {}
        }
    }
}
