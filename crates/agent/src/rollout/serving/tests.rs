use std::path::{Path, PathBuf};

use converge_model::Manifests;

use super::*;
use crate::vrrp::VrrpState::{Backup, Fault, Master, Stop, Unknown};

/// Instance `edge` on `node` with lb1 at 150 and lb2 at 100.
fn edge(node: &str, nopreempt: bool) -> Priorities {
    Priorities {
        node: node.into(),
        all: [("lb1".to_string(), 150), ("lb2".to_string(), 100)].into(),
        nopreempt,
    }
}

fn seen(state: VrrpState) -> Observed {
    Observed {
        name: "edge".into(),
        state,
        note: (state == Unknown).then(|| "keepalived is not running".into()),
        warning: None,
        keepalived: Some(700),
    }
}

#[test]
fn a_reload_that_moves_the_vip_against_the_priorities_fails() {
    // lb2 (100) was BACKUP and took the VIP: its adverts no longer reach
    // lb1, or lb1's no longer reach it.
    let why = vip_rule(&edge("lb2", false), Backup, &seen(Master)).expect_err("took the VIP");
    assert_eq!(
        why,
        "VRRP instance edge was BACKUP before the switch and is MASTER after it \
         (priorities lb1 150, lb2 100): the reload took the VIP though lb2's priority 100 \
         is not the highest"
    );
    // lb1 (150) was MASTER and gave it away.
    let why = vip_rule(&edge("lb1", false), Master, &seen(Backup)).expect_err("gave it away");
    assert!(
        why.contains("was MASTER before the switch and is BACKUP after it"),
        "{why}"
    );
    assert!(why.contains("lb1's priority 150 is the highest"), "{why}");
}

#[test]
fn a_move_the_priorities_call_for_passes_and_no_move_passes() {
    // Priorities swapped: lb2 at 150 takes the VIP, lb1 at 100 yields.
    let swapped = |node: &str| Priorities {
        all: [("lb1".to_string(), 100), ("lb2".to_string(), 150)].into(),
        ..edge(node, false)
    };
    assert_eq!(vip_rule(&swapped("lb2"), Backup, &seen(Master)), Ok(None));
    assert_eq!(vip_rule(&swapped("lb1"), Master, &seen(Backup)), Ok(None));
    // A tie: keepalived decides by address, either may lead.
    let tie = Priorities {
        all: [("lb1".to_string(), 100), ("lb2".to_string(), 100)].into(),
        ..edge("lb2", false)
    };
    assert_eq!(vip_rule(&tie, Backup, &seen(Master)), Ok(None));
    assert_eq!(vip_rule(&tie, Master, &seen(Backup)), Ok(None));
    // Staying put passes whatever the priorities.
    for node in ["lb1", "lb2"] {
        for state in [Master, Backup] {
            assert_eq!(vip_rule(&edge(node, false), state, &seen(state)), Ok(None));
        }
    }
    // A lone node may be MASTER.
    let alone = Priorities {
        all: [("lb1".to_string(), 100)].into(),
        ..edge("lb1", false)
    };
    assert_eq!(vip_rule(&alone, Backup, &seen(Master)), Ok(None));
}

#[test]
fn with_nopreempt_no_priority_justifies_a_move() {
    let why = vip_rule(&edge("lb1", true), Backup, &seen(Master)).expect_err("nopreempt");
    assert!(
        why.contains("priorities lb1 150, lb2 100, nopreempt"),
        "{why}"
    );
    assert!(why.contains("nopreempt says no priority may"), "{why}");
    assert!(vip_rule(&edge("lb2", true), Master, &seen(Backup)).is_err());
    assert_eq!(
        vip_rule(&edge("lb2", true), Master, &seen(Master)),
        Ok(None)
    );
}

#[test]
fn after_the_switch_only_master_or_backup_serve() {
    for after in [Fault, Stop, Unknown] {
        for before in [Master, Backup] {
            let why = vip_rule(&edge("lb2", false), before, &seen(after)).expect_err("not serving");
            assert!(
                why.starts_with(&format!(
                    "VRRP instance edge was {} before the switch and is {}",
                    before.as_str(),
                    after.as_str()
                )),
                "{why}"
            );
        }
        // Never reported before: only FAULT and STOP are a verdict.
        let r = vip_rule(&edge("lb2", false), Unknown, &seen(after));
        assert_eq!(r.is_err(), after != Unknown, "{after:?}: {r:?}");
    }
    let why = vip_rule(&edge("lb2", false), Unknown, &seen(Unknown))
        .expect("not judged")
        .expect("a note");
    assert!(
        why.contains("not judged") && why.contains("not running"),
        "{why}"
    );
    // A state reported only after the switch is judged by its addresses.
    assert_eq!(
        vip_rule(&edge("lb2", false), Unknown, &seen(Master)),
        Ok(None)
    );
}

