//! How large and how deeply nested a YAML input may be.
//!
//! serde_norway (through unsafe-libyaml) takes time quadratic in the nesting
//! depth before it gives up with "recursion limit exceeded": a few hundred
//! kilobytes of `[[[[…` kept it busy for over a minute. Manifests and
//! catalogs are a few levels deep, so every YAML text is measured here
//! first, cheaply, and refused with its file (and, for depth, the line
//! where the limit is crossed) before serde_norway sees it.
//!
//! Depth is counted on yaml-rust2's event stream, pulled one event at a
//! time and abandoned at the first container past [`MAX_DEPTH`]. Its
//! scanner does work proportional to the open flow levels per token and
//! stops at 255 of them, so the check is linear in the text. A text it
//! cannot parse passes; the syntax error is serde_norway's to report, with
//! its own position.

use std::io::Read;
use std::path::Path;

use yaml_rust2::parser::{Event, Parser};

use crate::error::unlocated;
use crate::error::{Location, ManifestError};

/// Largest YAML file converge reads: 8 MiB.
pub const MAX_BYTES: usize = 8 * 1024 * 1024;

/// Deepest nesting of mappings and sequences a YAML text may have.
pub const MAX_DEPTH: usize = 64;

/// Reads the file at `path`, refusing one larger than [`MAX_BYTES`]
/// without reading past the limit. `what` names the file's role in the
/// messages (`manifest`, `catalog`).
pub fn read(path: &Path, what: &str) -> Result<String, ManifestError> {
    let cannot =
        |e: std::io::Error| unlocated(path, String::new(), format!("cannot read {what} file: {e}"));
    let file = std::fs::File::open(path).map_err(cannot)?;
    let mut bytes = Vec::new();
    let limit = u64::try_from(MAX_BYTES)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    file.take(limit).read_to_end(&mut bytes).map_err(cannot)?;
    if bytes.len() > MAX_BYTES {
        return Err(too_large(path, what));
    }
    String::from_utf8(bytes).map_err(|e| {
        unlocated(
            path,
            String::new(),
            format!("cannot read {what} file: not UTF-8 ({e})"),
        )
    })
}

/// Checks `text` (the contents of `path`) against [`MAX_BYTES`] and
/// [`MAX_DEPTH`].
pub fn check(path: &Path, text: &str, what: &str) -> Result<(), ManifestError> {
    if text.len() > MAX_BYTES {
        return Err(too_large(path, what));
    }
    let Some((line, column)) = too_deep(text) else {
        return Ok(());
    };
    Err(ManifestError {
        location: Location {
            file: path.to_path_buf(),
            line,
            column,
        },
        path: String::new(),
        message: format!(
            "nested more than {MAX_DEPTH} levels deep (lists and mappings inside each other); \
             a {what} file needs a few, so it was not read"
        ),
    })
}

fn too_large(path: &Path, what: &str) -> ManifestError {
    unlocated(
        path,
        String::new(),
        format!(
            "larger than {} MiB, the most a {what} file may be, so it was not read",
            MAX_BYTES / (1024 * 1024)
        ),
    )
}

/// yaml-rust2's error for a 256th open flow level (its counter is a `u8`).
const FLOW_LEVELS_EXHAUSTED: &str = "recursion limit exceeded";

/// Where (1-based line and column) the first container deeper than
/// [`MAX_DEPTH`] starts, if one does before the end or a syntax error.
fn too_deep(text: &str) -> Option<(usize, usize)> {
    let mut parser = Parser::new_from_str(text);
    let mut depth = 0usize;
    loop {
        match parser.next_token() {
            Ok((Event::SequenceStart(..) | Event::MappingStart(..), mark)) => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Some((mark.line(), mark.col() + 1));
                }
            }
            Ok((Event::SequenceEnd | Event::MappingEnd, _)) => depth = depth.saturating_sub(1),
            // Inside flow collections the scanner reads ahead to the end
            // of the outermost one before it yields an event, and gives up
            // at 255 open levels with this error: more than the limit too.
            Err(e) if e.info() == FLOW_LEVELS_EXHAUSTED => {
                return Some((e.marker().line(), e.marker().col() + 1));
            }
            Ok((Event::StreamEnd, _)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize) -> String {
        format!("a: {}1{}\n", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn depth_up_to_the_limit_passes() {
        // The top-level mapping is one level.
        assert_eq!(too_deep(&nested(MAX_DEPTH - 1)), None);
        assert_eq!(too_deep(&nested(MAX_DEPTH)), Some((1, 4 + MAX_DEPTH - 1)));
    }

    #[test]
    fn block_nesting_counts_too() {
        let mut text = String::new();
        for i in 0..=MAX_DEPTH {
            text.push_str(&format!("{}k{i}:\n", "  ".repeat(i)));
        }
        assert_eq!(too_deep(&text).map(|(line, _)| line), Some(MAX_DEPTH + 1));
    }

    #[test]
    fn flow_nesting_past_what_the_scanner_counts_is_too_deep() {
        let deep = nested(100_000);
        assert_eq!(too_deep(&deep).map(|(line, _)| line), Some(1));
    }

    #[test]
    fn brackets_in_strings_and_syntax_errors_are_not_depth() {
        let quoted = format!("a: \"{}\"\n", "[".repeat(1000));
        assert_eq!(too_deep(&quoted), None);
        assert_eq!(too_deep("a: [\n"), None);
    }
}
