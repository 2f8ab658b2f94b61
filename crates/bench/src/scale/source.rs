//! converge's side of the scale benchmark: its catalog source, the code
//! `converge run` watches Consul with, in this process on a runtime of its
//! own, so its threads' CPU can be told from the proxy's and the flips'.

use std::time::{Duration, Instant};

use anyhow::Context;
use converge_consul::{CatalogSource, Config, SourceConfig, SourceHealth, SourceState};
use converge_model::Health;
use converge_testkit::consul::External;
use converge_testkit::proxy::CountingProxy;
use tokio::runtime::Runtime;
use tokio::sync::watch;

use super::dc::{self, measure as phases, Datacenter, Row, Sampler, Watcher};
use super::ScaleArgs;
use crate::procstat;

/// Name prefix of the source's runtime threads.
const THREADS: &str = "source";

/// Measures the source watching `s0 … s{W-1}`, over HTTPS (HTTP/2) when
/// `tls`, else over plain HTTP.
pub fn measure(dc: &mut Datacenter, args: &ScaleArgs, tls: bool) -> anyhow::Result<Row> {
    let upstream = if tls {
        std::net::SocketAddr::from(([127, 0, 0, 1], dc.agent.ports().https))
    } else {
        dc.agent.http_addr()
    };
    let proxy = CountingProxy::start(upstream).context("counting proxy")?;
    let sampler = Sampler::start(upstream.port());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(THREADS)
        .enable_all()
        .build()?;
    let config = if tls {
        tls_config(dc, &proxy)?
    } else {
        Config::new(&proxy.url())?
    };
    let names = (0..args.watched).map(|i| format!("s{i}"));
    let mut row = Row {
        label: format!(
            "converge source, {}",
            if tls { "HTTPS (HTTP/2)" } else { "HTTP/1.1" }
        ),
        ..Row::default()
    };
    let started = Instant::now();
    let src = rt.block_on(async { CatalogSource::connect(config, SourceConfig::new(names)) })?;
    let mut rx = src.subscribe();
    let all = |s: &SourceState| {
        s.health == SourceHealth::Healthy && s.catalog.services().len() == args.watched
    };
    let ready = rt.block_on(async {
        let ready = tokio::time::timeout(args.startup_timeout, rx.wait_for(all)).await;
        matches!(ready, Ok(Ok(_)))
    });
    anyhow::ensure!(ready, "{}: not ready in time", row.label);
    row.startup = Some(started.elapsed());
    let mut w = Source { rt: &rt, rx };
    phases(dc, args, &mut w, &proxy, !tls, &mut row)?;
    row.peak_connections = sampler.peak();
    drop(src);
    rt.shutdown_timeout(Duration::from_secs(5));
    Ok(row)
}

/// The HTTPS config, through the proxy: the agent's certificate names
/// `server.dc1.consul`, which is sent and verified while the connection
/// goes to the proxy's address.
fn tls_config(dc: &Datacenter, proxy: &CountingProxy) -> anyhow::Result<Config> {
    let vars = dc
        .agent
        .tls_client_vars(&format!("https://{}", proxy.addr()));
    Ok(Config::from_vars(|k| {
        vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
    })?)
}

struct Source<'a> {
    rt: &'a Runtime,
    rx: watch::Receiver<SourceState>,
}

impl Watcher for Source<'_> {
    fn shows(&mut self, e: External, status: &str, deadline: Duration) -> bool {
        let want = match status {
            "passing" => Health::Passing,
            "warning" => Health::Warning,
            _ => Health::Critical,
        };
        let shown = |s: &SourceState| {
            s.catalog.service(&e.service_name()).is_some_and(|svc| {
                svc.instances
                    .iter()
                    .any(|i| i.id == e.id() && i.health == want)
            })
        };
        let rx = &mut self.rx;
        let got = self
            .rt
            .block_on(async { tokio::time::timeout(deadline, rx.wait_for(shown)).await });
        matches!(got, Ok(Ok(_)))
    }

    fn cpu(&self) -> Duration {
        threads_cpu(THREADS)
    }

    fn memory(&self) -> (u64, u64) {
        procstat::sample(std::process::id()).map_or((0, 0), |s| (s.rss_kib, s.hwm_kib))
    }
}

/// CPU of this process's threads whose name starts with `prefix`.
fn threads_cpu(prefix: &str) -> Duration {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    let mut ticks = 0;
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        if !head
            .split_once('(')
            .is_some_and(|(_, comm)| comm.starts_with(prefix))
        {
            continue;
        }
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        ticks += num(11) + num(12);
    }
    dc::ticks(ticks)
}
