//! The console's answers as PgBouncer prints them, and the reload against
//! a real PgBouncer in front of a real PostgreSQL.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use converge_testkit::free_port;
use converge_testkit::pgbouncer::{trust_config, Pgbouncer};
use converge_testkit::postgres::{Postgres, Session};

use super::*;

#[test]
fn pause_names_each_moved_database_or_none_or_all() {
    let only = |names: &[&str]| PauseScope::Only(names.iter().map(|n| n.to_string()).collect());
    assert_eq!(only(&["app", "app_ro"]).arguments(), [" app", " app_ro"]);
    assert!(only(&[]).arguments().is_empty(), "nothing moved: no PAUSE");
    assert_eq!(PauseScope::All.arguments(), [""]);
    // A name the console would not read as one word pauses everything.
    assert_eq!(only(&["app", "odd name"]).arguments(), [""]);
}

/// Rows as `psql -A -z` prints them: a NUL between fields.
fn answer(rows: &[&[&str]]) -> String {
    rows.iter()
        .map(|r| r.join("\0"))
        .collect::<Vec<_>>()
        .join("\n")
}

const HEADER_1_18: &[&str] = &[
    "name",
    "host",
    "port",
    "database",
    "force_user",
    "pool_size",
    "min_pool_size",
    "reserve_pool",
    "pool_mode",
    "max_connections",
    "current_connections",
    "paused",
    "disabled",
];

fn route(name: &str, host: &str, port: &str, paused: bool) -> DatabaseRoute {
    DatabaseRoute {
        name: name.into(),
        host: host.into(),
        port: port.into(),
        database: name.into(),
        paused,
    }
}

#[test]
fn show_databases_of_1_18_reads_by_column_name() {
    let text = answer(&[
        HEADER_1_18,
        &[
            "app",
            "10.0.0.5",
            "5432",
            "app",
            "",
            "20",
            "0",
            "5",
            "transaction",
            "0",
            "1",
            "1",
            "0",
        ],
        &[
            "pgbouncer",
            "",
            "6432",
            "pgbouncer",
            "pgbouncer",
            "2",
            "0",
            "0",
            "statement",
            "0",
            "0",
            "0",
            "0",
        ],
        &[
            "reports", "10.0.0.6", "5433", "reports", "", "20", "0", "0", "session", "0", "0", "0",
            "0",
        ],
    ]);
    assert_eq!(
        parse_databases(&text),
        Ok(vec![
            route("app", "10.0.0.5", "5432", true),
            route("reports", "10.0.0.6", "5433", false),
        ])
    );
}

#[test]
fn show_databases_with_a_column_inserted_reads_the_same() {
    // A later PgBouncer adds `server_lifetime` before `pool_mode`: `paused`
    // moves one column right, and the 12th field is `current_connections`.
    let mut header = HEADER_1_18.to_vec();
    header.insert(8, "server_lifetime");
    let text = answer(&[
        &header,
        &[
            "app",
            "10.0.0.5",
            "5432",
            "app",
            "",
            "20",
            "0",
            "5",
            "3600",
            "transaction",
            "0",
            "1",
            "0",
            "0",
        ],
    ]);
    assert_eq!(
        parse_databases(&text),
        Ok(vec![route("app", "10.0.0.5", "5432", false)])
    );
}

#[test]
fn show_databases_without_a_needed_column_or_with_a_short_row_is_an_error() {
    let without: Vec<&str> = HEADER_1_18
        .iter()
        .copied()
        .filter(|c| *c != "paused")
        .collect();
    let err = parse_databases(&answer(&[&without])).expect_err("no paused column");
    assert!(err.contains("no `paused` column"), "{err}");

    let err = parse_databases(&answer(&[HEADER_1_18, &["app", "10.0.0.5", "5432"]]))
        .expect_err("short row");
    assert!(err.contains("row 1 has 3 fields"), "{err}");
}

#[test]
fn an_answer_beyond_the_bound_is_refused_not_cut() {
    let mut f = tempfile::tempfile().expect("tempfile");
    let line = "x".repeat(1023) + "\n";
    for _ in 0..(MAX_ANSWER / 1024) {
        f.write_all(line.as_bytes()).expect("write");
    }
    let whole = read_back(&mut f).expect("exactly the bound is read");
    assert_eq!(whole.len() as u64, MAX_ANSWER - 1, "all of it, trimmed");
    f.write_all(b"y").expect("one byte more");
    let err = read_back(&mut f).expect_err("over the bound");
    assert!(err.contains("more than 4 MiB"), "{err}");
}

