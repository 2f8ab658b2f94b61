//! Reading an HAProxy config the way the runtime API needs it: which
//! backends carry the [`MARKER`] (and the drain policy written on it), their
//! `server` lines (name, IP address, port, `disabled`, the other options),
//! what decides whether HAProxy 2.6 takes servers added at runtime (the
//! `balance` algorithm, `default-server` lines in scope), the admin `stats
//! socket` in `global`, and everything else as an opaque skeleton, so that
//! two files can be compared for "only the servers of marked backends
//! differ".
//!
//! Pure text in, values out: no socket, no process. What cannot be read
//! with certainty (a host name instead of an IP, the marker outside a
//! backend) is an error, which the caller answers with a reload.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The manifest's own type: the rendered file carries what the manifest said.
pub use converge_model::manifest::AfterDrain;
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
    /// The words after the address, without `disabled`, as written: what
    /// `add server` is given, so a server added at runtime is the line a
    /// reload would read.
    pub options: Vec<String>,
}

impl Server {
    pub(crate) fn id(&self) -> String {
        format!("{}/{}", self.backend, self.name)
    }

    /// `ADDR:PORT`, IPv6 bracketed, as `add server` reads it.
    pub(crate) fn endpoint(&self) -> String {
        match self.addr {
            IpAddr::V4(a) => format!("{a}:{}", self.port),
            IpAddr::V6(a) => format!("[{a}]:{}", self.port),
        }
    }

    /// Whether `keyword` is one of the line's options.
    pub(crate) fn has(&self, keyword: &str) -> bool {
        self.options.iter().any(|o| o == keyword)
    }
}

/// What a server leaving a marked backend may wait for: HAProxy deletes a
/// server only once no connection uses it, so the applier waits up to
/// `timeout`, then either reloads (the old worker keeps those connections
/// until they end, as with any reload) or shuts them down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drain {
    /// How long a removed server's connections may take to finish.
    pub timeout: Duration,
    /// What happens to connections still open after `timeout`.
    pub then: AfterDrain,
}

impl Default for Drain {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            then: AfterDrain::Reload,
        }
    }
}

/// What the file says about one marked backend beyond its servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rules {
    /// Why HAProxy would not take a server added at runtime in this
    /// backend, if it would not.
    pub no_add: Option<String>,
    /// The marker's drain policy.
    pub drain: Drain,
}

/// A config reduced to what a reload would change besides the servers of
/// marked backends: every other line, the marked servers apart.
#[derive(Debug, Default)]
struct Parsed {
    /// Every line but the marked servers, with its line number in the file.
    skeleton: Vec<(usize, String)>,
    servers: Vec<Server>,
    socket: Option<PathBuf>,
    rules: BTreeMap<String, Rules>,
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

/// The load-balancing algorithms HAProxy calls dynamic, the only ones
/// whose backends take `add server`. `first` is dynamic too, but picks
/// servers by id, which a server added at runtime gets in a different
/// order than a reload gives it, so a reload would change who gets the
/// traffic.
const DYNAMIC_BALANCE: &[&str] = &["roundrobin", "leastconn", "random"];

/// The lines of a `defaults` or `backend` section that decide whether
/// servers can be added at runtime.
#[derive(Debug, Default, Clone)]
struct Scope {
    balance: Option<String>,
    /// `default-server` options other than `init-addr`, which only
    /// matters for names resolved at start-up (marked servers have IPs).
    default_server: Vec<String>,
}

impl Scope {
    fn read(&mut self, words: &[&str]) {
        match words.first() {
            Some(&"balance") => self.balance = words.get(1).map(|w| w.to_string()),
            Some(&"default-server") => {
                let mut rest = words[1..].iter();
                while let Some(w) = rest.next() {
                    if *w == "init-addr" {
                        rest.next();
                    } else {
                        self.default_server.push(w.to_string());
                    }
                }
            }
            _ => {}
        }
    }

