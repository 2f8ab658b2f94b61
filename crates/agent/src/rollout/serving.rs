//! What the health gate asks the programs themselves at the end of the
//! settle time: do they serve the revision the node switched to? The
//! pass already refuses what a program does not take (HAProxy must fork a
//! new worker from the new file, PgBouncer's console must answer
//! `RELOAD`, keepalived must survive its signal), so this module checks
//! only what can go wrong after a reload was taken, per program, and
//! keeps [`gate`](super::gate) generic: it watches reports and calls
//! [`Serving::serves`] once.
//!
//! **keepalived: the VIP is where the priorities say.** For each VRRP
//! instance of the node, keepalived's own report
//! ([`KeepalivedGate`]) is read just before the switch and again at the
//! end of the settle time. The rule is local (it reads only this node) and
//! decidable (it compares two reports with the revision's priorities):
//!
//! 1. After the switch the instance is MASTER or BACKUP. FAULT (a track
//!    script, interface or address failed) and STOP fail; so does UNKNOWN
//!    when the instance was MASTER or BACKUP before: the switch took
//!    away a keepalived that was serving. An instance that was not
//!    reported before either (keepalived not started yet, or a template
//!    without the `notify` hook) is not judged, and the log says so.
//! 2. The node holds every address of the instance iff it is MASTER: the
//!    disagreements [`crate::vrrp`] already warns about (MASTER without
//!    its addresses, BACKUP with them) fail.
//! 3. The reload did not move the VIP. Without `nopreempt`, keepalived
//!    gives the VIP to the highest priority, so a node that was BACKUP
//!    before and is MASTER after may only be one whose priority in the
//!    revision is the highest (ties allowed: keepalived breaks them by
//!    address), and a node that was MASTER and is no longer may only be
//!    one that is not the single highest. A revision that swaps
//!    priorities therefore passes on both nodes. With `nopreempt` no
//!    priority justifies a move, so any change between MASTER and
//!    BACKUP fails. What this catches is a revision that breaks the
//!    pair's adverts (another `virtual_router_id`, `auth_pass` or
//!    unicast peers): the BACKUP, which switches first, stops hearing
//!    the MASTER and takes the VIP while the MASTER still holds it.
//!
//! A real failover during the settle time (the MASTER dies while its
//! BACKUP is in its gate) breaks rule 3 too and halts the rollout: the
//! gate cannot tell it from a reload that took the VIP, and halting is
//! the safe answer; publishing again resumes.
//!
//! **HAProxy: its worker answers.** The pass already waits, after the
//! `SIGUSR2`, for the master to fork a new worker (it only does once it
//! parsed the new file), so `applied` means a worker runs the new file.
//! At the end of the settle time the gate checks that HAProxy still
//! serves: a worker answers `show info` on the stats socket, is not
//! stopping, and is a child of the master the pidfile names (not a
//! leftover of a master that is gone). Which file that worker runs cannot
//! be asked: a runtime-API update changes the file without a new worker,
//! so no pid or time comparison with the file would be sound. A socket
//! that did not answer before the switch either (HAProxy not started
//! yet) is not judged.
//!
//! **PgBouncer: `SHOW DATABASES` has the new hosts.** When the node's
//! PgBouncer target reloads over the admin console (`reload: {pgbouncer:
//! …}`), each database of the `pgbouncer.ini` now live must be reported by
//! the console with the host and port the file gives. A catalog change
//! can commit a new file just before its `RELOAD`, so a mismatch must
//! last [`ROUTES_SETTLE`] to count. A console that did not answer before
//! the switch either (PgBouncer not started yet) is not judged. Without a
//! console (reload by signal) there is nothing to ask: the check is
//! skipped and the gate's log line says so ([`Serving::unchecked`]). Only
//! database names, hosts and ports are ever printed, never an entry's
//! other keys (a `password=`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use converge_model::manifest::{PgbouncerAdmin, Reload, Validator};
use converge_model::{Layout, Manifest};
use converge_programs::haproxy::runtime_api::answering_worker;
use converge_programs::pgbouncer::console::{show_databases, DatabaseRoute};
use converge_programs::pgbouncer::ini::section;

use crate::vrrp::{parent_of, running_pid, KeepalivedGate, Observed, VrrpState};

/// How long a database's route may differ from the live file before the
/// gate fails: a catalog change's `RELOAD` follows its file by a moment.
pub const ROUTES_SETTLE: Duration = Duration::from_secs(2);

