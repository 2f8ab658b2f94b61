//! Membership changes to HAProxy backends without a reload.
//!
//! A backend that opts in (`runtime_api: {slots: N}` in the manifest) is
//! marked with the line [`MARKER`] and rendered as N server lines with
//! fixed names, then one line per instance that found no free slot, named
//! by the instance. An instance coming, going or changing health then
//! changes a slot's address or its `disabled` flag, or adds or removes a
//! line of its own. When the servers of marked backends are the *only*
//! difference between the live file and the candidate, the running
//! HAProxy can take it over its stats socket and keep its worker, its
//! connections and its counters: `set server B/S addr A port P` and
//! `set server B/S state ready|maint` for slots, and HAProxy's dynamic
//! servers (`add server`, `del server`, HAProxy ≥ 2.4; see `runtime_api/dynamic.rs`) for
//! the lines that come and go.
//!
//! Why keep slots when servers can be added and deleted: a slot changes
//! in two or three commands whatever the backend's options, balance
//! algorithm or open connections, while `add server` refuses options such
//! as `cookie` and backends with a static algorithm (`balance source`),
//! and `del server` must wait for the server's last connection. Slots are
//! the fast path for the instances a backend usually has; dynamic servers
//! make the ones beyond them (or all of them, with `slots: 0`) join and
//! leave without a reload too, instead of sizing every backend up front.
//!
//! The file stays the truth. The transaction sends the commands while
//! `haproxy -c` checks the candidate, not after it: the validator is most
//! of a change's latency (about 50 ms), and a membership-only candidate
//! differs from the live file, which HAProxy already accepted, only in
//! server lines of marked backends whose options HAProxy's runtime API
//! parses and refuses itself. The pending-reload marker is durable before
//! the first command, and the candidate is committed only once it is
//! validated, so a later reload (or a restart) gives exactly what the API
//! set; a candidate the validator rejects, a command that fails half-way,
//! or a commit that fails, is undone by reloading HAProxy (on the live file
//! if the candidate was rejected, on the candidate otherwise), and a crash
//! in between by the next apply's owed reload. This module only decides
//! whether the API can stand in for the reload and, if so, makes it; every
//! doubt is answered with the reload:
//!
//! - [`plan`] (pure) classifies live → candidate. Anything but server
//!   lines of marked backends changing address, port or `disabled`, or
//!   coming and going — another line, a server's options, a host name
//!   instead of an IP, a server HAProxy would not add at runtime, a new
//!   file, a reload owed by an interrupted apply — is structural.
//! - [`run`] checks that the HAProxy it reaches runs the live file: the
//!   master (for a signal reload) handles its reload signal, so no reload is
//!   half-way through a re-exec; the worker is not stopping; and its servers
//!   in the affected backends are exactly the live file's (names,
//!   addresses, ports, maintenance). Then it adds servers, changes slots,
//!   puts leaving servers in maintenance and deletes them as they drain,
//!   and checks that the same worker now shows exactly the candidate's
//!   servers.
//!
//! Any failure is returned for the caller to log and fall back to the
//! normal reload once the candidate is committed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use converge_model::manifest::Validator;
use converge_model::{ReloadAction, RenderedFile};
use nix::sys::signal::Signal;

pub use converge_model::RUNTIME_API_MARKER as MARKER;

use super::cfg::{classify, Classified, Rules, Server};

use crate::signal;

mod dynamic;
mod socket;
mod state;

pub use state::{live_servers, LiveServer};

use socket::Socket;
#[cfg(test)]
use state::{compare, parse_servers_state, Running};

/// How long one exchange on the stats socket may take.
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the runtime API does not stand in for the reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback(pub String);

impl fmt::Display for Fallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The pid of the HAProxy worker that answers `show info` on the stats
/// socket at `path`, an error when none answers or it is stopping: for
/// the rollout's health gate, which checks that this worker is the
/// running master's.
pub fn answering_worker(path: &Path) -> Result<u32, String> {
    let socket = Socket {
        path,
        timeout: IO_TIMEOUT,
    };
    socket.worker().map_err(|f| f.0)
}

fn fallback<T>(msg: impl Into<String>) -> Result<T, Fallback> {
    Err(Fallback(msg.into()))
}

/// Why [`run`] stopped, and whether it had changed HAProxy before it did:
/// then only a reload puts HAProxy back in line with a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunError {
    /// What failed.
    pub why: Fallback,
    /// A command that changes servers had been sent.
    pub touched: bool,
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.why.fmt(f)
    }
}

/// What one HAProxy target needs from the runtime API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TargetPlan {
    pub target: String,
    /// The admin stats socket named in the live file's `global` section.
    pub socket: PathBuf,
    /// The master's pidfile and reload signal, for a signal reload.
    pub master: Option<(PathBuf, Signal)>,
    /// Every server of the backends that change, live file then candidate.
    pub before: Vec<Server>,
    pub after: Vec<Server>,
    /// The candidate's rules of those backends.
    pub rules: BTreeMap<String, Rules>,
}

