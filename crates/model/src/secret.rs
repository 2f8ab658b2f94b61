//! Secrets: the VRRP password, PgBouncer user passwords.
//!
//! A manifest never holds a secret, only a [`SecretRef`] naming where it
//! lives (a file, relative to the manifests directory, or an environment
//! variable). Resolved values are [`Secret`]s, whose `Debug` and `Display`
//! print a placeholder so a stray `{:?}` or log line cannot leak them. The
//! planner also scrubs every resolved secret value out of diffs.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Where a secret is read from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum SecretRef {
    /// A file; relative paths are relative to the manifests directory.
    /// One trailing newline is stripped.
    File(String),
    /// An environment variable of the converge process.
    Env(String),
}

/// A resolved secret value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for rendering into a file that is itself kept private.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl SecretRef {
    /// Reads the secret. The error names the source but never the value.
    pub fn resolve(&self, manifests_dir: &Path) -> Result<Secret, String> {
        match self {
            SecretRef::File(p) => {
                let path = manifests_dir.join(p);
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?;
                let value = text.strip_suffix('\n').unwrap_or(&text);
                Ok(Secret::new(value.strip_suffix('\r').unwrap_or(value)))
            }
            SecretRef::Env(name) => std::env::var(name)
                .map(Secret::new)
                .map_err(|_| format!("environment variable {name} is not set")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!format!("{s}").contains("hunter2"));
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn file_secret_strips_one_newline() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("p"), "s3cret\n").expect("write");
        let got = SecretRef::File("p".into())
            .resolve(dir.path())
            .expect("resolve");
        assert_eq!(got.expose(), "s3cret");
    }
}
