//! Cross-reference checks over the merged manifest.
//!
//! Deserialization guarantees each entry is well-typed on its own; this
//! module checks what only the whole repository can tell: that routes name
//! real backends, nodes name real targets, every keepalived node has a
//! priority, no two targets write one file. All problems are collected, each
//! placed at the field that is wrong.

use std::collections::BTreeMap;

use crate::error::{ManifestError, ManifestErrors};
use crate::load::Manifests;
use crate::locate::Segment;
use crate::manifest::{Mode, Reload, TcpCheck, Validator};
use crate::wording::suggest;

/// Signals a reload may name.
pub const SIGNALS: &[&str] = &[
    "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGINT", "SIGTERM", "SIGQUIT", "SIGWINCH",
];

/// Most server slots a runtime-API backend may ask for: every slot is a
/// server HAProxy keeps (and health-checks once enabled) whether it is used
/// or not.
pub const MAX_RUNTIME_SLOTS: u32 = 1024;

fn key(k: &str) -> Segment {
    Segment::Key(k.into())
}

impl Manifests {
    /// Checks references and value ranges across all files.
    pub fn validate(&self) -> Result<(), ManifestErrors> {
        let mut errors = Vec::new();
        self.check_frontends(&mut errors);
        self.check_backends(&mut errors);
        self.check_targets(&mut errors);
        self.check_nodes(&mut errors);
        self.check_vips(&mut errors);
        self.check_databases(&mut errors);
        self.check_rollout(&mut errors);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ManifestErrors(errors))
        }
    }

    /// "`kind` `name` is not defined", with the nearest defined name, when
    /// no entry `name` of `section` exists; `None` when it exists, or when
    /// an entry of that name failed to load (its own error says why). While
    /// a file could not be read, the message says the name may be there.
    fn undefined(&self, section: &str, kind: &str, name: &str) -> Option<String> {
        let known: Vec<&str> = match section {
            "backends" => self.manifest.backends.keys().map(String::as_str).collect(),
            "targets" => self.manifest.targets.keys().map(String::as_str).collect(),
            "nodes" => self.manifest.nodes.keys().map(String::as_str).collect(),
            _ => Vec::new(),
        };
        if known.contains(&name) || self.failed_to_load(section, name) {
            return None;
        }
        let mut msg = format!("{kind} `{name}` is not defined{}", suggest(name, known));
        let unread = self.unreadable_files();
        if !unread.is_empty() {
            msg.push_str(&format!(
                " (unless it is in {}, which could not be read in full)",
                unread.join(", ")
            ));
        }
        Some(msg)
    }

    // Long on purpose: one rule after another over one section, each a
    // few lines and independent; split up, a section's rules would be
    // scattered over helpers that each check one field.
    fn check_frontends(&self, errors: &mut Vec<ManifestError>) {
        let m = &self.manifest;
        for (name, fe) in &m.frontends {
            let mut refs = vec![(vec![key("default_backend")], &fe.default_backend)];
            for (i, r) in fe.routes.iter().enumerate() {
                refs.push((
                    vec![key("routes"), Segment::Index(i), key("backend")],
                    &r.backend,
                ));
                if fe.mode == Mode::Tcp {
                    errors.push(
                        self.error(
                            "frontends",
                            name,
                            &[key("routes"), Segment::Index(i)],
                            "routes need `mode: http`; a tcp frontend has only `default_backend`"
                                .into(),
                        ),
                    );
                }
                if r.host.is_none() && r.path_prefix.is_none() {
                    errors.push(self.error(
                        "frontends",
                        name,
                        &[key("routes"), Segment::Index(i)],
                        "a route needs `host`, `path_prefix` or both".into(),
                    ));
                }
                for (field, v) in [("host", &r.host), ("path_prefix", &r.path_prefix)] {
                    if let Some(v) = v {
                        if !plain_token(v) {
                            errors.push(self.error(
                                "frontends",
                                name,
                                &[key("routes"), Segment::Index(i), key(field)],
                                format!("`{v}` must be one token without spaces, quotes or `#`"),
                            ));
                        }
                    }
                }
            }
            for (path, backend) in refs {
                match m.backends.get(backend) {
                    None => {
                        if let Some(msg) = self.undefined("backends", "backend", backend) {
                            errors.push(self.error("frontends", name, &path, msg));
                        }
                    }
                    Some(be) if be.mode != fe.mode => errors.push(self.error(
                        "frontends",
                        name,
                        &path,
                        format!(
                            "backend `{backend}` is mode {:?} but this frontend is mode {:?}",
                            be.mode, fe.mode
                        ),
                    )),
                    Some(_) => {}
                }
            }
            if fe.bind.is_empty() {
                errors.push(self.error(
                    "frontends",
                    name,
                    &[key("bind")],
                    "needs at least one address".into(),
                ));
            }
            for (i, b) in fe.bind.iter().enumerate() {
                if !valid_bind(b) {
                    errors.push(self.error(
                        "frontends",
                        name,
                        &[key("bind"), Segment::Index(i)],
                        format!("`{b}` is not `ADDRESS:PORT` or `:PORT`"),
                    ));
                }
            }
        }
    }

    fn check_backends(&self, errors: &mut Vec<ManifestError>) {
        for (name, be) in &self.manifest.backends {
            if !crate::load::valid_name(&be.service) {
                errors.push(self.error(
                    "backends",
                    name,
                    &[key("service")],
                    format!(
                        "service name `{}` may only contain letters, digits, `_`, `-`, `.`",
                        be.service
                    ),
                ));
            }
            if !(0.0..=1.0).contains(&be.max_drop_fraction) {
                errors.push(self.error(
                    "backends",
                    name,
                    &[key("max_drop_fraction")],
                    format!("{} is not a fraction between 0 and 1", be.max_drop_fraction),
                ));
            }
            for (i, opt) in be.server_options.iter().enumerate() {
                if !plain_line(opt) {
                    errors.push(self.error(
                        "backends",
                        name,
                        &[key("server_options"), Segment::Index(i)],
                        "server options must be one line without `#` or quotes".into(),
                    ));
                }
            }
            if let Some(hc) = &be.health_check {
                if !hc.path.starts_with('/') || !plain_token(&hc.path) {
                    errors.push(self.error(
                        "backends",
                        name,
                        &[key("health_check"), key("path")],
                        format!(
                            "`{}` must start with `/` and contain no spaces, quotes or `#`",
                            hc.path
                        ),
                    ));
                }
                if be.tcp_check.is_some() {
                    errors.push(self.error(
                        "backends",
                        name,
                        &[key("tcp_check")],
                        "a backend has one check: `health_check` or `tcp_check`, not both".into(),
                    ));
                }
            }
            if be.tcp_check_password.is_some() && be.tcp_check != Some(TcpCheck::RedisPrimary) {
                errors.push(self.error(
                    "backends",
                    name,
                    &[key("tcp_check_password")],
                    "is the password of `tcp_check: redis_primary`, which this backend does not \
                     use"
                    .into(),
                ));
            }
            if let Some(rt) = &be.runtime_api {
                if rt.slots > MAX_RUNTIME_SLOTS {
                    errors.push(self.error(
                        "backends",
                        name,
                        &[key("runtime_api"), key("slots")],
                        format!(
                            "{} slots: a runtime-API backend has at most {MAX_RUNTIME_SLOTS}",
                            rt.slots
                        ),
                    ));
                }
            }
            if let Some(s) = &be.sticky {
                if !crate::load::valid_name(&s.cookie) {
                    errors.push(self.error(
                        "backends",
                        name,
                        &[key("sticky"), key("cookie")],
                        format!(
                            "cookie name `{}` may only contain letters, digits, `_`, `-`, `.`",
                            s.cookie
                        ),
                    ));
                }
            }
        }
    }

    // Long on purpose: one rule after another over one section, each a
    // few lines and independent; split up, a section's rules would be
    // scattered over helpers that each check one field.
    fn check_targets(&self, errors: &mut Vec<ManifestError>) {
        let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
        // program → (first target reloading it, its bundle)
        let mut programs: BTreeMap<String, (&str, String)> = BTreeMap::new();
        for (name, t) in &self.manifest.targets {
            let bundle = t.bundle.clone().unwrap_or_else(|| name.clone());
            if let Some(program) = reloaded_program(&t.reload) {
                match programs.get(&program) {
                    Some((first, first_bundle)) if *first_bundle != bundle => {
                        errors.push(self.error(
                            "targets",
                            name,
                            &[key("bundle")],
                            format!(
                                "target `{first}` (bundle `{first_bundle}`) reloads the same program ({program}); \
                                 put both in one bundle (`bundle: {first_bundle}`) so they are checked and \
                                 committed together and the program reloads once"
                            ),
                        ))
                    }
                    Some(_) => {}
                    None => {
                        programs.insert(program, (name, bundle));
                    }
                }
            }
            if !t.destination.starts_with('/') {
                errors.push(self.error(
                    "targets",
                    name,
                    &[key("destination")],
                    format!("`{}` must be an absolute path", t.destination),
                ));
            }
            if let Some(first) = seen.insert(&t.destination, name) {
                errors.push(self.error(
                    "targets",
                    name,
                    &[key("destination")],
                    format!(
                        "target `{first}` already writes `{}`; two targets cannot own one file",
                        t.destination
                    ),
                ));
            }
            if parse_mode(&t.mode).is_none() {
                errors.push(self.error(
                    "targets",
                    name,
                    &[key("mode")],
                    format!("`{}` is not an octal mode like \"0640\"", t.mode),
                ));
            }
            if t.backups > 50 {
                errors.push(self.error(
                    "targets",
                    name,
                    &[key("backups")],
                    format!("{} backups is more than the limit of 50", t.backups),
                ));
            }
            if let Validator::Command(argv) = &t.validate {
                if argv.is_empty() {
                    errors.push(self.error(
                        "targets",
                        name,
                        &[key("validate")],
                        "empty command".into(),
                    ));
                }
            }
            match &t.reload {
                Reload::Signal { signal, .. } if !SIGNALS.contains(&signal.as_str()) => errors
                    .push(self.error(
                        "targets",
                        name,
                        &[key("reload"), key("signal"), key("signal")],
                        format!(
                            "unknown signal `{signal}`, expected one of: {}",
                            SIGNALS.join(", ")
                        ),
                    )),
                Reload::Command(argv) if argv.is_empty() => errors.push(self.error(
                    "targets",
                    name,
                    &[key("reload")],
                    "empty command".into(),
                )),
                _ => {}
            }
        }
    }

    fn check_nodes(&self, errors: &mut Vec<ManifestError>) {
        let m = &self.manifest;
        if m.nodes.is_empty() {
            if let Some(first) = m.targets.keys().next() {
                errors.push(self.error(
                    "targets",
                    first,
                    &[],
                    "no nodes are defined; add a `nodes:` section".into(),
                ));
            }
        }
        for (name, node) in &m.nodes {
            for (i, t) in node.targets.iter().flatten().enumerate() {
                if let Some(msg) = self.undefined("targets", "target", t) {
                    errors.push(self.error(
                        "nodes",
                        name,
                        &[key("targets"), Segment::Index(i)],
                        msg,
                    ));
                }
            }
            for (tname, t) in self.node_targets(name) {
                for var in &t.requires_vars {
                    if !node.vars.contains_key(var) {
                        errors.push(self.error(
                            "nodes",
                            name,
                            &[key("vars")],
                            format!(
                                "node `{name}` lacks var `{var}`, which target `{tname}` requires"
                            ),
                        ));
                    }
                }
            }
        }
    }

    // Long on purpose: one rule after another over one section, each a
    // few lines and independent; split up, a section's rules would be
    // scattered over helpers that each check one field.
    fn check_vips(&self, errors: &mut Vec<ManifestError>) {
        let m = &self.manifest;
        let mut ids: BTreeMap<u8, &str> = BTreeMap::new();
        for (name, vip) in &m.vips {
            if let Some(first) = ids.insert(vip.virtual_router_id, name) {
                errors.push(self.error(
                    "vips",
                    name,
                    &[key("virtual_router_id")],
                    format!(
                        "virtual_router_id {} is already used by vip `{first}`",
                        vip.virtual_router_id
                    ),
                ));
            }
            if vip.virtual_router_id == 0 {
                errors.push(self.error(
                    "vips",
                    name,
                    &[key("virtual_router_id")],
                    "must be 1..=255".into(),
                ));
            }
            if vip.addresses.is_empty() {
                errors.push(self.error(
                    "vips",
                    name,
                    &[key("addresses")],
                    "needs at least one address".into(),
                ));
            }
            for (i, a) in vip.addresses.iter().enumerate() {
                if !valid_cidr(a) {
                    errors.push(self.error(
                        "vips",
                        name,
                        &[key("addresses"), Segment::Index(i)],
                        format!("`{a}` is not an address in CIDR form like 10.0.0.10/24"),
                    ));
                }
            }
            let hooks = [
                ("master", &vip.notify.master),
                ("backup", &vip.notify.backup),
                ("fault", &vip.notify.fault),
            ];
            for (hook, path) in hooks {
                if let Some(p) = path {
                    if !p.starts_with('/') || !plain_token(p) {
                        errors.push(self.error(
                            "vips",
                            name,
                            &[key("notify"), key(hook)],
                            format!("`{p}` must be an absolute path without spaces or quotes"),
                        ));
                    }
                }
            }
            if !crate::load::valid_name(&vip.interface) || vip.interface.len() > 15 {
                errors.push(self.error(
                    "vips",
                    name,
                    &[key("interface")],
                    format!("`{}` is not an interface name", vip.interface),
                ));
            }
            for node in vip.priorities.keys() {
                if let Some(msg) = self.undefined("nodes", "node", node) {
                    errors.push(self.error("vips", name, &[key("priorities"), key(node)], msg));
                }
            }
            for (node_name, node) in &m.nodes {
                let runs_keepalived = self
                    .node_targets(node_name)
                    .any(|(_, t)| t.validate == Validator::Keepalived);
                if !runs_keepalived {
                    continue;
                }
                if !vip.priorities.contains_key(node_name) {
                    errors.push(self.error(
                        "vips",
                        name,
                        &[key("priorities")],
                        format!("node `{node_name}` renders keepalived but has no priority for vip `{name}`"),
                    ));
                }
                if vip.unicast && node.address.is_none() {
                    errors.push(self.error(
                        "nodes",
                        node_name,
                        &[],
                        format!(
                            "vip `{name}` uses unicast, so node `{node_name}` needs an `address`"
                        ),
                    ));
                }
            }
        }
    }

    /// Group names go into Consul keys; every node named must exist.
    fn check_rollout(&self, errors: &mut Vec<ManifestError>) {
        let r = &self.manifest.rollout;
        let at = |rest: &[&str], msg: String| self.settings_error("rollout", rest, msg);
        for (group, members) in &r.groups {
            if !crate::load::valid_name(group) {
                errors.push(at(
                    &["groups", group],
                    format!(
                        "group name `{group}` may only contain letters, digits, `_`, `-` and `.`"
                    ),
                ));
            }
            if members.len() < 2 {
                errors.push(at(
                    &["groups", group],
                    format!("group `{group}` needs at least two nodes to keep apart"),
                ));
            }
            for node in members {
                if let Some(msg) = self.undefined("nodes", "node", node) {
                    errors.push(at(&["groups", group], msg));
                }
            }
        }
        for node in &r.canary {
            if let Some(msg) = self.undefined("nodes", "node", node) {
                errors.push(at(&["canary"], msg));
            }
        }
        if r.max_parallel == Some(0) {
            errors.push(at(
                &["max_parallel"],
                "must be at least 1 (0 would stop every rollout; use `converge fleet pause`)"
                    .into(),
            ));
        }
    }

    fn check_databases(&self, errors: &mut Vec<ManifestError>) {
        for (name, db) in &self.manifest.databases {
            if !crate::load::valid_name(&db.service) {
                errors.push(self.error(
                    "databases",
                    name,
                    &[key("service")],
                    format!(
                        "service name `{}` may only contain letters, digits, `_`, `-`, `.`",
                        db.service
                    ),
                ));
            }
            if let Some(d) = &db.dbname {
                if !crate::load::valid_name(d) {
                    errors.push(self.error(
                        "databases",
                        name,
                        &[key("dbname")],
                        format!("`{d}` may only contain letters, digits, `_`, `-`, `.`"),
                    ));
                }
            }
        }
    }

    /// The targets node `name` renders, in name order.
    pub fn node_targets<'a>(
        &'a self,
        name: &str,
    ) -> impl Iterator<Item = (&'a String, &'a crate::manifest::Target)> + 'a {
        let wanted = self
            .manifest
            .nodes
            .get(name)
            .and_then(|n| n.targets.clone());
        self.manifest
            .targets
            .iter()
            .filter(move |(t, _)| wanted.as_ref().is_none_or(|w| w.contains(t)))
    }
}

