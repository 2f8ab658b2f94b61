//! PgBouncer follows the Postgres primary, end to end: two real PostgreSQL
//! clusters A and B, a real `consul agent -dev` holding their registrations
//! (Patroni-style `primary`/`replica` tags), a real PgBouncer on the file
//! converge renders, and `converge run --consul` as a child process.
//!
//! What is observed is what an application sees: `psql` through PgBouncer
//! and `inet_server_port()`, which names the cluster the query ran on.

mod common;

use std::time::{Duration, Instant};

use common::pgbouncer::{
    pause_reload, pause_reload_within, site, waiting, workspace, Stack, DEADLINE, SIGHUP,
};
use common::Workspace;
use converge_testkit::pgbouncer::Pgbouncer;
use converge_testkit::postgres::{Postgres, Session};
use converge_testkit::{free_port, wait};

#[test]
fn moving_the_primary_tag_moves_pgbouncer_to_the_new_primary() {
    let s = Stack::start(SIGHUP);
    assert_eq!(s.landing(), Ok(s.a.port()), "{}", s.diagnostics());

    s.switch(true);
    s.wait_landing(s.b.port(), "psql through PgBouncer to land on B");
    let cfg = s.config();
    assert!(cfg.contains(&format!("port={} ", s.b.port())), "{cfg}");
    assert!(!cfg.contains(&format!("port={} ", s.a.port())), "{cfg}");

    // And back: the switch is not a one-off.
    s.switch(false);
    s.wait_landing(s.a.port(), "psql through PgBouncer to land on A again");
    assert_eq!(s.daemon.status()["source_error"], serde_json::Value::Null);
}

