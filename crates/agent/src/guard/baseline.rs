//! The guard's baseline on disk: the instances of the snapshot the guard
//! last accepted for an apply, kept in `<state_dir>/guard-baseline.json`.
//! It advances after every apply that ran, whatever each bundle's outcome
//! (see the reconciler's `baseline` field for why), so after a rejected
//! or rolled-back bundle it is ahead of what that bundle's files hold.
//!
//! The guard measures a change against this snapshot. Held only in memory
//! it would be empty after every restart of the daemon, and the first pass
//! after a reboot — exactly when Consul tends to report every check
//! critical until the agents have run them — would go unguarded and render
//! empty backends over a working config. So the daemon and `apply --once`
//! write it after each transaction, and a daemon starts from it.
//!
//! Only instances are stored (freshness is a property of one read, not of
//! what went live). The file is written to a temporary name in the same
//! directory, fsynced and renamed, so a crash leaves the old baseline or
//! the new one. An unreadable or corrupt file is reported and ignored:
//! without a baseline the guard holds nothing, which is how a node that
//! never applied behaves anyway.
//!
//! The daemon writes it on a thread of its own ([`Writer`]): the file
//! holds every watched instance (about half a megabyte of JSON for 5,000),
//! and its fsyncs took up to hundreds of milliseconds on a busy disk,
//! during which the pass had not returned and the next catalog change
//! waited. Only the newest accepted snapshot is worth writing, so a write
//! still pending when a newer one comes is replaced; dropping the writer
//! (the daemon's shutdown) finishes the pending one first. A daemon killed
//! between a pass and the end of its write starts from the baseline before
//! it, as a crash between the transaction and the write always did.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use converge_model::{Catalog, Instance, Layout};
use serde::{Deserialize, Serialize};

/// What the file holds.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    services: BTreeMap<String, Vec<Instance>>,
}

/// `<state_dir>/guard-baseline.json` under `layout`.
pub fn path(layout: &Layout) -> PathBuf {
    layout.state_dir().join("guard-baseline.json")
}

/// The stored baseline, if there is a readable one.
pub fn load(layout: &Layout) -> Option<Catalog> {
    let path = path(layout);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the guard baseline; the first pass is not guarded");
            return None;
        }
    };
    match serde_json::from_slice::<Stored>(&bytes) {
        Ok(s) => Some(Catalog::fresh(0, s.services)),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "the guard baseline is corrupt; ignoring it, the first pass is not guarded");
            None
        }
    }
}

/// Replaces the stored baseline with `catalog`'s instances, atomically.
pub fn store(layout: &Layout, catalog: &Catalog) -> io::Result<()> {
    let stored = Stored {
        services: catalog
            .services()
            .iter()
            .map(|(name, e)| (name.clone(), e.instances.clone()))
            .collect(),
    };
    crate::state_file::store_json(&path(layout), &stored)
}

/// Whether `new` has other instances than `old`: the baseline is written
/// only then, not on every pass of an idle node (indexes and freshness
/// change without the instances changing).
fn differs(old: Option<&Catalog>, new: &Catalog) -> bool {
    let Some(old) = old else { return true };
    old.services().len() != new.services().len()
        || old
            .services()
            .iter()
            .zip(new.services())
            .any(|((a, ea), (b, eb))| a != b || ea.instances != eb.instances)
}

/// Moves the stored baseline from `old` to `new` when their instances
/// differ. A failure is logged, not returned: a baseline that could not be
/// written costs the guard of the first pass after a restart, never the
/// apply that just went through.
pub fn advance(layout: &Layout, old: Option<&Catalog>, new: &Catalog) {
    if !differs(old, new) {
        return;
    }
    if let Err(e) = store(layout, new) {
        tracing::warn!(path = %path(layout).display(), error = %e, "cannot write the guard baseline");
    }
}

