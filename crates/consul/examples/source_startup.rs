//! How long the catalog source takes to read `s0 … s{W-1}` from the agent
//! the `CONSUL_*` variables name (`Config::from_env`, so over HTTPS when
//! they say so), with the CPU this process and the agent (`AGENT_PID`)
//! used, from `/proc` in 10 ms ticks. It uses only the source's public
//! API, so the same file (with `common/measure.rs`) builds against earlier
//! versions of the crate too: that is how start-up before and after a
//! change is compared on one datacenter (`BENCHMARKS.md`, "Consul source
//! at scale", start-up).
//!
//! ```sh
//! cargo build --release -p converge-consul --example source_startup
//! . ./agent.env   # from the synthetic_agent example
//! target/release/examples/source_startup 5000 "$AGENT_PID"                          # HTTPS
//! CONSUL_HTTP_ADDR=$HTTP_URL target/release/examples/source_startup 5000 "$AGENT_PID" # HTTP/1.1
//! ```

#[path = "common/measure.rs"]
mod common;

use std::time::Instant;

use common::{read_every, ticks};

use converge_consul::Config;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [watched, agent] = &args[..] else {
        return Err("usage: source_startup W AGENT_PID".into());
    };
    let watched: usize = watched.parse()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (own, agent_before, at) = (ticks("self")?, ticks(agent)?, Instant::now());
    rt.block_on(read_every(Config::from_env()?, watched))?;
    println!(
        "start-up {:.2} s, source CPU {:.2} s, agent CPU {:.2} s",
        at.elapsed().as_secs_f64(),
        (ticks("self")? - own) as f64 / 100.0,
        (ticks(agent)? - agent_before) as f64 / 100.0
    );
    Ok(())
}
