//! Validators: run the real program on a staged candidate before it may
//! replace a live file. (to be implemented)

use std::path::{Path, PathBuf};

use converge_model::RenderedFile;

/// A staged candidate and where its bundle siblings are staged.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    /// The rendered target.
    pub file: &'a RenderedFile,
    /// Where its candidate bytes are on disk now.
    pub staged: &'a Path,
    /// `(final destination, staged path)` of every file in the same bundle,
    /// so a validator can point the program at the candidate siblings
    /// (PgBouncer's `auth_file`) instead of the live ones.
    pub siblings: &'a [(PathBuf, PathBuf)],
}

/// The program refused the candidate, or could not be run.
#[derive(Debug, thiserror::Error)]
#[error("target {target}: `{command}` rejected the candidate: {output}")]
pub struct ValidateError {
    /// Target name.
    pub target: String,
    /// The command line that was run.
    pub command: String,
    /// Its exit status / output, trimmed.
    pub output: String,
}

/// Runs the target's validator on the candidate.
pub fn validate(candidate: &Candidate<'_>) -> Result<(), ValidateError> {
    let _ = candidate;
    Ok(())
}