/// Writes the baseline off the pass's thread; see the module docs.
pub struct Writer {
    shared: Arc<(Mutex<Slot>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Slot {
    /// The newest snapshot not yet taken by the thread.
    next: Option<(Layout, Arc<Catalog>)>,
    /// The thread is writing one.
    busy: bool,
    /// The writer was dropped: write what is pending, then stop.
    closed: bool,
}

impl Writer {
    /// Starts the writing thread.
    pub fn start() -> Self {
        let shared = Arc::new((Mutex::new(Slot::default()), Condvar::new()));
        let thread = std::thread::Builder::new()
            .name("guard-baseline".into())
            .spawn({
                let shared = shared.clone();
                move || write_loop(&shared)
            })
            .ok();
        if thread.is_none() {
            tracing::warn!("cannot start the guard baseline's writer; writing it in the pass");
        }
        Self { shared, thread }
    }

    /// [`advance`], on the writer's thread when it runs: queues `new` when
    /// its instances differ from `old`'s, replacing a queued older one.
    /// `new` is shared with the caller, not copied: the pass keeps it as
    /// the next baseline, and a copy of every watched instance per pass is
    /// what the writer exists to keep off the pass.
    pub fn advance(&self, layout: &Layout, old: Option<&Catalog>, new: &Arc<Catalog>) {
        if self.thread.is_none() {
            return advance(layout, old, new);
        }
        if !differs(old, new) {
            return;
        }
        let (lock, cv) = &*self.shared;
        lock.lock().unwrap_or_else(PoisonError::into_inner).next =
            Some((layout.clone(), Arc::clone(new)));
        cv.notify_all();
    }

    /// Waits until nothing queued is left unwritten.
    #[cfg(test)]
    pub fn flush(&self) {
        let (lock, cv) = &*self.shared;
        let mut slot = lock.lock().unwrap_or_else(PoisonError::into_inner);
        while self.thread.is_some() && (slot.next.is_some() || slot.busy) {
            slot = cv.wait(slot).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let (lock, cv) = &*self.shared;
        lock.lock().unwrap_or_else(PoisonError::into_inner).closed = true;
        cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn write_loop(shared: &(Mutex<Slot>, Condvar)) {
    let (lock, cv) = shared;
    loop {
        let job = {
            let mut slot = lock.lock().unwrap_or_else(PoisonError::into_inner);
            loop {
                if let Some(job) = slot.next.take() {
                    slot.busy = true;
                    break Some(job);
                }
                if slot.closed {
                    break None;
                }
                slot = cv.wait(slot).unwrap_or_else(PoisonError::into_inner);
            }
        };
        let Some((layout, catalog)) = job else { return };
        let started = Instant::now();
        match store(&layout, &catalog) {
            Ok(()) => tracing::debug!(
                took_ms = started.elapsed().as_secs_f64() * 1e3,
                "guard baseline written"
            ),
            Err(e) => {
                tracing::warn!(path = %path(&layout).display(), error = %e, "cannot write the guard baseline")
            }
        }
        lock.lock().unwrap_or_else(PoisonError::into_inner).busy = false;
        cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use converge_model::Health;

    use super::*;

    fn web(ids: &[&str]) -> Catalog {
        let instances = ids
            .iter()
            .enumerate()
            .map(|(i, id)| Instance {
                id: id.to_string(),
                node: "n".into(),
                address: format!("10.0.0.{}", i + 1),
                port: 80,
                tags: ["t".to_string()].into(),
                meta: [("k".to_string(), "v".to_string())].into(),
                health: Health::Warning,
            })
            .collect();
        Catalog::fresh(7, BTreeMap::from([("web".to_string(), instances)]))
    }

    #[test]
    fn a_stored_baseline_reads_back_with_the_same_instances() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = Layout::new(dir.path());
        assert_eq!(load(&layout), None, "nothing stored yet");
        store(&layout, &web(&["a", "b"])).expect("store");
        store(&layout, &web(&["c"])).expect("store over the old one");
        let back = load(&layout).expect("stored");
        assert_eq!(back.service("web"), web(&["c"]).service("web"));
        let names: Vec<_> = std::fs::read_dir(path(&layout).parent().expect("dir"))
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["guard-baseline.json"], "no temp file left behind");
    }

    #[test]
    fn the_writer_keeps_the_newest_snapshot_and_finishes_it_when_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = Layout::new(dir.path());
        let writer = Writer::start();
        writer.advance(&layout, None, &Arc::new(web(&["a"])));
        writer.flush();
        assert_eq!(
            load(&layout).expect("written").service("web"),
            web(&["a"]).service("web")
        );
        // Two in a row, then shutdown: the newest is on disk when the
        // writer is gone.
        writer.advance(&layout, Some(&web(&["a"])), &Arc::new(web(&["b"])));
        writer.advance(&layout, Some(&web(&["b"])), &Arc::new(web(&["c"])));
        drop(writer);
        assert_eq!(
            load(&layout).expect("written").service("web"),
            web(&["c"]).service("web")
        );
    }

    #[test]
    fn only_other_instances_count_as_a_difference() {
        let stale = web(&["a"]).with_service(
            "web",
            Some(converge_model::ServiceEntry {
                instances: web(&["a"]).service("web").expect("web").instances.clone(),
                freshness: converge_model::Freshness::Stale {
                    since: std::time::SystemTime::UNIX_EPOCH,
                    error: "agent down".into(),
                },
            }),
        );
        assert!(!differs(Some(&web(&["a"])), &stale), "same instances");
        assert!(differs(Some(&web(&["a"])), &web(&["b"])));
        assert!(differs(Some(&web(&["a"])), &Catalog::default()));
        assert!(differs(None, &web(&["a"])));
    }

    #[test]
    fn a_corrupt_baseline_is_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = Layout::new(dir.path());
        std::fs::create_dir_all(layout.state_dir()).expect("mkdir");
        std::fs::write(path(&layout), "{\"services\": {\"web\": [{\"id\": 1}]}}").expect("write");
        assert_eq!(load(&layout), None);
    }
}
