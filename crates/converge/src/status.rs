//! `converge status`: the on-call engineer's screen.

use std::time::{Duration, UNIX_EPOCH};

use converge_agent::daemon::pauses::{PauseState, PauseStatus};
use converge_agent::status::{gather, NodeReport, RouteSource, Section};
use converge_model::Layout;

use crate::cli::{Cli, Format, StatusArgs};
use crate::exit;
use crate::output::{out, outln};

/// Prints the report. Exits 0 when the node serves what it should, 3 when
/// the report shows something wrong (a hold, a failed apply, a routed
/// primary that is not Consul's or is down, a backend with every server
/// down, a degraded source), 1 when nothing is wrong but something could
/// not be checked (the daemon or a program of this node did not answer)
/// or the manifests cannot be read.
pub fn run(cli: &Cli, args: &StatusArgs) -> anyhow::Result<u8> {
    let node = cli.node()?;
    let (manifests, _) = cli.inputs().load_config()?;
    let layout = Layout::new(&cli.root);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(gather(&manifests, &node, &layout, &args.daemon))?;
    match args.format {
        Format::Json => outln!("{}", serde_json::to_string_pretty(&report)?),
        Format::Text => out!("{}", text(&report)),
    }
    Ok(if !report.verdict.degraded.is_empty() {
        exit::INCOMPLETE
    } else if !report.verdict.unknown.is_empty() {
        exit::ERROR
    } else {
        exit::OK
    })
}

fn when(secs: Option<u64>) -> String {
    secs.map(|s| humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(s)).to_string())
        .unwrap_or_else(|| "-".into())
}

/// A setting's value, `(empty)` when it is the empty string.
fn shown(value: &str) -> &str {
    if value.is_empty() {
        "(empty)"
    } else {
        value
    }
}

/// The one-screen text: each section on its own, in the order an
/// operator reads them.
fn text(r: &NodeReport) -> String {
    let mut out = format!("node {}\n", r.node);
    verdict_text(r, &mut out);
    daemon_text(r, &mut out);
    targets_text(r, &mut out);
    primaries_text(r, &mut out);
    haproxy_text(r, &mut out);
    traffic_text(r, &mut out);
    pgbouncer_text(r, &mut out);
    keepalived_text(r, &mut out);
    out
}

/// The one line a monitoring check reads, and its reasons.
fn verdict_text(r: &NodeReport, out: &mut String) {
    let v = &r.verdict;
    *out += if !v.degraded.is_empty() {
        "NOT SERVING WHAT IT SHOULD\n"
    } else if !v.unknown.is_empty() {
        "UNKNOWN: some of the node could not be checked\n"
    } else {
        "serving what it should\n"
    };
    for d in &v.degraded {
        *out += &format!("  ! {d}\n");
    }
    for u in &v.unknown {
        *out += &format!("  ? {u}\n");
    }
}

/// Who is primary: per database, Consul's primary and PgBouncer's route.
fn primaries_text(r: &NodeReport, out: &mut String) {
    if let Section::Absent(_) = r.primaries {
        return;
    }
    *out += "\nPRIMARY DATABASE     CONSUL PRIMARY                           ROUTED TO\n";
    match &r.primaries {
        Section::Ok(checks) if checks.is_empty() => *out += "(no database follows a primary)\n",
        Section::Ok(checks) => {
            for c in checks {
                let consul = match (&c.consul_primary, c.claims.len()) {
                    (Some(p), _) => format!("{} {}", p.name, p.endpoint()),
                    (None, 0) => "(none)".to_string(),
                    (None, n) => format!("({n} claim it)"),
                };
                let routed = match (&c.routed, c.routed_health) {
                    (None, _) => "(none)".to_string(),
                    (Some(r), Some(h)) => format!("{r} ({})", health(h)),
                    (Some(r), None) => format!("{r} (not in the catalog)"),
                };
                let source = match c.route_source {
                    RouteSource::Pgbouncer => "",
                    RouteSource::Rendered => " [rendered; PgBouncer not asked]",
                };
                *out += &format!("{:<20} {:<40} {routed}{source}\n", c.database, consul);
                for p in &c.problems {
                    *out += &format!("  {p}\n");
                }
            }
        }
        Section::Error(e) | Section::Absent(e) => *out += &format!("{e}\n"),
    }
}

