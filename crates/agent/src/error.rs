//! What can stop the pipeline before it touches anything.

use converge_model::ManifestErrors;

/// A failure of one pipeline step; nothing on disk was changed by it.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The manifests (or a secret they reference) are invalid.
    #[error("{0}")]
    Manifest(ManifestErrors),
    /// The manifests and the templates are both broken: every problem of
    /// each, so one run shows them all.
    #[error("{manifests}\n{templates}")]
    Inputs {
        /// Every manifest problem.
        manifests: ManifestErrors,
        /// Every template problem.
        templates: converge_render::RenderError,
    },
    /// The catalog file is invalid.
    #[error("{0}")]
    Catalog(ManifestErrors),
    /// A template failed to load or render.
    #[error(transparent)]
    Render(#[from] converge_render::RenderError),
    /// Reading the live files or applying failed.
    #[error(transparent)]
    Apply(#[from] converge_apply::ApplyError),
    /// A file watch could not be set up.
    #[error("cannot watch files: {0}")]
    Watch(notify::Error),
    /// The catalog source could not start.
    #[error("catalog source: {0}")]
    Source(String),
    /// A scratch directory could not be made.
    #[error("cannot prepare scratch directory: {0}")]
    Scratch(std::io::Error),
}

impl AgentError {
    /// Which input was at fault, as one word a program can branch on
    /// (`converge … --format json` prints it): `manifest`, `catalog`,
    /// `template`, `apply`, `watch` or `scratch`.
    pub fn kind(&self) -> &'static str {
        match self {
            AgentError::Manifest(_) | AgentError::Inputs { .. } => "manifest",
            AgentError::Catalog(_) | AgentError::Source(_) => "catalog",
            AgentError::Render(_) => "template",
            AgentError::Apply(_) => "apply",
            AgentError::Watch(_) => "watch",
            AgentError::Scratch(_) => "scratch",
        }
    }
}
