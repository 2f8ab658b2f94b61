//! `plan`: what `apply` would change on this node, touching nothing.
//!
//! The plan reads each destination (read-only: it opens files, never
//! creates, locks or stats-and-touches anything) and compares it with the
//! rendered bytes through the same [`live`](crate::live) comparison `apply`
//! uses, so the two cannot disagree. Diffs are unified diffs with three
//! lines of context; every diff passes through the set's
//! [`Redactor`](converge_model::rendered::Redactor), which masks today's
//! secret values and whatever the live file holds where a secret stands
//! (the old value after a rotation), and a `secret: true` target's diff
//! body is replaced by a notice, so neither text nor JSON output can show
//! a secret value, new or old (invariant 7). A change
//! `apply` would hand to the HAProxy runtime API instead of reloading is
//! decided by the same [`runtime_api`](converge_programs::haproxy::runtime_api) planning, and
//! said on its summary line.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use converge_model::manifest::Validator;
use converge_model::rendered::Redactor;
use converge_model::{RenderedFile, RenderedSet};
use converge_programs::haproxy::runtime_api;
use converge_programs::pgbouncer::restart;
use converge_programs::reload;
use serde::Serialize;
use similar::TextDiff;

use crate::error::ApplyError;
use crate::fsutil::sha256_hex;
use crate::live::{self, Change};

/// Everything `apply` would do on one node.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// Node name.
    pub node: String,
    /// One entry per rendered target, in target-name order.
    pub files: Vec<PlannedFile>,
    /// Bundles an interrupted apply committed but never reloaded; `apply`
    /// reloads them even if their files are unchanged.
    pub pending_reloads: Vec<String>,
}

/// One target's planned change.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedFile {
    /// Target name.
    pub target: String,
    /// Rooted destination path.
    pub destination: PathBuf,
    /// Bundle the target commits with.
    pub bundle: String,
    /// What would happen to the file.
    pub change: Change,
    /// Unified diff (empty when the bytes are equal); redacted, and hidden
    /// entirely for secret targets.
    pub diff: String,
    /// Mode/owner drift, e.g. `mode 0644 -> 0600`.
    pub metadata: Vec<String>,
    /// SHA-256 of the live file, if there is one.
    pub old_sha256: Option<String>,
    /// SHA-256 of the rendered bytes.
    pub new_sha256: String,
    /// How the candidate would be checked.
    pub validate: String,
    /// What would run after commit.
    pub reload: String,
    /// Changed settings the program applies only on restart (PgBouncer's
    /// `listen_port`, `unix_socket_dir`, ...): the reload leaves them as
    /// they are until someone restarts it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub needs_restart: Vec<String>,
    /// Servers the change would set through the HAProxy runtime API
    /// instead of reloading: a membership-only change of backends the
    /// manifest opted in (`runtime_api`). `apply` still reloads when the
    /// running HAProxy cannot take it (a worker mid-reload, a state that is
    /// not the live file's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime_api_servers: Option<usize>,
    /// What the runtime API would do, one server each:
    /// `add server web/web-3:n1` (a dynamic server), `set server
    /// web/web-s2` (a slot's address or state), `del server web/web-4:n1`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub runtime_api_actions: Vec<String>,
}

impl Plan {
    /// Whether applying would change anything (content or metadata).
    pub fn has_changes(&self) -> bool {
        self.files.iter().any(|f| f.change != Change::Unchanged) || !self.pending_reloads.is_empty()
    }