fn health(h: converge_model::Health) -> &'static str {
    match h {
        converge_model::Health::Passing => "passing",
        converge_model::Health::Warning => "warning",
        converge_model::Health::Critical => "critical",
    }
}

/// Where traffic goes: each frontend's routes to backends.
fn traffic_text(r: &NodeReport, out: &mut String) {
    let Section::Ok(frontends) = &r.traffic else {
        return;
    };
    *out += "\nTRAFFIC FRONTEND     ROUTE                          BACKEND\n";
    for f in frontends {
        for (i, route) in f.routes.iter().enumerate() {
            let condition = match (&route.host, &route.path_prefix) {
                (None, None) if i + 1 == f.routes.len() => "(default)".to_string(),
                (None, None) => "(any)".to_string(),
                (h, p) => format!(
                    "{}{}",
                    h.as_deref()
                        .map(|h| format!("host {h} "))
                        .unwrap_or_default(),
                    p.as_deref()
                        .map(|p| format!("path {p}*"))
                        .unwrap_or_default()
                ),
            };
            let name = if i == 0 {
                format!("{} {}", f.frontend, f.bind.join(","))
            } else {
                String::new()
            };
            *out += &format!(
                "{name:<20} {:<30} → {}\n",
                condition.trim_end(),
                route.backend
            );
        }
    }
}

/// The daemon's verdict, holds and findings.
fn daemon_text(r: &NodeReport, out: &mut String) {
    match &r.daemon {
        Section::Ok(s) => {
            let state = if s.converged {
                "converged"
            } else {
                "NOT converged"
            };
            *out += &format!(
                "daemon: {state}; revision {}; source {}{}; last success {}\n",
                s.revision.as_ref().map_or("unknown", |r| r.as_str()),
                s.source,
                s.source_error
                    .as_ref()
                    .map(|e| format!(" DEGRADED ({e})"))
                    .unwrap_or_default(),
                when(s.last_success)
            );
            if let Some(e) = &s.input_error {
                *out += &format!("  input error (previous desired state in force): {e}\n");
            }
            if let Some(p) = &s.published {
                let desired = p.desired.as_ref().map_or("not read yet", |r| r.as_str());
                *out += &format!(
                    "  published: desired {desired}, running {}\n",
                    s.revision.as_ref().map_or("none", |r| r.as_str())
                );
                if let Some(e) = &p.error {
                    *out += &format!("  NOT following (last good revision in force): {e}\n");
                }
            }
            for h in &s.holds {
                *out += &format!(
                    "  HELD {}: {} (to accept: curl -X POST http://DAEMON/release/{})\n",
                    h.backend, h.reason, h.backend
                );
            }
            for (db, p) in &s.pauses {
                *out += &pause_line(db, p);
            }
            for f in &s.findings {
                *out += &format!("  {f}\n");
            }
        }
        Section::Error(e) | Section::Absent(e) => *out += &format!("daemon: {e}\n"),
    }
}

/// One PgBouncer database paused for an unclear primary, or given up on.
fn pause_line(db: &str, p: &PauseStatus) -> String {
    let (since, limit) = (when(Some(p.since)), p.limit_secs);
    match p.state {
        PauseState::Paused => format!(
            "  PAUSED {db} since {since}: {}; resumed when the primary resolves, at the latest \
             after {limit}s\n",
            p.reason
        ),
        PauseState::TimedOut => format!(
            "  PAUSE TIMED OUT {db} (paused {since}, limit {limit}s): resumed at its last \
             primary while {}\n",
            p.reason
        ),
        PauseState::Failed => format!(
            "  PAUSE FAILED {db} at {since}: not paused while {} (see the daemon's log)\n",
            p.reason
        ),
    }
}

