//! The shipped Grafana dashboard and Prometheus alert rules only name
//! metrics the daemon exports: a renamed metric would otherwise leave a
//! panel empty or an alert silent, with nothing failing.

use std::path::Path;

use converge_agent::daemon::board::Board;

fn repo_file(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `converge_…` name in `text`.
fn metric_names(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("converge_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out.sort();
    out.dedup();
    out
}

/// A fresh daemon's exposition, with one target so per-target series
/// exist.
fn exported() -> String {
    let board = Board::new("lb1", "file");
    board.targets(["haproxy".to_string()]);
    board.metrics_text()
}

fn assert_all_exported(file: &str) {
    let exported = exported();
    let names = metric_names(&repo_file(file));
    assert!(!names.is_empty(), "{file} names no converge metric");
    for name in names {
        let sampled = exported
            .lines()
            .any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")));
        assert!(
            sampled,
            "{file} uses `{name}`, which /metrics does not export:\n{exported}"
        );
    }
}

#[test]
fn the_dashboard_names_only_exported_metrics() {
    let text = repo_file("examples/grafana/converge-dashboard.json");
    let doc: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    assert!(
        doc["panels"].as_array().is_some_and(|p| p.len() >= 8),
        "panels"
    );
    assert_all_exported("examples/grafana/converge-dashboard.json");
}

#[test]
fn the_alert_rules_name_only_exported_metrics() {
    assert_all_exported("examples/prometheus/converge-alerts.yml");
}
