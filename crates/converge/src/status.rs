//! `converge status`: the on-call engineer's screen.

use std::time::{Duration, UNIX_EPOCH};

use converge_agent::status::{gather, NodeReport, Section};
use converge_model::Layout;

use crate::cli::{Cli, Format, StatusArgs};
use crate::exit;
use crate::output::{out, outln};

/// Prints the report; exits 0 even when a section could not be gathered
/// (the report says so), 1 when the manifests cannot be read.
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
    Ok(exit::OK)
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
    daemon_text(r, &mut out);
    targets_text(r, &mut out);
    haproxy_text(r, &mut out);
    pgbouncer_text(r, &mut out);
    keepalived_text(r, &mut out);
    out
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
                "daemon: {state}; source {}{}; last success {}\n",
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
            for h in &s.holds {
                *out += &format!(
                    "  HELD {}: {} (to accept: curl -X POST http://DAEMON/release/{})\n",
                    h.backend, h.reason, h.backend
                );
            }
            for f in &s.findings {
                *out += &format!("  {f}\n");
            }
        }
        Section::Error(e) => *out += &format!("daemon: {e}\n"),
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
        Section::Error(e) => *out += &format!("{e}\n"),
    }
}

/// PgBouncer's databases and settings awaiting a restart.
fn pgbouncer_text(r: &NodeReport, out: &mut String) {
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
        Section::Error(e) => *out += &format!("{e}\n"),
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
    }
}

/// Each VRRP instance and whether this node holds its VIP.
fn keepalived_text(r: &NodeReport, out: &mut String) {
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
        Section::Error(e) => *out += &format!("{e}\n"),
    }
}
