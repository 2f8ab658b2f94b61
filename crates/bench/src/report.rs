//! The Markdown report printed at the end of a run (pasted into
//! BENCHMARKS.md as is).

use std::fmt::Write as _;
use std::process::Command;
use std::time::Duration;

use crate::inproc::InprocReport;
use crate::phases::{endpoints, per_minute, Plan, ToolReport};
use crate::share::{ShareReport, Steps};
use crate::stats::{ms, Summary};
use crate::tool::Kind;

/// Everything one run measured.
pub struct Run<'a> {
    /// The settings.
    pub plan: &'a Plan,
    /// Per tool.
    pub tools: &'a [ToolReport],
    /// Own share from the logs.
    pub share: Option<&'a ShareReport>,
    /// Own share cross-check.
    pub inproc: Option<&'a InprocReport>,
    /// Whether the two templates render byte-identical files.
    pub alike: &'a Result<(), String>,
    /// The command line.
    pub argv: String,
}

// Long on purpose: the report's text, section by section in the order it
// prints; each section is a few lines of formatting.
/// Renders the report.
pub fn markdown(run: &Run<'_>, env: &[(String, String)]) -> String {
    let mut o = String::new();
    let p = run.plan;
    let _ = writeln!(o, "### Run of {}\n", value(env, "date"));
    for (k, v) in env.iter().filter(|(k, _)| k != "date") {
        let _ = writeln!(o, "- {k}: {v}");
    }
    let _ = writeln!(o, "- command: `{}`", run.argv);
    let _ = writeln!(
        o,
        "- equivalent templates: {}\n",
        match run.alike {
            Ok(()) => "converge and consul-template render byte-identical files".to_string(),
            Err(e) => format!("NO — {e}"),
        }
    );

    let _ = writeln!(
        o,
        "#### 1. Health flip → routing changed (wait {}, {} flips, {} ms apart after each settles)\n",
        p.wait,
        p.flips,
        p.gap.as_millis()
    );
    let _ = writeln!(o, "| tool | flips seen | p50 | p90 | p99 | max | removal p50 | re-add p50 | missed | probe failures | probe request p50 | reloads per flip (tool / HAProxy) | runtime-API updates per flip |");
    let _ = writeln!(
        o,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for t in run.tools {
        let all = lat(t, |_| true);
        let rem = lat(t, |to_passing| !to_passing);
        let add = lat(t, |to_passing| to_passing);
        let fails: usize = t.flips.iter().map(|f| f.seen.failures).sum();
        let probe = Summary::of(&t.flips.iter().map(|f| f.seen.request).collect::<Vec<_>>());
        let tr: u64 = t.flips.iter().map(|f| f.tool_reloads).sum();
        let hr: usize = t.flips.iter().map(|f| f.haproxy_reloads).sum();
        let ru: u64 = t.flips.iter().map(|f| f.runtime_updates).sum();
        let n = t.flips.len().max(1) as f64;
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2} / {:.2} | {:.2} |",
            t.kind,
            t.flips.len(),
            opt(all, |s| s.p50),
            opt(all, |s| s.p90),
            opt(all, |s| s.p99),
            opt(all, |s| s.max),
            opt(rem, |s| s.p50),
            opt(add, |s| s.p50),
            t.missed.len(),
            fails,
            opt(probe, |s| s.p50),
            tr as f64 / n,
            hr as f64 / n,
            ru as f64 / n
        );
    }
    let with_steps: Vec<&ToolReport> = run.tools.iter().filter(|t| !t.steps.is_empty()).collect();
    if !with_steps.is_empty() {
        let _ = writeln!(o, "\nWhere converge's time went, per flip (from its log: `woken` = the source published the change, `committed` = the new file is in place):\n");
        let _ = writeln!(o, "| tool | flips matched | flip → woken p50 / p90 / p99 | woken → committed p50 / p90 / p99 | committed → routing seen p50 / p90 / p99 |");
        let _ = writeln!(o, "|---|---:|---:|---:|---:|");
        for t in with_steps {
            let col = |f: fn(&Steps) -> Duration| {
                Summary::of(&t.steps.iter().map(f).collect::<Vec<_>>())
                    .map(|s| format!("{} / {} / {}", ms(s.p50), ms(s.p90), ms(s.p99)))
                    .unwrap_or_default()
            };
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} |",
                t.kind,
                t.steps.len(),
                col(|s| s.source),
                col(|s| s.pass),
                col(|s| s.after)
            );
        }
    }
    if let Some(ct) = p50_of(run.tools, Kind::ConsulTemplate) {
        for kind in [Kind::Converge, Kind::ConvergeRuntimeApi] {
            if let Some(c) = p50_of(run.tools, kind) {
                let ratio = c.as_secs_f64() / ct.as_secs_f64();
                let _ = writeln!(
                    o,
                    "\n{kind} p50 / consul-template p50 = {ratio:.2} (goal ≤ 0.5: {}).",
                    if ratio <= 0.5 { "met" } else { "not met" }
                );
            }
        }
    }

    let _ = writeln!(
        o,
        "\n#### 2. Reloads per burst of check changes {} ms apart (even count: ends where it started, ideal 0; odd: ends flipped, ideal 1)\n",
        p.flap_period.as_millis()
    );
    let _ = writeln!(o, "| tool | wait | changes | reloads per burst, tool / HAProxy (+ runtime-API updates) | burst took | final state not served |");
    let _ = writeln!(o, "|---|---|---:|---|---:|---:|");
    for t in run.tools {
        for w in [p.wait, p.flap_wait] {
            for changes in [p.flaps, p.flaps.saturating_sub(1)] {
                let bursts: Vec<_> = t
                    .bursts
                    .iter()
                    .filter(|b| b.wait == w && b.changes == changes)
                    .collect();
                if bursts.is_empty() {
                    continue;
                }
                let counts = bursts
                    .iter()
                    .map(|b| {
                        if b.runtime_updates > 0 {
                            format!(
                                "{} / {} (+{})",
                                b.tool_reloads, b.haproxy_reloads, b.runtime_updates
                            )
                        } else {
                            format!("{} / {}", b.tool_reloads, b.haproxy_reloads)
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                let took = bursts.iter().map(|b| b.took).max().unwrap_or_default();
                let stuck = bursts.iter().filter(|b| b.stuck.is_some()).count();
                let _ = writeln!(
                    o,
                    "| {} | {} | {} | {} | {} | {} |",
                    t.kind,
                    w,
                    changes,
                    counts,
                    ms(took),
                    if stuck == 0 {
                        "—".to_string()
                    } else {
                        format!("**{stuck} of {}**", bursts.len())
                    }
                );
            }
        }
    }

    let _ = writeln!(o, "\n#### 3. CPU and memory of the tool process (own threads; children = validator and reload commands it waited for)\n");
    let _ = writeln!(o, "| tool | phase | wall | own CPU | own % of a core | children CPU | RSS at end | peak RSS |");
    let _ = writeln!(o, "|---|---|---:|---:|---:|---:|---:|---:|");
    for t in run.tools {
        for (phase, u) in [("idle", &t.idle), ("flips", &t.churn)] {
            let _ = writeln!(
                o,
                "| {} | {} | {:.1} s | {} | {:.3} % | {} | {:.1} MiB | {:.1} MiB |",
                t.kind,
                phase,
                u.wall.as_secs_f64(),
                ms(u.own),
                u.own_percent(),
                ms(u.children),
                u.rss_kib as f64 / 1024.0,
                u.hwm_kib as f64 / 1024.0
            );
        }
    }
    let _ = writeln!(o, "\nCPU comes from `/proc/PID/stat` in 10 ms ticks.");

    let _ = writeln!(o, "\n#### 5. Requests to Consul (counted by a TCP proxy in front of the agent, one per tool)\n");
    let _ = writeln!(o, "| tool | idle requests | idle per minute | during flips | per flip | connections opened (run 1) |");
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|");
    for t in run.tools {
        let _ = writeln!(
            o,
            "| {} | {} | {:.1} | {} | {:.1} | {} |",
            t.kind,
            t.idle_requests.len(),
            per_minute(&t.idle_requests, t.idle.wall),
            t.churn_requests.len(),
            t.churn_requests.len() as f64 / t.flips.len().max(1) as f64,
            t.connections
        );
    }
    for t in run.tools {
        let _ = writeln!(
            o,
            "\n- {} idle: {}\n- {} during flips: {}",
            t.kind,
            or_none(endpoints(&t.idle_requests)),
            t.kind,
            or_none(endpoints(&t.churn_requests))
        );
    }

    if let Some(s) = run.share {
        let _ = writeln!(
            o,
            "\n#### 4. converge's own share at {} instances ({} flips matched, {} unmatched; config {} KiB; from converge's logs)\n",
            s.backends,
            s.passes.len(),
            s.unmatched,
            s.config_bytes / 1024
        );
        let _ = writeln!(o, "| step | p50 | p90 | p99 | max |");
        let _ = writeln!(o, "|---|---:|---:|---:|---:|");
        let rows: [(&str, Column); 7] = [
            ("flip → source published (not converge's share)", |p| {
                p.source
            }),
            (
                "woken → validator spawned (load, guard, render, plan, stage, fork + exec)",
                |p| p.before_validator,
            ),
            (
                "validator: spawned → `haproxy -c` exited (excluded)",
                |p| p.validator,
            ),
            ("… of which the timing wrapper's start-up", |p| {
                p.wrapper_start
            }),
            (
                "validator exited → committed (reap, rename, fsync)",
                |p| p.after_validator,
            ),
            ("**own share** = woken → committed − validator", |p| {
                p.own
            }),
            (
                "committed → `reload` logged (signal + 200 ms settle; excluded)",
                |p| p.reload,
            ),
        ];
        for (name, f) in rows {
            if let Some(sum) = s.summary(f) {
                let _ = writeln!(
                    o,
                    "| {name} | {} | {} | {} | {} |",
                    ms(sum.p50),
                    ms(sum.p90),
                    ms(sum.p99),
                    ms(sum.max)
                );
            }
        }
        if let Some(d) = &s.durable_write {
            let _ = writeln!(
                o,
                "\nFor scale, one durable replace of a file that size on this disk (write, fsync, rename, fsync the directory) took p50 {} / p99 {} just before.",
                ms(d.p50),
                ms(d.p99)
            );
        }
        if let Some(own) = s.summary(|p| p.own) {
            let _ = writeln!(
                o,
                "\nOwn share p50 {} (goal < 5 ms: {}).",
                ms(own.p50),
                if own.p50 < Duration::from_millis(5) {
                    "met"
                } else {
                    "not met"
                }
            );
        }
    }
    if let Some(i) = run.inproc {
        let _ = writeln!(
            o,
            "\nIn-process cross-check at {} instances (library calls, no processes):\n",
            i.backends
        );
        let _ = writeln!(o, "| step | p50 | p99 | max |");
        let _ = writeln!(o, "|---|---:|---:|---:|");
        for (name, s) in [
            ("fingerprint manifests + templates", &i.load),
            ("render", &i.render),
            ("plan (with unified diff)", &i.plan),
            ("total", &i.total),
        ] {
            let _ = writeln!(
                o,
                "| {name} | {} | {} | {} |",
                ms(s.p50),
                ms(s.p99),
                ms(s.max)
            );
        }
    }

    let _ = writeln!(o, "\nLoad average at the end (1/5/15 min): {}.", loadavg());
    let idle_ok: Vec<String> = run
        .tools
        .iter()
        .map(|t| format!("{} {:.3} %", t.kind, t.idle.own_percent()))
        .collect();
    let _ = writeln!(
        o,
        "\nIdle CPU (own, % of one core): {}.",
        idle_ok.join(", ")
    );

    for t in run.tools {
        for b in t.bursts.iter().filter_map(|b| b.stuck.as_ref()) {
            let _ = writeln!(o, "\n{} — {}", t.kind, b.replace('\n', "\n    "));
        }
    }
    for t in run.tools {
        if !t.missed.is_empty() || !t.complaints.is_empty() {
            let _ = writeln!(
                o,
                "\n{}: {} missed flips, {} warning/error log lines. First ones:\n",
                t.kind,
                t.missed.len(),
                t.complaints.len()
            );
            for line in t.missed.iter().chain(t.complaints.iter()).take(8) {
                let _ = writeln!(o, "    {}", line.chars().take(300).collect::<String>());
            }
        }
    }
    o
}

/// Every timed flip, one CSV line each.
pub fn flips_csv(tools: &[ToolReport]) -> String {
    let mut o = String::from("tool,flip,to_passing,latency_ms,probe_failures,probe_request_ms,tool_reloads,haproxy_reloads,runtime_updates\n");
    for t in tools {
        for (i, f) in t.flips.iter().enumerate() {
            let _ = writeln!(
                o,
                "{},{i},{},{:.3},{},{:.3},{},{},{}",
                t.kind,
                f.to_passing,
                f.seen.latency.as_secs_f64() * 1000.0,
                f.seen.failures,
                f.seen.request.as_secs_f64() * 1000.0,
                f.tool_reloads,
                f.haproxy_reloads,
                f.runtime_updates
            );
        }
    }
    o
}

/// `/proc/loadavg`'s first three fields: other work on the machine.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" / "))
        .unwrap_or_default()
}

/// One column of the own-share breakdown.
type Column = fn(&crate::share::Pass) -> Duration;

fn lat(t: &ToolReport, keep: impl Fn(bool) -> bool) -> Option<Summary> {
    let v: Vec<Duration> = t
        .flips
        .iter()
        .filter(|f| keep(f.to_passing))
        .map(|f| f.seen.latency)
        .collect();
    Summary::of(&v)
}

fn p50_of(tools: &[ToolReport], kind: Kind) -> Option<Duration> {
    tools
        .iter()
        .find(|t| t.kind == kind)
        .and_then(|t| lat(t, |_| true))
        .map(|s| s.p50)
}

fn opt(s: Option<Summary>, f: impl Fn(&Summary) -> Duration) -> String {
    s.map(|s| ms(f(&s))).unwrap_or_else(|| "—".into())
}

fn or_none(s: String) -> String {
    if s.is_empty() {
        "none".into()
    } else {
        s
    }
}

fn value(env: &[(String, String)], key: &str) -> String {
    env.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// Date, machine and versions, for the report header.
pub fn environment(
    converge: &std::path::Path,
    consul_template: &std::path::Path,
) -> Vec<(String, String)> {
    let run = |cmd: &mut Command| {
        cmd.output()
            .ok()
            .map(|o| {
                let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
                s.push_str(&String::from_utf8_lossy(&o.stderr));
                s.lines().next().unwrap_or("").trim().to_string()
            })
            .unwrap_or_else(|| "?".into())
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| "?".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let consul = converge_testkit::consul::consul_binary()
        .map(|b| run(Command::new(b).arg("version")))
        .unwrap_or_else(|e| e);
    vec![
        (
            "date".into(),
            run(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])),
        ),
        (
            "machine".into(),
            format!("{cores} cores ({cpu}), Linux {kernel}"),
        ),
        (
            "converge".into(),
            format!(
                "{} at {}",
                run(Command::new(converge).arg("--version")),
                run(Command::new("git")
                    .arg("-C")
                    .arg(crate::stack::repo())
                    .args(["describe", "--always", "--dirty"]))
            ),
        ),
        (
            "consul-template".into(),
            run(Command::new(consul_template).arg("-v")),
        ),
        ("consul".into(), consul),
        ("haproxy".into(), run(Command::new("haproxy").arg("-v"))),
        ("load average at start (1/5/15 min)".into(), loadavg()),
    ]
}
