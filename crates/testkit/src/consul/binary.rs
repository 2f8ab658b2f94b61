//! Where the consul binary comes from: `$CONVERGE_CONSUL_BIN`, else
//! `target/peers/bin/consul` (built by `scripts/build-peers.sh`), else
//! `consul` on `PATH`.
//!
//! The tests need the real agent, so a missing binary is an error whose
//! message names every place looked at and how to build it, never a
//! skipped test.

use std::fs;
use std::path::{Path, PathBuf};

/// Finds the consul binary: `$CONVERGE_CONSUL_BIN`, then
/// `target/peers/bin/consul` under the workspace, then `consul` on `PATH`.
///
/// # Errors
///
/// A message naming every place looked at and how to build the binary.
pub fn consul_binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("CONVERGE_CONSUL_BIN") {
        let p = PathBuf::from(p);
        if is_executable(&p) {
            return Ok(p);
        }
        return Err(format!(
            "CONVERGE_CONSUL_BIN={} is not an executable file",
            p.display()
        ));
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let built = workspace.join("target/peers/bin/consul");
    if is_executable(&built) {
        return Ok(built);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("consul");
            if is_executable(&p) {
                return Ok(p);
            }
        }
    }
    Err(format!(
        "no consul binary: CONVERGE_CONSUL_BIN is unset, {} does not exist, and there is no \
         consul on PATH; build it with scripts/build-peers.sh (these tests need the real agent)",
        built.display()
    ))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}
