//! The scale benchmark's Markdown report: one row per tool and mode.

use std::fmt::Write;

use super::dc::{Datacenter, Row};
use super::ScaleArgs;
use crate::stats::ms;

/// The report of one run.
pub fn markdown(args: &ScaleArgs, dc: &Datacenter, rows: &[Row]) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "Datacenter: {} services × {} instances ({} external nodes, one passing check each), \
         registered in {:.1} s; W = {} watched; {} watched and {} unwatched flips {:?} apart; \
         idle window {:?}.\n",
        args.services,
        args.instances,
        args.services * args.instances,
        dc.registered_in.as_secs_f64(),
        args.watched,
        args.flips,
        args.unwatched_flips,
        args.gap,
        args.idle,
    );
    let _ = writeln!(
        o,
        "| tool | start-up | flip → seen p50 / p90 / max | bytes / watched flip | \
         unwatched flip: bytes / requests / tool CPU / agent CPU | idle: requests / bytes per min | \
         peak connections | RSS |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let startup = r
            .startup
            .map_or("—".to_string(), |d| format!("{:.1} s", d.as_secs_f64()));
        let flips = r.flips.map_or("—".to_string(), |s| {
            format!("{} / {} / {}", ms(s.p50), ms(s.p90), ms(s.max))
        });
        let opt = |v: Option<f64>| v.map_or("n/a (TLS)".to_string(), |v| format!("{v:.1}"));
        let measured = r.flips.is_some();
        let dash = |s: String| if measured { s } else { "—".into() };
        let _ = writeln!(
            o,
            "| {} | {startup} | {flips} | {} | {} | {} | {} | {:.0} MiB |{}",
            r.label,
            dash(kb(r.watched_bytes)),
            dash(format!(
                "{} / {} / {} / {}",
                kb(r.unwatched_bytes),
                opt(r.unwatched_requests),
                ms(r.unwatched_cpu),
                ms(r.agent_cpu)
            )),
            dash(format!("{} / {}", opt(r.idle_requests), kb(r.idle_bytes))),
            r.peak_connections,
            r.memory.0 as f64 / 1024.0,
            match (&r.without_validator, r.note.is_empty()) {
                (Some(s), _) => format!(
                    " without `haproxy -c`'s own run: {} / {} / {}{}",
                    ms(s.p50),
                    ms(s.p90),
                    ms(s.max),
                    r.note
                ),
                (None, true) => String::new(),
                (None, false) => format!(" {}", r.note),
            }
        );
    }
    o
}

fn kb(bytes: u64) -> String {
    if bytes >= 1_000_000 {
        format!("{:.1} MB", bytes as f64 / 1e6)
    } else {
        format!("{:.1} kB", bytes as f64 / 1e3)
    }
}
