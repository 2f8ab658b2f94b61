//! Errors that point at the operator's file: every manifest or catalog
//! problem carries `file:line:column` and the field path, so the message can
//! be pasted straight into an editor's "go to".

use std::fmt;
use std::path::{Path, PathBuf};

/// A place in a YAML source file. Lines and columns are 1-based.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file, as it was named to the loader.
    pub file: PathBuf,
    /// 1-based line, 0 when unknown.
    pub line: usize,
    /// 1-based column, 0 when unknown.
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.file.display())
        } else {
            write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
        }
    }
}

/// One problem in the manifests or the catalog file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ManifestError {
    /// Where the offending value (or its parent) is written.
    pub location: Location,
    /// Dotted field path, e.g. `backends.web.health_check.path`.
    pub path: String,
    /// What is wrong, phrased for the person who wrote the file.
    pub message: String,
}

/// `location: path: message`, without the path when it is empty (a
/// problem with a whole file or directory).
impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}: {}", self.location, self.message)
        } else {
            write!(f, "{}: {}: {}", self.location, self.path, self.message)
        }
    }
}

/// Every problem found in one pass; never empty when returned as an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestErrors(pub Vec<ManifestError>);

impl fmt::Display for ManifestErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ManifestErrors {}

/// An error about a whole file or directory, with no line to point at.
pub(crate) fn unlocated(file: &Path, field: String, message: String) -> ManifestError {
    ManifestError {
        location: Location {
            file: file.to_path_buf(),
            line: 0,
            column: 0,
        },
        path: field,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_with_a_whole_file_has_no_empty_field_path() {
        let e = ManifestError {
            location: Location {
                file: PathBuf::from("manifests"),
                line: 0,
                column: 0,
            },
            path: String::new(),
            message: "cannot read manifests directory".into(),
        };
        assert_eq!(e.to_string(), "manifests: cannot read manifests directory");
        let e = ManifestError {
            path: "nodes.lb1".into(),
            ..e
        };
        assert_eq!(
            e.to_string(),
            "manifests: nodes.lb1: cannot read manifests directory"
        );
    }
}
