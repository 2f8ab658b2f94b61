//! Publish → every node reports converged, for a fleet on one machine:
//! one Consul server agent, N `converge run --published` daemons (each
//! with its own `--root` and node name), each behind its own Consul client
//! agent (`--agents per-node`) or all on the server agent (`--agents
//! shared`, for many daemons on two cores). The nodes render one plain
//! file (no program reloaded). Then the fleet idles, and each daemon's
//! `converge_fleet_consul_requests` says how many requests its follower
//! and report writer sent.
//!
//! ```sh
//! cargo build --release -p converge
//! cargo run --release -p converge-bench --example fleet -- --nodes 3 --rounds 20
//! cargo run --release -p converge-bench --example fleet -- --nodes 20 --agents shared --rounds 10
//! ```
//!
//! Latency is from `converge publish` exiting (the desired revision has
//! moved) to the node's report in KV naming the new revision converged,
//! seen by reading `<prefix>/nodes/` on the server every 10 ms (the
//! resolution). Every process started is stopped by its pid.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::Engine;
use clap::Parser;
use converge_testkit::consul::{ConsulAgent, ConsulFleet};
use converge_testkit::{free_port, http, wait, Child};

#[derive(Debug, Parser)]
struct Args {
    /// Nodes (daemons).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// `per-node`: a Consul client agent per node; `shared`: every daemon
    /// on the server agent.
    #[arg(long, default_value = "per-node")]
    agents: String,
    /// Publications timed.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Idle window for the request count.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    idle: Duration,
    /// n1 and n2 share a VRRP instance (n1 the MASTER): they take a
    /// revision one after the other, n2 first.
    #[arg(long)]
    pair: bool,
    /// n2 is a canary; the others wait for its soak.
    #[arg(long)]
    canary: bool,
    /// `rollout.settle`: how long each node's gate holds its locks.
    #[arg(long, default_value = "0s")]
    settle: String,
    /// `rollout.soak` (with `--canary`).
    #[arg(long, default_value = "5s")]
    soak: String,
    /// The converge binary.
    #[arg(long, default_value = "target/release/converge")]
    converge: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let names: Vec<String> = (1..=args.nodes).map(|i| format!("n{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let consul = if args.agents == "shared" {
        ConsulFleet {
            server: ConsulAgent::start().map_err(anyhow::Error::msg)?,
            clients: Vec::new(),
        }
    } else {
        ConsulFleet::start(&refs).map_err(anyhow::Error::msg)?
    };
    let server = &consul.server;
    server
        .register_service("web-1", "web", 8081)
        .map_err(anyhow::Error::msg)?;
    let repo = tempfile::tempdir()?;
    let publish = |round: usize| -> anyhow::Result<String> {
        write_repo(repo.path(), &names, round, &rollout(&args))?;
        let out = converge(&args.converge, repo.path())
            .args([
                "publish",
                "--format",
                "json",
                "--consul",
                &server.http_url(),
            ])
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "publish: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        Ok(doc["revision"].as_str().context("revision")?.to_string())
    };
    let first = publish(0)?;

    let mut daemons = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let agent = consul.clients.get(i).unwrap_or(server);
        daemons.push(start(&args.converge, repo.path(), name, agent)?);
    }
    converged(server, &names, &first, Duration::from_secs(120))?;

    let mut per_node = Vec::new();
    let mut all = Vec::new();
    for round in 1..=args.rounds {
        let revision = publish(round)?;
        let start = Instant::now();
        let times = converged(server, &names, &revision, Duration::from_secs(120))?;
        per_node.extend(times.iter().map(|t| t.duration_since(start)));
        all.push(
            times
                .iter()
                .max()
                .map_or(Duration::ZERO, |t| t.duration_since(start)),
        );
    }
    let before: Vec<f64> = daemons
        .iter()
        .map(|d| metric(d.1, "converge_fleet_consul_requests"))
        .collect();
    std::thread::sleep(args.idle);
    let after: Vec<f64> = daemons
        .iter()
        .map(|d| metric(d.1, "converge_fleet_consul_requests"))
        .collect();
    let per_min: Vec<f64> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| (a - b) * 60.0 / args.idle.as_secs_f64())
        .collect();

    println!(
        "nodes {} ({} agents), {} publications",
        args.nodes, args.agents, args.rounds
    );
    println!(
        "per node: p50 {} max {}",
        ms(p50(&mut per_node)),
        ms(per_node.iter().max().copied())
    );
    println!(
        "whole fleet: p50 {} max {}",
        ms(p50(&mut all)),
        ms(all.iter().max().copied())
    );
    println!(
        "idle requests/min per node over {:?}: {per_min:?}",
        args.idle
    );
    let longest = daemons
        .iter()
        .filter_map(|d| longest_lock_hold(&d.2.path().join("daemon.log")))
        .max();
    println!("longest rollout lock hold: {longest:?} ms");
    for (mut child, _, _) in daemons {
        child.stop();
    }
    Ok(())
}