    /// The text form: every diff, then one line per target, then totals.
    pub fn to_text(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.files {
            f.write_str(&p.diff)?;
            if !p.diff.is_empty() && !p.diff.ends_with('\n') {
                f.write_str("\n")?;
            }
            for m in &p.metadata {
                writeln!(f, "~ {} {}: {m}", p.target, p.destination.display())?;
            }
        }
        if self
            .files
            .iter()
            .any(|p| !p.diff.is_empty() || !p.metadata.is_empty())
        {
            writeln!(f)?;
        }
        let width = self.files.iter().map(|p| p.target.len()).max().unwrap_or(0);
        for p in &self.files {
            let reload = match p.runtime_api_servers {
                Some(n) => format!(
                    "HAProxy runtime API, {n} server{} (reload only if HAProxy cannot take it: {})",
                    if n == 1 { "" } else { "s" },
                    p.reload
                ),
                None => p.reload.clone(),
            };
            writeln!(
                f,
                "{:<9}  {:<width$}  {}  validate: {}  reload: {reload}",
                p.change.as_str(),
                p.target,
                p.destination.display(),
                p.validate,
            )?;
            for a in &p.runtime_api_actions {
                writeln!(f, "runtime    {}: {a}", p.target)?;
            }
            if !p.needs_restart.is_empty() {
                writeln!(
                    f,
                    "needs restart  {}: changed {}, which only a restart applies",
                    p.target,
                    p.needs_restart.join(", "),
                )?;
            }
        }
        for b in &self.pending_reloads {
            writeln!(
                f,
                "reload     bundle {b}: an interrupted apply committed it without reloading"
            )?;
        }
        let count = |c: Change| self.files.iter().filter(|p| p.change == c).count();
        writeln!(
            f,
            "node {}: {} new, {} changed, {} metadata only, {} unchanged",
            self.node,
            count(Change::New),
            count(Change::Changed),
            count(Change::Metadata),
            count(Change::Unchanged),
        )
    }
}

/// Compares every rendered target with what is on disk now. Reads only;
/// a missing destination is [`Change::New`], an unreadable one an error
/// naming its path.
pub fn plan(set: &RenderedSet) -> Result<Plan, ApplyError> {
    let pending_reloads: Vec<String> = set
        .bundles()
        .into_keys()
        .filter(|b| crate::pending::is_pending(&set.layout, b))
        .map(str::to_string)
        .collect();
    let mut compared = Vec::with_capacity(set.files.len());
    for file in set.files.values() {
        let current = live::read(file)?;
        let own = live::ownership(file)?;
        let (change, metadata) = live::compare(file, current.as_ref(), own);
        compared.push(Compared {
            file,
            old: current.map(|l| l.bytes),
            change,
            metadata,
        });
    }
    Ok(assemble(set, compared, pending_reloads, &set.redactor()))
}

/// One rendered target beside what it would replace: the live file
/// ([`plan`]) or the same target in another render
/// ([`plan_between`](between::plan_between)).
pub(crate) struct Compared<'a> {
    /// The rendered target.
    pub file: &'a RenderedFile,
    /// The bytes it would replace, if any.
    pub old: Option<Vec<u8>>,
    /// How the two compare.
    pub change: Change,
    /// Mode/owner differences, as people read them.
    pub metadata: Vec<String>,
}

/// The plan from compared targets: diffs through `redactor`, the runtime
/// API's share, reloads and restarts — one classification whatever the
/// targets were compared with.
pub(crate) fn assemble(
    set: &RenderedSet,
    compared: Vec<Compared>,
    pending_reloads: Vec<String>,
    redactor: &Redactor,
) -> Plan {
    let runtime = runtime_updates(&compared, &pending_reloads);
    let mut files = Vec::with_capacity(compared.len());
    for Compared {
        file,
        old,
        change,
        metadata,
    } in compared
    {
        let old = old.as_deref();
        let diff = match change {
            Change::Changed | Change::New => redactor.redact(&diff_text(set, file, old)),
            Change::Unchanged | Change::Metadata => String::new(),
        };
        files.push(PlannedFile {
            target: file.target.clone(),
            destination: file.destination.clone(),
            bundle: file.bundle.clone(),
            change,
            diff,
            metadata,
            old_sha256: old.map(sha256_hex),
            new_sha256: sha256_hex(&file.bytes),
            validate: redactor.redact(&describe_validator(&file.validate)),
            reload: redactor.redact(&reload::describe(&file.reload)),
            needs_restart: match (&file.validate, change) {
                (Validator::Pgbouncer, Change::Changed) => restart::pgbouncer(old, &file.bytes),
                _ => Vec::new(),
            },
            runtime_api_servers: runtime.get(&file.target).map(Vec::len),
            runtime_api_actions: runtime.get(&file.target).cloned().unwrap_or_default(),
        });
    }
    Plan {
        node: set.node.clone(),
        files,
        pending_reloads,
    }
}