/// PgBouncer's default server port, for an entry without `port=`.
const DEFAULT_PORT: &str = "5432";

/// The programs of one node the gate asks, from the revision it judges.
#[derive(Debug, Clone)]
pub struct Serving {
    vrrp: Option<(KeepalivedGate, BTreeMap<String, Priorities>)>,
    haproxy: Option<Worker>,
    pgbouncer: Option<Routes>,
    unchecked: Vec<String>,
}

/// One VRRP instance's priorities in the revision judged, for one node.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Priorities {
    node: String,
    all: BTreeMap<String, u8>,
    nopreempt: bool,
}

/// Where HAProxy's master writes its pid and its workers answer.
#[derive(Debug, Clone)]
struct Worker {
    pidfile: PathBuf,
    socket: PathBuf,
}

/// Where PgBouncer's live file is and how to ask its console.
#[derive(Debug, Clone)]
struct Routes {
    ini: PathBuf,
    console: PgbouncerAdmin,
}

/// What the programs said just before the switch.
#[derive(Debug, Clone, Default)]
pub struct Before {
    vrrp: BTreeMap<String, VrrpState>,
    haproxy_answered: bool,
    pgbouncer_answered: bool,
}

impl Serving {
    /// What to ask on `node` when it runs `manifest`, its files under
    /// `layout`.
    pub fn of(manifest: &Manifest, node: &str, layout: &Layout) -> Self {
        let vrrp = KeepalivedGate::of(manifest, node, layout).map(|gate| {
            let priorities = manifest
                .vips
                .iter()
                .filter(|(_, v)| v.priorities.contains_key(node))
                .map(|(name, v)| {
                    let p = Priorities {
                        node: node.to_string(),
                        all: v.priorities.clone(),
                        nopreempt: v.nopreempt,
                    };
                    (name.clone(), p)
                })
                .collect();
            (gate, priorities)
        });
        let wanted = manifest.nodes.get(node).and_then(|n| n.targets.as_ref());
        let targets: Vec<_> = manifest
            .targets
            .iter()
            .filter(|(name, _)| wanted.is_none_or(|w| w.contains(name)))
            .map(|(_, t)| t)
            .collect();
        let pgbouncer = targets.iter().find_map(|t| match &t.reload {
            Reload::Pgbouncer(admin) => Some(Routes {
                ini: layout.path(&t.destination),
                console: admin.under(layout),
            }),
            _ => None,
        });
        let haproxy = targets.iter().find_map(|t| match &t.reload {
            Reload::Signal { pidfile, .. } if t.validate == Validator::Haproxy => Some(Worker {
                pidfile: layout.path(pidfile),
                socket: layout.path(&manifest.haproxy.stats_socket),
            }),
            _ => None,
        });
        let mut unchecked = Vec::new();
        if pgbouncer.is_none() && targets.iter().any(|t| t.validate == Validator::Pgbouncer) {
            unchecked.push(
                "PgBouncer's routes (no target reloads it over its admin console, so \
                 SHOW DATABASES cannot be asked)"
                    .to_string(),
            );
        }
        Self {
            vrrp,
            haproxy,
            pgbouncer,
            unchecked,
        }
    }

    /// What the gate cannot check on this node and why, for its log line;
    /// empty when it checks everything.
    pub fn unchecked(&self) -> String {
        self.unchecked.join("; ")
    }

