//! The JSON Schema of one manifest file, generated from the model's own
//! types (`schemars` reads the same serde attributes the loader obeys:
//! unknown fields refused, defaults optional), so it cannot drift from
//! what converge accepts. Editors use it through `yaml-language-server`
//! for completion and validation while typing; the loader's own checks
//! (references between sections, secrets, per-node rules) go further than
//! any schema can, and `converge validate` runs them.

use crate::manifest::Manifest;

/// The schema, as `converge schema` prints it and
/// `schema/converge-manifest.schema.json` holds it.
pub fn manifest_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(Manifest)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    fn repo() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    fn as_json(yaml: &str) -> serde_json::Value {
        let value: serde_norway::Value = serde_norway::from_str(yaml).expect("yaml");
        serde_json::to_value(value).expect("json")
    }

    fn errors(instance: &serde_json::Value) -> Vec<String> {
        let schema = manifest_schema();
        let validator = jsonschema::validator_for(&schema).expect("a valid schema");
        validator
            .iter_errors(instance)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect()
    }

    #[test]
    fn the_committed_schema_is_the_generated_one() {
        let path = repo().join("schema/converge-manifest.schema.json");
        let committed: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("committed schema"))
                .expect("JSON");
        assert_eq!(
            committed,
            manifest_schema(),
            "run `converge schema > schema/converge-manifest.schema.json`"
        );
    }

    #[test]
    fn every_example_manifest_file_satisfies_the_schema() {
        let dir = repo().join("manifests");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("manifests").flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let text = std::fs::read_to_string(&path).expect("read");
                assert!(
                    text.starts_with("# yaml-language-server: $schema="),
                    "{} lacks the editor modeline",
                    path.display()
                );
                let found = errors(&as_json(&text));
                assert!(found.is_empty(), "{}: {found:?}", path.display());
                seen += 1;
            }
        }
        assert!(seen >= 3, "only {seen} manifest files");
    }

    #[test]
    fn a_typo_or_a_wrong_type_fails_the_schema() {
        let typo = as_json("backends:\n  web:\n    service: web\n    balnce: roundrobin\n");
        assert!(!errors(&typo).is_empty(), "unknown field accepted");
        let section = as_json("backend:\n  web:\n    service: web\n");
        assert!(!errors(&section).is_empty(), "unknown section accepted");
        let wrong = as_json("backends:\n  web:\n    service: web\n    min_healthy: lots\n");
        assert!(!errors(&wrong).is_empty(), "a word for a number accepted");
        let fine = as_json("backends:\n  web:\n    service: web\n    balance: roundrobin\n");
        assert_eq!(errors(&fine), Vec::<String>::new());
    }
}
