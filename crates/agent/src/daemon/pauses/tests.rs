//! The pauser's rules against a console that records what it is sent:
//! no PgBouncer, no process; the ledger in a temp directory.

use std::path::Path;
use std::sync::{Arc, Mutex};

use super::*;
use crate::pause::ledger::sample_console;

/// What the fake console was sent, and what the ledger held at each
/// `PAUSE`.
#[derive(Default)]
struct Sent {
    commands: Vec<String>,
    recorded_before_pause: Vec<bool>,
}

struct Fake {
    layout: Layout,
    sent: Arc<Mutex<Sent>>,
    pause_answer: Result<Paused, String>,
    /// While set, `RESUME` fails with it.
    resume_error: Arc<Mutex<Option<String>>>,
}

impl Console for Fake {
    fn pause(&mut self, _: &PgbouncerAdmin, database: &str) -> Result<Paused, String> {
        let recorded = ledger::load(&self.layout).paused.contains_key(database);
        let mut sent = self.sent.lock().expect("lock");
        sent.commands.push(format!("PAUSE {database}"));
        sent.recorded_before_pause.push(recorded);
        self.pause_answer.clone()
    }

    fn resume(&mut self, _: &PgbouncerAdmin, database: &str) -> Result<(), String> {
        let mut sent = self.sent.lock().expect("lock");
        sent.commands.push(format!("RESUME {database}"));
        match self.resume_error.lock().expect("lock").clone() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

fn app() -> Pause {
    Pause {
        database: "app".into(),
        reason: "no instance is primary".into(),
        limit_secs: 30,
        console: sample_console(),
    }
}

/// A pauser on a fresh ledger in `dir`, answering `PAUSE` with `answer`.
fn pauser(dir: &Path, answer: Result<Paused, String>) -> (Pauser, Arc<Mutex<Sent>>) {
    let layout = Layout::new(dir);
    let sent = Arc::new(Mutex::new(Sent::default()));
    let fake = Fake {
        layout: layout.clone(),
        sent: sent.clone(),
        pause_answer: answer,
        resume_error: Arc::default(),
    };
    (Pauser::new(layout, Box::new(fake)), sent)
}

fn commands(sent: &Arc<Mutex<Sent>>) -> Vec<String> {
    std::mem::take(&mut sent.lock().expect("lock").commands)
}

#[test]
fn a_database_is_recorded_before_its_pause_and_forgotten_after_its_resume() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut p, sent) = pauser(dir.path(), Ok(Paused::Done));
    let events = p.follow(Some(&[app()]), 100);
    assert!(
        matches!(
            &events[..],
            [PauseEvent::Paused {
                draining: false,
                ..
            }]
        ),
        "{events:?}"
    );
    assert_eq!(sent.lock().expect("lock").recorded_before_pause, [true]);
    assert_eq!(p.status()["app"].state, PauseState::Paused);
    assert_eq!(p.next_deadline(110), Some(Duration::from_secs(20)));

    // Still unclear: nothing sent again.
    assert!(p.follow(Some(&[app()]), 105).is_empty());
    // Resolved: resumed, and gone from the ledger on disk.
    let events = p.follow(Some(&[]), 107);
    assert_eq!(
        events,
        [PauseEvent::Resumed {
            database: "app".into(),
            after_secs: 7
        }]
    );
    assert_eq!(commands(&sent), ["PAUSE app", "RESUME app"]);
    assert!(ledger::load(&Layout::new(dir.path())).paused.is_empty());
    assert!(p.status().is_empty());
    assert_eq!(p.next_deadline(107), None);
}

#[test]
fn a_pause_past_its_limit_is_resumed_and_not_paused_again_until_the_primary_resolves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut p, sent) = pauser(dir.path(), Ok(Paused::Draining));
    p.follow(Some(&[app()]), 100);
    // No pass decided anything (the source failed): the limit still holds.
    let events = p.follow(None, 130);
    assert!(
        matches!(&events[..], [PauseEvent::TimedOut { after_secs: 30, .. }]),
        "{events:?}"
    );
    assert_eq!(commands(&sent), ["PAUSE app", "RESUME app"]);
    // The pass still wants it paused: it stays resumed, and says so.
    assert!(p.follow(Some(&[app()]), 131).is_empty());
    assert_eq!(p.status()["app"].state, PauseState::TimedOut);
    // Resolved, then unclear again: a new pause.
    p.follow(Some(&[]), 140);
    assert!(p.status().is_empty());
    p.follow(Some(&[app()]), 150);
    assert_eq!(commands(&sent), ["PAUSE app"]);
}

