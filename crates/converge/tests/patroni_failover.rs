//! PgBouncer follows a real Patroni cluster, end to end: two PostgreSQL 15
//! members under Patroni with a real `consul agent -dev` as DCS, Patroni
//! registering the cluster itself (`register_service: true`: service
//! `postgres`, ids `postgres/MEMBER`, role tags, an HTTP check on its REST
//! API), `converge run --consul` as a child process, and a real PgBouncer
//! on the file converge renders. Nothing registers a Postgres instance by
//! hand.
//!
//! A writer inserts through PgBouncer every ~100 ms, as an application
//! would, through a planned switchover and a kill -9 of the leader (its
//! Patroni and its PostgreSQL: a node loss). What is checked is what the
//! application sees: no `no such database` ever (the database stays in
//! `pgbouncer.ini` while two instances claim primary, or none does), no
//! acknowledged write missing from the table afterwards, and writes
//! resuming on the new leader. PgBouncer reloads over its console, so
//! while Consul names no primary converge pauses `app`, and resumes it on
//! the new leader. One cluster for the whole file keeps the
//! suite within CI's time; timing belongs to BENCHMARKS.md, not here.

mod common;

use std::io::{Read, Seek, SeekFrom};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::pgbouncer::{PatroniNode, SIGHUP};
use converge_testkit::pgbouncer::Pgbouncer;
use converge_testkit::postgres::{psql, psql_command};
use converge_testkit::wait;

/// Generous: Patroni's leader TTL, two cores shared with other suites.
const DEADLINE: Duration = Duration::from_secs(90);

/// How long one insert may take before the writer gives up on it (its
/// outcome then counts as unknown, never as acknowledged).
const INSERT_DEADLINE: Duration = Duration::from_secs(40);

/// One insert through PgBouncer.
#[derive(Debug, Clone)]
struct Attempt {
    id: u64,
    started: Instant,
    ended: Instant,
    /// `Ok` when PgBouncer acknowledged the commit; else what the client saw.
    outcome: Result<(), String>,
}

/// Inserts `id = 1, 2, …` into `writes` through PgBouncer, one `psql`
/// per insert started every ~100 ms whether or not the ones before have
/// answered (an application's requests do not queue behind a stuck one),
/// at most [`IN_FLIGHT`] at once, until stopped.
struct Writer {
    stop: Arc<AtomicBool>,
    attempts: Arc<Mutex<Vec<Attempt>>>,
    thread: Option<JoinHandle<()>>,
}

/// Inserts that may wait at once; a tick with this many waiting starts none.
const IN_FLIGHT: usize = 8;

impl Writer {
    fn start(port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let (s, a) = (stop.clone(), attempts.clone());
        let thread = std::thread::spawn(move || {
            let mut running: Vec<JoinHandle<()>> = Vec::new();
            let mut id = 0;
            while !s.load(Ordering::Relaxed) {
                let tick = Instant::now();
                running.retain(|t| !t.is_finished());
                if running.len() < IN_FLIGHT {
                    id += 1;
                    let a = a.clone();
                    running.push(std::thread::spawn(move || {
                        let started = Instant::now();
                        let outcome = insert(port, id);
                        if let Ok(mut v) = a.lock() {
                            v.push(Attempt {
                                id,
                                started,
                                ended: Instant::now(),
                                outcome,
                            });
                        }
                    }));
                }
                std::thread::sleep(Duration::from_millis(100).saturating_sub(tick.elapsed()));
            }
            for t in running {
                let _ = t.join();
            }
        });
        Self {
            stop,
            attempts,
            thread: Some(thread),
        }
    }