/// The `rollout:` section and VRRP instance the flags ask for.
fn rollout(args: &Args) -> String {
    let mut s = format!("rollout:\n  settle: {}\n", args.settle);
    if args.canary {
        s.push_str(&format!("  canary: [n2]\n  soak: {}\n", args.soak));
    }
    if args.pair {
        s.push_str(
            "vips:\n  front:\n    virtual_router_id: 51\n    interface: eth0\n    \
             addresses: [10.0.0.10/24]\n    priorities: {n1: 150, n2: 100}\n",
        );
    }
    s
}

/// The longest `held_ms` a daemon's log shows (`released the rollout locks`).
fn longest_lock_hold(log: &Path) -> Option<u64> {
    std::fs::read_to_string(log)
        .ok()?
        .lines()
        .filter_map(|l| l.split("held_ms=").nth(1)?.split(' ').next()?.parse().ok())
        .max()
}

/// The manifests (`nodes`, one file target, `extra` sections) and template
/// of round `round`.
fn write_repo(dir: &Path, nodes: &[String], round: usize, extra: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join("manifests"))?;
    std::fs::create_dir_all(dir.join("templates"))?;
    let mut site = String::from("nodes:\n");
    for n in nodes {
        site.push_str(&format!("  {n}: {{}}\n"));
    }
    site.push_str(
        "backends:\n  web:\n    service: web\ntargets:\n  app:\n    template: app.tera\n    \
         destination: /etc/app/app.conf\n    validate: none\n    reload: none\n",
    );
    site.push_str(extra);
    std::fs::write(dir.join("manifests/site.yaml"), site)?;
    std::fs::write(
        dir.join("templates/app.tera"),
        format!("{{{{ node.name }}}} {round}\n"),
    )?;
    Ok(())
}

fn converge(bin: &Path, repo: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("--manifests")
        .arg(repo.join("manifests"))
        .arg("--templates")
        .arg(repo.join("templates"))
        .env_remove("CONSUL_HTTP_ADDR")
        .env_remove("CONSUL_HTTP_TOKEN");
    cmd
}

/// A daemon of node `name` on `agent`: the child, its listener port and
/// its root.
fn start(
    bin: &Path,
    repo: &Path,
    name: &str,
    agent: &ConsulAgent,
) -> anyhow::Result<(Child, u16, tempfile::TempDir)> {
    let root = tempfile::tempdir()?;
    let listen = free_port();
    let mut cmd = converge(bin, repo);
    cmd.args([
        "run",
        "--published",
        "--node",
        name,
        "--consul",
        &agent.http_url(),
    ])
    .arg("--root")
    .arg(root.path())
    .args(["--listen", &format!("127.0.0.1:{listen}")])
    .env("RUST_LOG", "info")
    .stdout(std::process::Stdio::null())
    .stderr(std::fs::File::create(root.path().join("daemon.log"))?);
    let child = Child::spawn(format!("converge run {name}"), &mut cmd)?;
    wait::until(Duration::from_secs(30), "the status listener", || {
        http::get(listen, "/health").is_some()
    })
    .map_err(anyhow::Error::msg)?;
    Ok((child, listen, root))
}

/// When each of `nodes` first reported `revision` converged.
fn converged(
    server: &ConsulAgent,
    nodes: &[String],
    revision: &str,
    deadline: Duration,
) -> anyhow::Result<Vec<Instant>> {
    let mut seen: Vec<Option<Instant>> = vec![None; nodes.len()];
    let until = Instant::now() + deadline;
    while seen.iter().any(Option::is_none) {
        anyhow::ensure!(
            Instant::now() < until,
            "not every node converged on {revision}"
        );
        let (_, body) = server
            .get("/v1/kv/converge/nodes/?recurse")
            .map_err(anyhow::Error::msg)?;
        let entries: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        for e in entries.as_array().into_iter().flatten() {
            let value = base64::engine::general_purpose::STANDARD
                .decode(e["Value"].as_str().unwrap_or_default())
                .unwrap_or_default();
            let report: serde_json::Value = serde_json::from_slice(&value).unwrap_or_default();
            let ok = report["converged"] == true && report["revision"] == revision;
            if let Some(i) = nodes.iter().position(|n| report["node"] == n.as_str()) {
                if ok && seen[i].is_none() {
                    seen[i] = Some(Instant::now());
                }
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(seen.into_iter().flatten().collect())
}

fn metric(port: u16, name: &str) -> f64 {
    http::get(port, "/metrics")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == name).then(|| v.trim().parse().ok()).flatten()
        })
        .unwrap_or(f64::NAN)
}

fn p50(v: &mut [Duration]) -> Option<Duration> {
    v.sort();
    v.get(v.len() / 2).copied()
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| {
        format!("{:.0} ms", d.as_secs_f64() * 1000.0)
    })
}