/// Each target's hash, last apply and error.
fn targets_text(r: &NodeReport, out: &mut String) {
    *out += "\nTARGET               SHA256        LAST APPLY                 ERROR\n";
    for t in &r.targets {
        let sha = t.sha256.as_deref().map(|h| &h[..12]).unwrap_or("(missing)");
        *out += &format!(
            "{:<20} {:<13} {:<26} {}\n",
            t.target,
            sha,
            when(t.last_apply.or(t.modified)),
            t.last_error.as_deref().unwrap_or("-")
        );
    }
}

/// HAProxy's live servers.
fn haproxy_text(r: &NodeReport, out: &mut String) {
    if let Section::Absent(why) = &r.haproxy {
        *out += &format!("\nHAPROXY: {why}\n");
        return;
    }
    *out += "\nHAPROXY BACKEND      SERVER               ADDRESS                STATE\n";
    match &r.haproxy {
        Section::Ok(servers) if servers.is_empty() => *out += "(no servers)\n",
        Section::Ok(servers) => {
            for s in servers {
                *out += &format!(
                    "{:<20} {:<20} {:<22} {}\n",
                    s.backend, s.name, s.endpoint, s.state
                );
            }
        }
        Section::Error(e) | Section::Absent(e) => *out += &format!("{e}\n"),
    }
}

/// PgBouncer's databases and settings awaiting a restart.
fn pgbouncer_text(r: &NodeReport, out: &mut String) {
    if let Section::Absent(why) = &r.pgbouncer {
        *out += &format!("\nPGBOUNCER: {why}\n");
        return;
    }
    *out += "\nPGBOUNCER DATABASE   HOST:PORT                      DATABASE\n";
    match &r.pgbouncer {
        Section::Ok(dbs) => {
            for d in dbs {
                *out += &format!(
                    "{:<20} {:<30} {}{}\n",
                    d.name,
                    format!("{}:{}", d.host, d.port),
                    d.database,
                    if d.paused { " (PAUSED)" } else { "" }
                );
            }
        }
        Section::Error(e) | Section::Absent(e) => *out += &format!("{e}\n"),
    }
    match &r.pgbouncer_restart {
        Section::Ok(pending) => {
            for p in pending {
                *out += &format!(
                    "needs restart: {} {} → {}{}\n",
                    p.key,
                    shown(&p.running),
                    shown(&p.file),
                    if p.default { " (default)" } else { "" }
                );
            }
        }
        Section::Error(e) => *out += &format!("restart-only settings not compared: {e}\n"),
        Section::Absent(_) => {}
    }
}

/// Each VRRP instance and whether this node holds its VIP.
fn keepalived_text(r: &NodeReport, out: &mut String) {
    if let Section::Absent(why) = &r.keepalived {
        *out += &format!("\nKEEPALIVED: {why}\n");
        return;
    }
    *out += "\nKEEPALIVED VIP       STATE    HOLDS VIP  INTERFACE  ADDRESSES\n";
    match &r.keepalived {
        Section::Ok(vips) => {
            for v in vips {
                let running = match v.keepalived_pid {
                    Some(pid) => format!("keepalived pid {pid}"),
                    None => "keepalived NOT running".into(),
                };
                let holds = if v.holds_vip {
                    "yes".to_string()
                } else if v.held.is_empty() {
                    "no".to_string()
                } else {
                    format!("partial: {}", v.held.join(", "))
                };
                *out += &format!(
                    "{:<20} {:<8} {:<10} {:<10} {} ({running})\n",
                    v.name,
                    v.state.as_str(),
                    holds,
                    v.interface,
                    v.addresses.join(", ")
                );
                if let Some(note) = &v.state_note {
                    *out += &format!("  state unknown: {note}\n");
                }
                if let Some(warning) = &v.warning {
                    *out += &format!("  WARNING: {warning}\n");
                }
            }
        }
        Section::Error(e) | Section::Absent(e) => *out += &format!("{e}\n"),
    }
}
