//! Builders for the rendered files unit tests hand to the programs.

use std::path::PathBuf;

use converge_model::manifest::Validator;
use converge_model::{ReloadAction, RenderedFile};

/// A target writing `bytes` to `destination`, mode 0644, alone in its
/// bundle, 3 backups.
pub(crate) fn rendered(
    target: &str,
    destination: impl Into<PathBuf>,
    bytes: &str,
    validate: Validator,
    reload: ReloadAction,
) -> RenderedFile {
    RenderedFile {
        target: target.into(),
        destination: destination.into(),
        bytes: bytes.as_bytes().to_vec(),
        mode: 0o644,
        owner: None,
        group: None,
        validate,
        reload,
        bundle: target.into(),
        secret: false,
        backups: 3,
    }
}
