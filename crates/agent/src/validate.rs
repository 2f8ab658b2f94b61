//! `converge validate`: the manifest repository's CI.
//!
//! Renders every node against the catalog file with paths rooted in a
//! scratch directory, writes each file there, and runs its target's real
//! validator on it, bundle siblings included. Nothing outside the scratch
//! directory is touched. Every problem is collected, not just the first:
//! manifest and template problems all together by
//! [`Inputs::load_config`](crate::inputs::Inputs::load_config) before
//! this runs, then every node's render and every file's validator here.
//! The scratch directory holds secrets, so it is private and cleaned up
//! even after a killed run (`validate/scratch.rs`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use converge_model::{Catalog, Layout};
use converge_programs::validate::{validate, Candidate};
use serde::Serialize;

use crate::error::AgentError;
use crate::pass;
use crate::pass::Prepared;

mod scratch;

/// The outcome for one rendered file.
#[derive(Debug, Serialize)]
pub struct FileCheck {
    /// Node name.
    pub node: String,
    /// Target name.
    pub target: String,
    /// `None` when the program accepted the file.
    pub error: Option<String>,
}

/// Everything `validate` found.
#[derive(Debug, Default, Serialize)]
pub struct RepoReport {
    /// Per node and target.
    pub files: Vec<FileCheck>,
    /// Problems that stopped a node from rendering at all.
    pub node_errors: Vec<(String, String)>,
    /// Catalog instances left out while rendering (per node).
    pub left_out: Vec<String>,
    /// Render warnings (per node).
    pub warnings: Vec<String>,
}

impl RepoReport {
    /// True when every node rendered and every file was accepted.
    pub fn ok(&self) -> bool {
        self.node_errors.is_empty() && self.files.iter().all(|f| f.error.is_none())
    }
}

/// Renders `nodes` (every node when empty) against `catalog` and checks
/// every file. Each node goes through the same [`pass`] as `plan` and
/// `apply`, with no baseline (a repository has no live state to guard).
pub fn check(
    prepared: &Prepared,
    catalog: &Catalog,
    nodes: &[String],
) -> Result<RepoReport, AgentError> {
    let scratch = scratch::create(&std::env::temp_dir()).map_err(AgentError::Scratch)?;
    let all: Vec<String> = if nodes.is_empty() {
        prepared.manifests.manifest.nodes.keys().cloned().collect()
    } else {
        nodes.to_vec()
    };
    let mut report = RepoReport::default();
    for node in &all {
        let layout = Layout::new(scratch.path().join(node));
        let none = BTreeSet::new();
        let set = match pass::run(prepared, node, &layout, catalog.clone(), None, &none) {
            Ok(pass) => pass.set,
            Err(e) => {
                report.node_errors.push((node.clone(), e.to_string()));
                continue;
            }
        };
        report
            .left_out
            .extend(set.rejections.iter().map(|r| format!("{node}: {r}")));
        report
            .warnings
            .extend(set.warnings.iter().map(|w| format!("{node}: {w}")));
        // Write every file where it would live under the scratch root, so
        // references between bundle members resolve to real files.
        for f in set.files.values() {
            scratch::write(&f.destination, &f.bytes, f.mode).map_err(AgentError::Scratch)?;
        }
        for f in set.files.values() {
            let siblings: Vec<(PathBuf, PathBuf)> = set
                .files
                .values()
                .filter(|s| s.bundle == f.bundle)
                .map(|s| (s.destination.clone(), s.destination.clone()))
                .collect();
            let result = validate(&Candidate {
                file: f,
                staged: &f.destination,
                siblings: &siblings,
            });
            report.files.push(FileCheck {
                node: node.clone(),
                target: f.target.clone(),
                error: result
                    .err()
                    .map(|e| set.redact(&as_on_node(&e.to_string(), node, &layout.root))),
            });
        }
    }
    Ok(report)
}

/// A validator's message with the scratch directory taken out of every
/// path, so it names the node and the destination an operator knows
/// (`(candidate for lb1) /etc/haproxy/haproxy.cfg:10`), not a directory
/// that is gone by the time it is read.
fn as_on_node(message: &str, node: &str, root: &Path) -> String {
    let root = root.to_string_lossy();
    message
        .replace(
            &format!("(candidate) {root}"),
            &format!("(candidate for {node}) "),
        )
        .replace(&*root, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_node_and_the_destination() {
        let root = Path::new("/tmp/converge-validate-7-x/lb1");
        let message = "target haproxy: `haproxy -c -f /tmp/converge-validate-7-x/lb1/etc/haproxy/haproxy.cfg` \
                       rejected the candidate:\n    [ALERT] [(candidate) /tmp/converge-validate-7-x/lb1/etc/haproxy/haproxy.cfg:10]";
        assert_eq!(
            as_on_node(message, "lb1", root),
            "target haproxy: `haproxy -c -f /etc/haproxy/haproxy.cfg` rejected the candidate:\n    \
             [ALERT] [(candidate for lb1) /etc/haproxy/haproxy.cfg:10]"
        );
    }
}
