//! Membership changes to HAProxy backends without a reload.
//!
//! A backend that opts in (`runtime_api: {slots: N}` in the manifest) is
//! rendered as N server lines with fixed names, marked with the line
//! [`MARKER`]; an instance coming, going or changing health then only
//! changes a slot's address or its `disabled` flag. When that is the *only*
//! difference between the live file and the candidate, the running HAProxy
//! can take it over its stats socket (`set server B/S addr A port P`,
//! `set server B/S state ready|maint`) and keep its worker, its connections
//! and its counters.
//!
//! The file stays the truth. The transaction sends the commands while
//! `haproxy -c` checks the candidate, not after it: the validator is most
//! of a change's latency (about 50 ms), and a membership-only candidate
//! differs from the live file, which HAProxy already accepted, only in slot
//! addresses and `disabled` flags, which HAProxy's runtime API parses and
//! refuses itself. The pending-reload marker is durable before the first
//! command, and the candidate is committed only once it is validated, so a
//! later reload (or a restart) gives exactly what the API set; a candidate
//! the validator rejects, or a commit that fails, is undone by reloading
//! HAProxy on the live file, and a crash in between by the next apply's
//! owed reload. This module only decides whether the API can stand in for
//! the reload and, if so, makes it; every doubt is answered with the
//! reload:
//!
//! - [`plan`] (pure) classifies live → candidate. Anything but slot address,
//!   port and `disabled` changes inside marked backends — another line, a
//!   slot added or renamed, a host name instead of an IP, a new file, a
//!   reload owed by an interrupted apply — is structural.
//! - [`run`] checks that the HAProxy it reaches runs the live file: the
//!   master (for a signal reload) handles its reload signal, so no reload is
//!   half-way through a re-exec; the worker is not stopping; and its servers
//!   in the affected backends are exactly the live file's (names,
//!   addresses, ports, maintenance). Then it sends the commands and checks
//!   that the same worker now shows exactly the candidate's servers.
//!
//! Any failure is returned for the caller to log and fall back to the
//! normal reload once the candidate is committed.

use std::collections::BTreeSet;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use converge_model::manifest::Validator;
use converge_model::{ReloadAction, RenderedFile};
use nix::sys::signal::Signal;

pub use converge_model::RUNTIME_API_MARKER as MARKER;

use super::cfg::{classify, Server};

use crate::signal;

/// How long one exchange on the stats socket may take.
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// HAProxy's `SRV_ADMF_FMAINT`: maintenance forced by the configuration's
/// `disabled` or by `set server ... state maint`.
const ADMIN_FORCED_MAINT: u32 = 0x01;

/// Why the runtime API does not stand in for the reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback(pub String);

impl fmt::Display for Fallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn fallback<T>(msg: impl Into<String>) -> Result<T, Fallback> {
    Err(Fallback(msg.into()))
}

/// What one HAProxy target needs from the runtime API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TargetPlan {
    pub target: String,
    /// The admin stats socket named in the live file's `global` section.
    pub socket: PathBuf,
    /// The master's pidfile and reload signal, for a signal reload.
    pub master: Option<(PathBuf, Signal)>,
    /// Every server of the backends that change, live file then candidate
    /// (same names, same order).
    pub before: Vec<Server>,
    pub after: Vec<Server>,
}

impl TargetPlan {
    /// Servers whose address, port or state change.
    pub(crate) fn changed(&self) -> impl Iterator<Item = (&Server, &Server)> {
        self.before.iter().zip(&self.after).filter(|(b, a)| b != a)
    }

    fn backends(&self) -> BTreeSet<&str> {
        self.after.iter().map(|s| s.backend.as_str()).collect()
    }
}

/// Runtime-API updates standing in for one bundle's reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub(crate) targets: Vec<TargetPlan>,
}

