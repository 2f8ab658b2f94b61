//! What the drill tests share: where reports go, how a drill against a
//! node's agent and daemon is invoked, and the report a drill printed.

use std::path::{Path, PathBuf};
use std::process::Command;

use converge_testkit::consul::ConsulAgent;

use super::{RunningDaemon, Workspace};

/// Where the reports go: a temporary directory, or `CONVERGE_DRILL_KEEP`
/// (BENCHMARKS.md reads its RTOs from kept reports).
pub enum Reports {
    Temp(tempfile::TempDir),
    Kept(PathBuf),
}

impl Reports {
    pub fn new() -> Self {
        match std::env::var_os("CONVERGE_DRILL_KEEP") {
            Some(dir) => Self::Kept(dir.into()),
            None => Self::Temp(tempfile::tempdir().expect("report dir")),
        }
    }

    pub fn path(&self) -> &Path {
        match self {
            Self::Temp(t) => t.path(),
            Self::Kept(p) => p,
        }
    }
}

/// The report directory a drill named on its `report: …/report.md` line
/// of `stdout`, and its `report.json`.
pub fn report_of(stdout: &str) -> (PathBuf, serde_json::Value) {
    let md = stdout
        .lines()
        .find_map(|l| l.strip_prefix("report: "))
        .unwrap_or_else(|| panic!("no report line in {stdout}"));
    let dir: PathBuf = Path::new(md).parent().expect("report dir").into();
    let json = std::fs::read_to_string(dir.join("report.json")).expect("report.json");
    (
        dir,
        serde_json::from_str(&json).expect("report.json parses"),
    )
}

/// `converge drill --scenario SCENARIO` from `ws`, against the node's
/// Consul agent `consul` and its daemon `daemon`, writing its report
/// under `reports`, then `extra`: the arguments every drill of a node
/// with a daemon passes, so each test names only its own probe and fault
/// settings.
pub fn command(
    ws: &Workspace,
    scenario: &str,
    consul: &ConsulAgent,
    daemon: &RunningDaemon,
    reports: &Reports,
    extra: &[&str],
) -> Command {
    let consul = consul.http_url();
    let daemon = format!("127.0.0.1:{}", daemon.listen);
    let reports = reports.path().to_string_lossy().into_owned();
    let mut args = vec![
        "drill",
        "--scenario",
        scenario,
        "--consul",
        &consul,
        "--daemon",
        &daemon,
        "--report-dir",
        &reports,
    ];
    args.extend_from_slice(extra);
    ws.command(&args)
}
