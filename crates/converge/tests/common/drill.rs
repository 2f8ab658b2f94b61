//! What the drill tests share: where reports go, and the report a drill
//! printed.

use std::path::{Path, PathBuf};

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