impl Plan {
    /// Each target the plan updates, with how many of its servers change.
    pub fn changed_servers(&self) -> impl Iterator<Item = (&str, usize)> {
        self.targets
            .iter()
            .map(|t| (t.target.as_str(), t.changed().count()))
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
    let (socket, before, after) = classify(live, candidate).map_err(Fallback)?;
    Ok(TargetPlan {
        target: file.target.clone(),
        socket,
        master,
        before,
        after,
    })
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
    if command.contains(" addr ") {
        answer.contains("changed from") || answer.starts_with("no need to change")
    } else {
        answer.is_empty()
    }
}

/// Makes the planned changes through the runtime API; the number of
/// servers changed, or why the caller must reload instead.
pub fn run(plan: &Plan) -> Result<usize, Fallback> {
    let mut total = 0;
    for t in &plan.targets {
        total += run_target(t).map_err(|Fallback(e)| {
            Fallback(format!(
                "target {}: HAProxy runtime API on {}: {e}",
                t.target,
                t.socket.display()
            ))
        })?;
    }
    Ok(total)
}

fn run_target(t: &TargetPlan) -> Result<usize, Fallback> {
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
        compare(&state, t.before.iter().filter(|s| s.backend == backend))
            .map_err(|e| Fallback(format!("backend {backend} does not run the live file: {e}")))?;
    }
    let mut count = 0;
    for (before, after) in t.changed() {
        for cmd in commands(before, after) {
            let answer = sock.send(&cmd)?;
            if !accepted(&cmd, &answer) {
                return fallback(format!("`{cmd}` answered `{}`", answer.trim()));
            }
        }
        count += 1;
    }
    if sock.worker()? != worker {
        return fallback(format!(
            "the worker changed while it was being updated (was pid {worker})"
        ));
    }
    for backend in t.backends() {
        let state = sock.servers(backend)?;
        compare(&state, t.after.iter().filter(|s| s.backend == backend))
            .map_err(|e| Fallback(format!("backend {backend} after the update: {e}")))?;
    }
    Ok(count)
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
        .and_then(|p| p.parse::<u32>().ok())
    else {
        return fallback(format!("{} holds no pid", pidfile.display()));
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| Fallback(format!("master pid {pid} is not running ({e})")))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    if field("State:").is_some_and(|s| s.starts_with('Z') || s.starts_with('X')) {
        return fallback(format!("master pid {pid} has exited"));
    }
    let caught = field("SigCgt:")
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .is_some_and(|mask| mask & (1u64 << (sig as i32 - 1)) != 0);
    if caught {
        Ok(())
    } else {
        fallback(format!(
            "master pid {pid} does not handle {sig} now (a reload in progress?)"
        ))
    }
}

/// A server as `show servers state` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Running {
    pub backend: String,
    pub op_state: u32,
    pub name: String,
    pub addr: String,
    pub port: u16,
    pub admin: u32,
}

/// Checks that `running` holds exactly the servers `want`, with their
/// addresses, ports and maintenance state.
fn compare<'a>(running: &[Running], want: impl Iterator<Item = &'a Server>) -> Result<(), String> {
    let want: Vec<&Server> = want.collect();
    let names: BTreeSet<&str> = running.iter().map(|r| r.name.as_str()).collect();
    let expected: BTreeSet<&str> = want.iter().map(|s| s.name.as_str()).collect();
    if names != expected {
        return Err(format!(
            "servers {:?}, expected {:?}",
            names.into_iter().collect::<Vec<_>>(),
            expected.into_iter().collect::<Vec<_>>()
        ));
    }
    for s in want {
        let Some(r) = running.iter().find(|r| r.name == s.name) else {
            continue;
        };
        let addr_ok = r.addr.parse::<IpAddr>().is_ok_and(|a| a == s.addr);
        let maint = r.admin & ADMIN_FORCED_MAINT != 0;
        if !addr_ok || r.port != s.port || maint == s.enabled {
            return Err(format!(
                "{} is {}:{} {}, expected {}:{} {}",
                s.name,
                r.addr,
                r.port,
                if maint { "in maintenance" } else { "enabled" },
                s.addr,
                s.port,
                if s.enabled {
                    "enabled"
                } else {
                    "in maintenance"
                }
            ));
        }
    }
    Ok(())
}

