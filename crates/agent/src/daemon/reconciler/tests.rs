//! Reconcile passes over a file catalog and plain file targets under a
//! temp root: what the guard keeps across failing bundles and restarts.

use std::path::Path;
use std::time::Duration;

use converge_apply::ApplyOptions;
use converge_testkit::git::run as git;

use super::*;
use crate::daemon::board::Stage;
use crate::daemon::quiescence::Quiescence;
use crate::inputs::Inputs;
use crate::source::{CatalogFrom, FileSource};

/// A reconciler and the file source it reads, as the daemon pairs them.
type Node = (Reconciler, FileSource);

fn node(config: &DaemonConfig, board: &Arc<Board>) -> Node {
    (
        Reconciler::new(config.clone(), board.clone()),
        FileSource::new(config.inputs.catalog.clone()),
    )
}

/// A repository with one guarded backend (`web`, `min_healthy: 1`)
/// listed by `servers`, and a second target, `rejected`, that `extra`
/// makes fail or succeed on its own.
fn repo(dir: &Path, rejected_validator: &str) -> DaemonConfig {
    let manifests = dir.join("manifests");
    let templates = dir.join("templates");
    std::fs::create_dir_all(&manifests).expect("mkdir");
    std::fs::create_dir_all(&templates).expect("mkdir");
    std::fs::write(
        manifests.join("site.yaml"),
        format!(
            "nodes: {{lb1: {{}}}}\n\
             backends:\n  web:\n    service: web\n    min_healthy: 1\n\
             targets:\n  servers:\n    template: servers.tera\n    destination: /etc/servers.txt\n    validate: none\n    reload: none\n\
             \x20 rejected:\n    template: other.tera\n    destination: /etc/other.txt\n    validate: {rejected_validator}\n    reload: none\n"
        ),
    )
    .expect("write manifest");
    std::fs::write(
        templates.join("servers.tera"),
        "{% for be in backends %}{% for s in be.servers %}{{ s.endpoint }}\n{% endfor %}{% endfor %}",
    )
    .expect("write template");
    std::fs::write(templates.join("other.tera"), "{{ node.name }}\n").expect("write template");
    let catalog = dir.join("catalog.yaml");
    DaemonConfig {
        inputs: Inputs {
            manifests,
            templates,
            catalog: catalog.clone(),
            root: dir.join("root"),
            unpacked: None,
        },
        node: "lb1".into(),
        catalog: CatalogFrom::File(catalog),
        quiescence: Quiescence::new(Duration::ZERO, Duration::ZERO),
        resync: Duration::from_secs(300),
        apply: ApplyOptions::default(),
        fleet: None,
    }
}

/// Writes the catalog file with passing `web` instances on these ports.
fn set_web(config: &DaemonConfig, ports: &[u16]) {
    let instances: String = ports
        .iter()
        .map(|p| {
            format!(
                "    - {{id: web-{p}, node: n, address: 127.0.0.1, port: {p}, health: passing}}\n"
            )
        })
        .collect();
    let text = if instances.is_empty() {
        "services:\n  web: []\n".to_string()
    } else {
        format!("services:\n  web:\n{instances}")
    };
    std::fs::write(&config.inputs.catalog, text).expect("write catalog");
}

fn pass(config: &DaemonConfig, board: &Arc<Board>, (reconciler, source): &mut Node) -> String {
    reconciler.load_inputs();
    reconciler.reconcile(source);
    assert_eq!(board.status().input_error, None);
    std::fs::read_to_string(config.inputs.root.join("etc/servers.txt")).expect("servers.txt")
}

#[test]
fn a_bundle_that_keeps_failing_does_not_freeze_the_guard_baseline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = repo(dir.path(), "{command: [\"false\"]}");
    let board = Board::new("lb1", "file");
    let mut r = node(&config, &board);

    set_web(&config, &[8001, 8002, 8003]);
    assert_eq!(
        pass(&config, &board, &mut r),
        "127.0.0.1:8001\n127.0.0.1:8002\n127.0.0.1:8003\n"
    );
    assert!(
        board.status().targets["rejected"].last_error.is_some(),
        "the other target is rejected on every pass"
    );

    // 8001 leaves, 8004 joins: applied although `rejected` fails again.
    set_web(&config, &[8002, 8003, 8004]);
    assert_eq!(
        pass(&config, &board, &mut r),
        "127.0.0.1:8002\n127.0.0.1:8003\n127.0.0.1:8004\n"
    );

    // Everything vanishes: held at the servers that were live, not at a
    // baseline from before the first failure (which still had 8001).
    set_web(&config, &[]);
    assert_eq!(
        pass(&config, &board, &mut r),
        "127.0.0.1:8002\n127.0.0.1:8003\n127.0.0.1:8004\n"
    );
    let holds = board.status().holds;
    assert_eq!(holds.len(), 1, "{holds:?}");
    assert_eq!((holds[0].before, holds[0].after), (3, 0));
}