    fn no_add(&self) -> Option<String> {
        let balance = self.balance.as_deref().unwrap_or("roundrobin");
        let algorithm = balance.split('(').next().unwrap_or(balance);
        if !DYNAMIC_BALANCE.contains(&algorithm) {
            return Some(format!(
                "`balance {balance}`: servers are added at runtime only with {}",
                DYNAMIC_BALANCE.join(", ")
            ));
        }
        (!self.default_server.is_empty()).then(|| {
            format!(
                "`default-server {}` is not given to servers added at runtime",
                self.default_server.join(" ")
            )
        })
    }
}

/// The drain policy on a marker line: `drain=5s then=reload|shutdown`
/// after the marker, defaults for what is not said.
fn drain_policy(marker_line: &str) -> Result<Drain, String> {
    let mut drain = Drain::default();
    let rest = marker_line.trim().strip_prefix(MARKER).unwrap_or_default();
    for word in rest.split_whitespace() {
        let Some((key, value)) = word.split_once('=') else {
            break;
        };
        match key {
            "drain" => {
                drain.timeout = converge_model::duration::parse_haproxy(value)
                    .ok_or_else(|| format!("`{word}` on the marker is not a duration"))?;
            }
            "then" => {
                drain.then = match value {
                    "reload" => AfterDrain::Reload,
                    "shutdown" => AfterDrain::Shutdown,
                    _ => return Err(format!("`{word}` on the marker: reload or shutdown")),
                }
            }
            _ => return Err(format!("`{word}` on the marker is unknown")),
        }
    }
    Ok(drain)
}

/// Pass 1: the marked backends and their drain policies.
fn marked(text: &str) -> Result<BTreeMap<&str, Drain>, String> {
    let mut marked = BTreeMap::new();
    let mut section: Option<(&str, &str)> = None;
    for line in text.lines() {
        let t = line.trim();
        let mut words = t.split_whitespace();
        if let Some(w) = words.next().filter(|w| SECTIONS.contains(w)) {
            section = Some((w, words.next().unwrap_or("")));
        } else if t.starts_with(MARKER) {
            match section {
                Some(("backend", name)) => {
                    marked.insert(name, drain_policy(t)?);
                }
                _ => return Err(format!("`{MARKER}` outside a backend")),
            }
        }
    }
    Ok(marked)
}

fn parse(text: &str) -> Result<Parsed, String> {
    let marked = marked(text)?;
    // Pass 2: the skeleton, the marked servers, the scopes, the socket.
    let mut out = Parsed::default();
    let mut section: Option<(&str, &str)> = None;
    let mut defaults = Scope::default();
    let mut scopes: BTreeMap<&str, Scope> = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.first() {
            Some(w) if SECTIONS.contains(w) => {
                section = Some((w, words.get(1).copied().unwrap_or("")));
                match section {
                    Some(("defaults", _)) => defaults = Scope::default(),
                    Some(("backend", b)) if marked.contains_key(b) => {
                        scopes.insert(b, defaults.clone());
                    }
                    _ => {}
                }
            }
            Some(&"server") => {
                if let Some(("backend", backend)) = section.filter(|(_, b)| marked.contains_key(b))
                {
                    let server =
                        server_line(backend, &words).map_err(|e| format!("line {}: {e}", n + 1))?;
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
        match section {
            Some(("defaults", _)) => defaults.read(&words),
            Some(("backend", b)) => {
                if let Some(scope) = scopes.get_mut(b) {
                    scope.read(&words);
                }
            }
            _ => {}
        }
        out.skeleton.push((n + 1, line.to_string()));
    }
    out.rules = scopes
        .into_iter()
        .map(|(b, scope)| {
            let rules = Rules {
                no_add: scope.no_add(),
                drain: marked[b],
            };
            (b.to_string(), rules)
        })
        .collect();
    Ok(out)
}

/// `server NAME ADDR:PORT OPTIONS...` → the server, its options without
/// `disabled`.
fn server_line(backend: &str, words: &[&str]) -> Result<Server, String> {
    let (Some(name), Some(endpoint)) = (words.get(1), words.get(2)) else {
        return Err("a server line without a name and an address".into());
    };
    let (addr, port) = ip_endpoint(endpoint)
        .ok_or_else(|| format!("server {name}: `{endpoint}` is not IP:PORT with a fixed port"))?;
    let options: Vec<String> = words[3..]
        .iter()
        .filter(|w| **w != "disabled")
        .map(|w| w.to_string())
        .collect();
    Ok(Server {
        backend: backend.to_string(),
        name: name.to_string(),
        addr,
        port,
        enabled: options.len() == words.len() - 3,
        options,
    })
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

/// Live → candidate, when nothing but the servers of marked backends
/// differ: the admin socket, and for each backend whose servers differ,
/// its servers before and after and its rules.
#[derive(Debug)]
pub(crate) struct Classified {
    pub socket: PathBuf,
    /// The live file's servers of the backends that change, in file order.
    pub before: Vec<Server>,
    /// The candidate's servers of the same backends, in file order.
    pub after: Vec<Server>,
    /// The candidate's rules of the same backends.
    pub rules: BTreeMap<String, Rules>,
}

/// Classifies live → candidate (see [`Classified`]). A server keeps its
/// name, so one in both files with other options than `disabled`, or a
/// name twice in a backend, is structural.
///
/// A `backend` section whose text is the same in both files can change
/// nothing, so both files are first read without those (`without_equal_backends`):
/// reading every server of thousands of backends took 30–40 ms per change
/// at 500 backends of 10 servers, on the path to the runtime API. Only an
/// answer that the change is membership-only is taken from the reduced
/// files; any other is given by reading the whole files, so its line
/// numbers are the files' own.
pub(crate) fn classify(live: &str, candidate: &str) -> Result<Classified, String> {
    if let Some((live, candidate)) = without_equal_backends(live, candidate) {
        if let Ok(classified) = classify_whole(&live, &candidate) {
            return Ok(classified);
        }
    }
    classify_whole(live, candidate)
}

/// Both files without the `backend` sections whose text is the same in
/// both, or `None` when their sections do not pair up (another number,
/// kind or name: a change the whole read reports as structural).
fn without_equal_backends(live: &str, candidate: &str) -> Option<(String, String)> {
    let (old, new) = (sections(live), sections(candidate));
    if old.len() != new.len() {
        return None;
    }
    let (mut live, mut candidate) = (String::new(), String::new());
    for (a, b) in old.iter().zip(&new) {
        if a.header != b.header {
            return None;
        }
        if a.header.0 == "backend" && a.text == b.text {
            continue;
        }
        live.push_str(a.text);
        candidate.push_str(b.text);
    }
    Some((live, candidate))
}

/// A piece of a config from one section keyword to the next (or the text
/// before the first), as [`parse`] finds sections: its keyword and name,
/// and its text with its line ends.
struct Section<'a> {
    header: (&'a str, &'a str),
    text: &'a str,
}

/// `text` cut at every line whose first word is a section keyword; the
/// pieces put together are `text`.
fn sections(text: &str) -> Vec<Section<'_>> {
    let mut out = vec![Section {
        header: ("", ""),
        text: "",
    }];
    let mut start = 0;
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        let mut words = line.split_whitespace();
        if let Some(keyword) = words.next().filter(|w| SECTIONS.contains(w)) {
            if let Some(last) = out.last_mut() {
                last.text = &text[start..at];
            }
            out.push(Section {
                header: (keyword, words.next().unwrap_or("")),
                text: "",
            });
            start = at;
        }
        at += line.len();
    }
    if let Some(last) = out.last_mut() {
        last.text = &text[start..];
    }
    out
}

fn classify_whole(live: &str, candidate: &str) -> Result<Classified, String> {
    let old = parse(live)?;
    let new = parse(candidate)?;
    if old.rules.is_empty() && new.rules.is_empty() {
        return Err("no runtime-API backend".into());
    }
    if old.skeleton.len() != new.skeleton.len() {
        return Err(format!(
            "{} lines besides the servers, {} before",
            new.skeleton.len(),
            old.skeleton.len()
        ));
    }
    if let Some((_, (line, _))) = old
        .skeleton
        .iter()
        .zip(&new.skeleton)
        .find(|((_, a), (_, b))| a != b)
    {
        return Err(format!("line {line} of the candidate differs"));
    }
    // Equal skeletons: the same marked backends with the same rules.
    let Some(socket) = old.socket else {
        return Err("no unix `stats socket` at admin level in `global`".into());
    };
    let by_name = |servers: &[Server]| -> Result<BTreeMap<(String, String), Server>, String> {
        let mut map = BTreeMap::new();
        for s in servers {
            if map
                .insert((s.backend.clone(), s.name.clone()), s.clone())
                .is_some()
            {
                return Err(format!("server {} appears twice", s.id()));
            }
        }
        Ok(map)
    };
    let (was, will) = (by_name(&old.servers)?, by_name(&new.servers)?);
    let mut changed = BTreeSet::new();
    for key in was.keys().chain(will.keys()) {
        match (was.get(key), will.get(key)) {
            (Some(a), Some(b)) if a.options != b.options => {
                return Err(format!("server {}: other options", a.id()));
            }
            (Some(a), Some(b)) if a == b => {}
            _ => {
                changed.insert(key.0.clone());
            }
        }
    }
    let keep = |s: &&Server| changed.contains(&s.backend);
    Ok(Classified {
        socket,
        before: old.servers.iter().filter(keep).cloned().collect(),
        after: new.servers.iter().filter(keep).cloned().collect(),
        rules: new
            .rules
            .into_iter()
            .filter(|(b, _)| changed.contains(b))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of `backends` marked backends of three servers and a
    /// frontend routing to each; `server` edits the text of server `s1`
    /// of backend `b7` and `frontend` the frontend's last line.
    fn many(backends: usize, server: &str, frontend: &str) -> String {
        let mut t = String::from(
            "global\n    stats socket /r/run/admin.sock mode 600 level admin\n\
             defaults\n    mode http\n",
        );
        for b in 0..backends {
            t.push_str(&format!(
                "backend b{b}\n    balance roundrobin\n    {MARKER}\n"
            ));
            for k in 0..3 {
                let line = format!("    server s{k} 10.0.{b}.{k}:80 check");
                if b == 7 && k == 1 {
                    t.push_str(&format!("{line}{server}\n"));
                } else {
                    t.push_str(&format!("{line}\n"));
                }
            }
        }
        t.push_str("frontend fe\n    bind :80\n");
        for b in 0..backends {
            t.push_str(&format!("    use_backend b{b} if {{ path_beg /b{b}/ }}\n"));
        }
        t.push_str(&format!("    default_backend b0{frontend}"));
        t
    }

    #[test]
    fn sections_cut_a_file_into_pieces_that_put_together_are_the_file() {
        for text in [
            many(3, "", ""),
            many(3, "", "\n"),
            String::new(),
            "# only\n  a comment".into(),
        ] {
            let pieces = sections(&text);
            assert_eq!(pieces.iter().map(|p| p.text).collect::<String>(), text);
        }
        let two = many(2, "", "");
        let headers: Vec<_> = sections(&two).iter().map(|p| p.header).collect();
        assert_eq!(
            headers,
            [
                ("", ""),
                ("global", ""),
                ("defaults", ""),
                ("backend", "b0"),
                ("backend", "b1"),
                ("frontend", "fe")
            ]
        );
    }

    /// Leaving out the backends equal in both files gives the answer the
    /// whole files give, and an answer that the change is structural is
    /// the whole files', naming the candidate's own line.
    #[test]
    fn equal_backends_left_out_change_no_answer() {
        let (live, candidate) = (many(40, "", "\n"), many(40, " disabled", "\n"));
        let (fast, whole) = (
            classify(&live, &candidate).expect("membership-only"),
            classify_whole(&live, &candidate).expect("membership-only"),
        );
        assert_eq!(fast.socket, whole.socket);
        assert_eq!(fast.before, whole.before);
        assert_eq!(fast.after, whole.after);
        assert_eq!(fast.rules, whole.rules);
        assert_eq!(fast.after.len(), 3);
        assert!(!fast.after[1].enabled);

        let moved = many(40, " disabled", "\n    # another line\n");
        let why = classify(&live, &moved).expect_err("structural");
        assert_eq!(why, classify_whole(&live, &moved).expect_err("structural"));
        let options = many(40, " weight 5", "\n");
        let why = classify(&live, &options).expect_err("structural");
        assert_eq!(why, "server b7/s1: other options");
        let rebound = candidate.replace("    bind :80", "    bind :81");
        let why = classify(&live, &rebound).expect_err("structural");
        assert_eq!(
            why,
            classify_whole(&live, &rebound).expect_err("structural")
        );
        let bind = rebound
            .lines()
            .position(|l| l == "    bind :81")
            .expect("bind")
            + 1;
        assert_eq!(why, format!("line {bind} of the candidate differs"));
    }

    #[test]
    fn drain_policy_on_the_marker() {
        let with = |rest: &str| drain_policy(&format!("{MARKER}{rest}"));
        assert_eq!(with(""), Ok(Drain::default()));
        assert_eq!(
            with(" (slots change through the stats socket)"),
            Ok(Drain::default())
        );
        assert_eq!(
            with(" drain=250ms then=shutdown (comment)"),
            Ok(Drain {
                timeout: Duration::from_millis(250),
                then: AfterDrain::Shutdown
            })
        );
        assert_eq!(
            with(" drain=2m").map(|d| d.timeout),
            Ok(Duration::from_secs(120))
        );
        for bad in [" drain=5sec", " drain=x", " then=wait", " wait=1s"] {
            assert!(with(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn what_keeps_servers_from_being_added_at_runtime() {
        let no_add = |lines: &[&str]| {
            let mut scope = Scope::default();
            for l in lines {
                scope.read(&l.split_whitespace().collect::<Vec<_>>());
            }
            scope.no_add()
        };
        assert_eq!(no_add(&[]), None);
        assert_eq!(no_add(&["balance leastconn"]), None);
        assert_eq!(no_add(&["balance random(2)"]), None);
        assert_eq!(no_add(&["default-server init-addr libc,none"]), None);
        for ineligible in ["balance source", "balance first", "balance static-rr"] {
            let why = no_add(&[ineligible]).expect(ineligible);
            assert!(why.contains(ineligible), "{why}");
        }
        let why = no_add(&["default-server init-addr none inter 3s"]).expect("inherited");
        assert!(why.contains("`default-server inter 3s`"), "{why}");
    }
}
