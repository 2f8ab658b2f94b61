//! What one apply did, per bundle, for people (`Display`) and programs
//! (`Serialize`).
//!
//! Error strings in a report have been through the set's redaction, so a
//! report can be logged or published as it is.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use converge_model::RenderedSet;
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
    /// How the previous files were put back, when the outcome is
    /// [`Outcome::RolledBack`] (its `error` is this, as text).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback: Option<Rollback>,
    /// How long the validators and the reload took (the metrics' duration
    /// histograms); not part of the printed report.
    #[serde(skip)]
    pub timings: Timings,
}

/// Durations of one bundle's steps; `None` for a step it did not reach.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timings {
    /// Every validator of the bundle, together.
    pub validate: Option<Duration>,
    /// The reload (or the rollback that followed a failed one).
    pub reload: Option<Duration>,
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

/// How a rolled-back bundle was put back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rollback {
    /// What failed and made the transaction roll back.
    pub cause: String,
    /// Every committed file is back as it was, its directory synced.
    pub complete: bool,
    /// The restore steps that failed, in words (empty when `complete`).
    pub failed_steps: Vec<String>,
    /// What was done about the program.
    pub reload: RollbackReload,
}

/// Whether the program was reloaded on the restored files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum RollbackReload {
    /// It was, and took them.
    Reloaded,
    /// Reloading it failed too.
    Failed {
        /// Why.
        error: String,
    },
    /// Not reloaded: the program never took the new files.
    Untouched,
    /// Not reloaded: nothing had told the program of the change.
    NotNeeded,
}

impl Rollback {
    pub(crate) fn new(cause: &str, failed_steps: Vec<String>, reload: RollbackReload) -> Self {
        Self {
            cause: cause.to_string(),
            complete: failed_steps.is_empty(),
            failed_steps,
            reload,
        }
    }

    /// The same rollback with every text passed through the set's secret
    /// redaction, for the report.
    pub(crate) fn redacted(self, set: &RenderedSet) -> Self {
        Self {
            cause: set.redact(&self.cause),
            complete: self.complete,
            failed_steps: self.failed_steps.iter().map(|s| set.redact(s)).collect(),
            reload: match self.reload {
                RollbackReload::Failed { error } => RollbackReload::Failed {
                    error: set.redact(&error),
                },
                other => other,
            },
        }
    }
}

/// The cause and what the rollback did, as the report has always read:
/// `…; restored the previous files and reloaded them`, or
/// `…; ROLLBACK INCOMPLETE: …`.
impl fmt::Display for Rollback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.cause)?;
        if self.complete {
            f.write_str("; restored the previous files")?;
        } else {
            write!(f, "; ROLLBACK INCOMPLETE: {}", self.failed_steps.join("; "))?;
        }
        match &self.reload {
            RollbackReload::Reloaded => f.write_str(" and reloaded them"),
            RollbackReload::Failed { error } => {
                write!(f, ", but reloading them failed too: {error}")
            }
            RollbackReload::Untouched => {
                f.write_str("; not reloaded: the program never took the new files")
            }
            RollbackReload::NotNeeded => Ok(()),
        }
    }
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

    /// How many bundles were rolled back without every file put back
    /// (their text says `ROLLBACK INCOMPLETE`).
    pub fn incomplete_rollbacks(&self) -> usize {
        self.bundles
            .iter()
            .filter(|b| b.rollback.as_ref().is_some_and(|r| !r.complete))
            .count()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rollback_reads_as_the_report_text_always_read() {
        let done = Rollback::new("reload failed", Vec::new(), RollbackReload::Reloaded);
        assert!(done.complete);
        assert_eq!(
            done.to_string(),
            "reload failed; restored the previous files and reloaded them"
        );
        let broken = Rollback::new(
            "commit failed",
            vec!["cannot restore a".into(), "cannot sync /etc".into()],
            RollbackReload::Failed {
                error: "exit 1".into(),
            },
        );
        assert!(!broken.complete);
        assert_eq!(
            broken.to_string(),
            "commit failed; ROLLBACK INCOMPLETE: cannot restore a; cannot sync /etc, \
             but reloading them failed too: exit 1"
        );
        let untouched = Rollback::new("PAUSE timed out", Vec::new(), RollbackReload::Untouched);
        assert_eq!(
            untouched.to_string(),
            "PAUSE timed out; restored the previous files; not reloaded: the program never \
             took the new files"
        );
    }
}
