//! serde's words → the manifest's words, and "did you mean".
//!
//! The typed structs are deserialized by serde, whose messages speak Rust
//! (`expected u32`, `invalid type: sequence`, `unknown variant`). The
//! person reading them wrote YAML, so the one place where a serde message
//! becomes a manifest error rewrites it here: types are named as YAML
//! shows them (`a whole number`, `true or false`, `a list`), and an unknown
//! field or keyword gets the nearest allowed one, as a dangling reference
//! does ([`suggest`], shared with the cross-reference checks).

/// `, did you mean `X`?` for the known name nearest to `wrong` (at most
/// two edits away, or one for names of up to three characters), or
/// nothing.
pub fn suggest<'a>(wrong: &str, known: impl IntoIterator<Item = &'a str>) -> String {
    let limit = if wrong.chars().count() <= 3 { 1 } else { 2 };
    known
        .into_iter()
        .map(|k| (strsim::damerau_levenshtein(wrong, k), k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| format!(", did you mean `{k}`?"))
        .unwrap_or_default()
}

/// A serde error message for one manifest entry, in the manifest's words.
/// Messages it does not recognise are returned unchanged.
pub fn serde_message(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("unknown field ") {
        return unknown("field", rest);
    }
    if let Some(rest) = message.strip_prefix("unknown variant ") {
        return unknown("value", rest);
    }
    for (prefix, what) in [("invalid type: ", "found"), ("invalid value: ", "got")] {
        if let Some((found, expected)) = message
            .strip_prefix(prefix)
            .and_then(|r| r.split_once(", expected "))
        {
            return format!(
                "expected {}, {what} {}",
                expected_words(expected),
                found_words(found)
            );
        }
    }
    if let Some(rest) = message.strip_prefix("missing field ") {
        return format!("missing required field {rest}");
    }
    message.to_string()
}

/// `` `wrong`, expected one of `a`, `b` `` (serde's tail) → the same with
/// the nearest allowed name offered first.
fn unknown(kind: &str, rest: &str) -> String {
    let mut names = rest.split('`').skip(1).step_by(2);
    let Some(wrong) = names.next() else {
        return format!("unknown {kind} {rest}");
    };
    let allowed: Vec<&str> = names.collect();
    let hint = suggest(wrong, allowed.iter().copied());
    let list = rest
        .split_once(", ")
        .map(|(_, l)| l.replace("there are no fields", "this takes no fields"))
        .unwrap_or_default();
    match (hint.is_empty(), list.is_empty()) {
        (true, true) => format!("unknown {kind} `{wrong}`"),
        (true, false) => format!("unknown {kind} `{wrong}`, {list}"),
        (false, _) => format!("unknown {kind} `{wrong}`{hint}"),
    }
}

/// What serde expected, as YAML shows it.
fn expected_words(expected: &str) -> String {
    let words = match expected {
        "u8" => "a whole number from 0 to 255",
        "u16" => "a whole number from 0 to 65535",
        "u32" | "u64" | "usize" | "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number",
        "f32" | "f64" => "a number",
        "a boolean" => "true or false",
        "a string" | "a borrowed string" => "text",
        "a character" => "a single character",
        "a sequence" => "a list",
        "a map" => "a mapping (`key: value` lines)",
        e if e.starts_with("struct ") => "a mapping (`key: value` lines)",
        e if e.starts_with("tuple struct ") || e.starts_with("a tuple of size") => "a list",
        e => return e.replace("variant identifier", "keyword"),
    };
    words.to_string()
}

/// What serde found (its `Unexpected`), as YAML shows it.
fn found_words(found: &str) -> String {
    if let Some(s) = found.strip_prefix("string ") {
        return format!("the text {s}");
    }
    for prefix in ["integer ", "floating point ", "boolean "] {
        if let Some(v) = found.strip_prefix(prefix) {
            return v.trim_matches('`').to_string();
        }
    }
    match found {
        "sequence" => "a list".into(),
        "map" => "a mapping".into(),
        "unit value" | "unit" => "nothing (an empty value)".into(),
        other => other.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_for_near_misses() {
        let known = ["web", "api"];
        assert_eq!(suggest("wbe", known), ", did you mean `web`?");
        assert_eq!(suggest("database", known), "");
        assert_eq!(
            suggest("balnce", ["balance", "mode"]),
            ", did you mean `balance`?"
        );
        assert_eq!(suggest("ab", ["xy"]), "");
    }

    #[test]
    fn unknown_fields_and_keywords_offer_the_nearest() {
        assert_eq!(
            serde_message("unknown field `balnce`, expected one of `service`, `balance`, `mode`"),
            "unknown field `balnce`, did you mean `balance`?"
        );
        assert_eq!(
            serde_message("unknown field `zzz`, expected `service` or `mode`"),
            "unknown field `zzz`, expected `service` or `mode`"
        );
        assert_eq!(
            serde_message("unknown variant `tpc`, expected `http` or `tcp`"),
            "unknown value `tpc`, did you mean `tcp`?"
        );
    }

    #[test]
    fn types_are_named_as_yaml_shows_them() {
        assert_eq!(
            serde_message("invalid type: string \"lots\", expected u32"),
            "expected a whole number, found the text \"lots\""
        );
        assert_eq!(
            serde_message("invalid type: string \"yes please\", expected a boolean"),
            "expected true or false, found the text \"yes please\""
        );
        assert_eq!(
            serde_message("invalid type: string \":80\", expected a sequence"),
            "expected a list, found the text \":80\""
        );
        assert_eq!(
            serde_message("invalid value: integer `300`, expected u8"),
            "expected a whole number from 0 to 255, got 300"
        );
        assert_eq!(
            serde_message("invalid type: sequence, expected struct Backend"),
            "expected a mapping (`key: value` lines), found a list"
        );
        assert_eq!(
            serde_message("missing field `service`"),
            "missing required field `service`"
        );
    }
}
