//! Render errors name the template file and line and the target, so the
//! operator knows what to fix; the caller keeps the live files as they are.

use std::path::PathBuf;

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
    /// A template does not parse.
    #[error("{file}:{line}: template syntax error: {message}")]
    Syntax {
        /// Template file.
        file: PathBuf,
        /// 1-based line, 0 when unknown.
        line: usize,
        /// Tera's explanation.
        message: String,
    },
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
