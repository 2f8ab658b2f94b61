//! Masking secrets in text a person or a log will see (invariant 7).
//!
//! Masking today's secret values is not enough. After a rotation the live
//! file still holds the old value, which converge does not know (it keeps
//! no copy of a secret, by design), and a diff would print it on its `-`
//! line. So a [`Redactor`] also learns where secrets *stand*: for every
//! place a secret occurs in a rendered file it keeps the key before the
//! value on its line (`auth_pass `, `password=`, `"app" "`) and the text
//! after it, and masks whatever stands at such a place in any text it is
//! given. A live line with the same key has its value masked whatever the
//! value is, so a diff still shows that the line changed, and never what
//! it held.
//!
//! The key is the last word before the value (with the words before it
//! when that word is only punctuation, as with a quote), not the whole
//! line start, so a line whose other fields changed in the same edit is
//! still masked. Masking runs to the text that followed the secret in the
//! rendered line when the line ends with it, else to the first character
//! of that text, else to the end of the line. A secret alone on a line has
//! no key and is masked only by value: a file shaped like that belongs in a
//! `secret: true` target, whose contents are never shown.

use std::collections::BTreeSet;
use std::fmt;

/// What stands in for a secret.
const MASK: &str = "********";

/// The masks learned from one rendered set: secret values, and the places
/// in its files where secrets stand.
#[derive(Clone, Default)]
pub struct Redactor {
    /// Non-empty values, longest first, so a secret that contains another
    /// is masked whole.
    values: Vec<String>,
    /// Where secrets stand in the rendered files.
    places: BTreeSet<Place>,
}

/// A place a secret stands on a line: the key before it and the text after.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Place {
    key: String,
    after: String,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Neither the values nor the text after a place (which may hold
        // another secret) may show.
        f.debug_struct("Redactor")
            .field("values", &self.values.len())
            .field("places", &self.places.len())
            .finish()
    }
}

impl Redactor {
    /// Learns the masks for `values` from the rendered `files`.
    pub fn new<'a>(
        values: impl IntoIterator<Item = &'a str>,
        files: impl IntoIterator<Item = &'a [u8]>,
    ) -> Self {
        let mut values: Vec<String> = values
            .into_iter()
            .filter(|v| !v.is_empty())
            .map(str::to_string)
            .collect();
        values.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        values.dedup();
        let mut places = BTreeSet::new();
        for bytes in files {
            let text = String::from_utf8_lossy(bytes);
            for value in values.iter().filter(|v| text.contains(v.as_str())) {
                for line in text.lines().filter(|l| l.contains(value.as_str())) {
                    for (at, _) in line.match_indices(value.as_str()) {
                        let key = key_before(&line[..at]);
                        if !key.is_empty() {
                            places.insert(Place {
                                key: key.to_string(),
                                after: line[at + value.len()..].to_string(),
                            });
                        }
                    }
                }
            }
        }
        Self { values, places }
    }

    /// `text` with every known value, and whatever stands where a secret
    /// stands, replaced by `********`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for v in &self.values {
            out = out.replace(v.as_str(), MASK);
        }
        if self.places.is_empty() {
            return out;
        }
        out.split_inclusive('\n')
            .map(|line| {
                let body = line.trim_end_matches(['\n', '\r']);
                let mut masked = self.mask_places(body);
                masked.push_str(&line[body.len()..]);
                masked
            })
            .collect()
    }

    /// One line (without its ending) with every place masked.
    fn mask_places(&self, line: &str) -> String {
        let mut line = line.to_string();
        for p in &self.places {
            let mut from = 0;
            while let Some(i) = line[from..].find(p.key.as_str()) {
                let start = from + i + p.key.len();
                let end = start + value_end(&line[start..], &p.after);
                if end > start && &line[start..end] != MASK {
                    line.replace_range(start..end, MASK);
                }
                from = if end > start {
                    start + MASK.len()
                } else {
                    start
                };
            }
        }
        line
    }
}

/// The key of a secret whose line starts with `prefix`: its last word and
/// the separator after it, reaching back over words that are only
/// punctuation (`"app" "`). Empty when no word holds a letter or digit.
fn key_before(prefix: &str) -> &str {
    let mut start = prefix.len();
    while start > 0 {
        let head = prefix[..start].trim_end();
        start = head
            .char_indices()
            .rev()
            .find(|(_, c)| c.is_whitespace())
            .map_or(0, |(i, c)| i + c.len_utf8());
        if head[start..].chars().any(char::is_alphanumeric) {
            return &prefix[start..];
        }
    }
    ""
}

/// How far the value runs in `rest` (the line after a key), given the
/// text that followed the secret in the rendered line.
fn value_end(rest: &str, after: &str) -> usize {
    if after.is_empty() {
        return rest.len();
    }
    if let Some(cut) = rest.strip_suffix(after) {
        return cut.len();
    }
    after
        .chars()
        .next()
        .and_then(|c| rest.find(c))
        .unwrap_or(rest.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redactor(values: &[&str], file: &str) -> Redactor {
        Redactor::new(values.iter().copied(), [file.as_bytes()])
    }

    #[test]
    fn an_old_value_where_a_secret_stands_is_masked() {
        let r = redactor(&["n3w"], "vrrp_instance v {\n    auth_pass n3w\n}\n");
        let live = "vrrp_instance v {\n    auth_pass 0ld\n}\n";
        assert_eq!(
            r.redact(live),
            "vrrp_instance v {\n    auth_pass ********\n}\n"
        );
    }

    #[test]
    fn the_key_survives_a_change_of_indentation_and_of_other_fields() {
        let r = redactor(&["n3w"], "db = host=a password=n3w dbname=x\n");
        assert_eq!(
            r.redact("db  =  host=b password=0ld dbname=x\r\n"),
            "db  =  host=b password=******** dbname=x\r\n"
        );
        assert_eq!(
            r.redact("db = host=b password=0ld port=5 dbname=y\n"),
            "db = host=b password=******** port=5 dbname=y\n"
        );
    }

    #[test]
    fn a_quoted_value_keeps_its_quotes() {
        let r = redactor(&["SCRAM$new"], "\"app\" \"SCRAM$new\"\n");
        assert_eq!(
            r.redact("\"app\" \"SCRAM$old\"\n\"other\" \"plain\"\n"),
            "\"app\" \"********\"\n\"other\" \"plain\"\n"
        );
    }

    #[test]
    fn a_secret_containing_another_is_masked_whole() {
        let r = redactor(&["abc", "abcdef"], "");
        assert_eq!(r.redact("x abcdef y abc"), "x ******** y ********");
    }

    #[test]
    fn a_secret_alone_on_a_line_is_masked_by_value_only() {
        let r = redactor(&["n3w"], "n3w\n");
        assert_eq!(r.redact("n3w\n0ld\n"), "********\n0ld\n");
    }

    #[test]
    fn debug_shows_neither_values_nor_places() {
        let r = redactor(&["n3w"], "auth_pass n3w trailing-0ther\n");
        let shown = format!("{r:?}");
        assert!(
            !shown.contains("n3w") && !shown.contains("0ther"),
            "{shown}"
        );
    }
}