    /// What the programs say just before the switch.
    pub async fn before(&self) -> Before {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.read_before())
            .await
            .unwrap_or_default()
    }

    fn read_before(&self) -> Before {
        let vrrp = self
            .vrrp
            .as_ref()
            .and_then(|(gate, _)| gate.observe().ok())
            .unwrap_or_default()
            .into_iter()
            .map(|o| (o.name, o.state))
            .collect();
        let pgbouncer_answered = self
            .pgbouncer
            .as_ref()
            .is_some_and(|r| show_databases(&r.console).is_ok());
        let haproxy_answered = self
            .haproxy
            .as_ref()
            .is_some_and(|w| answering_worker(&w.socket).is_ok());
        Before {
            vrrp,
            haproxy_answered,
            pgbouncer_answered,
        }
    }

    /// Whether the programs serve the revision, judged against `before`
    /// (see the module docs); an error says what does not.
    pub async fn serves(&self, before: &Before) -> Result<(), String> {
        let (this, before) = (self.clone(), before.clone());
        tokio::task::spawn_blocking(move || this.check(&before))
            .await
            .unwrap_or_else(|e| Err(format!("the programs' check did not finish: {e}")))
    }

    fn check(&self, before: &Before) -> Result<(), String> {
        let mut failed = Vec::new();
        let mut not_judged = Vec::new();
        if let Some((gate, priorities)) = &self.vrrp {
            match gate.observe() {
                Err(e) => failed.push(format!("cannot read the VRRP instances: {e}")),
                Ok(seen) => {
                    for after in &seen {
                        let Some(p) = priorities.get(&after.name) else {
                            continue;
                        };
                        let was = before
                            .vrrp
                            .get(&after.name)
                            .copied()
                            .unwrap_or(VrrpState::Unknown);
                        match vip_rule(p, was, after) {
                            Ok(None) => {}
                            Ok(Some(why)) => not_judged.push(why),
                            Err(why) => failed.push(why),
                        }
                    }
                }
            }
        }
        if let Some(worker) = &self.haproxy {
            let answer = answering_worker(&worker.socket).map(|pid| (pid, parent_of(pid)));
            match worker.judge(
                before.haproxy_answered,
                answer,
                running_pid(&worker.pidfile),
            ) {
                Ok(None) => {}
                Ok(Some(why)) => not_judged.push(why),
                Err(why) => failed.push(why),
            }
        }
        if let Some(routes) = &self.pgbouncer {
            match routes.check(before.pgbouncer_answered) {
                Ok(None) => {}
                Ok(Some(why)) => not_judged.push(why),
                Err(why) => failed.push(why),
            }
        }
        if !not_judged.is_empty() {
            tracing::info!(not_judged = %not_judged.join("; "), "health gate");
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed.join("; "))
        }
    }
}

impl Priorities {
    /// `lb1 150, lb2 100`, plus `, nopreempt`.
    fn describe(&self) -> String {
        let mut text = self
            .all
            .iter()
            .map(|(n, p)| format!("{n} {p}"))
            .collect::<Vec<_>>()
            .join(", ");
        if self.nopreempt {
            text.push_str(", nopreempt");
        }
        text
    }

    fn mine(&self) -> u8 {
        self.all.get(&self.node).copied().unwrap_or_default()
    }

    /// The highest priority of the other nodes.
    fn others(&self) -> Option<u8> {
        self.all
            .iter()
            .filter(|(n, _)| **n != self.node)
            .map(|(_, p)| *p)
            .max()
    }

    /// No other node has a higher priority.
    fn may_lead(&self) -> bool {
        self.others().is_none_or(|o| self.mine() >= o)
    }

    /// Every other node has a lower priority.
    fn must_lead(&self) -> bool {
        self.others().is_none_or(|o| self.mine() > o)
    }
}

/// The VIP rule of the module docs for one instance, from its state
/// `before` the switch and what the gate reads `after` it: `Ok(None)`
/// when it holds, `Ok(Some(why))` when there is nothing to judge, `Err`
/// naming the instance, the states and the priorities when it fails.
fn vip_rule(p: &Priorities, before: VrrpState, after: &Observed) -> Result<Option<String>, String> {
    let serving = |s: VrrpState| matches!(s, VrrpState::Master | VrrpState::Backup);
    let what = format!(
        "VRRP instance {} was {} before the switch and is {} after it (priorities {})",
        after.name,
        before.as_str(),
        after.state.as_str(),
        p.describe()
    );
    if !serving(after.state) {
        let note = after
            .note
            .as_deref()
            .map(|n| format!(": {n}"))
            .unwrap_or_default();
        return match after.state {
            VrrpState::Unknown if !serving(before) => Ok(Some(format!(
                "VRRP instance {} not judged, not reported before the switch either{note}",
                after.name
            ))),
            _ => Err(format!("{what}{note}")),
        };
    }
    if let Some(warning) = &after.warning {
        return Err(format!("{what}: {warning}"));
    }
    let node = &p.node;
    let mine = p.mine();
    match (before, after.state) {
        (VrrpState::Backup, VrrpState::Master) if p.nopreempt => Err(format!(
            "{what}: the reload took the VIP, and nopreempt says no priority may"
        )),
        (VrrpState::Backup, VrrpState::Master) if !p.may_lead() => Err(format!(
            "{what}: the reload took the VIP though {node}'s priority {mine} is not the highest"
        )),
        (VrrpState::Master, VrrpState::Backup) if p.nopreempt => Err(format!(
            "{what}: the reload gave the VIP away, and nopreempt says no priority may take it"
        )),
        (VrrpState::Master, VrrpState::Backup) if p.must_lead() => Err(format!(
            "{what}: the reload gave the VIP away though {node}'s priority {mine} is the highest"
        )),
        _ => Ok(None),
    }
}

