//! A cross-check of converge's own share without processes or logs: the
//! library calls a reconcile pass makes before its validator, timed in this
//! process on a catalog of N instances of `web` (one flips per round).
//!
//! - load: `Inputs::fingerprint`, and `Inputs::load_config` only when it
//!   changed, as the daemon does (never here, so templates, and with them
//!   the render's kept servers, last from one pass to the next);
//! - render: the pass (`converge_agent::pass::run`: guard and render);
//! - plan: `converge_apply::plan` against the previous render on disk
//!   (it also builds a unified diff, which the daemon's apply does not, so
//!   this is an upper bound for the comparison step).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use converge_agent::pass;
use converge_agent::{Inputs, Prepared};
use converge_model::{Catalog, Health, Instance, Layout};

use crate::stack::Stack;
use crate::stats::Summary;

/// Per-step timings.
#[derive(Debug)]
pub struct InprocReport {
    /// Instances.
    pub backends: usize,
    /// Manifests + templates fingerprint (and load, if changed).
    pub load: Summary,
    /// Render.
    pub render: Summary,
    /// Plan.
    pub plan: Summary,
    /// load + render + plan per round.
    pub total: Summary,
}

/// Times `rounds` passes at `backends` instances, using the stack's
/// manifests and templates and a scratch root.
pub fn measure(stack: &Stack, backends: usize, rounds: usize) -> anyhow::Result<InprocReport> {
    let inputs = Inputs {
        manifests: stack.path("manifests"),
        templates: stack.path("templates"),
        catalog: stack.path("catalog.yaml"),
        root: stack.path("inproc-root"),
        unpacked: None,
    };
    let layout = Layout::new(&inputs.root);
    let (manifests, templates) = inputs.load_config().context("load manifests")?;
    let mut loaded = inputs.fingerprint();
    let mut prepared = Prepared {
        manifests,
        templates,
        layout: layout.clone(),
        revision: None,
    };
    let mut samples = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    for round in 0..=rounds {
        let snapshot = catalog(backends, round);
        let t = Instant::now();
        let fingerprint = inputs.fingerprint();
        if fingerprint.is_none() || fingerprint != loaded {
            (prepared.manifests, prepared.templates) =
                inputs.load_config().context("load manifests")?;
            loaded = fingerprint;
        }
        let load = t.elapsed();
        let t = Instant::now();
        let set = pass::run(
            &prepared,
            "lb1",
            &layout,
            snapshot,
            None,
            &Default::default(),
        )
        .context("render")?
        .set;
        let render = t.elapsed();
        let t = Instant::now();
        let plan = converge_apply::plan(&set).context("plan")?;
        let planned = t.elapsed();
        if round > 0 && !plan.has_changes() {
            anyhow::bail!("round {round}: the flip changed nothing");
        }
        // The next round compares against this render, as the daemon would.
        for f in set.files.values() {
            if let Some(dir) = f.destination.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&f.destination, &f.bytes)?;
        }
        if round == 0 {
            continue; // cold caches; not counted
        }
        for (v, d) in samples
            .iter_mut()
            .zip([load, render, planned, load + render + planned])
        {
            v.push(d);
        }
    }
    let s = |v: &[Duration]| Summary::of(v).context("no rounds");
    Ok(InprocReport {
        backends,
        load: s(&samples[0])?,
        render: s(&samples[1])?,
        plan: s(&samples[2])?,
        total: s(&samples[3])?,
    })
}

/// `backends` passing instances of `web`, with instance 2 critical on odd
/// rounds.
fn catalog(backends: usize, round: usize) -> Catalog {
    let instances = (0..backends)
        .map(|i| Instance {
            id: format!("web-{}", i + 1),
            node: "bench".to_string(),
            address: "127.0.0.1".to_string(),
            port: 20_000 + (i % 3) as u16,
            tags: Default::default(),
            meta: Default::default(),
            health: if i == 1 && round % 2 == 1 {
                Health::Critical
            } else {
                Health::Passing
            },
        })
        .collect();
    Catalog::fresh(
        round as u64 + 1,
        BTreeMap::from([("web".to_string(), instances)]),
    )
}