/// The servers an update touches, in file order.
pub(crate) struct Diff<'a> {
    /// In both files, with another address, port or state.
    pub changed: Vec<(&'a Server, &'a Server)>,
    /// Only in the candidate.
    pub added: Vec<&'a Server>,
    /// Only in the live file.
    pub removed: Vec<&'a Server>,
}

impl TargetPlan {
    /// Matches the two files' servers by backend and name (by index, as a
    /// backend may hold thousands of dynamic servers).
    pub(crate) fn diff(&self) -> Diff<'_> {
        fn key(s: &Server) -> (&str, &str) {
            (s.backend.as_str(), s.name.as_str())
        }
        fn index(list: &[Server]) -> BTreeMap<(&str, &str), &Server> {
            list.iter().map(|s| (key(s), s)).collect()
        }
        let (before, after) = (index(&self.before), index(&self.after));
        Diff {
            changed: self
                .before
                .iter()
                .filter_map(|b| Some((b, *after.get(&key(b))?)))
                .filter(|(b, a)| b != a)
                .collect(),
            added: self
                .after
                .iter()
                .filter(|a| !before.contains_key(&key(a)))
                .collect(),
            removed: self
                .before
                .iter()
                .filter(|b| !after.contains_key(&key(b)))
                .collect(),
        }
    }

    /// One line per server the update touches, as `plan` shows it:
    /// `add server web/web-3:n1`, `set server …`, `del server …`.
    pub(crate) fn actions(&self) -> Vec<String> {
        let d = self.diff();
        let add = d.added.iter().map(|a| format!("add server {}", a.id()));
        let set = d
            .changed
            .iter()
            .map(|(_, a)| format!("set server {}", a.id()));
        let del = d.removed.iter().map(|b| format!("del server {}", b.id()));
        add.chain(set).chain(del).collect()
    }

    fn backends(&self) -> BTreeSet<&str> {
        self.before
            .iter()
            .chain(&self.after)
            .map(|s| s.backend.as_str())
            .collect()
    }
}

/// Runtime-API updates standing in for one bundle's reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub(crate) targets: Vec<TargetPlan>,
}

impl Plan {
    /// Each target the plan updates, with the servers it adds, changes
    /// and deletes (`add server web/web-3:n1`, `set server web/web-s2`,
    /// `del server web/web-4:n2`).
    pub fn actions(&self) -> impl Iterator<Item = (&str, Vec<String>)> {
        self.targets
            .iter()
            .map(|t| (t.target.as_str(), t.actions()))
    }
}

/// A bundle member as [`plan`] sees it: the rendered file, the live bytes
/// and whether the bytes are replaced.
pub struct MemberView<'a> {
    /// The rendered target.
    pub file: &'a RenderedFile,
    /// The bytes at its destination now, if any.
    pub live: Option<&'a [u8]>,
    /// The commit replaces the bytes (not only mode or owner).
    pub rewrites: bool,
}

/// Whether the bundle's rewrites are membership-only changes of HAProxy
/// files, and what to send if so; `None` means reload as usual. Members
/// that are unchanged or only differ in mode/owner don't matter.
pub fn plan<'a>(members: impl IntoIterator<Item = MemberView<'a>>) -> Option<Plan> {
    let mut targets = Vec::new();
    for m in members {
        if !m.rewrites {
            continue;
        }
        match target_plan(&m) {
            Ok(t) => targets.push(t),
            Err(Fallback(why)) => {
                if m.file
                    .bytes
                    .windows(MARKER.len())
                    .any(|w| w == MARKER.as_bytes())
                {
                    tracing::info!(target = %m.file.target, "not a membership-only change ({why}); reloading");
                }
                return None;
            }
        }
    }
    (!targets.is_empty()).then_some(Plan { targets })
}

fn target_plan(m: &MemberView) -> Result<TargetPlan, Fallback> {
    let file = m.file;
    if file.validate != Validator::Haproxy {
        return fallback("not an HAProxy config");
    }
    let master = match &file.reload {
        ReloadAction::None => return fallback("the target has no reload"),
        ReloadAction::Signal { pidfile, signal } => {
            let Some(sig) = signal::parse(signal) else {
                return fallback(format!("unknown signal `{signal}`"));
            };
            Some((pidfile.clone(), sig))
        }
        ReloadAction::Command(_) | ReloadAction::Shell(_) | ReloadAction::Pgbouncer(_) => None,
    };
    let Some(live) = m.live else {
        return fallback("new file");
    };
    let (Ok(live), Ok(candidate)) = (std::str::from_utf8(live), std::str::from_utf8(&file.bytes))
    else {
        return fallback("not UTF-8");
    };
    let Classified {
        socket,
        before,
        after,
        rules,
    } = classify(live, candidate).map_err(Fallback)?;
    let t = TargetPlan {
        target: file.target.clone(),
        socket,
        master,
        before,
        after,
        rules,
    };
    // Servers are only read from marked backends, each of which has rules.
    if let Some(why) = t
        .diff()
        .added
        .iter()
        .find_map(|s| dynamic::refusal(s, t.rules.get(&s.backend)?))
    {
        return Err(Fallback(why));
    }
    Ok(t)
}