#[test]
fn addresses_that_disagree_with_the_state_fail() {
    let mut master = seen(Master);
    master.warning = Some("keepalived says MASTER but not every address is on this node".into());
    let why = vip_rule(&edge("lb1", false), Master, &master).expect_err("no VIP");
    assert!(why.ends_with("not every address is on this node"), "{why}");
}

fn route(name: &str, host: &str, port: &str) -> DatabaseRoute {
    DatabaseRoute {
        name: name.into(),
        host: host.into(),
        port: port.into(),
        database: name.into(),
        paused: false,
    }
}

const INI: &str = "[databases]\n\
    app = host=10.0.0.2 port=5433 dbname=app password=s3cret pool_mode=transaction\n\
    ro = host='10.0.0.3' dbname=app\n\
    local = dbname=app\n\
    * = host=10.0.0.9\n\
    [pgbouncer]\nlisten_port = 6432\n";

#[test]
fn show_databases_must_report_each_database_of_the_file_at_its_host_and_port() {
    let live = [
        route("app", "10.0.0.2", "5433"),
        route("ro", "10.0.0.3", "5432"),
        route("local", "", "5432"),
        route("other", "10.0.0.7", "5432"),
    ];
    assert!(mismatches(INI, &live).is_empty());

    let stale = [
        route("app", "10.0.0.1", "5433"),
        route("ro", "10.0.0.3", "6000"),
        route("local", "", "5432"),
    ];
    assert_eq!(
        mismatches(INI, &stale),
        [
            "app: expected host=10.0.0.2 port=5433, PgBouncer has host=10.0.0.1 port=5433",
            "ro: expected host=10.0.0.3 port=5432, PgBouncer has host=10.0.0.3 port=6000",
        ]
    );
    let missing = mismatches(INI, &live[1..]);
    assert_eq!(
        missing,
        ["app: expected host=10.0.0.2 port=5433, not in SHOW DATABASES"]
    );
    assert!(!missing.concat().contains("s3cret"));
}

fn manifest(targets: &str) -> Manifest {
    let text = format!(
        "nodes: {{lb1: {{}}}}\ntargets:\n  pgbouncer:\n    template: pgbouncer.ini.tera\n    \
         destination: /etc/pgbouncer/pgbouncer.ini\n    validate: pgbouncer\n    \
         reload: {targets}\n"
    );
    Manifests::from_sources(Path::new("m"), &[(PathBuf::from("m.yaml"), text)])
        .expect("manifest")
        .manifest
}

#[test]
fn without_a_console_pgbouncer_is_said_unchecked_and_with_one_it_is_asked() {
    let layout = Layout::new("/srv");
    let by_signal = Serving::of(
        &manifest("{signal: {pidfile: /run/pgbouncer.pid, signal: SIGHUP}}"),
        "lb1",
        &layout,
    );
    assert!(by_signal.pgbouncer.is_none());
    assert!(
        by_signal.unchecked().starts_with("PgBouncer's routes"),
        "{}",
        by_signal.unchecked()
    );
    let console = Serving::of(
        &manifest("{pgbouncer: {host: /run/postgresql, port: 6432, user: converge}}"),
        "lb1",
        &layout,
    );
    assert_eq!(console.unchecked(), "");
    let routes = console.pgbouncer.expect("asked over the console");
    assert_eq!(routes.console.host, "/srv/run/postgresql");
    assert_eq!(routes.ini, Path::new("/srv/etc/pgbouncer/pgbouncer.ini"));
    assert!(console.vrrp.is_none());
}

#[test]
fn haproxy_serves_while_a_worker_of_the_pidfiles_master_answers() {
    let worker = Worker {
        pidfile: "/run/haproxy.pid".into(),
        socket: "/run/haproxy/admin.sock".into(),
    };
    assert_eq!(
        worker.judge(true, Ok((901, Some(900))), Some(900)),
        Ok(None)
    );
    let orphan = worker
        .judge(true, Ok((901, Some(1))), Some(900))
        .expect_err("not the master's");
    assert!(
        orphan.contains("worker 901") && orphan.contains("/run/haproxy.pid names (pid 900)"),
        "{orphan}"
    );
    assert!(worker.judge(true, Ok((901, None)), None).is_err());
    let gone = worker
        .judge(true, Err("connection refused".into()), Some(900))
        .expect_err("no answer");
    assert!(
        gone.contains("answered before the switch and no longer does"),
        "{gone}"
    );
    let never = worker.judge(false, Err("connection refused".into()), None);
    assert!(never.is_ok_and(|n| n.is_some_and(|n| n.contains("not judged"))));
}