/// For each target whose change `apply` would hand to the HAProxy runtime
/// API, what it would do to which server. Bundles owing a reload are left
/// out: `apply` reloads those.
fn runtime_updates(compared: &[Compared], pending: &[String]) -> BTreeMap<String, Vec<String>> {
    let mut bundles: BTreeMap<&str, Vec<runtime_api::MemberView>> = BTreeMap::new();
    for c in compared {
        if !pending.contains(&c.file.bundle) {
            bundles
                .entry(c.file.bundle.as_str())
                .or_default()
                .push(runtime_api::MemberView {
                    file: c.file,
                    live: c.old.as_deref(),
                    rewrites: c.change.rewrites(),
                });
        }
    }
    bundles
        .into_values()
        .filter_map(runtime_api::plan)
        .flat_map(|p| {
            p.actions()
                .map(|(target, actions)| (target.to_string(), actions))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The validator as a person would read it.
pub fn describe_validator(v: &Validator) -> String {
    match v {
        Validator::Haproxy => "haproxy -c -f".into(),
        Validator::Keepalived => "keepalived -t (scratch netns)".into(),
        Validator::Pgbouncer => "pgbouncer trial start".into(),
        Validator::Command(argv) => format!("run: {}", argv.join(" ")),
        Validator::None => "none".into(),
    }
}

/// `etc/haproxy/haproxy.cfg` for a destination under the layout root, so
/// headers read the same whatever `--root` is.
fn display_path(set: &RenderedSet, dest: &Path) -> String {
    let rel = dest.strip_prefix(&set.layout.root).unwrap_or(dest);
    rel.to_string_lossy().trim_start_matches('/').to_string()
}

/// The unified diff, before redaction.
fn diff_text(set: &RenderedSet, file: &RenderedFile, old: Option<&[u8]>) -> String {
    let path = display_path(set, &file.destination);
    let old_header = match old {
        Some(_) => format!("a/{path}"),
        None => "/dev/null".to_string(),
    };
    let new_header = format!("b/{path}");
    if file.secret {
        return format!(
            "--- {old_header}\n+++ {new_header}\n# contents of secret target `{}` are hidden\n",
            file.target
        );
    }
    let (Ok(old_text), Ok(new_text)) = (
        std::str::from_utf8(old.unwrap_or_default()),
        std::str::from_utf8(&file.bytes),
    ) else {
        return format!("--- {old_header}\n+++ {new_header}\n# binary contents differ\n");
    };
    TextDiff::from_lines(old_text, new_text)
        .unified_diff()
        .context_radius(3)
        .header(&old_header, &new_header)
        .to_string()
}

/// Logs, for the daemon and `apply`, what the plan shows as
/// "needs restart" for a changed file.
pub(crate) fn warn_needs_restart(file: &RenderedFile, live: Option<&[u8]>) {
    if file.validate != Validator::Pgbouncer {
        return;
    }
    let keys = restart::pgbouncer(live, &file.bytes);
    if !keys.is_empty() {
        tracing::warn!(
            target = %file.target,
            settings = %keys.join(", "),
            "needs restart: PgBouncer applies these settings only when it restarts; \
             the reload keeps the old values running"
        );
    }
}

mod between;

pub use between::{dropped, plan_between, Dropped};

#[cfg(test)]
mod tests;
