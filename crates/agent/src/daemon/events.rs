//! A bounded ring of what the daemon did and when, for `GET /events`.
//!
//! A drill (`converge drill`) puts these next to its own probes so its
//! report shows where recovery time went: how long before converge saw
//! the change, how long rendering, validating and reloading took, and how
//! long the system needed after that. Timestamps are wall-clock Unix
//! milliseconds because the reader is another process on the same
//! machine. The ring keeps the newest [`CAPACITY`] events: a reader that
//! falls further behind sees a gap in `seq`, never unbounded memory.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Events kept; older ones are dropped first.
pub const CAPACITY: usize = 1024;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// A trigger woke the loop: the catalog, a file, or an operator.
    SawChange,
    /// A pass rendered candidates that differed from the live files.
    Rendered,
    /// The guard started holding a change back.
    Held,
    /// A bundle's candidates passed their validators.
    Validated,
    /// A bundle's files were committed (renamed into place).
    Committed,
    /// A bundle's program was reloaded.
    Reloaded,
    /// A membership change went to HAProxy over its runtime API.
    RuntimeUpdate,
    /// A candidate was rejected by its validator.
    Rejected,
    /// A reload failed and the files were rolled back.
    RolledBack,
    /// An apply failed before it changed a live file.
    Failed,
    /// PgBouncer was told to PAUSE a database.
    Pause,
    /// PgBouncer was told to RESUME a database.
    Resume,
    /// A kind this reader does not know (a newer daemon).
    #[serde(other)]
    Other,
}

impl EventKind {
    /// Its name as `GET /events` spells it (`runtime-update`).
    pub fn name(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }
}

/// One event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Increases by one per event, from 1.
    pub seq: u64,
    /// Wall-clock Unix milliseconds.
    pub unix_ms: u64,
    /// What happened.
    pub kind: EventKind,
    /// Which bundle, backend or trigger, and how long a step took.
    pub detail: String,
}

/// The `GET /events?since=SEQ` body: events after `since`, and the `seq`
/// to ask from next time.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EventPage {
    /// The newest `seq` recorded so far (0 before the first event).
    pub last: u64,
    /// Events with `seq` greater than the one asked for, oldest first.
    pub events: Vec<Event>,
}

/// The ring.
#[derive(Debug, Default)]
pub struct Events {
    inner: Mutex<Ring>,
}

#[derive(Debug, Default)]
struct Ring {
    last: u64,
    events: VecDeque<Event>,
}

impl Events {
    /// Records `kind` now.
    pub fn record(&self, kind: EventKind, detail: impl Into<String>) {
        self.record_at(unix_ms(SystemTime::now()), kind, detail);
    }

    /// Records `kind` at `unix_ms` (a step whose start is known from its
    /// measured duration).
    pub fn record_at(&self, unix_ms: u64, kind: EventKind, detail: impl Into<String>) {
        let mut ring = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        ring.last += 1;
        let seq = ring.last;
        if ring.events.len() == CAPACITY {
            ring.events.pop_front();
        }
        ring.events.push_back(Event {
            seq,
            unix_ms,
            kind,
            detail: detail.into(),
        });
    }

    /// Events after `since`, oldest first.
    pub fn since(&self, since: u64) -> EventPage {
        let ring = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        EventPage {
            last: ring.last,
            events: ring
                .events
                .iter()
                .filter(|e| e.seq > since)
                .cloned()
                .collect(),
        }
    }
}

/// Unix milliseconds of `at`, `duration` earlier (0 before the epoch).
pub fn unix_ms_before(at: SystemTime, duration: Duration) -> u64 {
    unix_ms(at.checked_sub(duration).unwrap_or(at))
}

/// Unix milliseconds of `at` (0 before the epoch).
pub fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_returns_newer_events_and_the_ring_stays_bounded() {
        let events = Events::default();
        for i in 0..CAPACITY + 5 {
            events.record(EventKind::Rendered, format!("{i}"));
        }
        let all = events.since(0);
        assert_eq!(all.events.len(), CAPACITY);
        assert_eq!(all.last, (CAPACITY + 5) as u64);
        assert_eq!(all.events[0].seq, 6, "the oldest five were dropped");
        let tail = events.since(all.last - 2);
        assert_eq!(
            tail.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![all.last - 1, all.last]
        );
    }

    #[test]
    fn kinds_are_kebab_case_and_unknown_kinds_still_parse() {
        let e = Event {
            seq: 1,
            unix_ms: 2,
            kind: EventKind::RuntimeUpdate,
            detail: String::new(),
        };
        let text = serde_json::to_string(&e).expect("json");
        assert!(text.contains("\"runtime-update\""), "{text}");
        let newer: Event =
            serde_json::from_str(r#"{"seq":1,"unix_ms":2,"kind":"teleported","detail":""}"#)
                .expect("an unknown kind parses");
        assert_eq!(newer.kind, EventKind::Other);
    }
}
