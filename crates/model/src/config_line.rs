//! One line an operator adds to a program's config through the manifests
//! (`haproxy.global_extra`, `defaults_extra`, a backend's `extra`,
//! `keepalived.global_defs`), so a single setting never means forking a
//! template.
//!
//! The line is the operator's, and the real program checks it with the
//! rest of the candidate; what converge guarantees is that it stays one
//! line: a line break or other control character could open a section of
//! its own (invariant 6), so it is refused where it was written.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

/// Longest line taken.
const MAX: usize = 1024;

/// A single config line, without line breaks or control characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ConfigLine(String);

impl ConfigLine {
    /// `text` as a line, or why it cannot be one.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Err("an empty line adds nothing; remove it".into());
        }
        if text.len() > MAX {
            return Err(format!("a line of {} bytes; at most {MAX}", text.len()));
        }
        if let Some(c) = text.chars().find(|c| c.is_control()) {
            return Err(format!(
                "holds {}: a config line must be one line with no control character",
                c.escape_debug()
            ));
        }
        Ok(Self(text.trim().to_string()))
    }
}

impl fmt::Display for ConfigLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ConfigLine {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for ConfigLine {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ConfigLine".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "One line of the program's own config, checked by the program with the rest of the candidate.",
            "pattern": "^[^\\u0000-\\u001f\\u007f]+$",
            "maxLength": MAX
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_kept_trimmed() {
        let l = ConfigLine::parse("  tune.bufsize 32768 ").expect("line");
        assert_eq!(l.to_string(), "tune.bufsize 32768");
    }

    #[test]
    fn a_line_break_or_control_character_is_refused() {
        for bad in ["a\nb", "a\rb", "a\u{0}b", "a\tb", "", "   "] {
            assert!(ConfigLine::parse(bad).is_err(), "{bad:?}");
        }
        assert!(ConfigLine::parse(&"x".repeat(2000)).is_err());
    }
}
