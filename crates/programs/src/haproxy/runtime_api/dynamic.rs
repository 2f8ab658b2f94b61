//! Servers that join and leave a running HAProxy (≥ 2.4) without a
//! reload: `add server` and `del server`, with HAProxy 2.6's rules
//! (management.txt, "add server" and "del server") kept here, so that
//! [`plan`](super::plan) refuses up front what HAProxy would refuse.
//!
//! - A server is added with exactly the options of its line in the
//!   candidate (the renderer wrote them once; `add server` is given the
//!   same words), only when HAProxy accepts each of them on a dynamic
//!   server ([`OPTIONS`]); a `cookie`, for one, it does not. It starts in
//!   maintenance with its checks off: `enable health` (and `enable agent`)
//!   start them, `enable server` lets traffic in, unless the line says
//!   `disabled`.
//! - A server is deleted only in maintenance and once no connection uses
//!   it. It is put in maintenance first, so no new request goes to it, and
//!   `del server` is retried until HAProxy takes it or the backend's
//!   [`Drain`] timeout passes; then the drain's policy either shuts the
//!   remaining sessions down or gives up, and the caller reloads (the old
//!   worker then keeps those connections until they end, as any reload).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::socket::Socket;
use super::{fallback, Fallback};
use crate::haproxy::cfg::{AfterDrain, Rules, Server};

/// How often `del server` is retried while a server drains.
const POLL: Duration = Duration::from_millis(20);

/// How long `shutdown sessions` may take to leave a server deletable.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The server keywords HAProxy 2.6 accepts on `add server`, with how many
/// words follow each (management.txt, "add server"). Anything else on a
/// line keeps the server from being added at runtime.
const OPTIONS: &[(&str, usize)] = &[
    ("agent-addr", 1),
    ("agent-check", 0),
    ("agent-inter", 1),
    ("agent-port", 1),
    ("agent-send", 1),
    ("allow-0rtt", 0),
    ("alpn", 1),
    ("addr", 1),
    ("backup", 0),
    ("ca-file", 1),
    ("check", 0),
    ("check-alpn", 1),
    ("check-proto", 1),
    ("check-send-proxy", 0),
    ("check-sni", 1),
    ("check-ssl", 0),
    ("check-via-socks4", 0),
    ("ciphers", 1),
    ("ciphersuites", 1),
    ("crl-file", 1),
    ("crt", 1),
    ("downinter", 1),
    ("enabled", 0),
    ("error-limit", 1),
    ("fall", 1),
    ("fastinter", 1),
    ("force-sslv3", 0),
    ("force-tlsv10", 0),
    ("force-tlsv11", 0),
    ("force-tlsv12", 0),
    ("force-tlsv13", 0),
    ("id", 1),
    ("inter", 1),
    ("maxconn", 1),
    ("maxqueue", 1),
    ("minconn", 1),
    ("no-ssl-reuse", 0),
    ("no-sslv3", 0),
    ("no-tlsv10", 0),
    ("no-tlsv11", 0),
    ("no-tlsv12", 0),
    ("no-tlsv13", 0),
    ("no-tls-tickets", 0),
    ("npn", 1),
    ("observe", 1),
    ("on-error", 1),
    ("on-marked-down", 1),
    ("on-marked-up", 1),
    ("pool-low-conn", 1),
    ("pool-max-conn", 1),
    ("pool-purge-delay", 1),
    ("port", 1),
    ("proto", 1),
    ("proxy-v2-options", 1),
    ("rise", 1),
    ("send-proxy", 0),
    ("send-proxy-v2", 0),
    ("send-proxy-v2-ssl", 0),
    ("send-proxy-v2-ssl-cn", 0),
    ("slowstart", 1),
    ("sni", 1),
    ("source", 1),
    ("ssl", 0),
    ("ssl-max-ver", 1),
    ("ssl-min-ver", 1),
    ("tfo", 0),
    ("tls-tickets", 0),
    ("track", 1),
    ("usesrc", 1),
    ("verify", 1),
    ("verifyhost", 1),
    ("weight", 1),
    ("ws", 1),
];

/// Why `s` cannot be added to its running backend, if it cannot.
pub(crate) fn refusal(s: &Server, rules: &Rules) -> Option<String> {
    if let Some(why) = &rules.no_add {
        return Some(format!("{} cannot be added at runtime: {why}", s.id()));
    }
    let mut words = s.options.iter();
    while let Some(w) = words.next() {
        match OPTIONS.iter().find(|(k, _)| k == w) {
            Some((_, args)) => {
                for _ in 0..*args {
                    words.next();
                }
            }
            None => {
                return Some(format!(
                    "{} cannot be added at runtime: HAProxy does not take `{w}` on `add server`",
                    s.id()
                ))
            }
        }
    }
    None
}

/// The commands that add `s` as its line says.
pub(crate) fn add_commands(s: &Server) -> Vec<String> {
    let id = s.id();
    let mut add = format!("add server {id} {}", s.endpoint());
    for o in &s.options {
        add.push(' ');
        add.push_str(o);
    }
    let mut out = vec![add];
    if s.has("check") {
        out.push(format!("enable health {id}"));
    }
    if s.has("agent-check") {
        out.push(format!("enable agent {id}"));
    }
    if s.enabled {
        out.push(format!("enable server {id}"));
    }
    out
}

