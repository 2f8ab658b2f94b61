//! The renderer's output and the applier's input: bytes per target, with
//! everything needed to stage, check, commit and reload them.
//!
//! It lives in the model crate so the applier depends on data, not on the
//! renderer. Paths here are already prefixed with `--root`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::manifest::{PgbouncerAdmin, Reload, Validator};
use crate::secret::Secret;

mod redact;
pub use redact::Redactor;

/// The comment line that marks an HAProxy backend as runtime-API
/// managed: the shipped template writes it in a backend with
/// `runtime_api: {slots: N}`, and the applier updates the server lines of
/// backends carrying it over the stats socket when nothing else in the
/// file changed. One definition, since the renderer writes it and the
/// applier looks for it.
pub const RUNTIME_API_MARKER: &str = "# converge: runtime-api";

/// Prefix for every destination, pidfile and socket path (`--root`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Layout {
    /// The root directory, `/` in production.
    pub root: PathBuf,
}

impl Layout {
    /// A layout rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// `abs` (an absolute path from a manifest) under the root.
    pub fn path(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }

    /// converge's own state directory (locks, backups, status).
    pub fn state_dir(&self) -> PathBuf {
        self.path("/var/lib/converge")
    }
}

/// A reload action with its paths resolved under the root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReloadAction {
    /// Signal the pid found in `pidfile`.
    Signal {
        /// Rooted pidfile path.
        pidfile: PathBuf,
        /// Signal name, e.g. `SIGUSR2`.
        signal: String,
    },
    /// Run an argv.
    Command(Vec<String>),
    /// Run a string with `/bin/sh -c`.
    Shell(String),
    /// PgBouncer's admin console; a socket directory `host` is rooted.
    Pgbouncer(PgbouncerAdmin),
    /// Nothing.
    None,
}

impl ReloadAction {
    /// Resolves a manifest reload under `layout`.
    pub fn resolve(reload: &Reload, layout: &Layout) -> Self {
        match reload {
            Reload::Signal { pidfile, signal } => Self::Signal {
                pidfile: layout.path(pidfile),
                signal: signal.clone(),
            },
            Reload::Command(argv) => Self::Command(argv.clone()),
            Reload::Shell(s) => Self::Shell(s.clone()),
            Reload::Pgbouncer(admin) => Self::Pgbouncer(admin.under(layout)),
            Reload::None => Self::None,
        }
    }
}

impl PgbouncerAdmin {
    /// The same console with a socket directory `host` under `layout`'s
    /// root (a TCP host stays as it is).
    pub fn under(&self, layout: &Layout) -> Self {
        Self {
            host: if self.host.starts_with('/') {
                layout.path(&self.host).display().to_string()
            } else {
                self.host.clone()
            },
            ..self.clone()
        }
    }
}

/// One rendered target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RenderedFile {
    /// Target name.
    pub target: String,
    /// Rooted destination path.
    pub destination: PathBuf,
    /// The complete new contents.
    #[serde(skip)]
    pub bytes: Vec<u8>,
    /// Permission bits.
    pub mode: u32,
    /// Owner user name (applied when running as root).
    pub owner: Option<String>,
    /// Group name (applied when running as root).
    pub group: Option<String>,
    /// Check for the staged candidate.
    pub validate: Validator,
    /// Action after commit.
    pub reload: ReloadAction,
    /// Unit of commit: the bundle name, or the target name when alone.
    pub bundle: String,
    /// Never show contents.
    pub secret: bool,
    /// Previous versions to keep.
    pub backups: u32,
}

/// A catalog instance left out of the render, and why: a value that could
/// break out of its field, or an identity another instance also claims.
/// The rest of the render goes on without it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// Service name (as the manifest names it).
    pub service: String,
    /// Instance id, escaped for display.
    pub instance: String,
    /// Consul node of the instance, escaped for display.
    pub node: String,
    /// Which field (`address`, `tags`, `meta.weight`, `id`).
    pub field: String,
    /// The value, escaped and truncated for display.
    pub value: String,
    /// Why it was refused.
    pub reason: String,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "service {} instance {} on node {}: {} `{}`: {}",
            self.service, self.instance, self.node, self.field, self.value, self.reason
        )
    }
}

/// Everything rendered for one node.
#[derive(Debug, Clone)]
pub struct RenderedSet {
    /// Node name.
    pub node: String,
    /// Where paths are rooted.
    pub layout: Layout,
    /// Rendered files by target name.
    pub files: BTreeMap<String, RenderedFile>,
    /// Catalog instances left out, and why.
    pub rejections: Vec<Rejection>,
    /// Conditions an operator should see that did not stop the render
    /// (a database with no primary, a backend with no healthy server).
    pub warnings: Vec<String>,
    /// Secret values that must never appear in plans, diffs or logs.
    pub secrets: Vec<Secret>,
}

impl RenderedSet {
    /// Targets grouped by bundle, in bundle-name order.
    pub fn bundles(&self) -> BTreeMap<&str, Vec<&RenderedFile>> {
        let mut out: BTreeMap<&str, Vec<&RenderedFile>> = BTreeMap::new();
        for f in self.files.values() {
            out.entry(f.bundle.as_str()).or_default().push(f);
        }
        out
    }

    /// Masks every secret in `text`: today's values, and whatever stands
    /// where a secret stands in the rendered files (so the value a live
    /// file still holds from before a rotation is masked too). See
    /// [`Redactor`]; build one with [`RenderedSet::redactor`] to mask many
    /// texts against the same set.
    pub fn redact(&self, text: &str) -> String {
        self.redactor().redact(text)
    }

    /// The masks for this set, learned once from its secrets and files.
    pub fn redactor(&self) -> Redactor {
        Redactor::new(
            self.secrets.iter().map(Secret::expose),
            self.files.values().map(|f| f.bytes.as_slice()),
        )
    }

    /// The file for `destination`, if one is rendered there.
    pub fn by_destination(&self, destination: &Path) -> Option<&RenderedFile> {
        self.files.values().find(|f| f.destination == destination)
    }
}
