//! Reading a `pgbouncer.ini` the way PgBouncer's parser does, for the two
//! places that compare a live file with a candidate: settings that need a
//! restart ([`restart`](super::restart), which `plan` reports) and
//! databases a reload moves (the [`console`](super::console)'s `PAUSE`).
//!
//! `;` and `#` start a comment line, section names are case-insensitive,
//! a key set twice keeps its last value. `%include` lines are not followed.

use std::collections::{BTreeMap, BTreeSet};

/// The keys and last values of section `name` in `text`; keys are
/// lowercased when `fold_keys` (PgBouncer's settings are case-insensitive,
/// database names are not).
pub fn section(text: &str, name: &str, fold_keys: bool) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = header.trim().eq_ignore_ascii_case(name);
            continue;
        }
        if let (true, Some((k, v))) = (inside, line.split_once('=')) {
            let key = if fold_keys {
                k.trim().to_ascii_lowercase()
            } else {
                k.trim().to_string()
            };
            out.insert(key, v.trim().to_string());
        }
    }
    out
}

/// Databases defined in both files whose `[databases]` entry differs: the
/// ones a reload sends somewhere else. Added and removed ones are not in
/// the set (nothing runs on them to finish first).
pub fn moved_databases(live: &[u8], candidate: &[u8]) -> BTreeSet<String> {
    let old = section(&String::from_utf8_lossy(live), "databases", false);
    let new = section(&String::from_utf8_lossy(candidate), "databases", false);
    old.into_iter()
        .filter(|(name, entry)| new.get(name).is_some_and(|e| e != entry))
        .map(|(name, _)| name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIVE: &str = "[databases]\napp = host=10.0.0.1 port=5432\n\
                        app_ro = host=10.0.0.2 port=5432\narchive = host=10.0.0.9\n\
                        [pgbouncer]\nlisten_port = 6432\n";

    #[test]
    fn only_databases_whose_entry_changes_have_moved() {
        let new = LIVE
            .replace("app = host=10.0.0.1", "app = host=10.0.0.3")
            .replace("archive = host=10.0.0.9\n", "")
            .replace("[pgbouncer]", "reports = host=10.0.0.4\n[pgbouncer]")
            .replace("6432", "6433");
        let moved = moved_databases(LIVE.as_bytes(), new.as_bytes());
        assert_eq!(moved, BTreeSet::from(["app".to_string()]));
        assert!(moved_databases(LIVE.as_bytes(), LIVE.as_bytes()).is_empty());
    }

    #[test]
    fn sections_comments_case_and_the_last_value() {
        let text = "; app = host=x\n[DATABASES]\nApp = host=a\nApp = host=b\n# x = y\n[pgbouncer]\nApp = no\n";
        assert_eq!(
            section(text, "databases", false),
            BTreeMap::from([("App".to_string(), "host=b".to_string())])
        );
        assert_eq!(
            section(text, "pgbouncer", true),
            BTreeMap::from([("app".to_string(), "no".to_string())])
        );
    }
}