/// The commands that stop new traffic to `s` before it is deleted; an
/// agent check is stopped first, as it could take the server out of
/// maintenance again.
pub(crate) fn retire_commands(s: &Server) -> Vec<String> {
    let id = s.id();
    let mut out = Vec::new();
    if s.has("agent-check") {
        out.push(format!("disable agent {id}"));
    }
    out.push(format!("set server {id} state maint"));
    out
}

/// Deletes `servers` (already in maintenance) as their connections end,
/// within each backend's drain policy.
pub(crate) fn drain_and_delete(
    sock: &Socket,
    servers: &[&Server],
    rules: &BTreeMap<String, Rules>,
) -> Result<(), Fallback> {
    let started = Instant::now();
    let mut left: Vec<(&Server, Option<Instant>)> = servers.iter().map(|s| (*s, None)).collect();
    while !left.is_empty() {
        let mut still = Vec::with_capacity(left.len());
        for (s, shut) in left {
            if !try_delete(sock, s)? {
                still.push((s, shut));
            }
        }
        for (s, shut) in &mut still {
            let drain = rules.get(&s.backend).map(|r| r.drain).unwrap_or_default();
            match (drain.then, *shut) {
                _ if started.elapsed() < drain.timeout => {}
                (AfterDrain::Reload, _) => {
                    return fallback(format!(
                        "{} still has connections after {:?} of draining",
                        s.id(),
                        drain.timeout
                    ))
                }
                (AfterDrain::Shutdown, None) => {
                    let cmd = format!("shutdown sessions server {}", s.id());
                    let answer = sock.send(&cmd)?;
                    if !answer.trim().is_empty() {
                        return fallback(format!("`{cmd}` answered `{}`", answer.trim()));
                    }
                    *shut = Some(Instant::now());
                }
                (AfterDrain::Shutdown, Some(at)) if at.elapsed() > SHUTDOWN_GRACE => {
                    return fallback(format!(
                        "{} still has connections after its sessions were shut down",
                        s.id()
                    ))
                }
                (AfterDrain::Shutdown, Some(_)) => {}
            }
        }
        left = still;
        if !left.is_empty() {
            std::thread::sleep(POLL);
        }
    }
    Ok(())
}

/// `del server`: whether HAProxy deleted it; `false` while connections
/// still use it; any other answer fails the update.
fn try_delete(sock: &Socket, s: &Server) -> Result<bool, Fallback> {
    let cmd = format!("del server {}", s.id());
    let answer = sock.send(&cmd)?;
    let answer = answer.trim();
    if answer.starts_with("Server deleted") {
        Ok(true)
    } else if answer.contains("still has") {
        Ok(false)
    } else {
        fallback(format!("`{cmd}` answered `{answer}`"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::haproxy::cfg::{ip_endpoint, Drain};

    fn server(line_options: &str, enabled: bool) -> Server {
        let (addr, port) = ip_endpoint("10.0.0.3:81").expect("endpoint");
        Server {
            backend: "web".into(),
            name: "web-3:n1".into(),
            addr,
            port,
            enabled,
            options: line_options.split_whitespace().map(String::from).collect(),
        }
    }

    fn rules(no_add: Option<&str>) -> Rules {
        Rules {
            no_add: no_add.map(String::from),
            drain: Drain::default(),
        }
    }

    #[test]
    fn a_server_is_added_with_the_options_of_its_line_and_its_checks_started() {
        let s = server("check port 8008 maxconn 50 inter 2s", true);
        assert_eq!(refusal(&s, &rules(None)), None);
        assert_eq!(
            add_commands(&s),
            [
                "add server web/web-3:n1 10.0.0.3:81 check port 8008 maxconn 50 inter 2s",
                "enable health web/web-3:n1",
                "enable server web/web-3:n1",
            ]
        );
        let quiet = server("agent-check agent-port 9000", false);
        assert_eq!(
            add_commands(&quiet),
            [
                "add server web/web-3:n1 10.0.0.3:81 agent-check agent-port 9000",
                "enable agent web/web-3:n1",
            ],
            "a `disabled` line stays in maintenance"
        );
        assert_eq!(
            retire_commands(&quiet),
            [
                "disable agent web/web-3:n1",
                "set server web/web-3:n1 state maint"
            ]
        );
    }

    #[test]
    fn what_haproxy_refuses_on_add_server_is_refused_up_front() {
        let why = refusal(&server("check cookie web-3:n1", true), &rules(None)).expect("cookie");
        assert!(why.contains("`cookie`"), "{why}");
        let why = refusal(&server("check init-addr none", true), &rules(None)).expect("init-addr");
        assert!(why.contains("`init-addr`"), "{why}");
        // An option's argument is not read as a keyword.
        assert_eq!(
            refusal(&server("check sni str(cookie)", true), &rules(None)),
            None
        );
        let why = refusal(&server("check", true), &rules(Some("`balance source`"))).expect("lb");
        assert!(why.contains("`balance source`"), "{why}");
    }
}