#[test]
fn a_restarted_daemon_guards_its_first_pass_with_the_stored_baseline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = repo(dir.path(), "none");
    set_web(&config, &[8001, 8002]);
    {
        let board = Board::new("lb1", "file");
        let mut first = node(&config, &board);
        assert_eq!(
            pass(&config, &board, &mut first),
            "127.0.0.1:8001\n127.0.0.1:8002\n"
        );
    }

    // The node reboots; the catalog comes back with nothing healthy yet.
    set_web(&config, &[]);
    let board = Board::new("lb1", "file");
    let mut restarted = node(&config, &board);
    assert_eq!(
        pass(&config, &board, &mut restarted),
        "127.0.0.1:8001\n127.0.0.1:8002\n",
        "the first pass after a restart is held like any other"
    );
    assert_eq!(board.status().holds.len(), 1);

    // Recovery goes through, and is what the next restart starts from.
    set_web(&config, &[8003]);
    assert_eq!(pass(&config, &board, &mut restarted), "127.0.0.1:8003\n");
    restarted.0.baseline_writer.flush();
    let stored = baseline::load(&Layout::new(&config.inputs.root)).expect("stored baseline");
    assert_eq!(stored.service("web").expect("web").instances.len(), 1);
}

fn catalog_failures(board: &Board) -> u64 {
    board
        .metrics
        .failures
        .get_or_create(&Stage {
            stage: "catalog".into(),
        })
        .get()
}

fn snapshot_age(board: &Board) -> f64 {
    board.metrics_text();
    board.metrics.snapshot_age_seconds.get()
}

#[test]
fn a_failing_source_and_a_lasting_hold_count_once_and_age_the_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = repo(dir.path(), "none");
    let board = Board::new("lb1", "file");
    let mut r = node(&config, &board);
    set_web(&config, &[8001]);
    pass(&config, &board, &mut r);
    assert_eq!(snapshot_age(&board), 0.0, "a healthy source is current");

    // Two passes over a broken catalog file: one failure episode.
    std::fs::write(&config.inputs.catalog, "services: [").expect("write");
    for _ in 0..2 {
        assert_eq!(
            pass(&config, &board, &mut r),
            "127.0.0.1:8001\n",
            "last good snapshot"
        );
    }
    assert!(board.status().source_error.is_some());
    assert_eq!(board.metrics.source_errors.get(), 1);
    assert_eq!(catalog_failures(&board), 1);
    assert!(snapshot_age(&board) > 0.0, "the snapshot in force is aging");

    // Back, then a hold that lasts two passes: one hold counted.
    set_web(&config, &[8001]);
    pass(&config, &board, &mut r);
    assert_eq!(snapshot_age(&board), 0.0);
    assert_eq!(board.status().source_error, None);
    set_web(&config, &[]);
    for _ in 0..2 {
        assert_eq!(pass(&config, &board, &mut r), "127.0.0.1:8001\n", "held");
    }
    assert_eq!(board.status().holds.len(), 1);
    assert_eq!(board.metrics.guard_holds.get(), 1);
    assert_eq!(board.metrics.held_backends.get(), 1);
}

#[test]
fn a_source_failing_from_the_start_shows_a_growing_snapshot_age() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = repo(dir.path(), "none");
    std::fs::write(&config.inputs.catalog, "services: [").expect("write");
    let board = Board::new("lb1", "file");
    let mut r = node(&config, &board);
    r.0.load_inputs();
    r.0.reconcile(&mut r.1);
    assert!(board.status().source_error.is_some());
    let first = snapshot_age(&board);
    assert!(first > 0.0, "no snapshot was ever current: {first}");
    r.0.reconcile(&mut r.1);
    assert!(snapshot_age(&board) > first, "the age grows");
}

