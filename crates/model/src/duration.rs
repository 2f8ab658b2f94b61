//! Durations in HAProxy's own syntax, checked when the manifest loads.
//!
//! A typo such as `5 secs` used to reach the rendered file and be found by
//! `haproxy -c` on a line of a file the operator never wrote. Parsing it
//! here reports it at the manifest's `file:line` with what is accepted;
//! the text is kept as written, so the rendered line is exactly what the
//! operator typed.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

/// What a duration may look like, for errors and the schema.
const ACCEPTED: &str = "a whole number with a unit: us, ms, s, m, h or d (`5s`, `500ms`, `1m`); a bare number is milliseconds";

/// A duration as HAProxy reads it (`5s`, `500ms`, `1m`, `30000`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct HaproxyDuration(String);

impl HaproxyDuration {
    /// Parses `text`, or says what is accepted.
    pub fn parse(text: &str) -> Result<Self, String> {
        match parse_haproxy(text) {
            Some(_) => Ok(Self(text.to_string())),
            None => Err(format!("`{text}` is not a duration: expected {ACCEPTED}")),
        }
    }

    /// Its length (a text that does not parse, only possible for a
    /// default written in code, counts as zero).
    pub fn as_duration(&self) -> std::time::Duration {
        parse_haproxy(&self.0).unwrap_or_default()
    }
}

/// An HAProxy duration's length (`500ms`, `5s`; a bare number is
/// milliseconds), or `None` for a text HAProxy would not take. Shared by
/// the manifests and by the reader of a rendered `haproxy.cfg`.
pub fn parse_haproxy(text: &str) -> Option<std::time::Duration> {
    use std::time::Duration;
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let n: u64 = text[..digits].parse().ok()?;
    Some(match &text[digits..] {
        "us" => Duration::from_micros(n),
        "" | "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        "h" => Duration::from_secs(n.checked_mul(3600)?),
        "d" => Duration::from_secs(n.checked_mul(86_400)?),
        _ => return None,
    })
}

impl fmt::Display for HaproxyDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for HaproxyDuration {
    /// For defaults written in code; they are checked by the tests.
    fn from(text: &str) -> Self {
        Self(text.to_string())
    }
}

impl<'de> Deserialize<'de> for HaproxyDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // YAML reads `30000` as a number: take it as the text it was.
        let text = match serde_norway::Value::deserialize(deserializer)? {
            serde_norway::Value::String(s) => s,
            serde_norway::Value::Number(n) => n.to_string(),
            _ => return Err(serde::de::Error::custom(format!("expected {ACCEPTED}"))),
        };
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for HaproxyDuration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "HaproxyDuration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": ACCEPTED,
            "anyOf": [
                { "type": "string", "pattern": "^[0-9]+(us|ms|s|m|h|d)?$" },
                { "type": "integer", "minimum": 0 }
            ]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn haproxy_s_units_are_accepted_and_kept_as_written() {
        for ok in ["5s", "500ms", "1m", "2h", "1d", "100us", "30000"] {
            assert_eq!(HaproxyDuration::parse(ok).expect(ok).to_string(), ok);
        }
    }

    #[test]
    fn a_duration_has_its_length() {
        for (text, ms) in [
            ("5s", 5_000),
            ("500ms", 500),
            ("2m", 120_000),
            ("30000", 30_000),
        ] {
            let d = HaproxyDuration::parse(text).expect(text).as_duration();
            assert_eq!(d, std::time::Duration::from_millis(ms), "{text}");
        }
    }

    #[test]
    fn anything_else_is_refused_with_what_is_accepted() {
        for bad in ["5 secs", "5sec", "s", "", "-1s", "1.5s", "5S"] {
            let e = HaproxyDuration::parse(bad).expect_err(bad);
            assert!(e.contains("us, ms, s, m, h or d"), "{e}");
        }
    }

    #[test]
    fn the_defaults_parse() {
        let t = crate::manifest::Timeouts::default();
        for d in [t.connect, t.client, t.server] {
            assert!(HaproxyDuration::parse(&d.to_string()).is_ok(), "{d}");
        }
    }
}
