//! Everything that can go wrong while planning or applying.
//!
//! Each variant names the target, the path and (for programs) the command
//! and its stderr, and every message says what was done about it. None
//! carries rendered bytes: file contents may hold secrets, so they never
//! enter an error. Messages that include program output are passed through
//! [`RenderedSet::redact`](converge_model::RenderedSet::redact) before they
//! reach a report.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use converge_programs::validate::ValidateError;

/// A planning or applying failure.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The live file exists but cannot be read (permissions, a directory in
    /// its place, an I/O error).
    #[error("target {target}: cannot read the live file {}: {source}", path.display())]
    ReadLive {
        /// Target name.
        target: String,
        /// The destination.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// A directory converge needs (state dir, backup dir, a destination's
    /// parent) could not be created.
    #[error("cannot create directory {}: {source}; nothing was changed", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// The lock file could not be opened or locked.
    #[error("cannot lock {}: {source}; nothing was changed", path.display())]
    LockFile {
        /// The lock file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// Another apply on this node held the lock for longer than the timeout.
    #[error(
        "another apply holds the lock {} (pid {holder}); gave up after {:.1}s, nothing was changed",
        path.display(),
        waited.as_secs_f64()
    )]
    LockBusy {
        /// The lock file.
        path: PathBuf,
        /// The pid written in the lock file by its holder (`unknown` if
        /// unreadable).
        holder: String,
        /// How long this apply waited.
        waited: Duration,
    },

    /// `owner`/`group` names an account this host does not have.
    #[error("target {target}: {kind} `{name}` {detail}; the live file was not touched")]
    Owner {
        /// Target name.
        target: String,
        /// `user` or `group`.
        kind: &'static str,
        /// The name from the manifest.
        name: String,
        /// What was wrong with it.
        detail: String,
    },

    /// Writing the candidate next to the destination failed.
    #[error("target {target}: cannot stage a candidate for {}: {source}; the live file was not touched", path.display())]
    Stage {
        /// Target name.
        target: String,
        /// The destination.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// The validator refused a candidate.
    #[error("{0}; kept the live files")]
    Rejected(#[source] ValidateError),

    /// The current file could not be saved before being replaced.
    #[error("target {target}: cannot back up {} to {}: {source}; the live file was not touched", path.display(), backup.display())]
    Backup {
        /// Target name.
        target: String,
        /// The live file.
        path: PathBuf,
        /// Where the backup was to go.
        backup: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// Renaming the candidate over the destination (or making a directory
    /// entry durable) failed.
    #[error("target {target}: cannot commit {}: {source}", path.display())]
    Commit {
        /// Target name.
        target: String,
        /// The destination (or its directory).
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// The pending-reload marker could not be written before a commit.
    #[error("bundle {bundle}: cannot record a pending reload in {}: {source}; the live files were not touched", path.display())]
    Pending {
        /// Bundle name.
        bundle: String,
        /// The marker file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// Fixing mode or ownership of an otherwise unchanged file failed.
    #[error("target {target}: cannot set mode/owner of {}: {source}", path.display())]
    Metadata {
        /// Target name.
        target: String,
        /// The destination.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// A reload action failed, timed out, or the signalled process died.
    #[error(
        "bundle {bundle}: reload `{command}` failed: {detail}{}",
        stderr_suffix(stderr)
    )]
    Reload {
        /// Bundle name.
        bundle: String,
        /// The action as a person would type it.
        command: String,
        /// Exit status, timeout or signal error.
        detail: String,
        /// The program's stderr (and stdout), trimmed and truncated.
        stderr: String,
        /// Nothing reached the program, and asking again at once would
        /// fail the same way: a rollback restores the files and does not
        /// reload.
        untouched: bool,
    },

    /// Putting the previous files back after a failure failed too.
    #[error("target {target}: cannot restore the previous {}: {source}", path.display())]
    Restore {
        /// Target name.
        target: String,
        /// The destination.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!(": {stderr}")
    }
}