#[test]
fn with_pause_a_transaction_open_at_the_switch_commits_and_the_next_lands_on_b() {
    let port = free_port();
    // No quiescence: the demotion and the promotion arrive as two Consul
    // changes, and the guard keeps `app` on A through the first, so the
    // switch is one PAUSE, RELOAD, RESUME.
    let s = Stack::start_on(port, &pause_reload(port), &[]);
    assert_eq!(s.landing(), Ok(s.a.port()), "{}", s.diagnostics());
    s.a.sql("app", "app", "create table marks (what text)")
        .expect("table on A");

    // A transaction in flight on A.
    let mut tx = Session::open(port, "app", "app").expect("psql");
    assert_eq!(
        tx.query("BEGIN; select inet_server_port();"),
        Ok(s.a.port().to_string())
    );
    assert_eq!(
        tx.query("insert into marks values ('in flight') returning what;"),
        Ok("in flight".into())
    );

    // Count the PAUSEs so far, and wait for this switch's own.
    let pauses = s.pgbouncer().log().matches("PAUSE").count();
    s.switch(true);
    let b_port = s.b.port();
    s.wait_config(
        |c| c.contains(&format!("port={b_port} ")),
        "app → B committed",
    );
    wait::until(DEADLINE, "converge to ask PgBouncer to PAUSE", || {
        s.pgbouncer().log().matches("PAUSE").count() > pauses
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", s.diagnostics()));

    // A new client while the transaction is open is held, not sent to B
    // (where it would run alongside the open transaction on A): PgBouncer
    // counts it among the clients waiting on `app`.
    let (sender, next) = std::sync::mpsc::channel();
    let pgb_port = s.pgbouncer().port();
    std::thread::spawn(move || {
        let started = Instant::now();
        let r =
            converge_testkit::postgres::psql(pgb_port, "app", "app", "select inet_server_port()");
        let _ = sender.send((r, started.elapsed()));
    });
    wait::until(DEADLINE, "PgBouncer to hold the new query", || {
        waiting(s.pgbouncer(), "app") > 0
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", s.diagnostics()));

    // The open transaction still commits, on A.
    assert_eq!(
        tx.query("insert into marks values ('after switch') returning what;"),
        Ok("after switch".into())
    );
    // COMMIT ends the transaction, PAUSE completes, and the same client's
    // next transaction (transaction pooling) runs on B after RESUME.
    assert_eq!(
        tx.query("COMMIT; select inet_server_port();"),
        Ok(b_port.to_string())
    );
    let status = tx.finish(DEADLINE).expect("psql exits");
    assert!(status.success(), "psql session: {status}");
    assert_eq!(
        s.a.sql(
            "app",
            "app",
            "select string_agg(what, ',' order by what) from marks"
        )
        .expect("read A"),
        "after switch,in flight",
        "the transaction committed on A"
    );

    // The held query, and every one after it, goes to B.
    let (held, waited) = next
        .recv_timeout(DEADLINE)
        .expect("the held query finishes");
    assert_eq!(
        held,
        Ok(b_port.to_string()),
        "held query after RESUME (waited {waited:?})"
    );
    assert_eq!(s.landing(), Ok(b_port), "{}", s.diagnostics());
    assert!(
        s.ws.daemon_log().contains("pgbouncer paused"),
        "{}",
        s.ws.daemon_log()
    );

    // `converge status` asks the same console where `app` goes now.
    let daemon = format!("127.0.0.1:{}", s.daemon.listen);
    let out = s.ws.converge(&[
        "status", "--node", "lb1", "--daemon", &daemon, "--format", "json",
    ]);
    let doc: serde_json::Value = serde_json::from_str(&common::stdout(&out)).expect("status json");
    let app = doc["pgbouncer"]["ok"]
        .as_array()
        .and_then(|dbs| dbs.iter().find(|d| d["name"] == "app"))
        .unwrap_or_else(|| panic!("no `app` in status: {doc}"));
    assert_eq!(app["port"], b_port.to_string(), "{doc}");
}

#[test]
fn pause_holds_only_the_database_that_moves() {
    // A second database, `archive`, always on A, with a transaction open
    // through the switch: a PAUSE of every database would wait for it
    // (up to the 90 s timeout) before `app` could move.
    let port = free_port();
    let site = site(port, &pause_reload(port)).replace(
        "targets:\n",
        "  archive:\n    service: archive\n    role: primary\n    dbname: app\n\
         \x20   pool_mode: transaction\ntargets:\n",
    );
    let s = Stack::start_with(&site, port, &["--wait-min", "2s", "--wait-max", "10s"]);
    let a_port = s.a.port();
    s.consul
        .register_service_with_ttl("archive-a", "archive", a_port, &["primary"])
        .expect("register archive");
    s.wait_config(|c| c.contains("archive = host="), "archive rendered");
    wait::until(DEADLINE, "archive to be served by PgBouncer", || {
        s.pgbouncer()
            .sql("app", "archive", "select inet_server_port()")
            == Ok(a_port.to_string())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", s.diagnostics()));

    let mut report = Session::open(port, "app", "archive").expect("psql");
    assert_eq!(
        report.query("BEGIN; select inet_server_port();"),
        Ok(a_port.to_string())
    );

    s.switch(true);
    s.wait_landing(
        s.b.port(),
        "app to move to B while archive has a transaction open",
    );
    assert!(
        s.ws.daemon_log().contains("pgbouncer paused"),
        "{}",
        s.diagnostics()
    );

    // The archive transaction was neither held nor cut.
    assert_eq!(
        report.query("select inet_server_port();"),
        Ok(a_port.to_string())
    );
    assert_eq!(report.query("COMMIT; select 'done';"), Ok("done".into()));
    let status = report.finish(DEADLINE).expect("psql exits");
    assert!(status.success(), "psql session: {status}");
}

/// An apply whose `PAUSE app` outlasts its 1 s timeout: PgBouncer runs on
/// a file naming cluster A, a transaction stays open on `app`, and the
/// primary moves to a port nobody serves. `extra_targets` is YAML added
/// under `targets:`.
struct TimedOutPause {
    a: Postgres,
    ws: Workspace,
    pgbouncer: Pgbouncer,
    /// The transaction the `PAUSE` waits on.
    tx: Session,
    /// The PgBouncer config before the failed apply.
    before: String,
    /// stdout and stderr of the failed apply.
    report: String,
}

impl TimedOutPause {
    fn run(extra_targets: &str) -> TimedOutPause {
        // No daemon and no Consul: `apply --once` on a catalog file, so the
        // report of the failed reload is the command's own output.
        let a = Postgres::start().expect("cluster A");
        let port = free_port();
        let catalog = |pg_port: u16| {
            format!(
                "services:\n  postgres:\n    - {{id: pg1, node: db1, address: 127.0.0.1, \
                 port: {pg_port}, tags: [primary], health: passing}}\n"
            )
        };
        let site = site(port, &pause_reload_within(port, 1)) + extra_targets;
        let ws = workspace(&site, &catalog(a.port()));
        common::assert_exit(&ws.converge(&["apply", "--once", "--node", "lb1"]), 0);
        let before = std::fs::read_to_string(Self::config(&ws)).expect("config");
        let pgbouncer = Pgbouncer::start(&Self::config(&ws), port).expect("pgbouncer");

        let mut tx = Session::open(port, "app", "app").expect("psql");
        assert_eq!(
            tx.query("BEGIN; select inet_server_port();"),
            Ok(a.port().to_string())
        );

        ws.write("catalog.yaml", &catalog(free_port()));
        let out = ws.converge(&["apply", "--once", "--node", "lb1"]);
        common::assert_exit(&out, 1);
        let report = format!("{}{}", common::stdout(&out), common::stderr(&out));
        assert!(
            report.contains("PAUSE app did not complete; not reloaded; resumed")
                && report.contains("`PAUSE app` did not answer within"),
            "{report}"
        );
        assert_eq!(
            std::fs::read_to_string(Self::config(&ws)).expect("config"),
            before,
            "the previous file is back\n{report}"
        );
        TimedOutPause {
            a,
            ws,
            pgbouncer,
            tx,
            before,
            report,
        }
    }

    fn config(ws: &Workspace) -> std::path::PathBuf {
        ws.root().join("etc/pgbouncer/pgbouncer.ini")
    }

    fn owed(&self) -> std::path::PathBuf {
        self.ws.root().join("var/lib/converge/pending/pgbouncer")
    }

    /// Commits the open transaction and checks its session ends cleanly.
    fn commit(mut self) {
        assert_eq!(
            self.tx.query("COMMIT; select 'committed';"),
            Ok("committed".into())
        );
        let status = self.tx.finish(DEADLINE).expect("psql exits");
        assert!(status.success(), "psql session: {status}");
    }
}

#[test]
fn a_pause_that_outlasts_its_timeout_rolls_back_and_leaves_nothing_paused() {
    let t = TimedOutPause::run("");
    let report = &t.report;
    // PgBouncer never took the new file, so the rollback does not PAUSE
    // again on the same transaction, and leaves no reload owed: the next
    // apply must not hold every database once more.
    assert!(
        report.contains("not reloaded: the program never took the new files")
            && !report.contains("reloading them failed"),
        "{report}"
    );
    assert!(!t.owed().exists(), "a reload is still owed\n{report}");

    // Nothing is left paused: `app` takes new queries, on A.
    let rows = t
        .pgbouncer
        .show("converge", "SHOW DATABASES")
        .expect("console");
    let app = rows.iter().find(|r| r["name"] == "app").expect("app row");
    assert_eq!(app["paused"], "0", "{rows:?}\n{report}");
    assert_eq!(
        t.pgbouncer.sql("app", "app", "select inet_server_port()"),
        Ok(t.a.port().to_string())
    );
    // And the transaction the PAUSE waited on commits.
    t.commit();
}

#[test]
fn a_pause_timeout_after_another_reload_of_the_bundle_reloads_that_one_back() {
    // A second target in the bundle, ordered before `pgbouncer`, whose
    // reload command counts its runs: it takes the new file before the
    // PAUSE times out, so the rollback must reload it onto the old one.
    let dir = tempfile::tempdir().expect("tempdir");
    let runs = dir.path().join("runs");
    let extra = format!(
        "  mirror:\n    template: pgbouncer.ini.tera\n    destination: /etc/mirror/pgbouncer.ini\n\
         \x20   validate: none\n    bundle: pgbouncer\n\
         \x20   reload:\n      command: [/bin/sh, -c, \"echo run >> {}\"]\n",
        runs.display()
    );
    let t = TimedOutPause::run(&extra);
    let report = &t.report;
    let mirror = t.ws.root().join("etc/mirror/pgbouncer.ini");
    assert_eq!(
        std::fs::read_to_string(&mirror).expect("mirror"),
        t.before,
        "{report}"
    );
    // First apply, the forward reload of the failed one, and its rollback.
    assert_eq!(
        std::fs::read_to_string(&runs)
            .expect("runs")
            .lines()
            .count(),
        3,
        "{report}"
    );
    assert!(
        !report.contains("the program never took the new files"),
        "{report}"
    );
    // The rollback reloaded the bundle, PAUSE included, which the open
    // transaction holds up again: the reload stays owed.
    assert!(report.contains("reloading them failed too"), "{report}");
    assert!(t.owed().exists(), "no reload owed\n{report}");
    t.commit();
}

/// `converge status` finds no restart-only setting pending, in JSON and
/// in text.
fn assert_nothing_needs_restart(ws: &Workspace) {
    let (doc, text) = status(ws);
    assert_eq!(
        doc["pgbouncer_restart"],
        serde_json::json!({"ok": []}),
        "{doc}"
    );
    assert!(!text.contains("needs restart"), "{text}");
}

#[test]
fn two_instances_claiming_primary_keep_app_on_its_last_primary_in_plan_and_apply() {
    // What Consul shows for a moment in a Patroni switchover: the new
    // primary registered before the old one's tag or check caught up.
    let one = "services:\n  postgres:\n\
               \x20   - {id: pg/a, node: db1, address: 127.0.0.1, port: 5432, tags: [primary, master], health: passing}\n\
               \x20   - {id: pg/b, node: db2, address: 127.0.0.1, port: 5433, tags: [replica], health: passing}\n";
    let both = one.replace("tags: [replica]", "tags: [primary, master]");
    let ws = Workspace::custom(&site(6432, SIGHUP), one);
    ws.write("manifests/secrets/app", "");
    ws.write("manifests/secrets/converge", "");
    common::assert_exit(&ws.converge(&["apply", "--once", "--node", "lb1"]), 0);
    let config = "etc/pgbouncer/pgbouncer.ini";
    let before = ws.read(&format!("root/{config}"));
    assert!(
        before.contains("app = host=127.0.0.1 port=5432 "),
        "{before}"
    );

    ws.write("catalog.yaml", &both);
    let out = ws.converge(&["plan", "--node", "lb1"]);
    common::assert_exit(&out, 2);
    let text = common::stdout(&out);
    assert!(
        text.contains("held: app")
            && text.contains("2 instances claim to be primary")
            && !text.contains("-app = "),
        "{text}"
    );
    // Exit 3: applied, with a hold.
    common::assert_exit(&ws.converge(&["apply", "--once", "--node", "lb1"]), 3);
    assert_eq!(ws.read(&format!("root/{config}")), before, "app stays on a");

    // Resolved: b alone is primary, and app moves.
    let resolved = both.replacen("tags: [primary, master]", "tags: [replica]", 1);
    ws.write("catalog.yaml", &resolved);
    common::assert_exit(&ws.converge(&["apply", "--once", "--node", "lb1"]), 0);
    let after = ws.read(&format!("root/{config}"));
    assert!(after.contains("app = host=127.0.0.1 port=5433 "), "{after}");
}

#[test]
fn plan_says_needs_restart_for_settings_a_reload_leaves_alone() {
    let catalog =
        "services:\n  postgres:\n    - {id: pg1, node: db1, address: 127.0.0.1, port: 5432, \
                   tags: [primary], health: passing}\n";
    let ws = Workspace::custom(&site(6432, SIGHUP), catalog);
    ws.write("manifests/secrets/app", "");
    ws.write("manifests/secrets/converge", "");
    let out = ws.converge(&["apply", "--once", "--node", "lb1"]);
    common::assert_exit(&out, 0);

    // A primary move alone: reloadable, nothing to restart.
    ws.write("catalog.yaml", &catalog.replace("5432", "5433"));
    let out = ws.converge(&["plan", "--node", "lb1"]);
    assert!(
        !common::stdout(&out).contains("needs restart"),
        "{}",
        common::stdout(&out)
    );

    // The listen port: PgBouncer's RELOAD keeps the old one.
    ws.write("manifests/site.yaml", &site(6433, SIGHUP));
    let out = ws.converge(&["plan", "--node", "lb1"]);
    let text = common::stdout(&out);
    assert!(
        text.contains(
            "needs restart  pgbouncer: changed listen_port, which only a restart applies"
        ),
        "{text}\n{}",
        common::stderr(&out)
    );
    let out = ws.converge(&["plan", "--node", "lb1", "--format", "json"]);
    let json: String = common::stdout(&out).split_whitespace().collect();
    assert!(
        json.contains(r#""needs_restart":["listen_port"]"#),
        "{json}"
    );

    // `apply` (and so the daemon) logs it too.
    let out = ws.converge_env(
        &["apply", "--once", "--node", "lb1"],
        &[("RUST_LOG", "info")],
    );
    common::assert_exit(&out, 0);
    let log = common::stderr(&out);
    assert!(
        log.contains("needs restart") && log.contains("listen_port"),
        "{log}"
    );
}

/// `converge status --node lb1`, as JSON and as text, with no daemon (so
/// it exits 1: who is primary per the catalog cannot be told).
fn status(ws: &Workspace) -> (serde_json::Value, String) {
    let daemon = format!("127.0.0.1:{}", free_port());
    let args = ["status", "--node", "lb1", "--daemon", &daemon];
    let out = ws.converge(&[&args[..], &["--format", "json"]].concat());
    common::assert_exit(&out, 1);
    let doc = serde_json::from_str(&common::stdout(&out)).expect("status json");
    let out = ws.converge(&args);
    common::assert_exit(&out, 1);
    (doc, common::stdout(&out))
}

#[test]
fn status_says_needs_restart_for_a_setting_the_reload_left_in_the_file_only() {
    let catalog =
        "services:\n  postgres:\n    - {id: pg1, node: db1, address: 127.0.0.1, port: 5432, \
                   tags: [primary], health: passing}\n";
    let (old, new) = (free_port(), free_port());
    // Reloads go to the console where PgBouncer listens now, also once the
    // manifest names another listen port.
    let ws = workspace(&site(old, &pause_reload(old)), catalog);
    common::assert_exit(&ws.converge(&["apply", "--once", "--node", "lb1"]), 0);
    let config = ws.root().join("etc/pgbouncer/pgbouncer.ini");
    let mut pgbouncer = Pgbouncer::start(&config, old).expect("pgbouncer");
    assert_nothing_needs_restart(&ws);

    ws.write("manifests/site.yaml", &site(new, &pause_reload(old)));
    let reloads = pgbouncer.log().matches("RELOAD command issued").count();
    let out = ws.converge(&["apply", "--once", "--node", "lb1"]);
    common::assert_exit(&out, 0);
    assert!(
        pgbouncer.log().matches("RELOAD command issued").count() > reloads,
        "{}",
        pgbouncer.log()
    );
    let running = pgbouncer.show("converge", "SHOW CONFIG").expect("console");
    let port = running.iter().find(|r| r["key"] == "listen_port");
    assert_eq!(
        port.map(|r| r["value"].as_str()),
        Some(old.to_string().as_str()),
        "the reload keeps the old port"
    );
    // The files now agree with the manifest: the plan has nothing to say.
    let plan = common::stdout(&ws.converge(&["plan", "--node", "lb1"]));
    assert!(!plan.contains("needs restart"), "{plan}");

    let (doc, text) = status(&ws);
    assert_eq!(
        doc["pgbouncer_restart"],
        serde_json::json!({"ok": [{
            "key": "listen_port",
            "running": old.to_string(),
            "file": new.to_string(),
            "default": false,
        }]}),
        "{doc}"
    );
    assert!(doc["pgbouncer"]["ok"].is_array(), "{doc}");
    assert!(
        text.contains(&format!("needs restart: listen_port {old} → {new}\n")),
        "{text}"
    );

    // PgBouncer down: the comparison says why it was not made, and the
    // rest of the report stays.
    pgbouncer.stop();
    let (doc, _) = status(&ws);
    let err = doc["pgbouncer_restart"]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(err.contains("PgBouncer not reachable"), "{doc}");
    assert!(doc["targets"][0]["sha256"].is_string(), "{doc}");

    // Restarted on the file, and asked on its new port: nothing pending.
    let _pgbouncer = Pgbouncer::start(&config, new).expect("pgbouncer on the new port");
    ws.write("manifests/site.yaml", &site(new, &pause_reload(new)));
    assert_nothing_needs_restart(&ws);
}

/// One switch as a client sees it.
struct Switch {
    /// Tag change (first Consul write) → first new connection on the new
    /// primary.
    routed: Duration,
    /// First failed connection attempt's start → last one's end (zero when
    /// none failed).
    failed: Duration,
    failures: usize,
    /// What the last failed attempt said.
    error: Option<String>,
}

/// Switches the primary back and forth, probing with a new `psql`
/// connection after another (each probe is a process start: ~10–50 ms of
/// resolution on this machine), and times each switch.
fn measure(s: &Stack, switches: usize) -> Vec<Switch> {
    let mut out = Vec::new();
    for i in 0..switches {
        let to_b = i % 2 == 0;
        let new = if to_b { s.b.port() } else { s.a.port() };
        let t0 = Instant::now();
        s.switch(to_b);
        let (mut first_fail, mut last_fail, mut failures, mut error) = (None, None, 0, None);
        let routed = loop {
            let start = t0.elapsed();
            let r = s.landing();
            let end = t0.elapsed();
            match r {
                Ok(p) if p == new => break start,
                Ok(_) => {}
                Err(e) => {
                    error = Some(e);
                    failures += 1;
                    first_fail.get_or_insert(start);
                    last_fail = Some(end);
                }
            }
            assert!(
                end < DEADLINE,
                "switch {i} never routed\n{}",
                s.diagnostics()
            );
        };
        out.push(Switch {
            routed,
            failed: match (first_fail, last_fail) {
                (Some(a), Some(b)) => b - a,
                _ => Duration::ZERO,
            },
            failures,
            error,
        });
    }
    out
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// The numbers in BENCHMARKS.md ("PgBouncer primary switch"):
/// `cargo test --release -p converge --test pgbouncer_primary -- --ignored --nocapture`
/// (`PGB_SWITCHES`, default 20, switches per mode).
#[test]
#[ignore = "measurement; prints numbers, asserts only that every switch routes"]
fn measure_primary_switch() {
    let n: usize = std::env::var("PGB_SWITCHES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let port = free_port();
    let quiet: &[&str] = &["--wait-min", "500ms", "--wait-max", "5s"];
    let modes: [(&str, String, &[&str]); 3] = [
        ("SIGHUP", SIGHUP.into(), &[]),
        ("PAUSE/RELOAD/RESUME", pause_reload(port), &[]),
        (
            "PAUSE/RELOAD/RESUME, --wait-min 500ms",
            pause_reload(port),
            quiet,
        ),
    ];
    for (name, reload, args) in modes {
        let s = Stack::start_on(port, &reload, args);
        let _ = measure(&s, 2); // warm-up: pools, caches
        let runs = measure(&s, n);
        let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
        let routed: Vec<Duration> = runs.iter().map(|r| r.routed).collect();
        let failed: Vec<Duration> = runs.iter().map(|r| r.failed).collect();
        let with_failures = runs.iter().filter(|r| r.failures > 0).count();
        let failures: usize = runs.iter().map(|r| r.failures).sum();
        println!(
            "{name}: {n} switches; tag change → routed p50 {} p99 {} max {}; \
             failed-connection window p50 {} p99 {} max {}; \
             switches with failed connections {with_failures}/{n} ({failures} failed attempts)",
            ms(percentile(routed.clone(), 50.0)),
            ms(percentile(routed.clone(), 99.0)),
            ms(percentile(routed, 100.0)),
            ms(percentile(failed.clone(), 50.0)),
            ms(percentile(failed.clone(), 99.0)),
            ms(percentile(failed, 100.0)),
        );
        if let Some(e) = runs.iter().rev().find_map(|r| r.error.as_deref()) {
            println!(
                "  a failed attempt said: {}",
                e.lines().last().unwrap_or(e).trim()
            );
        }
        drop(s);
    }
}
