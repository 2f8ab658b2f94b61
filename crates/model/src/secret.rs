//! Secrets: the VRRP password, PgBouncer user passwords.
//!
//! A manifest never holds a secret, only a [`SecretRef`] naming where it
//! lives (a file, relative to the manifests directory, or an environment
//! variable). Resolved values are [`Secret`]s, whose `Debug` and `Display`
//! print a placeholder so a stray `{:?}` or log line cannot leak them. The
//! planner also scrubs every resolved secret value out of diffs.

use std::fmt;
use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use nix::fcntl::OFlag;

use serde::{Deserialize, Serialize};

/// Where a secret is read from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum SecretRef {
    /// A file; relative paths are relative to the manifests directory.
    /// One trailing newline is stripped; the rest must be one line of at
    /// most [`MAX_SECRET_BYTES`] in a regular file.
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

/// The most a secret may hold. Passwords and SCRAM verifiers are far
/// shorter; the bound keeps a mistaken path (a log, a device) from being
/// read whole into memory and rendered into a config.
pub const MAX_SECRET_BYTES: u64 = 4096;

impl SecretRef {
    /// Reads the secret. The error names the source but never the value.
    ///
    /// A secret is one line: a line break would end the directive it is
    /// rendered into and start another (a newline in `auth_pass` adds a
    /// `virtual_ipaddress` block keepalived accepts), so any control
    /// character is refused. A file must be a regular file of at most
    /// [`MAX_SECRET_BYTES`]; it is opened non-blocking and checked before
    /// anything is read, so a FIFO cannot hang converge and `/dev/zero`
    /// is not read at all.
    pub fn resolve(&self, manifests_dir: &Path) -> Result<Secret, String> {
        match self {
            SecretRef::File(p) => {
                let path = manifests_dir.join(p);
                let text = read_bounded(&path)
                    .map_err(|e| format!("secret file {}: {e}", path.display()))?;
                let value = text.strip_suffix('\n').unwrap_or(&text);
                let value = value.strip_suffix('\r').unwrap_or(value);
                check_line(value).map_err(|e| format!("secret file {}: {e}", path.display()))?;
                Ok(Secret::new(value))
            }
            SecretRef::Env(name) => {
                let value = std::env::var(name)
                    .map_err(|_| format!("environment variable {name} is not set"))?;
                check_line(&value)
                    .map_err(|e| format!("secret in environment variable {name}: {e}"))?;
                Ok(Secret::new(value))
            }
        }
    }
}

/// The contents of `path` if it is a regular file of at most
/// [`MAX_SECRET_BYTES`] holding UTF-8.
fn read_bounded(path: &Path) -> Result<String, String> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(OFlag::O_NONBLOCK.bits() | OFlag::O_NOCTTY.bits())
        .open(path)
        .map_err(|e| format!("cannot read it: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read it: {e}"))?;
    let kind = meta.file_type();
    if !kind.is_file() {
        let what = if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        return Err(format!("is {what}; a secret must be a regular file"));
    }
    let mut bytes = Vec::new();
    file.take(MAX_SECRET_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read it: {e}"))?;
    if bytes.len() as u64 > MAX_SECRET_BYTES {
        return Err(format!(
            "is larger than {MAX_SECRET_BYTES} bytes; a secret is one short line"
        ));
    }
    String::from_utf8(bytes).map_err(|_| "is not UTF-8 text".to_string())
}

/// Refuses a value that is not one line of printable text.
fn check_line(value: &str) -> Result<(), String> {
    match value.find(char::is_control) {
        None => Ok(()),
        Some(at) => {
            let line = value[..at].matches('\n').count() + 1;
            Err(format!(
                "holds a line break or control character (line {line}); a secret must be \
                 one line, with at most one trailing newline"
            ))
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

    fn refused(dir: &Path, name: &str) -> String {
        match SecretRef::File(name.into()).resolve(dir) {
            Ok(_) => panic!("secret file {name} was accepted"),
            Err(e) => e,
        }
    }

    #[test]
    fn a_line_break_inside_a_secret_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("vrrp.pass"),
            "Hunter2secret\n    virtual_ipaddress {\n        10.9.9.9/32\n    }\n",
        )
        .expect("write");
        let e = refused(dir.path(), "vrrp.pass");
        assert!(e.contains("vrrp.pass") && e.contains("line break"), "{e}");
        // A value no temp directory's random name can contain.
        assert!(
            !e.contains("virtual_ipaddress") && !e.contains("Hunter2secret"),
            "{e}"
        );
        std::env::set_var("CONVERGE_TEST_SECRET_NL", "pw\nx");
        let e = SecretRef::Env("CONVERGE_TEST_SECRET_NL".into())
            .resolve(dir.path())
            .expect_err("env secret with a newline");
        assert!(e.contains("CONVERGE_TEST_SECRET_NL"), "{e}");
    }

    #[test]
    fn a_fifo_is_refused_without_waiting_for_a_writer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("vrrp.pass");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .expect("mkfifo");
        // A blocking open would never return: no one writes.
        let (tx, rx) = std::sync::mpsc::channel();
        let at = dir.path().to_path_buf();
        std::thread::spawn(move || tx.send(refused(&at, "vrrp.pass")));
        let e = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("reading a FIFO secret hung");
        assert!(e.contains("FIFO"), "{e}");
    }

    #[test]
    fn a_device_is_refused_unread() {
        let e = refused(Path::new("/dev"), "zero");
        assert!(e.contains("/dev/zero") && e.contains("device"), "{e}");
    }

    #[test]
    fn an_oversized_secret_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let big = "x".repeat(MAX_SECRET_BYTES as usize + 1);
        std::fs::write(dir.path().join("big"), &big).expect("write");
        let e = refused(dir.path(), "big");
        assert!(e.contains("larger than 4096 bytes"), "{e}");
        let most = "x".repeat(MAX_SECRET_BYTES as usize);
        std::fs::write(dir.path().join("most"), &most).expect("write");
        let got = SecretRef::File("most".into())
            .resolve(dir.path())
            .expect("a secret of the maximum size");
        assert_eq!(got.expose(), most);
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
