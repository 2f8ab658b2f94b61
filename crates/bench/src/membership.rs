//! `converge-bench membership`: flip → routed at many HAProxy backends,
//! through a reload, through runtime-API slots, and through dynamic
//! servers (an instance beyond a backend's slots).
//!
//! One real HAProxy in master-worker mode serves W backends (`be-0` ..),
//! each fed by its own catalog service with one instance on a loopback
//! HTTP backend `b1`, each reached through a path route (`/be-K/`) of one
//! frontend. A flip gives one backend a second instance on `b2`, or takes
//! it away again. It is made the way the daemon makes it, in this process:
//! the reconcile pass (`converge_agent::pass::run`: guard and render of
//! the shipped template) and `converge_apply::apply` (validate with
//! `haproxy -c`, commit, reload or runtime API) on the new catalog
//! snapshot, on another thread, while this one probes HAProxy with real
//! requests (see [`probe`]) from the moment the pass starts.
//! So "flip → routed" here is what converge and HAProxy add once converge
//! holds the new snapshot; what a source takes to see a flip is measured
//! by the main benchmark.
//!
//! The three modes differ only in the backends' `runtime_api`:
//! - `reload`: none; every flip reloads HAProxy;
//! - `slots`: `{slots: 2}`; the second instance takes a free slot;
//! - `dynamic`: `{slots: 1}`; the second instance is beyond the slots and
//!   joins and leaves as a dynamic server (`add server` / `del server`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use converge_agent::pass;
use converge_agent::{Inputs, Prepared};
use converge_apply::{ApplyOptions, Outcome};
use converge_model::{Catalog, Health, Instance, Layout};
use converge_testkit::backend::HttpBackend;
use converge_testkit::{free_port, wait, Haproxy};

use crate::probe;
use crate::stack::{repo, DEADLINE};
use crate::stats::{ms, Summary};

/// Flip → routed at many HAProxy backends, with a reload, with runtime-API
/// slots and with dynamic servers. Everything runs on loopback; every
/// process started is stopped by its pid.
#[derive(Debug, Parser)]
#[command(name = "converge-bench membership", verbatim_doc_comment)]
pub struct Args {
    /// HAProxy backends (W), each fed by its own catalog service.
    #[arg(long, default_value_t = 500)]
    backends: usize,
    /// Timed flips per mode (half add an instance, half remove it).
    #[arg(long, default_value_t = 40)]
    flips: usize,
    /// Only these modes (repeatable): reload, slots, dynamic [default: all].
    #[arg(long = "mode", value_parser = parse_mode)]
    modes: Vec<Mode>,
}

/// How a backend's membership changes reach HAProxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Reload,
    Slots,
    Dynamic,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Reload, Mode::Slots, Mode::Dynamic];

    fn name(self) -> &'static str {
        match self {
            Mode::Reload => "reload",
            Mode::Slots => "slots",
            Mode::Dynamic => "dynamic",
        }
    }

    /// The backend's manifest lines.
    fn opt_in(self) -> &'static str {
        match self {
            Mode::Reload => "",
            Mode::Slots => "    runtime_api: {slots: 2}\n",
            Mode::Dynamic => "    runtime_api: {slots: 1}\n",
        }
    }
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    Mode::ALL
        .into_iter()
        .find(|m| m.name() == s)
        .ok_or_else(|| "reload, slots or dynamic".into())
}

/// `converge-bench membership ARGS...`: prints the report, returns the
/// exit code.
pub fn main(args: &[String]) -> i32 {
    let args = Args::parse_from(std::iter::once("membership".to_string()).chain(args.to_vec()));
    match run(&args) {
        Ok(report) => {
            print!("{report}");
            0
        }
        Err(e) => {
            eprintln!("converge-bench membership: {e:#}");
            1
        }
    }
}

/// One mode's results.
struct Row {
    mode: Mode,
    routed: Summary,
    /// Of `routed`: the flips that add an instance, and those that remove it.
    added: Summary,
    removed: Summary,
    /// The pass (guard and render) of each flip.
    render: Summary,
    applied: Summary,
    reloads: usize,
    runtime: usize,
    failures: usize,
}

