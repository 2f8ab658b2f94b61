//! The watch tasks the source runs, and the choice between its two ways of
//! watching: one long poll per watched service while they fit in what the
//! client can hold at once, the two shared watches beyond that (see the
//! [source](super) for why).
//!
//! `Tasks` only starts and stops tasks; what the loop knows about each
//! way of watching is changed through `Loop::enter`, so a switch (a
//! manifest reload that crosses the limit) is one call here.

use std::collections::{BTreeSet, HashMap};

use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};

use crate::client::Client;

use super::arming::Ticket;
use super::settings::SourceConfig;
use super::watches::{watch_checks, watch_service, watch_services, Signal, Watch};

/// How the source watches Consul.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// One blocking query per watched service.
    PerService,
    /// The two checks watches and the services watch, and reads of what
    /// they name.
    Shared,
}

impl Mode {
    /// The mode for `watched` services when the client can hold
    /// `capacity` requests at once.
    pub(super) fn for_count(watched: usize, capacity: usize) -> Self {
        if watched <= capacity {
            Mode::PerService
        } else {
            Mode::Shared
        }
    }
}

/// The running watch tasks; dropping it stops them all.
pub(super) struct Tasks {
    client: Client,
    config: SourceConfig,
    tx: mpsc::Sender<Signal>,
    shared: JoinSet<()>,
    shared_running: bool,
    services: HashMap<String, AbortHandle>,
    per_service: JoinSet<()>,
}

impl Tasks {
    /// Tasks watching with `client` and `config`'s pacing and backoffs.
    /// The watched set is not theirs to know: each task gets a copy of the
    /// config, and thousands of copies of thousands of names would cost
    /// gigabytes.
    pub(super) fn new(client: Client, mut config: SourceConfig, tx: mpsc::Sender<Signal>) -> Self {
        config.services.clear();
        Self {
            client,
            config,
            tx,
            shared: JoinSet::new(),
            shared_running: false,
            services: HashMap::new(),
            per_service: JoinSet::new(),
        }
    }

    /// Runs the watches of `mode` for `watched`, and none other: in
    /// per-service mode one task per service (new services get one, the
    /// tasks of dropped ones stop; the new ones arm their long polls once
    /// all of them have been read, see `arming`), in shared mode the three
    /// shared watches.
    pub(super) fn sync(&mut self, mode: Mode, watched: &BTreeSet<String>) {
        match mode {
            Mode::PerService => {
                self.shared.abort_all();
                self.shared_running = false;
                self.services.retain(|name, task| {
                    let keep = watched.contains(name);
                    if !keep {
                        task.abort();
                    }
                    keep
                });
                let new: Vec<&String> = watched
                    .iter()
                    .filter(|name| !self.services.contains_key(*name))
                    .collect();
                let tickets = Ticket::batch(new.len());
                for (name, ticket) in new.into_iter().zip(tickets) {
                    let watch = watch_service(
                        self.client.clone(),
                        self.config.clone(),
                        name.clone(),
                        self.tx.clone(),
                        ticket,
                    );
                    let task = self.per_service.spawn(watch);
                    self.services.insert(name.clone(), task);
                }
            }
            Mode::Shared => {
                self.per_service.abort_all();
                self.services.clear();
                if !self.shared_running {
                    self.shared_running = true;
                    let (c, cfg, tx) = (&self.client, &self.config, &self.tx);
                    for which in [Watch::Critical, Watch::Warning] {
                        let watch = watch_checks(c.clone(), cfg.clone(), which, tx.clone());
                        self.shared.spawn(watch);
                    }
                    self.shared
                        .spawn(watch_services(c.clone(), cfg.clone(), tx.clone()));
                }
            }
        }
        // Reap finished (aborted) tasks so the sets do not grow.
        while self.per_service.try_join_next().is_some() {}
        while self.shared.try_join_next().is_some() {}
    }
}