impl Worker {
    /// The HAProxy rule of the module docs: `answer` is the worker that
    /// answered on the stats socket and its parent, `master` the pidfile's
    /// pid.
    fn judge(
        &self,
        answered_before: bool,
        answer: Result<(u32, Option<u32>), String>,
        master: Option<u32>,
    ) -> Result<Option<String>, String> {
        let socket = self.socket.display();
        match answer {
            Err(e) if !answered_before => Ok(Some(format!(
                "HAProxy not judged, its stats socket {socket} did not answer before the \
                 switch either: {e}"
            ))),
            Err(e) => Err(format!(
                "HAProxy's stats socket {socket} answered before the switch and no longer \
                 does: {e}"
            )),
            Ok((_, parent)) if parent.is_some() && parent == master => Ok(None),
            Ok((worker, _)) => Err(format!(
                "HAProxy's worker {worker} answers on {socket} but is not a child of the \
                 master {} names ({}): the master that ran the new file is gone",
                self.pidfile.display(),
                master.map_or("no live pid".to_string(), |m| format!("pid {m}"))
            )),
        }
    }
}

impl Routes {
    /// [`mismatches`] of the live file and `SHOW DATABASES`, looked at
    /// again until none is left or [`ROUTES_SETTLE`] passed.
    fn check(&self, answered_before: bool) -> Result<Option<String>, String> {
        let start = Instant::now();
        loop {
            let ini = std::fs::read(&self.ini)
                .map_err(|e| format!("cannot read {}: {e}", self.ini.display()))?;
            let routes = match show_databases(&self.console) {
                Ok(routes) => routes,
                Err(e) if !answered_before => {
                    return Ok(Some(format!(
                        "PgBouncer's routes not judged, its console did not answer before the \
                         switch either: {e}"
                    )))
                }
                Err(e) => return Err(format!("PgBouncer's console: SHOW DATABASES: {e}")),
            };
            let wrong = mismatches(&String::from_utf8_lossy(&ini), &routes);
            if wrong.is_empty() {
                return Ok(None);
            }
            if start.elapsed() >= ROUTES_SETTLE {
                return Err(format!(
                    "PgBouncer's SHOW DATABASES differs from {} for {:.0?}: {}",
                    self.ini.display(),
                    ROUTES_SETTLE,
                    wrong.join("; ")
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Each database of `ini`'s `[databases]` (the `*` fallback aside) whose
/// host or port differs from what `routes` reports, or that `routes`
/// lacks: `app: expected host=… port=…, PgBouncer has host=… port=…`.
fn mismatches(ini: &str, routes: &[DatabaseRoute]) -> Vec<String> {
    section(ini, "databases", false)
        .iter()
        .filter(|(name, _)| *name != "*")
        .filter_map(|(name, entry)| {
            let (host, port) = host_port(entry);
            let expected = format!("host={host} port={port}");
            match routes.iter().find(|r| r.name == *name) {
                None => Some(format!(
                    "{name}: expected {expected}, not in SHOW DATABASES"
                )),
                Some(r) if r.host == host && r.port == port => None,
                Some(r) => Some(format!(
                    "{name}: expected {expected}, PgBouncer has host={} port={}",
                    r.host, r.port
                )),
            }
        })
        .collect()
}

/// `host` and `port` of a `[databases]` entry (`key=value` words, a value
/// may be in single quotes); no host is empty, as the console shows it,
/// and no port is PgBouncer's default.
fn host_port(entry: &str) -> (String, String) {
    let mut host = String::new();
    let mut port = DEFAULT_PORT.to_string();
    let mut rest = entry.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let after = after.trim_start();
        let (value, next) = match after.strip_prefix('\'') {
            Some(quoted) => quoted.split_once('\'').unwrap_or((quoted, "")),
            None => after.split_once(char::is_whitespace).unwrap_or((after, "")),
        };
        match key.trim() {
            "host" => host = value.to_string(),
            "port" => port = value.to_string(),
            _ => {}
        }
        rest = next.trim_start();
    }
    (host, port)
}

#[cfg(test)]
mod tests;
