//! Render errors name the template file and line and the target, so the
//! operator knows what to fix; the caller keeps the live files as they are.

use std::fmt;
use std::path::PathBuf;

use converge_model::{Location, Manifest, ManifestError};

/// Why a render failed.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The templates directory could not be read.
    #[error("cannot read templates directory {dir}: {message}")]
    Dir {
        /// The directory.
        dir: PathBuf,
        /// What the OS said.
        message: String,
    },
    /// Templates do not parse: every broken file, one per line.
    #[error("{}", lines(.0))]
    Syntax(Vec<SyntaxError>),
    /// A target names a template that does not exist.
    #[error("target {target}: template `{template}` not found in {dir}")]
    Missing {
        /// Target name.
        target: String,
        /// Template file name.
        template: String,
        /// Templates directory.
        dir: PathBuf,
    },
    /// Rendering a template failed (missing variable, bad filter argument).
    #[error("{file}:{line}: target {target}: {message}")]
    Render {
        /// Target name.
        target: String,
        /// Template file.
        file: PathBuf,
        /// 1-based line of the first use of the offending name, 0 if unknown.
        line: usize,
        /// Tera's explanation, with its causes.
        message: String,
    },
    /// The context could not be serialized (a bug, not an input problem).
    #[error("cannot build template context: {message}")]
    Context {
        /// Serializer message.
        message: String,
    },
}

/// One template that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    /// Template file name, as targets name it.
    pub template: String,
    /// Where in the file Tera's parser stopped (line and column 0 when it
    /// did not say).
    pub location: Location,
    /// Targets whose `template` is this file, sorted; empty when no target
    /// uses it or the manifests could not be read.
    pub targets: Vec<String>,
    /// Tera's explanation.
    pub message: String,
}

impl SyntaxError {
    /// The targets the broken file stops, `target a` or `targets a, b`;
    /// empty when none is known.
    fn subject(&self) -> String {
        match self.targets.as_slice() {
            [] => String::new(),
            [one] => format!("target {one}"),
            many => format!("targets {}", many.join(", ")),
        }
    }
}

/// Written as the [`ManifestError`] it becomes, so a syntax error reads the
/// same whether it is reported alone or among manifest problems.
impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        ManifestError::from(self.clone()).fmt(f)
    }
}

/// A syntax error in the shape of a manifest problem (`file:line:column:
/// subject: message`), which is how it is displayed.
impl From<SyntaxError> for ManifestError {
    fn from(e: SyntaxError) -> Self {
        ManifestError {
            path: e.subject(),
            message: format!("template syntax error: {}", e.message),
            location: e.location,
        }
    }
}

impl RenderError {
    /// Names, in each syntax error, the targets of `manifest` that use the
    /// broken template; other errors pass through unchanged.
    pub fn name_targets(self, manifest: &Manifest) -> Self {
        match self {
            RenderError::Syntax(errors) => RenderError::Syntax(
                errors
                    .into_iter()
                    .map(|e| SyntaxError {
                        targets: manifest
                            .targets
                            .iter()
                            .filter(|(_, t)| t.template == e.template)
                            .map(|(name, _)| name.clone())
                            .collect(),
                        ..e
                    })
                    .collect(),
            ),
            other => other,
        }
    }
}

fn lines(errors: &[SyntaxError]) -> String {
    errors
        .iter()
        .map(SyntaxError::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}