/// Parses an octal mode string such as `"0640"`.
pub fn parse_mode(mode: &str) -> Option<u32> {
    u32::from_str_radix(mode, 8).ok().filter(|m| *m <= 0o7777)
}

/// One token: no whitespace, quotes, `#`, backslash or control characters.
fn plain_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && s.chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '"' | '\'' | '#' | '\\'))
}

/// One line: tokens and single spaces, no `#`, quotes or control characters.
fn plain_line(s: &str) -> bool {
    !s.is_empty() && s.split(' ').all(plain_token)
}

fn valid_bind(b: &str) -> bool {
    let Some((addr, port)) = b.rsplit_once(':') else {
        return false;
    };
    port.parse::<u16>().is_ok_and(|p| p > 0)
        && (addr.is_empty()
            || addr == "*"
            || addr
                .trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok())
}

fn valid_cidr(a: &str) -> bool {
    let Some((ip, len)) = a.split_once('/') else {
        return false;
    };
    match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => len.parse::<u8>().is_ok_and(|l| l <= 32),
        Ok(std::net::IpAddr::V6(_)) => len.parse::<u8>().is_ok_and(|l| l <= 128),
        Err(_) => false,
    }
}

/// ", did you mean `x`?" for a near miss, else nothing.
/// Which running program a reload action addresses, for telling two
/// targets that reload the same one; `None` for no reload.
fn reloaded_program(reload: &Reload) -> Option<String> {
    match reload {
        Reload::Signal { pidfile, .. } => Some(format!("the pid in {pidfile}")),
        Reload::Pgbouncer(a) => Some(format!("PgBouncer's console at {}:{}", a.host, a.port)),
        Reload::Command(argv) => Some(format!("`{}`", argv.join(" "))),
        Reload::Shell(script) => Some(format!("sh -c `{script}`")),
        Reload::None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_and_cidrs() {
        assert!(valid_bind(":80"));
        assert!(valid_bind("127.0.0.1:8080"));
        assert!(valid_bind("[::1]:80"));
        assert!(!valid_bind("80"));
        assert!(!valid_bind("127.0.0.1:http"));
        assert!(valid_cidr("10.0.0.10/24"));
        assert!(!valid_cidr("10.0.0.10"));
        assert!(!valid_cidr("10.0.0.300/24"));
    }

    #[test]
    fn runtime_api_slots_out_of_range_are_placed_at_the_field() {
        let text = |slots: u32| {
            format!("backends:\n  web:\n    service: web\n    runtime_api:\n      slots: {slots}\n")
        };
        let check = |slots: u32| {
            let m = Manifests::from_sources(
                std::path::Path::new("m"),
                &[(std::path::PathBuf::from("m/a.yaml"), text(slots))],
            )
            .expect("parses");
            m.validate()
                .map_err(|e| e.0.iter().map(ToString::to_string).collect::<Vec<_>>())
        };
        // No slots: every instance is a dynamic server.
        assert_eq!(check(0), Ok(()));
        assert_eq!(check(MAX_RUNTIME_SLOTS), Ok(()));
        let bad = MAX_RUNTIME_SLOTS + 1;
        assert_eq!(
            check(bad),
            Err(vec![format!(
                "m/a.yaml:5:7: backends.web.runtime_api.slots: {bad} slots: a runtime-API \
                 backend has at most {MAX_RUNTIME_SLOTS}"
            )])
        );
    }

    #[test]
    fn a_tcp_backend_takes_an_http_check_but_not_two_checks() {
        let check = |extra: &str| {
            let text = format!("backends:\n  pg:\n    mode: tcp\n    service: pg\n{extra}");
            let m = Manifests::from_sources(
                std::path::Path::new("m"),
                &[(std::path::PathBuf::from("m/a.yaml"), text)],
            )
            .expect("parses");
            m.validate()
                .map_err(|e| e.0.iter().map(ToString::to_string).collect::<Vec<_>>())
        };
        let rest = "    health_check: {method: OPTIONS, path: /primary, port: 8008}\n";
        assert_eq!(check(rest), Ok(()));
        assert_eq!(check("    tcp_check: redis_primary\n"), Ok(()));
        assert_eq!(
            check(&format!("{rest}    tcp_check: redis_primary\n")),
            Err(vec![
                "m/a.yaml:6:5: backends.pg.tcp_check: a backend has one check: \
                      `health_check` or `tcp_check`, not both"
                    .to_string()
            ])
        );
        let password = "    tcp_check_password: {file: secrets/redis}\n";
        assert_eq!(
            check(&format!("    tcp_check: redis_primary\n{password}")),
            Ok(())
        );
        assert_eq!(
            check(&format!("{rest}{password}")),
            Err(vec![
                "m/a.yaml:6:5: backends.pg.tcp_check_password: is the password of \
                 `tcp_check: redis_primary`, which this backend does not use"
                    .to_string()
            ])
        );
    }
}
