//! What one apply did, per bundle, for people (`Display`) and programs
//! (`Serialize`).
//!
//! Error strings in a report have been through the set's redaction, so a
//! report can be logged or published as it is.

use std::fmt;

use serde::Serialize;

use converge_programs::ReloadOutcome;

/// The result of one [`apply`](crate::apply).
#[derive(Debug, Clone, Serialize)]
pub struct ApplyReport {
    /// Node name.
    pub node: String,
    /// One entry per bundle, in bundle-name order.
    pub bundles: Vec<BundleReport>,
}

/// What happened to one bundle.
#[derive(Debug, Clone, Serialize)]
pub struct BundleReport {
    /// Bundle name.
    pub bundle: String,
    /// Every target in the bundle.
    pub targets: Vec<String>,
    /// Targets whose content or metadata differed from the rendered file.
    pub changed: Vec<String>,
    /// The result.
    pub outcome: Outcome,
}

/// The result for one bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// Every file already matched: nothing written, nothing reloaded.
    Unchanged,
    /// The new files are live.
    Applied {
        /// What the reload did.
        reload: ReloadOutcome,
    },
    /// The new files are live and, the change being membership-only
    /// (runtime-API slots), the running HAProxy took it over its stats
    /// socket instead of a reload.
    RuntimeUpdated {
        /// Servers whose address or state was set.
        servers: usize,
    },
    /// A validator refused a candidate; the live files were not touched.
    Rejected {
        /// The validator's error.
        error: String,
    },
    /// Staging, backup or reading failed before any commit; the live files
    /// were not touched.
    Failed {
        /// What failed.
        error: String,
    },
    /// Commit or reload failed; the previous files were put back and
    /// reloaded.
    RolledBack {
        /// What failed, and how the rollback went.
        error: String,
    },
}

impl Outcome {
    fn word(&self) -> &'static str {
        match self {
            Outcome::Unchanged => "unchanged",
            Outcome::Applied { .. } | Outcome::RuntimeUpdated { .. } => "applied",
            Outcome::Rejected { .. } => "REJECTED",
            Outcome::Failed { .. } => "FAILED",
            Outcome::RolledBack { .. } => "ROLLED BACK",
        }
    }

    /// Whether the new files went live (with a reload or without).
    pub fn is_applied(&self) -> bool {
        matches!(
            self,
            Outcome::Applied { .. } | Outcome::RuntimeUpdated { .. }
        )
    }

    /// Whether this outcome is a failure.
    pub fn is_failure(&self) -> bool {
        matches!(
            self,
            Outcome::Rejected { .. } | Outcome::Failed { .. } | Outcome::RolledBack { .. }
        )
    }
}

impl ApplyReport {
    /// No bundle was rejected, failed or rolled back.
    pub fn ok(&self) -> bool {
        !self.bundles.iter().any(|b| b.outcome.is_failure())
    }

    /// Some bundle's new files went live.
    pub fn applied_any(&self) -> bool {
        self.bundles.iter().any(|b| b.outcome.is_applied())
    }

    /// The report for `bundle`.
    pub fn bundle(&self, bundle: &str) -> Option<&BundleReport> {
        self.bundles.iter().find(|b| b.bundle == bundle)
    }
}

impl fmt::Display for ApplyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self
            .bundles
            .iter()
            .map(|b| b.bundle.len())
            .max()
            .unwrap_or(0);
        for b in &self.bundles {
            write!(
                f,
                "{:<11}  {:<width$}  {}",
                b.outcome.word(),
                b.bundle,
                b.targets.join(", ")
            )?;
            if !b.changed.is_empty() && b.outcome != Outcome::Unchanged {
                write!(f, " (changed: {})", b.changed.join(", "))?;
            }
            match &b.outcome {
                Outcome::Unchanged => {}
                Outcome::Applied { reload } => write!(f, "  {}", reload.as_str())?,
                Outcome::RuntimeUpdated { servers } => write!(
                    f,
                    "  {servers} server(s) set through the HAProxy runtime API, no reload"
                )?,
                Outcome::Rejected { error }
                | Outcome::Failed { error }
                | Outcome::RolledBack { error } => write!(f, "\n    {error}")?,
            }
            writeln!(f)?;
        }
        let count = |p: fn(&Outcome) -> bool| self.bundles.iter().filter(|b| p(&b.outcome)).count();
        writeln!(
            f,
            "node {}: {} applied, {} unchanged, {} rejected, {} failed, {} rolled back",
            self.node,
            count(Outcome::is_applied),
            count(|o| matches!(o, Outcome::Unchanged)),
            count(|o| matches!(o, Outcome::Rejected { .. })),
            count(|o| matches!(o, Outcome::Failed { .. })),
            count(|o| matches!(o, Outcome::RolledBack { .. })),
        )
    }
}
