//! Render budget check: a synthetic catalog of 500 services × 20 instances
//! through the shipped HAProxy template, one instance changing health each
//! round as in a health flip.
//!
//! ```sh
//! cargo run --release -p converge-render --example render_bench [SERVICES] [INSTANCES] [ROUNDS]
//! ```
//!
//! Prints the median, 90th percentile and worst render time over the
//! rounds, the rendered size, and the process's peak resident memory (VmHWM). Budget (DESIGN.md):
//! under 100 ms and under 64 MiB.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use converge_model::{Catalog, Health, Instance, Layout, Manifests};
use converge_render::{render, Templates};

fn arg(n: usize, default: usize) -> usize {
    std::env::args()
        .nth(n)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let services = arg(1, 500);
    let per = arg(2, 20);
    let rounds = arg(3, 20);

    let mut yaml = String::from("nodes:\n  lb1: {}\nfrontends:\n  http_in:\n    bind: [\":80\"]\n    default_backend: svc-0\nbackends:\n");
    for s in 0..services {
        let _ = writeln!(
            yaml,
            "  svc-{s}:\n    service: svc-{s}\n    health_check: {{path: /up}}"
        );
    }
    yaml.push_str("targets:\n  haproxy:\n    template: haproxy.cfg.tera\n    destination: /etc/haproxy/haproxy.cfg\n    validate: haproxy\n");
    let manifests =
        Manifests::from_sources(Path::new("bench"), &[(PathBuf::from("bench.yaml"), yaml)])
            .expect("synthetic manifests");
    manifests.validate().expect("synthetic manifests validate");
    let desired = manifests.for_node("lb1").expect("node");

    let mut catalog: BTreeMap<String, Vec<Instance>> = BTreeMap::new();
    for s in 0..services {
        let instances = (0..per)
            .map(|i| Instance {
                id: format!("svc-{s}-{i}"),
                node: format!("node-{i}"),
                address: format!("10.{}.{}.{}", s / 250, s % 250, i + 1),
                port: 8080,
                tags: Default::default(),
                meta: Default::default(),
                health: if i % 10 == 9 {
                    Health::Critical
                } else {
                    Health::Passing
                },
            })
            .collect();
        catalog.insert(format!("svc-{s}"), instances);
    }
    let templates = Templates::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../templates"))
        .expect("templates");
    let layout = Layout::new("/");

    let mut times = Vec::with_capacity(rounds);
    let mut size = 0;
    for round in 0..rounds {
        let mut flipped = catalog.clone();
        if let Some(i) = flipped
            .values_mut()
            .flatten()
            .nth(round % (services * per).max(1))
        {
            i.health = match i.health {
                Health::Passing => Health::Critical,
                _ => Health::Passing,
            };
        }
        let catalog = Catalog::fresh(round as u64 + 1, flipped);
        let t = Instant::now();
        let set = render(&desired, &catalog, &templates, &layout).expect("render");
        times.push(t.elapsed());
        size = set.files["haproxy"].bytes.len();
    }
    times.sort();
    let hwm = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string())
        })
        .and_then(|kb| kb.parse::<u64>().ok())
        .unwrap_or(0);
    println!(
        "render {services} services x {per} instances: median {:.2} ms, p90 {:.2} ms, max {:.2} ms over {rounds} rounds; {} KiB rendered; peak RSS {:.1} MiB",
        times[rounds / 2].as_secs_f64() * 1e3,
        times[rounds * 9 / 10].as_secs_f64() * 1e3,
        times[rounds - 1].as_secs_f64() * 1e3,
        size / 1024,
        hwm as f64 / 1024.0
    );
}
