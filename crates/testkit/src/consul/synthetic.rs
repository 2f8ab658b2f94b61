//! A synthetic datacenter: many services, each with instances on their own
//! external nodes, registered through `/v1/catalog/register` the way a
//! fleet without a local agent per node (or an ESM-monitored one) appears,
//! each instance with one passing check.
//!
//! Names are fixed so tests and the benchmark can address any part of it:
//! service `s{S}`, instance `s{S}-{I}` on node `n{S}-{I}` (address
//! `10.x.y.I`, port `8000 + I`), check `c-s{S}-{I}`. Registration runs on
//! several threads, as a datacenter of 50,000 instances would otherwise
//! take minutes to set up.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::api::json_string;
use super::ConsulAgent;

/// Threads registering at once: enough to keep the agent busy, few enough
/// to leave room under its default limit of 200 connections per client.
const REGISTER_THREADS: usize = 16;

/// One instance of the synthetic datacenter as `/v1/catalog/register`
/// takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct External {
    /// Service number `S` (`s{S}`).
    pub service: usize,
    /// Instance number `I` within the service (`s{S}-{I}`).
    pub instance: usize,
}

impl External {
    /// The service's name, `s{S}`.
    pub fn service_name(&self) -> String {
        format!("s{}", self.service)
    }

    /// The instance's id, `s{S}-{I}`.
    pub fn id(&self) -> String {
        format!("s{}-{}", self.service, self.instance)
    }

    fn node(&self) -> String {
        format!("n{}-{}", self.service, self.instance)
    }

    /// The instance's (and its node's) address, `10.x.y.I`, which nothing
    /// on this machine listens on.
    pub fn address(&self) -> String {
        let s = self.service;
        format!("10.{}.{}.{}", (s / 250) % 250, s % 250, self.instance % 250)
    }

    fn node_json(&self) -> String {
        format!(
            r#""Node":{},"Address":"{}","NodeMeta":{{"external-node":"true"}}"#,
            json_string(&self.node()),
            self.address()
        )
    }

    /// The registration of the instance on `port` with its check at
    /// `status`.
    fn body(&self, port: u16, status: &str) -> String {
        let id = json_string(&self.id());
        format!(
            r#"{{{node},"Service":{{"ID":{id},"Service":{svc},"Address":"{addr}","Port":{port}}},
               "Checks":[{{"CheckID":{check},"Name":"synthetic","Status":{status},"ServiceID":{id}}}]}}"#,
            node = self.node_json(),
            svc = json_string(&self.service_name()),
            addr = self.address(),
            check = json_string(&format!("c-{}", self.id())),
            status = json_string(status),
        )
    }

    /// The instance's default port, `8000 + I`.
    pub fn port(&self) -> u16 {
        8000 + (self.instance % 1000) as u16
    }
}

impl ConsulAgent {
    /// Registers `services` × `instances` synthetic instances, all passing,
    /// on `REGISTER_THREADS` threads.
    ///
    /// # Errors
    ///
    /// Consul refused a registration.
    pub fn register_synthetic(&self, services: usize, instances: usize) -> Result<(), String> {
        let next = AtomicUsize::new(0);
        let total = services * instances;
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..REGISTER_THREADS)
                .map(|_| {
                    scope.spawn(|| loop {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        if k >= total {
                            return Ok(());
                        }
                        let e = External {
                            service: k / instances,
                            instance: k % instances,
                        };
                        self.set_external(e, e.port(), "passing")?;
                    })
                })
                .collect();
            workers.into_iter().try_for_each(|w| {
                w.join()
                    .map_err(|_| "a registering thread panicked".to_string())?
            })
        })
    }

    /// Registers `e` again with its check at `status` (`passing`,
    /// `warning`, `critical`) and its service on `port`: a health flip
    /// when only the status differs, a changed instance with no check
    /// change when only the port does.
    ///
    /// # Errors
    ///
    /// Consul refused the registration.
    pub fn set_external(&self, e: External, port: u16, status: &str) -> Result<(), String> {
        self.catalog_register(&e.body(port, status))
    }

    /// Sets a node-level check (no service) on `e`'s node to `status`.
    ///
    /// # Errors
    ///
    /// Consul refused the registration.
    pub fn set_external_node_check(&self, e: External, status: &str) -> Result<(), String> {
        self.catalog_register(&format!(
            r#"{{{node},"Checks":[{{"CheckID":"node-health","Name":"node","Status":{status}}}]}}"#,
            node = e.node_json(),
            status = json_string(status),
        ))
    }

    /// Deregisters instance `e` (its node stays).
    ///
    /// # Errors
    ///
    /// Consul refused the deregistration.
    pub fn deregister_external(&self, e: External) -> Result<(), String> {
        self.put_ok(
            "/v1/catalog/deregister",
            &format!(
                r#"{{"Node":{},"ServiceID":{}}}"#,
                json_string(&e.node()),
                json_string(&e.id())
            ),
        )
    }
}