    fn attempts(&self) -> Vec<Attempt> {
        self.attempts.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Waits until an insert started after `since` is acknowledged.
    fn wait_resumed(&self, since: Instant, what: &str) -> Result<(), String> {
        wait::until(DEADLINE, what, || {
            self.attempts()
                .iter()
                .any(|a| a.started >= since && a.outcome.is_ok())
        })
    }

    fn finish(mut self) -> Vec<Attempt> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.attempts()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One `insert` through PgBouncer on `port`; a psql that outlasts
/// [`INSERT_DEADLINE`] is killed by its pid and counts as not acknowledged.
fn insert(port: u16, id: u64) -> Result<(), String> {
    let mut stderr = tempfile::tempfile().map_err(|e| format!("no temp file: {e}"))?;
    let err = stderr.try_clone().map_err(|e| e.to_string())?;
    let mut cmd = psql_command(port, "app", "app");
    // An application that waits: a connection PgBouncer holds in its login
    // (while `app` is paused) counts against the same deadline.
    cmd.env("PGCONNECT_TIMEOUT", INSERT_DEADLINE.as_secs().to_string());
    cmd.arg("-c")
        .arg(format!("insert into writes (id) values ({id})"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err);
    let mut child =
        converge_testkit::Child::spawn("psql insert", &mut cmd).map_err(|e| e.to_string())?;
    let said = |f: &mut std::fs::File| {
        let mut text = String::new();
        let _ = f
            .seek(SeekFrom::Start(0))
            .and_then(|_| f.read_to_string(&mut text));
        text.trim().to_string()
    };
    match child.wait_exit(INSERT_DEADLINE) {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(format!("{status}: {}", said(&mut stderr))),
        Err(e) => {
            child.stop();
            Err(e)
        }
    }
}

/// How converge reloads PgBouncer in a [`Stack`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reload {
    /// SIGHUP to its pid: no console, so nothing is paused.
    Signal,
    /// Over the admin console with `pause: true`: an unclear primary
    /// PAUSEs `app` until it resolves (at most 60 s).
    Console,
}

impl Reload {
    /// Both targets' `reload:` YAML, for PgBouncer on `port`.
    fn yaml(self, port: u16) -> String {
        match self {
            Self::Signal => SIGHUP.to_string(),
            Self::Console => format!(
                "    reload:\n      pgbouncer: {{host: /run/postgresql, port: {port}, \
                 user: converge, pause: true, unclear_primary_pause_secs: 60}}\n"
            ),
        }
    }
}

/// Consul, the Patroni cluster `postgres`, the daemon and PgBouncer.
struct Stack {
    node: PatroniNode,
    pgbouncer: Option<Pgbouncer>,
}

impl Stack {
    fn start(reload: Reload) -> Self {
        let node = PatroniNode::start(|port| reload.yaml(port));
        let port = node.port;
        let mut s = Self {
            node,
            pgbouncer: None,
        };
        let leader = s.leader();
        s.wait_config_on(&leader);
        let config = s.node.ws.root().join("etc/pgbouncer/pgbouncer.ini");
        s.pgbouncer = Some(
            Pgbouncer::start(&config, port).unwrap_or_else(|e| panic!("{e}\n{}", s.diagnostics())),
        );
        s
    }

    /// [`Stack::start`], then table `writes` on the leader once PgBouncer
    /// routes to it; returns the leader too.
    fn with_table(reload: Reload) -> (Self, String) {
        let s = Self::start(reload);
        let leader = s.leader();
        s.wait_landing(&leader);
        let sql = "create table writes (id bigint primary key)";
        psql(s.port_of(&leader), "app", "app", sql).expect("table on the leader");
        (s, leader)
    }

    /// A [`Writer`] through PgBouncer, once its first write is acknowledged.
    fn writer(&self) -> Writer {
        let writer = Writer::start(self.pgbouncer().port());
        writer
            .wait_resumed(Instant::now(), "a first write through PgBouncer")
            .unwrap_or_else(|e| panic!("{e}\n{}", self.diagnostics()));
        writer
    }

    fn pgbouncer(&self) -> &Pgbouncer {
        self.pgbouncer.as_ref().expect("pgbouncer started")
    }

    fn leader(&self) -> String {
        self.node
            .cluster
            .wait_leader(None, DEADLINE)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn port_of(&self, member: &str) -> u16 {
        self.node.cluster.pg_port(member).expect("member port")
    }

    fn config(&self) -> String {
        std::fs::read_to_string(self.node.ws.root().join("etc/pgbouncer/pgbouncer.ini"))
            .unwrap_or_default()
    }

    /// Whether PgBouncer routes `app` to `port` now (`SHOW DATABASES`).
    fn serving(&self, port: u16) -> bool {
        self.pgbouncer()
            .show("converge", "SHOW DATABASES")
            .is_ok_and(|rows| {
                rows.iter()
                    .any(|r| r["name"] == "app" && r["port"] == port.to_string())
            })
    }

    /// Waits until the rendered file routes `app` to `member`.
    fn wait_config_on(&self, member: &str) {
        let port = self.port_of(member);
        self.node.ws.wait_file(
            "etc/pgbouncer/pgbouncer.ini",
            DEADLINE,
            &format!("app → {member} rendered"),
            |c| c.contains(&format!("app = host=127.0.0.1 port={port} ")),
        );
    }

    /// Waits until a new connection through PgBouncer lands on `member`,
    /// and that member is not in recovery (it takes writes).
    fn wait_landing(&self, member: &str) {
        let want = format!("{}|false", self.port_of(member));
        wait::until(DEADLINE, &format!("PgBouncer to land on {member}"), || {
            self.pgbouncer().sql(
                "app",
                "app",
                "select inet_server_port() || '|' || pg_is_in_recovery()",
            ) == Ok(want.clone())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", self.diagnostics()));
    }

    /// Once Consul shows `member` primary: converge renders it, new
    /// connections through PgBouncer land on it, and a write started after
    /// Consul showed it is acknowledged.
    fn follow(&self, writer: &Writer, member: &str, after: &str) {
        self.node
            .cluster
            .wait_consul_primary(&self.node.consul, member, DEADLINE)
            .unwrap_or_else(|e| panic!("{e}\n{}", self.diagnostics()));
        let shown = Instant::now();
        self.wait_config_on(member);
        self.wait_landing(member);
        writer
            .wait_resumed(shown, &format!("writes after {after}"))
            .unwrap_or_else(|e| panic!("{e}\n{}", self.diagnostics()));
    }

    fn diagnostics(&self) -> String {
        format!(
            "config:\n{}\ndaemon log:\n{}\npgbouncer log:\n{}\n{}",
            self.config(),
            self.node.ws.daemon_log(),
            self.pgbouncer
                .as_ref()
                .map(Pgbouncer::log)
                .unwrap_or_default(),
            self.node.cluster.logs()
        )
    }
}

#[test]
fn pgbouncer_follows_patroni_through_a_switchover_and_a_kill_without_losing_a_write() {
    // Over the console: while Consul names no primary (the killed
    // leader's check failed, its leader key not yet expired), converge
    // pauses `app`, and resumes it on the new leader.
    let (mut s, first) = Stack::with_table(Reload::Console);

    // The pass-through settings reached the running PgBouncer.
    let config = s
        .pgbouncer()
        .show("converge", "SHOW CONFIG")
        .expect("console");
    let value = |key: &str| {
        config
            .iter()
            .find(|r| r["key"] == key)
            .map(|r| r["value"].clone())
    };
    assert_eq!(
        value("server_login_retry").as_deref(),
        Some("0.5"),
        "{config:?}"
    );
    assert_eq!(
        value("server_fast_close").as_deref(),
        Some("1"),
        "{config:?}"
    );
    assert_eq!(value("syslog").as_deref(), Some("1"), "{config:?}");

    let writer = s.writer();

    // A planned switchover: for a moment Consul shows both members tagged
    // primary and passing.
    let second = s
        .node
        .cluster
        .members()
        .into_iter()
        .find(|m| *m != first)
        .expect("a second member");
    s.node.cluster.switchover(&second).expect("switchover");
    s.follow(&writer, &second, "the switchover");

    // A node loss: the leader's Patroni and PostgreSQL killed with -9,
    // once the old leader follows as the synchronous standby.
    s.node
        .cluster
        .wait_sync_standby(&first, DEADLINE)
        .unwrap_or_else(|e| panic!("{e}\n{}", s.diagnostics()));
    let killed = s.node.cluster.kill_leader().expect("kill -9 the leader");
    let new = s
        .node
        .cluster
        .wait_leader(Some(&killed), DEADLINE)
        .unwrap_or_else(|e| panic!("{e}\n{}", s.diagnostics()));
    s.follow(&writer, &new, "the kill -9 of the leader");
    let log = s.node.ws.daemon_log();
    assert!(
        log.contains("PgBouncer database PAUSED: no instance is primary")
            && log.contains("PgBouncer database RESUMED: its primary resolved"),
        "{}",
        s.diagnostics()
    );
    wait::until(DEADLINE, "nothing left paused", || {
        s.pgbouncer()
            .show("converge", "SHOW DATABASES")
            .is_ok_and(|rows| rows.iter().all(|r| r["paused"] == "0"))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", s.diagnostics()));

    let mut attempts = writer.finish();
    attempts.sort_by_key(|a| a.id);
    let failures: Vec<&Attempt> = attempts.iter().filter(|a| a.outcome.is_err()).collect();
    let no_such_db: Vec<&&Attempt> = failures
        .iter()
        .filter(|a| matches!(&a.outcome, Err(e) if e.contains("no such database")))
        .collect();
    assert!(
        no_such_db.is_empty(),
        "clients saw `no such database`: {no_such_db:?}\n{}",
        s.diagnostics()
    );

    // Every acknowledged write is in the table on the new leader.
    let stored = psql(s.port_of(&new), "app", "app", "select id from writes")
        .expect("read the table on the leader");
    let stored: std::collections::BTreeSet<u64> =
        stored.lines().filter_map(|l| l.parse().ok()).collect();
    let lost: Vec<u64> = attempts
        .iter()
        .filter(|a| a.outcome.is_ok() && !stored.contains(&a.id))
        .map(|a| a.id)
        .collect();
    let acknowledged = attempts.iter().filter(|a| a.outcome.is_ok()).count();
    assert!(
        lost.is_empty(),
        "acknowledged and then lost: {lost:?} (of {acknowledged})\n{}",
        s.diagnostics()
    );
    eprintln!(
        "{} inserts, {acknowledged} acknowledged, {} failed; errors seen: {:?}",
        attempts.len(),
        failures.len(),
        failures
            .iter()
            .filter_map(|a| a.outcome.as_ref().err())
            .map(|e| e.lines().next().unwrap_or_default().to_string())
            .collect::<std::collections::BTreeSet<_>>()
    );
    s.node.cluster.stop();
}

/// One drill as the clients saw it, each step's time from the drill's
/// start (the kill, or the switchover request).
struct Round {
    /// Patroni promoted the new leader: its REST API answers `/primary`.
    promoted: Duration,
    /// Consul shows the new leader tagged primary and passing.
    consul: Duration,
    /// converge committed `pgbouncer.ini` with `app` on the new leader.
    rendered: Duration,
    /// PgBouncer routes `app` there (`SHOW DATABASES`).
    serving: Duration,
    /// The first write acknowledged after Consul showed the new primary
    /// (started after it, too).
    first_write: Duration,
    /// Longest time between two acknowledged writes around the drill.
    gap: Duration,
    /// Failed inserts, by the first line of what the client saw.
    failures: Vec<String>,
}

/// When each step of a drill was first seen, polled together.
#[derive(Default)]
struct Steps {
    promoted: Option<Duration>,
    consul: Option<Duration>,
    rendered: Option<Duration>,
    serving: Option<Duration>,
}

impl Steps {
    fn done(&self) -> bool {
        self.promoted.is_some()
            && self.consul.is_some()
            && self.rendered.is_some()
            && self.serving.is_some()
    }
}

/// Polls every step of a drill towards `new` started at `t0` until all
/// are seen.
fn steps(s: &Stack, new: &str, t0: Instant) -> Steps {
    let port = s.port_of(new);
    let line = format!("app = host=127.0.0.1 port={port} ");
    let shown = (new.to_string(), "primary".to_string(), true);
    let mut seen = Steps::default();
    wait::until(
        DEADLINE,
        "Patroni, Consul, converge and PgBouncer to move",
        || {
            // A step is asked about until it is seen, not after.
            let mark = |slot: &mut Option<Duration>, now: &dyn Fn() -> bool| {
                if slot.is_none() && now() {
                    *slot = Some(t0.elapsed());
                }
            };
            mark(&mut seen.promoted, &|| s.node.cluster.answers_primary(new));
            mark(&mut seen.consul, &|| {
                converge_testkit::patroni::consul_roles(&s.node.consul, "postgres").contains(&shown)
            });
            mark(&mut seen.rendered, &|| s.config().contains(&line));
            mark(&mut seen.serving, &|| s.serving(port));
            seen.done()
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", s.diagnostics()));
    seen
}

/// Runs one drill (`kill`: kill -9 of the leader, else a switchover) and
/// times it.
fn drill(s: &mut Stack, writer: &Writer, kill: bool) -> Round {
    let old = s.leader();
    let other = s.node.cluster.members().into_iter().find(|m| *m != old);
    let new = other.expect("two members");
    let from = writer.attempts().len();
    let t0 = Instant::now();
    if kill {
        s.node.cluster.kill_leader().expect("kill -9");
    } else {
        s.node.cluster.switchover(&new).expect("switchover");
    }
    let seen = steps(s, &new, t0);
    let consul = seen.consul.unwrap_or_default();
    writer
        .wait_resumed(t0 + consul, "a write after the drill")
        .unwrap_or_else(|e| panic!("{e}\n{}", s.diagnostics()));
    let attempts = writer.attempts();
    let mine = &attempts[from.min(attempts.len())..];
    let first_write = mine
        .iter()
        .filter(|a| a.outcome.is_ok() && a.started >= t0 + consul)
        .map(|a| a.ended.duration_since(t0))
        .min()
        .unwrap_or_default();
    let mut acked: Vec<Instant> = attempts
        .iter()
        .filter(|a| a.outcome.is_ok())
        .map(|a| a.ended)
        .collect();
    acked.sort();
    let gap = acked
        .windows(2)
        .filter(|w| w[1] >= t0)
        .map(|w| w[1].duration_since(w[0]))
        .max()
        .unwrap_or_default();
    if kill {
        s.node
            .cluster
            .restart(&old)
            .expect("the killed member rejoins");
    }
    s.node
        .cluster
        .wait_sync_standby(&old, DEADLINE)
        .expect("the old leader follows");
    Round {
        promoted: seen.promoted.unwrap_or_default(),
        consul,
        rendered: seen.rendered.unwrap_or_default(),
        serving: seen.serving.unwrap_or_default(),
        first_write,
        gap,
        failures: mine
            .iter()
            .filter_map(|a| a.outcome.as_ref().err())
            .map(|e| e.lines().next().unwrap_or_default().to_string())
            .collect(),
    }
}

/// `p50 X max Y` of `f` over `runs`, in milliseconds.
fn stat(runs: &[Round], f: fn(&Round) -> Duration) -> String {
    let mut v: Vec<Duration> = runs.iter().map(f).collect();
    v.sort();
    let ms = |d: Duration| d.as_millis();
    format!("{} / {}", ms(v[v.len() / 2]), ms(v[v.len() - 1]))
}

/// The numbers in BENCHMARKS.md ("PgBouncer through a Patroni failover"):
/// `cargo test -p converge --test patroni_failover -- --ignored --nocapture`
/// (`PATRONI_ROUNDS`, default 5, rounds per drill; `PATRONI_RELOADS`,
/// default `signal,console`, which reloads to measure, one cluster each).
#[test]
#[ignore = "measurement; prints numbers"]
fn measure_patroni_failover() {
    let rounds: usize = std::env::var("PATRONI_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let reloads = std::env::var("PATRONI_RELOADS").unwrap_or_else(|_| "signal,console".into());
    println!(
        "| reload | drill | promoted | Consul shows it | converge rendered | PgBouncer serving | \
         first write | write gap | first write − Consul | failed inserts |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for reload in reloads.split(',') {
        let reload = match reload {
            "signal" => Reload::Signal,
            "console" => Reload::Console,
            other => panic!("PATRONI_RELOADS: unknown reload {other:?}"),
        };
        let (mut s, _) = Stack::with_table(reload);
        let writer = s.writer();
        for (name, kill) in [("switchover", false), ("kill -9 of the leader", true)] {
            let runs: Vec<Round> = (0..rounds).map(|_| drill(&mut s, &writer, kill)).collect();
            let mut kinds = std::collections::BTreeMap::<&str, usize>::new();
            for f in runs.iter().flat_map(|r| &r.failures) {
                *kinds.entry(f.as_str()).or_default() += 1;
            }
            let failed: usize = kinds.values().sum();
            println!(
                "| {reload:?} | {name} | {} | {} | {} | {} | {} | {} | {} | {failed} {kinds:?} |",
                stat(&runs, |r| r.promoted),
                stat(&runs, |r| r.consul),
                stat(&runs, |r| r.rendered),
                stat(&runs, |r| r.serving),
                stat(&runs, |r| r.first_write),
                stat(&runs, |r| r.gap),
                stat(&runs, |r| r.first_write.saturating_sub(r.consul)),
            );
        }
        let attempts = writer.finish();
        assert!(
            !attempts
                .iter()
                .any(|a| matches!(&a.outcome, Err(e) if e.contains("no such database"))),
            "a client saw `no such database`"
        );
        s.node.cluster.stop();
    }
}