fn run(args: &Args) -> anyhow::Result<String> {
    let b1 = HttpBackend::start("b1").context("backend b1")?;
    let b2 = HttpBackend::start("b2").context("backend b2")?;
    let modes = if args.modes.is_empty() {
        Mode::ALL.to_vec()
    } else {
        args.modes.clone()
    };
    let mut out = format!(
        "flip → routed at W = {} backends, {} flips per mode\n\n\
         | mode | flip → routed p50 | p90 | max | added p50 | removed p50 | render p50 | flip → applied p50 | reloads | runtime updates | failed probes |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        args.backends, args.flips
    );
    for mode in modes {
        let site = Site::start(mode, args.backends, [b1.port(), b2.port()])?;
        let row = site.flips(args.flips)?;
        writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.mode.name(),
            ms(row.routed.p50),
            ms(row.routed.p90),
            ms(row.routed.max),
            ms(row.added.p50),
            ms(row.removed.p50),
            ms(row.render.p50),
            ms(row.applied.p50),
            row.reloads,
            row.runtime,
            row.failures
        )?;
    }
    Ok(out)
}

/// What converge renders W backends from.
struct Node {
    backends: usize,
    ports: [u16; 2],
    prepared: Prepared,
    layout: Layout,
}

impl Node {
    /// The pass and the apply the daemon makes for a catalog where backend
    /// `extra` (if any) has its second instance; the outcome, and how long
    /// the pass took.
    fn converge(&self, extra: Option<usize>) -> anyhow::Result<(Outcome, Duration)> {
        let t = Instant::now();
        let set = pass::run(
            &self.prepared,
            "lb1",
            &self.layout,
            catalog(self.backends, self.ports, extra),
            None,
            &Default::default(),
        )
        .context("render")?
        .set;
        let rendered = t.elapsed();
        let report = converge_apply::apply(&set, &ApplyOptions::default()).context("apply")?;
        match report.bundle("haproxy") {
            Some(b) if report.ok() => Ok((b.outcome.clone(), rendered)),
            _ => bail!("apply failed: {report}"),
        }
    }
}

/// One HAProxy with W backends, and the node converge keeps it on.
struct Site {
    mode: Mode,
    front: u16,
    node: Node,
    // Stopped (by its pid) before the directory it runs in goes.
    _haproxy: Haproxy,
    _dir: tempfile::TempDir,
}

impl Site {
    fn start(mode: Mode, backends: usize, ports: [u16; 2]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let front = free_port();
        std::fs::create_dir_all(dir.path().join("manifests"))?;
        std::fs::create_dir_all(dir.path().join("root/run/haproxy"))?;
        std::fs::write(
            dir.path().join("manifests/site.yaml"),
            manifest(mode, backends, front),
        )?;
        let inputs = Inputs {
            manifests: dir.path().join("manifests"),
            templates: repo().join("templates"),
            catalog: dir.path().join("catalog.yaml"),
            root: dir.path().join("root"),
            unpacked: None,
        };
        let (manifests, templates) = inputs.load_config().context("load manifests")?;
        let layout = Layout::new(&inputs.root);
        let prepared = Prepared {
            manifests,
            templates,
            layout: layout.clone(),
            revision: None,
        };
        let root = dir.path().join("root");
        let node = Node {
            backends,
            ports,
            prepared,
            layout,
        };
        node.converge(None)?;
        let haproxy = Haproxy::start(
            &root.join("etc/haproxy/haproxy.cfg"),
            &root.join("run/haproxy.pid"),
            &root.join("run/haproxy/admin.sock"),
        )
        .map_err(anyhow::Error::msg)?;
        wait::until(DEADLINE, "HAProxy to serve be-0", || {
            converge_testkit::http::get(front, "/be-0/").as_deref() == Some("b1")
        })
        .map_err(anyhow::Error::msg)?;
        Ok(Site {
            mode,
            front,
            node,
            _haproxy: haproxy,
            _dir: dir,
        })
    }

