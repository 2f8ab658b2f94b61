//! A `consul agent -dev` with HTTP and HTTPS listeners holding SERVICES ×
//! INSTANCES external instances (`s0 …`, a passing check each), kept
//! running until standard input closes, so several programs (or several
//! builds of one, see `source_startup`) can be measured against the same
//! datacenter. Prints the agent's `CONSUL_*` variables for its HTTPS
//! listener as shell `export` lines, then `AGENT_PID` and `HTTP_URL`.
//!
//! ```sh
//! cargo build --release -p converge-consul --example synthetic_agent
//! sleep 3600 | target/release/examples/synthetic_agent 5050 10 > agent.env &
//! ```
//!
//! The agent is `$CONVERGE_CONSUL_BIN`, else `target/peers/bin/consul`.

use std::io::Read;

use converge_testkit::consul::ConsulAgent;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let [services, instances] = args[..] else {
        return Err("usage: synthetic_agent SERVICES INSTANCES".into());
    };
    let agent = ConsulAgent::start_with_tls()?;
    agent.register_synthetic(services, instances)?;
    for (name, value) in agent.tls_client_vars(&agent.https_url()) {
        println!("export {name}={value}");
    }
    let pid = agent.pid().ok_or("the agent has no pid")?;
    println!("export AGENT_PID={pid} HTTP_URL={}", agent.http_url());
    // Runs until standard input closes; dropping `agent` stops it.
    std::io::stdin().read_to_end(&mut Vec::new())?;
    Ok(())
}
