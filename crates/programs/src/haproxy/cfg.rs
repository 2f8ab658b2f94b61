//! Reading an HAProxy config the way the runtime API needs it: which
//! backends carry the [`MARKER`], their `server` lines (name, IP address,
//! port, `disabled`), the admin `stats socket` in `global`, and everything
//! else as an opaque skeleton, so that two files can be compared for
//! "only slot addresses and states differ".
//!
//! Pure text in, values out: no socket, no process. What cannot be read
//! with certainty (a host name instead of an IP, the marker outside a
//! backend) is an error, which the caller answers with a reload.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;

use converge_model::RUNTIME_API_MARKER as MARKER;

/// One `server` line of a marked backend, as a file states it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Server {
    pub backend: String,
    pub name: String,
    pub addr: IpAddr,
    pub port: u16,
    /// No `disabled` keyword.
    pub enabled: bool,
}

impl Server {
    pub(crate) fn id(&self) -> String {
        format!("{}/{}", self.backend, self.name)
    }
}

/// A config reduced to what a reload would change besides slots: every
/// line, with the servers of marked backends stripped of address, port and
/// `disabled` (their name and other options stay).
#[derive(Debug, Default)]
struct Parsed {
    skeleton: Vec<String>,
    servers: Vec<Server>,
    socket: Option<PathBuf>,
}

/// Section keywords of an HAProxy config.
const SECTIONS: &[&str] = &[
    "global",
    "defaults",
    "frontend",
    "backend",
    "listen",
    "peers",
    "resolvers",
    "userlist",
    "mailers",
    "program",
    "http-errors",
    "ring",
    "cache",
    "fcgi-app",
];

fn parse(text: &str) -> Result<Parsed, String> {
    // Pass 1: which backends carry the marker.
    let mut marked = BTreeSet::new();
    let mut section: Option<(&str, &str)> = None;
    for line in text.lines() {
        let t = line.trim();
        let mut words = t.split_whitespace();
        if let Some(w) = words.next().filter(|w| SECTIONS.contains(w)) {
            section = Some((w, words.next().unwrap_or("")));
        } else if t.starts_with(MARKER) {
            match section {
                Some(("backend", name)) => {
                    marked.insert(name);
                }
                _ => return Err(format!("`{MARKER}` outside a backend")),
            }
        }
    }
    // Pass 2: the skeleton, the marked servers and the stats socket.
    let mut out = Parsed::default();
    let mut section: Option<(&str, &str)> = None;
    for (n, line) in text.lines().enumerate() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.first() {
            Some(w) if SECTIONS.contains(w) => {
                section = Some((w, words.get(1).copied().unwrap_or("")));
            }
            Some(&"server") => {
                if let Some(("backend", backend)) = section.filter(|(_, b)| marked.contains(b)) {
                    let (server, rest) =
                        server_line(backend, &words).map_err(|e| format!("line {}: {e}", n + 1))?;
                    out.skeleton
                        .push(format!("server {} <slot> {}", server.name, rest.join(" ")));
                    out.servers.push(server);
                    continue;
                }
            }
            Some(&"stats")
                if out.socket.is_none() && section.is_some_and(|(s, _)| s == "global") =>
            {
                out.socket = admin_socket(&words);
            }
            _ => {}
        }
        out.skeleton.push(line.to_string());
    }
    Ok(out)
}

/// `server NAME ADDR:PORT OPTIONS...` → the server and its options without
/// `disabled`.
fn server_line<'w>(backend: &str, words: &[&'w str]) -> Result<(Server, Vec<&'w str>), String> {
    let (Some(name), Some(endpoint)) = (words.get(1), words.get(2)) else {
        return Err("a server line without a name and an address".into());
    };
    let (addr, port) = ip_endpoint(endpoint)
        .ok_or_else(|| format!("server {name}: `{endpoint}` is not IP:PORT with a fixed port"))?;
    let rest: Vec<&str> = words[3..]
        .iter()
        .copied()
        .filter(|w| *w != "disabled")
        .collect();
    let enabled = rest.len() == words.len() - 3;
    Ok((
        Server {
            backend: backend.to_string(),
            name: name.to_string(),
            addr,
            port,
            enabled,
        },
        rest,
    ))
}

/// `1.2.3.4:80` or `[::1]:80`; a port of 0 or an offset means "the client's
/// port", which `set server ... port` refuses.
pub(crate) fn ip_endpoint(s: &str) -> Option<(IpAddr, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let port: u16 = port.parse().ok().filter(|p| *p > 0)?;
    Some((host.parse().ok()?, port))
}

/// The path of a `stats socket PATH ...` line in `global`, when it is a
/// unix socket at admin level (the default level).
fn admin_socket(words: &[&str]) -> Option<PathBuf> {
    if words.get(1) != Some(&"socket") {
        return None;
    }
    let path = words.get(2)?;
    let path = path.strip_prefix("unix@").unwrap_or(path);
    if !path.starts_with('/') {
        return None;
    }
    let level = words
        .windows(2)
        .find(|w| w[0] == "level")
        .map(|w| w[1])
        .unwrap_or("admin");
    (level == "admin").then(|| PathBuf::from(path))
}

/// Live → candidate: the socket and the servers of the changed backends,
/// when nothing but slot addresses, ports and states differ.
pub(crate) fn classify(
    live: &str,
    candidate: &str,
) -> Result<(PathBuf, Vec<Server>, Vec<Server>), String> {
    let old = parse(live)?;
    let new = parse(candidate)?;
    if old.servers.is_empty() && new.servers.is_empty() {
        return Err("no runtime-API backend".into());
    }
    if old.skeleton.len() != new.skeleton.len() {
        return Err(format!(
            "{} lines besides the slots, {} before",
            new.skeleton.len(),
            old.skeleton.len()
        ));
    }
    if let Some(n) = old
        .skeleton
        .iter()
        .zip(&new.skeleton)
        .position(|(a, b)| a != b)
    {
        return Err(format!("line {} differs", n + 1));
    }
    // Equal skeletons hold the same server names in the same order.
    let Some(socket) = old.socket else {
        return Err("no unix `stats socket` at admin level in `global`".into());
    };
    let changed: BTreeSet<&str> = old
        .servers
        .iter()
        .zip(&new.servers)
        .filter(|(a, b)| a != b)
        .map(|(a, _)| a.backend.as_str())
        .collect();
    let keep = |s: &&Server| changed.contains(s.backend.as_str());
    let before = old.servers.iter().filter(keep).cloned().collect();
    let after = new.servers.iter().filter(keep).cloned().collect();
    Ok((socket, before, after))
}
