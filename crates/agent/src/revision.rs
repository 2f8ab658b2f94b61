//! The revision of a desired state: which manifests and templates a node
//! runs, as one short name `plan`, `apply`, the daemon and `publish` all
//! print.
//!
//! When both directories are in one Git work tree, the revision is the
//! commit (`abc1234`), with `-dirty` when a tracked file under either
//! directory is modified or an untracked one was added there: then the
//! commit alone does not describe what is on disk. Anywhere else (a
//! directory delivered by rsync, an unpacked bundle) it is a content hash,
//! `sha256:` and 12 hex digits of `Inputs::fingerprint`, so equal files
//! always give the same name wherever they are. `Inputs::revision`
//! chooses between the two.
//!
//! Git is asked through the `git` program, run by converge's one process
//! runner with a deadline, never by reading `.git` files: worktrees,
//! packed refs, `safe.directory` and the index format are Git's business.
//! `GIT_OPTIONAL_LOCKS=0` keeps `git status` from taking the index lock a
//! person's `git commit` may need at the same moment. Any Git failure
//! (no `git`, not a work tree, no commit yet, the templates in another
//! repository) falls back to the content hash: a revision is always known.

use std::fmt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use converge_programs::process::{Options, Running};
use serde::{Deserialize, Serialize};

/// How long one `git` call may take before the content hash is used.
const GIT_TIMEOUT: Duration = Duration::from_secs(10);

/// The most of a `git` answer read (a porcelain status can be long; only
/// whether it is empty matters).
const GIT_OUTPUT_LIMIT: u64 = 64 * 1024;

/// A desired state's name: a Git commit (`abc1234`, `abc1234-dirty`) or a
/// content hash (`sha256:0123456789ab`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Revision(String);

impl Revision {
    /// The commit of the work tree holding both `manifests` and
    /// `templates` (`-dirty` with changes under either); `None` when Git
    /// cannot say (see the module documentation).
    pub fn git(manifests: &Path, templates: &Path) -> Option<Self> {
        git_revision(manifests, templates)
    }

    /// The content-hash revision of a digest of every file's name and
    /// bytes (`Inputs::fingerprint`).
    pub fn content(digest: &[u8; 32]) -> Self {
        let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
        Self(format!("sha256:{hex}"))
    }

    /// A revision by name, as read back from Consul or a flag. Names are
    /// short and printable, with no `/` (a revision is one KV key
    /// segment): `None` otherwise.
    pub fn parse(name: &str) -> Option<Self> {
        let ok = !name.is_empty()
            && name.len() <= 80
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':'));
        ok.then(|| Self(name.to_string()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this names a commit with uncommitted changes on top, so
    /// the same name may stand for different files.
    pub fn is_dirty(&self) -> bool {
        self.0.ends_with("-dirty")
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `abc1234` or `abc1234-dirty` when both directories are in the same
/// work tree with a commit; `None` otherwise.
fn git_revision(manifests: &Path, templates: &Path) -> Option<Revision> {
    let top = git(manifests, &["rev-parse", "--show-toplevel"])?;
    if git(templates, &["rev-parse", "--show-toplevel"])? != top {
        return None;
    }
    let commit = git(manifests, &["rev-parse", "--short", "HEAD"])?;
    if commit.is_empty() || !commit.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let manifests = std::path::absolute(manifests).ok()?;
    let templates = std::path::absolute(templates).ok()?;
    let mut args = vec![
        "status".as_ref(),
        "--porcelain".as_ref(),
        "--untracked-files=all".as_ref(),
        "--".as_ref(),
    ];
    args.push(manifests.as_os_str());
    args.push(templates.as_os_str());
    let changes = git(Path::new(&top), &args)?;
    Some(Revision(if changes.is_empty() {
        commit
    } else {
        format!("{commit}-dirty")
    }))
}

/// `git -C dir ARGS`: its trimmed standard output when it exits 0.
fn git<S: AsRef<std::ffi::OsStr>>(dir: &Path, args: &[S]) -> Option<String> {
    let mut cmd = Command::new("git");
    cmd.arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_OPTIONAL_LOCKS", "0")
        .env("LC_ALL", "C");
    let start = Instant::now();
    let mut running = Running::spawn_with(
        &mut cmd,
        Options {
            separate_stderr: true,
            ..Options::default()
        },
    )
    .ok()?;
    let status = running.wait_until(start, GIT_TIMEOUT).ok()??;
    if !status.success() {
        return None;
    }
    let out = running.stdout(GIT_OUTPUT_LIMIT).ok()?;
    Some(String::from_utf8_lossy(&out).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_one_key_segment() {
        for good in ["abc1234", "abc1234-dirty", "sha256:0123456789ab"] {
            assert_eq!(Revision::parse(good).map(|r| r.0), Some(good.to_string()));
        }
        for bad in ["", "a/b", "a b", "..", "a\n", &"x".repeat(81)] {
            assert_eq!(Revision::parse(bad), None, "{bad:?}");
        }
        assert!(Revision::parse("abc1234-dirty").is_some_and(|r| r.is_dirty()));
    }
}