    /// Alternately adds a second instance to a backend and removes it,
    /// moving on to another backend after each pair.
    fn flips(&self, flips: usize) -> anyhow::Result<Row> {
        let (mut routed, mut applied, mut render) = (Vec::new(), Vec::new(), Vec::new());
        let (mut added, mut removed) = (Vec::new(), Vec::new());
        let (mut reloads, mut runtime, mut failures) = (0, 0, 0);
        for i in 0..flips {
            let k = (i / 2 * 37) % self.node.backends;
            let add = i % 2 == 0;
            let t0 = Instant::now();
            let (seen, outcome) = std::thread::scope(|s| {
                let apply = s.spawn(|| {
                    let o = self.node.converge(add.then_some(k));
                    (o, t0.elapsed())
                });
                let seen = probe::routing_change_at(
                    self.front,
                    &format!("/be-{k}/"),
                    "b2",
                    add,
                    t0,
                    DEADLINE,
                );
                (seen, apply.join())
            });
            let (outcome, took) = outcome.map_err(|_| anyhow::anyhow!("the apply panicked"))?;
            let (outcome, rendered) = outcome?;
            render.push(rendered);
            match outcome {
                Outcome::RuntimeUpdated { .. } => runtime += 1,
                Outcome::Applied { .. } => reloads += 1,
                other => bail!("flip {i}: {other:?}"),
            }
            let seen = seen.map_err(anyhow::Error::msg)?;
            routed.push(seen.latency);
            if add {
                added.push(seen.latency);
            } else {
                removed.push(seen.latency);
            }
            applied.push(took);
            failures += seen.failures;
            // Let a reload's old worker finish before the next flip.
            std::thread::sleep(Duration::from_millis(100));
        }
        let s = |v: &[Duration]| Summary::of(v).context("no flips");
        Ok(Row {
            mode: self.mode,
            routed: s(&routed)?,
            added: s(&added)?,
            removed: s(&removed)?,
            render: s(&render)?,
            applied: s(&applied)?,
            reloads,
            runtime,
            failures,
        })
    }
}

/// W backends `be-K`, each fed by service `svc-K` and routed by `/be-K/`.
fn manifest(mode: Mode, backends: usize, front: u16) -> String {
    let mut routes = String::new();
    let mut bes = String::new();
    for k in 0..backends {
        writeln!(routes, "      - {{path_prefix: /be-{k}/, backend: be-{k}}}").ok();
        write!(bes, "  be-{k}:\n    service: svc-{k}\n{}", mode.opt_in()).ok();
    }
    format!(
        "nodes:\n  lb1: {{}}\nhaproxy:\n  stats_socket: /run/haproxy/admin.sock\n\
         frontends:\n  http_in:\n    bind: [\"127.0.0.1:{front}\"]\n    default_backend: be-0\n\
         \x20   routes:\n{routes}backends:\n{bes}\
         targets:\n  haproxy:\n    template: haproxy.cfg.tera\n    destination: /etc/haproxy/haproxy.cfg\n\
         \x20   validate: haproxy\n\
         \x20   reload:\n      signal: {{pidfile: /run/haproxy.pid, signal: SIGUSR2}}\n"
    )
}

/// Every service with its instance on `ports[0]`, and service `extra`
/// with a second one on `ports[1]`.
fn catalog(backends: usize, ports: [u16; 2], extra: Option<usize>) -> Catalog {
    let instance = |id: String, port: u16| Instance {
        id,
        node: "bench".to_string(),
        address: "127.0.0.1".to_string(),
        port,
        tags: BTreeSet::new(),
        meta: BTreeMap::new(),
        health: Health::Passing,
    };
    let services = (0..backends)
        .map(|k| {
            let mut list = vec![instance(format!("a-{k}"), ports[0])];
            if extra == Some(k) {
                list.push(instance(format!("b-{k}"), ports[1]));
            }
            (format!("svc-{k}"), list)
        })
        .collect();
    Catalog::fresh(1, services)
}