/// The value of the first sample line starting with `series`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[test]
fn every_series_an_alert_needs_exists_from_the_first_pass() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = repo(dir.path(), "{command: [\"false\"]}");
    let board = Board::new("lb1", "file");
    let mut r = node(&config, &board);
    let before = board.metrics_text();
    assert_eq!(
        sample(&before, "converge_failures_total{stage=\"render\"}"),
        Some(0.0),
        "{before}"
    );
    assert!(
        before.contains("converge_build_info{version=\""),
        "{before}"
    );
    set_web(&config, &[8001]);
    pass(&config, &board, &mut r);
    let text = board.metrics_text();
    let target = |name: &str, t: &str| sample(&text, &format!("{name}{{target=\"{t}\"}}"));
    // `servers` applied; `rejected` is refused by its validator.
    assert_eq!(
        target("converge_target_failures_total", "servers"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        target("converge_target_failures_total", "rejected"),
        Some(1.0),
        "{text}"
    );
    assert!(target("converge_target_last_success_timestamp_seconds", "servers") > Some(0.0));
    assert_eq!(
        target("converge_target_last_success_timestamp_seconds", "rejected"),
        Some(0.0),
        "present before its first success: {text}"
    );
    assert_eq!(
        sample(&text, "converge_pass_duration_seconds_count"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "converge_validate_duration_seconds_count"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "converge_reload_duration_seconds_count"),
        Some(1.0),
        "{text}"
    );
}

#[test]
fn a_target_a_hold_keeps_from_changing_is_reported_held_by_that_backend() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = repo(dir.path(), "none");
    let board = Board::new("lb1", "file");
    let mut r = node(&config, &board);
    set_web(&config, &[8001, 8002]);
    pass(&config, &board, &mut r);
    let outcome = |t: &str| board.status().targets[t].outcome.clone();
    assert_eq!(outcome("servers").as_deref(), Some("applied"));

    // Every `web` instance gone: held. Only the target rendering `web`
    // is held; the other one renders no backend and is just unchanged.
    set_web(&config, &[]);
    pass(&config, &board, &mut r);
    let status = board.status();
    assert_eq!(outcome("servers").as_deref(), Some("held"));
    assert_eq!(status.targets["servers"].held_by, ["web"]);
    assert_eq!(outcome("rejected").as_deref(), Some("unchanged"));
    assert!(status.targets["rejected"].held_by.is_empty());
    let report = crate::daemon::node_report::node_report(&status);
    assert_eq!(report.targets["servers"].outcome.as_deref(), Some("held"));
    assert_eq!(report.targets["servers"].held_by, ["web"]);
    assert!(!report.converged);

    // The catalog recovers: applied, held by nothing.
    set_web(&config, &[8003]);
    pass(&config, &board, &mut r);
    assert_eq!(outcome("servers").as_deref(), Some("applied"));
    assert!(board.status().targets["servers"].held_by.is_empty());
}

#[test]
fn a_pass_woken_only_by_the_catalog_neither_reloads_nor_renames_the_inputs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = repo(dir.path(), "none");
    git(dir.path(), &["init", "--quiet"]);
    git(dir.path(), &["add", "manifests", "templates"]);
    git(dir.path(), &["commit", "--quiet", "-m", "first"]);
    let first = git(dir.path(), &["rev-parse", "--short", "HEAD"]);
    let board = Board::new("lb1", "file");
    let (reconciler, source) = &mut node(&config, &board);
    let revision = || board.status().revision.map(|r| r.to_string());

    set_web(&config, &[8001]);
    reconciler.woken(true, source);
    assert_eq!(revision(), Some(first.clone()));

    // A commit renames the files without changing them; only a pass that
    // reloads the inputs asks Git, so a catalog change alone keeps the
    // name it had (and is applied all the same).
    git(
        dir.path(),
        &["commit", "--quiet", "--allow-empty", "-m", "second"],
    );
    let second = git(dir.path(), &["rev-parse", "--short", "HEAD"]);
    set_web(&config, &[8002]);
    reconciler.woken(false, source);
    assert_eq!(
        revision(),
        Some(first),
        "Git was asked on a catalog-only pass"
    );
    let servers = config.inputs.root.join("etc/servers.txt");
    assert_eq!(
        std::fs::read_to_string(&servers).expect("servers.txt"),
        "127.0.0.1:8002\n"
    );

    reconciler.woken(true, source);
    assert_eq!(revision(), Some(second));
}