/// How the tests reach a console [`trust_config`] set up in `dir`.
fn console(dir: &Path, port: u16, timeout_secs: u64) -> PgbouncerAdmin {
    PgbouncerAdmin {
        host: dir.display().to_string(),
        port,
        user: "admin".into(),
        pause: true,
        timeout_secs,
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
fn a_pause_that_outlasts_the_timeout_resumes_every_database_it_paused() {
    let pg = Postgres::start().expect("postgres");
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    // Two names for the one database; `app` sorts first, so its PAUSE
    // completes before `archive`'s waits on the open transaction.
    let databases = format!(
        "app = host=127.0.0.1 port={p} dbname=app pool_mode=transaction\n\
         archive = host=127.0.0.1 port={p} dbname=app pool_mode=transaction\n",
        p = pg.port()
    );
    let config = trust_config(dir.path(), port, &databases).expect("config");
    let pgbouncer = Pgbouncer::start(&config, port).expect("pgbouncer");
    let mut report = Session::open(port, "app", "archive").expect("psql");
    assert_eq!(
        report.query("BEGIN; select 'open';").expect("query"),
        "open"
    );

    let admin = console(dir.path(), port, 1);
    let scope = PauseScope::Only(["app".to_string(), "archive".to_string()].into());
    let err = reload(&ReloadAction::Pgbouncer(admin.clone()), &admin, &scope)
        .expect_err("PAUSE archive waits past the timeout");
    assert_eq!(
        err.detail,
        "PAUSE archive did not complete; not reloaded; resumed"
    );
    assert!(
        err.stderr.contains("`PAUSE archive` did not answer within"),
        "{err:?}"
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
        report.query("COMMIT; select 'committed';").expect("query"),
        "committed"
    );
    let status = report.finish(Duration::from_secs(20)).expect("psql exits");
    assert!(status.success(), "{status}");
}

/// `SHOW CONFIG`'s restart-only rows as PgBouncer 1.18 printed them for a
/// config setting `listen_port = 6432`, `unix_socket_dir = /tmp/pgb` and
/// `pidfile = /tmp/pgb/pgbouncer.pid`, started with `-u postgres`.
const CONFIG_1_18: &[&[&str]] = &[
    &["key", "value", "default", "changeable"],
    &["default_pool_size", "20", "20", "yes"],
    &["disable_pqexec", "0", "0", "no"],
    &["job_name", "pgbouncer", "pgbouncer", "no"],
    &["listen_addr", "127.0.0.1", "", "no"],
    &["listen_backlog", "128", "128", "no"],
    &["listen_port", "6432", "6432", "no"],
    &["pidfile", "/tmp/pgb/pgbouncer.pid", "", "no"],
    &["pkt_buf", "4096", "4096", "no"],
    &["resolv_conf", "", "", "no"],
    &["so_reuseport", "0", "0", "no"],
    &["unix_socket_dir", "/tmp/pgb", "/tmp", "no"],
    &["unix_socket_group", "", "", "no"],
    &["unix_socket_mode", "511", "0777", "no"],
    &["user", "postgres", "", "no"],
];

const INI: &str = "[databases]\napp = host=10.0.0.5\n[pgbouncer]\nlisten_addr = 127.0.0.1\n\
                   listen_port = 6432\nunix_socket_dir = /tmp/pgb\n\
                   pidfile = /tmp/pgb/pgbouncer.pid\n";

fn pending(key: &str, running: &str, file: &str, default: bool) -> PendingRestart {
    PendingRestart {
        key: key.into(),
        running: running.into(),
        file: file.into(),
        default,
    }
}

#[test]
fn the_file_pgbouncer_runs_needs_no_restart_however_its_numbers_are_spelt() {
    let config = answer(CONFIG_1_18);
    assert_eq!(compare_config(&config, INI), Ok(vec![]));
    // Hex and octal as PgBouncer reads them, the mode it prints in decimal,
    // and `user`, which `-u` overrides, differing from the file.
    let spelt = INI.replace("6432", "0x1920")
        + "LISTEN_BACKLOG = 0200\nunix_socket_mode = 0777\nuser = pgbouncer\n";
    assert_eq!(compare_config(&config, &spelt), Ok(vec![]));
}

#[test]
fn a_restart_only_key_the_file_changes_or_drops_is_pending() {
    let ini = INI
        .replace("listen_port = 6432", "listen_port = 6433")
        .replace("pidfile = /tmp/pgb/pgbouncer.pid\n", "")
        + "unix_socket_mode = 0700\n[other]\njob_name = x\n";
    assert_eq!(
        compare_config(&answer(CONFIG_1_18), &ini),
        Ok(vec![
            pending("listen_port", "6432", "6433", false),
            pending("pidfile", "/tmp/pgb/pgbouncer.pid", "", true),
            pending("unix_socket_mode", "0777", "0700", false),
        ])
    );
}

#[test]
fn without_a_default_column_a_key_the_file_does_not_set_makes_no_claim() {
    let without: Vec<Vec<&str>> = CONFIG_1_18
        .iter()
        .map(|row| {
            row.iter()
                .enumerate()
                .filter(|(i, _)| *i != 2)
                .map(|(_, f)| *f)
                .collect()
        })
        .collect();
    let rows: Vec<&[&str]> = without.iter().map(Vec::as_slice).collect();
    let ini = INI.replace(
        "pidfile = /tmp/pgb/pgbouncer.pid\n",
        "listen_backlog = 64\n",
    );
    assert_eq!(
        compare_config(&answer(&rows), &ini),
        Ok(vec![pending("listen_backlog", "128", "64", false)])
    );
    let err = compare_config(&answer(&[&["key", "default"]]), INI).expect_err("no value");
    assert!(err.contains("SHOW CONFIG has no `value` column"), "{err}");
}

#[test]
fn numbers_read_as_strtol_with_base_0() {
    assert_eq!(c_integer("0x80"), Some(128));
    assert_eq!(c_integer("0X1f"), Some(31));
    assert_eq!(c_integer("010000"), Some(4096));
    assert_eq!(c_integer("0"), Some(0));
    assert_eq!(c_integer("6432"), Some(6432));
    for not in ["", "08", "0x", "+5", "0x-5", "12 ", "abc"] {
        assert_eq!(c_integer(not), None, "{not:?}");
    }
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
    assert_eq!(
        pending_restart(&admin, changed.as_bytes()),
        Ok(vec![
            pending("listen_port", &port.to_string(), "6433", false),
            pending("so_reuseport", "0", "1", false),
            pending("unix_socket_mode", "0777", "0700", false),
        ])
    );

    let err = pending_restart(&admin, format!("%include /etc/x.ini\n{ini}").as_bytes())
        .expect_err("an include is not followed");
    assert!(err.contains("%include"), "{err}");
}
