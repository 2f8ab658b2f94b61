//! What the running HAProxy says about its servers (`show servers state`),
//! and whether that is what a file says: the check before and after every
//! runtime update, and `converge status`'s view of the live servers.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use super::socket::Socket;
use crate::haproxy::cfg::Server;

/// HAProxy's `SRV_ADMF_FMAINT`: maintenance forced by the configuration's
/// `disabled` or by `set server ... state maint`.
const ADMIN_FORCED_MAINT: u32 = 0x01;

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
pub(crate) fn compare<'a>(
    running: &[Running],
    want: impl Iterator<Item = &'a Server>,
) -> Result<(), String> {
    let want: Vec<&Server> = want.collect();
    let by_name: BTreeMap<&str, &Running> = running.iter().map(|r| (r.name.as_str(), r)).collect();
    let names: BTreeSet<&str> = by_name.keys().copied().collect();
    let expected: BTreeSet<&str> = want.iter().map(|s| s.name.as_str()).collect();
    if names != expected {
        return Err(format!(
            "servers {:?}, expected {:?}",
            names.into_iter().collect::<Vec<_>>(),
            expected.into_iter().collect::<Vec<_>>()
        ));
    }
    for s in want {
        let Some(r) = by_name.get(s.name.as_str()) else {
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

/// Every server of `backend`, or of every backend with `None`, from the
/// admin socket at `socket`. One backend's answer stays small however many
/// servers HAProxy holds, for a caller that polls one of them.
pub fn live_servers(
    socket: &Path,
    backend: Option<&str>,
    timeout: Duration,
) -> Result<Vec<LiveServer>, String> {
    let command = match backend {
        Some(b) => format!("show servers state {b}"),
        None => "show servers state".to_string(),
    };
    let answer = Socket {
        path: socket,
        timeout,
    }
    .exchange(&command)
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