/// Parses `show servers state BACKEND` (format 1), finding the columns by
/// the names in its `#` header.
pub(crate) fn parse_servers_state(answer: &str) -> Result<Vec<Running>, String> {
    let mut lines = answer.lines();
    let header = lines
        .by_ref()
        .find_map(|l| l.strip_prefix("# "))
        .ok_or_else(|| format!("unexpected answer `{}`", answer.trim()))?;
    let cols: Vec<&str> = header.split_whitespace().collect();
    let col = |name: &str| {
        cols.iter()
            .position(|c| *c == name)
            .ok_or(format!("no `{name}` column"))
    };
    let (backend, op_state, name, addr, port, admin) = (
        col("be_name")?,
        col("srv_op_state")?,
        col("srv_name")?,
        col("srv_addr")?,
        col("srv_port")?,
        col("srv_admin_state")?,
    );
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let get = |i: usize| f.get(i).copied().ok_or(format!("short line `{line}`"));
            let num = |i: usize| {
                get(i)?
                    .parse::<u32>()
                    .map_err(|_| format!("bad number in `{line}`"))
            };
            Ok(Running {
                backend: get(backend)?.to_string(),
                op_state: num(op_state)?,
                name: get(name)?.to_string(),
                addr: get(addr)?.to_string(),
                port: u16::try_from(num(port)?).map_err(|_| format!("bad port in `{line}`"))?,
                admin: num(admin)?,
            })
        })
        .collect()
}

/// A server as the running HAProxy sees it, for `converge status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LiveServer {
    /// Backend name.
    pub backend: String,
    /// Server name.
    pub name: String,
    /// `address:port`.
    pub endpoint: String,
    /// `UP`, `DOWN`, `STARTING`, `STOPPING` or `MAINT`.
    pub state: &'static str,
}

/// Every server of every backend, from the admin socket at `socket`.
pub fn live_servers(socket: &Path, timeout: Duration) -> Result<Vec<LiveServer>, String> {
    let answer = Socket {
        path: socket,
        timeout,
    }
    .exchange("show servers state")
    .map_err(|e| format!("cannot ask HAProxy on {}: {e}", socket.display()))?;
    Ok(parse_servers_state(&answer)?
        .into_iter()
        .map(|r| LiveServer {
            state: if r.admin & ADMIN_FORCED_MAINT != 0 {
                "MAINT"
            } else {
                match r.op_state {
                    0 => "DOWN",
                    1 => "STARTING",
                    2 => "UP",
                    _ => "STOPPING",
                }
            },
            endpoint: if r.addr.contains(':') {
                format!("[{}]:{}", r.addr, r.port)
            } else {
                format!("{}:{}", r.addr, r.port)
            },
            backend: r.backend,
            name: r.name,
        })
        .collect())
}

/// The admin stats socket: one command per connection.
struct Socket<'a> {
    path: &'a Path,
    timeout: Duration,
}

impl Socket<'_> {
    fn send(&self, command: &str) -> Result<String, Fallback> {
        self.exchange(command)
            .map_err(|e| Fallback(format!("`{command}`: {e}")))
    }

    fn exchange(&self, command: &str) -> io::Result<String> {
        let mut s = UnixStream::connect(self.path)?;
        s.set_read_timeout(Some(self.timeout))?;
        s.set_write_timeout(Some(self.timeout))?;
        s.write_all(command.as_bytes())?;
        s.write_all(b"\n")?;
        // Without `prompt`, HAProxy answers one command and closes.
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }

    /// The pid of the worker answering, which must not be stopping.
    fn worker(&self) -> Result<u32, Fallback> {
        let info = self.send("show info")?;
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
        };
        let Some(pid) = field("Pid:").and_then(|p| p.parse().ok()) else {
            return fallback(format!("`show info` answered `{}`", info.trim()));
        };
        if field("Stopping:").is_some_and(|s| s != "0") {
            return fallback(format!("worker pid {pid} is stopping"));
        }
        Ok(pid)
    }

    fn servers(&self, backend: &str) -> Result<Vec<Running>, Fallback> {
        let answer = self.send(&format!("show servers state {backend}"))?;
        parse_servers_state(&answer)
            .map_err(|e| Fallback(format!("`show servers state {backend}`: {e}")))
    }
}

#[cfg(test)]
mod tests;
