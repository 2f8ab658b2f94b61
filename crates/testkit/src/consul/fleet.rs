//! A fleet's Consul on one machine: one server agent ([`ConsulAgent::start`])
//! and one client agent per node, joined to it over loopback gossip, each
//! with its own ports, data dir and node name, as every LB node of a real
//! fleet runs its own agent. Every agent is stopped by pid when dropped.

use super::ConsulAgent;

/// A server agent and its joined client agents.
#[derive(Debug)]
pub struct ConsulFleet {
    /// The server (`-dev`, so it elects itself at once).
    pub server: ConsulAgent,
    /// One client agent per node, in the order the names were given.
    pub clients: Vec<ConsulAgent>,
}

impl ConsulFleet {
    /// Starts a server and one client agent named after each of `nodes`,
    /// and waits until every client has joined and sees the leader.
    ///
    /// # Errors
    ///
    /// An agent did not start or join (the message carries its log tail).
    pub fn start(nodes: &[&str]) -> Result<Self, String> {
        let server = ConsulAgent::start()?;
        let serf = server.ports().serf_lan;
        let clients = nodes
            .iter()
            .map(|n| ConsulAgent::launch(None, false, Some((serf, (*n).to_string()))))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { server, clients })
    }

    /// The client agent of the `i`th node.
    pub fn client(&mut self, i: usize) -> &mut ConsulAgent {
        &mut self.clients[i]
    }
}