#[test]
fn a_failed_pause_is_reported_once_and_not_retried_until_the_primary_resolves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut p, sent) = pauser(dir.path(), Err("password authentication failed".into()));
    let events = p.follow(Some(&[app()]), 100);
    assert!(
        matches!(
            &events[..],
            [PauseEvent::Failed {
                action: "PAUSE",
                ..
            }]
        ),
        "{events:?}"
    );
    assert!(p.follow(Some(&[app()]), 101).is_empty());
    assert_eq!(p.status()["app"].state, PauseState::Failed);
    assert!(ledger::load(&Layout::new(dir.path())).paused.is_empty());
    assert_eq!(commands(&sent), ["PAUSE app"]);
}

#[test]
fn what_a_gone_converge_paused_is_resumed_unless_the_first_pass_still_wants_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = Layout::new(dir.path());
    let left = |db: &str| {
        let entry = Entry {
            since: 50,
            reason: "no instance is primary".into(),
            limit_secs: 30,
            console: sample_console(),
        };
        (db.to_string(), entry)
    };
    let ledger = Ledger {
        paused: [left("app"), left("old")].into_iter().collect(),
    };
    ledger::store(&layout, &ledger).expect("store");
    let (mut p, sent) = pauser(dir.path(), Ok(Paused::Done));
    let events = p.follow(Some(&[app()]), 60);
    // `app` is paused again (PgBouncer may have restarted), keeping its
    // clock; `old` is resumed.
    assert_eq!(commands(&sent), ["PAUSE app", "RESUME old"]);
    assert!(events.contains(&PauseEvent::LeftOver {
        database: "old".into()
    }));
    assert_eq!(p.status()["app"].since, 50);
    assert_eq!(p.next_deadline(60), Some(Duration::from_secs(20)));

    // A daemon whose first pass decides nothing resumes everything left.
    let (mut p, sent) = pauser(dir.path(), Ok(Paused::Done));
    p.follow(None, 61);
    assert_eq!(commands(&sent), ["RESUME app"]);
    assert!(ledger::load(&layout).paused.is_empty());
}

#[test]
fn shutdown_resumes_everything_paused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut p, sent) = pauser(dir.path(), Ok(Paused::Done));
    p.follow(Some(&[app()]), 100);
    let events = p.resume_all();
    assert_eq!(
        events,
        [PauseEvent::Shutdown {
            database: "app".into()
        }]
    );
    assert_eq!(commands(&sent), ["PAUSE app", "RESUME app"]);
    assert!(ledger::load(&Layout::new(dir.path())).paused.is_empty());
}

#[test]
fn a_failed_resume_is_tried_again_soon_even_by_a_pass_that_decides_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = Layout::new(dir.path());
    let sent = Arc::new(Mutex::new(Sent::default()));
    let resume_error = Arc::new(Mutex::new(Some("server closed the connection".to_string())));
    let fake = Fake {
        layout: layout.clone(),
        sent: sent.clone(),
        pause_answer: Ok(Paused::Done),
        resume_error: resume_error.clone(),
    };
    let mut p = Pauser::new(layout.clone(), Box::new(fake));
    p.follow(Some(&[app()]), 100);
    // Resolved, but the console fails the RESUME: still paused, and the
    // next pass is due in RETRY, not when the 30 s limit runs out.
    let events = p.follow(Some(&[]), 102);
    assert!(
        matches!(
            &events[..],
            [PauseEvent::Failed {
                action: "RESUME",
                ..
            }]
        ),
        "{events:?}"
    );
    assert_eq!(p.next_deadline(102), Some(RETRY));
    assert!(ledger::load(&layout).paused.contains_key("app"));
    // The retry's pass decides nothing (the source failed meanwhile): the
    // owed RESUME is sent anyway, and succeeds.
    *resume_error.lock().expect("lock") = None;
    let events = p.follow(None, 107);
    assert_eq!(
        events,
        [PauseEvent::Resumed {
            database: "app".into(),
            after_secs: 7
        }]
    );
    assert_eq!(commands(&sent), ["PAUSE app", "RESUME app", "RESUME app"]);
    assert!(ledger::load(&layout).paused.is_empty());
    assert_eq!(p.next_deadline(107), None);
}