/// The runtime-API commands that take a running server from `before` to
/// `after`. A slot that gets another instance goes through maintenance, so
/// it comes back as a fresh server (checks restarted from "up", as after a
/// reload) rather than with the previous instance's check state.
pub(crate) fn commands(before: &Server, after: &Server) -> Vec<String> {
    let id = after.id();
    let moved = (before.addr, before.port) != (after.addr, after.port);
    let mut out = Vec::new();
    if before.enabled && (!after.enabled || moved) {
        out.push(format!("set server {id} state maint"));
    }
    if moved {
        out.push(format!(
            "set server {id} addr {} port {}",
            after.addr, after.port
        ));
    }
    if after.enabled && (!before.enabled || moved) {
        out.push(format!("set server {id} state ready"));
    }
    out
}

/// Whether HAProxy's answer to `command` says it was done.
fn accepted(command: &str, answer: &str) -> bool {
    let answer = answer.trim();
    if command.starts_with("add server ") {
        answer.starts_with("New server registered")
    } else if command.contains(" addr ") {
        answer.contains("changed from") || answer.starts_with("no need to change")
    } else {
        answer.is_empty()
    }
}

/// Makes the planned changes through the runtime API; the number of
/// servers added, changed or deleted, or why the caller must reload
/// instead.
pub fn run(plan: &Plan) -> Result<usize, RunError> {
    let mut total = 0;
    let mut touched = false;
    for t in &plan.targets {
        total += run_target(t, &mut touched).map_err(|Fallback(e)| RunError {
            why: Fallback(format!(
                "target {}: HAProxy runtime API on {}: {e}",
                t.target,
                t.socket.display()
            )),
            touched,
        })?;
    }
    Ok(total)
}

/// Sends `cmd`, noting that HAProxy may now differ from the live file.
fn send(sock: &Socket, cmd: &str, touched: &mut bool) -> Result<(), Fallback> {
    *touched = true;
    let answer = sock.send(cmd)?;
    if accepted(cmd, &answer) {
        Ok(())
    } else {
        fallback(format!("`{cmd}` answered `{}`", answer.trim()))
    }
}

/// Checks HAProxy runs the live file's servers, then adds the new ones
/// (capacity first), changes slots, stops traffic to the leaving ones and
/// deletes them as they drain, and checks it runs the candidate's.
fn run_target(t: &TargetPlan, touched: &mut bool) -> Result<usize, Fallback> {
    if let Some((pidfile, sig)) = &t.master {
        master_ready(pidfile, *sig)?;
    }
    let sock = Socket {
        path: &t.socket,
        timeout: IO_TIMEOUT,
    };
    let worker = sock.worker()?;
    for backend in t.backends() {
        let state = sock.servers(backend)?;
        state::compare(&state, t.before.iter().filter(|s| s.backend == backend))
            .map_err(|e| Fallback(format!("backend {backend} does not run the live file: {e}")))?;
    }
    let Diff {
        changed,
        added,
        removed,
    } = t.diff();
    let commands = added
        .iter()
        .flat_map(|s| dynamic::add_commands(s))
        .chain(changed.iter().flat_map(|(b, a)| commands(b, a)))
        .chain(removed.iter().flat_map(|s| dynamic::retire_commands(s)));
    for cmd in commands {
        send(&sock, &cmd, touched)?;
    }
    if !removed.is_empty() {
        *touched = true;
        dynamic::drain_and_delete(&sock, &removed, &t.rules)?;
    }
    if sock.worker()? != worker {
        return fallback(format!(
            "the worker changed while it was being updated (was pid {worker})"
        ));
    }
    for backend in t.backends() {
        let state = sock.servers(backend)?;
        state::compare(&state, t.after.iter().filter(|s| s.backend == backend))
            .map_err(|e| Fallback(format!("backend {backend} after the update: {e}")))?;
    }
    Ok(added.len() + changed.len() + removed.len())
}

/// The master must handle its reload signal: during the re-exec a reload
/// performs it does not, and the stats socket may still reach the old
/// worker, which is about to be replaced by one running the live file.
fn master_ready(pidfile: &Path, sig: Signal) -> Result<(), Fallback> {
    let text = std::fs::read_to_string(pidfile)
        .map_err(|e| Fallback(format!("no master pid ({}: {e})", pidfile.display())))?;
    let Some(pid) = text
        .split_whitespace()
        .next()
        .and_then(|p| p.parse::<i32>().ok())
        .filter(|&p| p > 0)
    else {
        return fallback(format!("{} holds no pid", pidfile.display()));
    };
    let master = nix::unistd::Pid::from_raw(pid);
    if !signal::alive(master) {
        return fallback(format!("master pid {pid} is not running"));
    }
    match signal::disposition::read(master, sig) {
        Ok(d) if d.handles() => Ok(()),
        Ok(_) => fallback(format!(
            "master pid {pid} does not handle {sig} now (a reload in progress?)"
        )),
        Err(e) => fallback(format!("master pid {pid} is not running ({e})")),
    }
}

#[cfg(test)]
mod tests;
