//! The console's answers as PgBouncer prints them; the same against a
//! real PgBouncer is in `tests/pgbouncer_console.rs`.

use std::io::Write;

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

/// What `psql` wrote to `f`, read as [`command`] reads its output.
fn read_back(f: &mut std::fs::File) -> Result<String, String> {
    bounded(crate::process::read_back(f, MAX_ANSWER + 1))
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
