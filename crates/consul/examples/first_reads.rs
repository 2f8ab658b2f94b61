//! Where the catalog source's start-up goes in per-service mode: against
//! one real `consul agent -dev` with TLS (so HTTP/2) holding SERVICES ×
//! INSTANCES external instances, times the source until it has read
//! `s0 … s{W-1}`, and, for comparison, W plain `/v1/health/service/:name`
//! reads sent all at once through the same kind of client (failures are
//! counted, not retried); each with the CPU this process and the agent
//! used (from `/proc`, in 10 ms ticks).
//!
//! ```sh
//! cargo build --release -p converge-consul --example first_reads
//! target/release/examples/first_reads 5000 10 5000   # SERVICES INSTANCES W
//! ```
//!
//! The agent is `$CONVERGE_CONSUL_BIN`, else `target/peers/bin/consul`.

#[path = "common/measure.rs"]
mod common;

use std::time::Instant;

use common::{read_every, ticks};

use converge_consul::client::{HealthQuery, QueryOptions};
use converge_consul::{Config, SourceConfig};
use converge_testkit::consul::ConsulAgent;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let [services, instances, watched] = args[..] else {
        return Err("usage: first_reads SERVICES INSTANCES W".into());
    };
    let agent = ConsulAgent::start_with_tls()?;
    let started = Instant::now();
    agent.register_synthetic(services, instances)?;
    println!(
        "registered {services} × {instances} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let config = tls_config(&agent)?;
    let agent_pid = agent.pid().ok_or("the agent has no pid")?.to_string();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;

    let measure = |what: &str, run: &dyn Fn() -> Result<(), String>| -> Result<(), String> {
        let (own, agent, at) = (ticks("self")?, ticks(&agent_pid)?, Instant::now());
        run()?;
        println!(
            "{what}: {:.2} s, converge CPU {:.2} s, agent CPU {:.2} s",
            at.elapsed().as_secs_f64(),
            (ticks("self")? - own) as f64 / 100.0,
            (ticks(&agent_pid)? - agent) as f64 / 100.0
        );
        Ok(())
    };
    measure("source start-up", &|| {
        rt.block_on(read_every(config.clone(), watched))
    })?;
    measure(&format!("{watched} plain reads at once"), &|| {
        rt.block_on(async {
            let client = SourceConfig::new(["x"])
                .client(config.clone())
                .map_err(|e| e.to_string())?;
            let mut reads = tokio::task::JoinSet::new();
            for i in 0..watched {
                let client = client.clone();
                reads.spawn(async move {
                    let (query, opts) = (HealthQuery::default(), QueryOptions::default());
                    client.health_service(&format!("s{i}"), &query, &opts).await
                });
            }
            let mut failed = Vec::new();
            while let Some(read) = reads.join_next().await {
                if let Err(e) = read.map_err(|e| e.to_string())? {
                    failed.push(e.to_string());
                }
            }
            if let Some(first) = failed.first() {
                println!("{} of the reads failed, first: {first}", failed.len());
            }
            Ok(())
        })
    })?;
    Ok(())
}

/// The agent's HTTPS address and TLS files, as `CONSUL_*` variables.
fn tls_config(agent: &ConsulAgent) -> Result<Config, Box<dyn std::error::Error>> {
    let vars = agent.tls_client_vars(&agent.https_url());
    Ok(Config::from_vars(|k| {
        vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
    })?)
}
