//! The PgBouncer admin console against a real PgBouncer (and, for PAUSE,
//! a real PostgreSQL): reading `SHOW DATABASES` and `SHOW CONFIG` whole,
//! and a `PAUSE` past its timeout inside a real `apply`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use converge_apply::{apply, ApplyOptions, Outcome};
use converge_model::manifest::{PgbouncerAdmin, Validator};
use converge_model::{Layout, ReloadAction, RenderedFile, RenderedSet};
use converge_programs::pgbouncer::console::{pending_restart, show_databases};
use converge_testkit::free_port;
use converge_testkit::pgbouncer::{trust_config, Pgbouncer};
use converge_testkit::postgres::{Postgres, Session};

/// How the tests reach a console [`trust_config`] set up in `dir`.
fn console(dir: &Path, port: u16, timeout_secs: u64) -> PgbouncerAdmin {
    PgbouncerAdmin {
        host: dir.display().to_string(),
        port,
        user: "admin".into(),
        pause: true,
        timeout_secs,
        unclear_primary_pause_secs: 0,
    }
}

#[test]
fn show_databases_reads_every_row_of_a_long_answer() {
    // 300 databases make an answer of about 20 KiB; none of them need a
    // server, since PgBouncer connects only when a client logs in.
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let databases: String = (0..300)
        .map(|i| {
            format!(
                "db{i:03} = host=127.0.0.1 port={} dbname=db{i:03}\n",
                10_000 + i
            )
        })
        .collect();
    let config = trust_config(dir.path(), port, &databases).expect("config");
    let _pgbouncer = Pgbouncer::start(&config, port).expect("pgbouncer");

    let routes = show_databases(&console(dir.path(), port, 5)).expect("SHOW DATABASES");
    assert_eq!(routes.len(), 300);
    let last = routes.iter().find(|r| r.name == "db299").expect("db299");
    assert_eq!(last.port, "10299");
    assert!(routes.iter().all(|r| !r.paused), "{routes:?}");
}

#[test]
fn pending_restart_compares_with_a_real_pgbouncer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config = trust_config(dir.path(), port, "").expect("config");
    let _pgbouncer = Pgbouncer::start(&config, port).expect("pgbouncer");
    let admin = console(dir.path(), port, 5);
    let ini = std::fs::read_to_string(&config).expect("read config");

    // What it started on: nothing pending, defaults and the mode included.
    assert_eq!(pending_restart(&admin, ini.as_bytes()), Ok(vec![]));

    let changed = ini.replace(&format!("listen_port = {port}"), "listen_port = 0x1921")
        + "unix_socket_mode = 0700\nso_reuseport = 1\n";
    let pending: Vec<(String, String, String, bool)> = pending_restart(&admin, changed.as_bytes())
        .expect("SHOW CONFIG")
        .into_iter()
        .map(|p| (p.key, p.running, p.file, p.default))
        .collect();
    let want = |key: &str, running: &str, file: &str| {
        (
            key.to_string(),
            running.to_string(),
            file.to_string(),
            false,
        )
    };
    assert_eq!(
        pending,
        [
            want("listen_port", &port.to_string(), "6433"),
            want("so_reuseport", "0", "1"),
            want("unix_socket_mode", "0777", "0700"),
        ]
    );

    let err = pending_restart(&admin, format!("%include /etc/x.ini\n{ini}").as_bytes())
        .expect_err("an include is not followed");
    assert!(err.contains("%include"), "{err}");
}

#[test]
fn a_pause_past_its_timeout_rolls_back_and_resumes_every_database_it_paused() {
    let pg = Postgres::start().expect("postgres");
    let root = tempfile::tempdir().expect("tempdir");
    let layout = Layout::new(root.path());
    let dir = layout.path("/etc/pgbouncer");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let port = free_port();
    // Two names for the one database; `app` sorts first, so its PAUSE
    // completes before `archive`'s waits on the open transaction.
    let databases = |p: u16| {
        format!(
            "app = host=127.0.0.1 port={p} dbname=app pool_mode=transaction\n\
             archive = host=127.0.0.1 port={p} dbname=app pool_mode=transaction\n"
        )
    };
    let config = trust_config(&dir, port, &databases(pg.port())).expect("config");
    let before = std::fs::read_to_string(&config).expect("config");
    let pgbouncer = Pgbouncer::start(&config, port).expect("pgbouncer");
    let mut tx = Session::open(port, "app", "archive").expect("psql");
    assert_eq!(tx.query("BEGIN; select 'open';").expect("query"), "open");

    // Both databases move, so both are PAUSEd.
    let file = RenderedFile {
        target: "pgbouncer".into(),
        destination: config.clone(),
        bytes: before
            .replace(&databases(pg.port()), &databases(free_port()))
            .into_bytes(),
        mode: 0o644,
        owner: None,
        group: None,
        validate: Validator::Pgbouncer,
        reload: ReloadAction::Pgbouncer(console(&dir, port, 1)),
        bundle: "pgbouncer".into(),
        secret: false,
        backups: 2,
    };
    let set = RenderedSet {
        node: "lb1".into(),
        layout,
        files: BTreeMap::from([("pgbouncer".to_string(), file)]),
        rejections: Vec::new(),
        warnings: Vec::new(),
        secrets: Vec::new(),
    };
    let report = apply(&set, &ApplyOptions::default()).expect("apply runs");
    let Outcome::RolledBack { error } = &report.bundles[0].outcome else {
        panic!("not rolled back: {report:?}");
    };
    assert!(
        error.contains("PAUSE archive did not complete; not reloaded; resumed")
            && error.contains("not reloaded: the program never took the new files"),
        "{error}"
    );
    assert_eq!(
        std::fs::read_to_string(&config).expect("config"),
        before,
        "{error}"
    );

    // Neither database is left paused: both take new queries.
    let rows = pgbouncer.show("admin", "SHOW DATABASES").expect("console");
    for db in ["app", "archive"] {
        let row = rows.iter().find(|r| r["name"] == db).expect("row");
        assert_eq!(row["paused"], "0", "{db} left paused: {rows:?}");
        assert_eq!(
            pgbouncer.sql("app", db, "select 'served'"),
            Ok("served".into()),
            "{db}"
        );
    }
    // The transaction the PAUSE waited on was not cut.
    assert_eq!(
        tx.query("COMMIT; select 'committed';").expect("query"),
        "committed"
    );
    let status = tx.finish(Duration::from_secs(20)).expect("psql exits");
    assert!(status.success(), "{status}");
}
