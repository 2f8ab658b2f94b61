//! Inputs too large or too deeply nested are refused before serde_norway
//! parses them (it takes time quadratic in the depth), with the file and,
//! for depth, the line. Timings are in BENCHMARKS.md, not asserted here.

use std::path::{Path, PathBuf};

use converge_model::bounds::{MAX_BYTES, MAX_DEPTH};
use converge_model::{Catalog, Manifests};

/// About 400 KB of nested flow sequences: `[[[[…]]]]`.
fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

fn manifest_errors(files: &[(&str, String)]) -> Vec<String> {
    let texts: Vec<(PathBuf, String)> = files
        .iter()
        .map(|(n, t)| (PathBuf::from(format!("m/{n}")), t.clone()))
        .collect();
    Manifests::from_sources(Path::new("m"), &texts)
        .expect_err("must be refused")
        .0
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn a_deeply_nested_catalog_is_refused_at_its_line() {
    let text = format!("services:\n  web: {}\n", nested(200_000));
    assert!(text.len() > 400_000);
    let err = Catalog::parse(Path::new("cat.yaml"), &text).expect_err("refused");
    let msg = err.to_string();
    assert!(msg.starts_with("cat.yaml:2:"), "{msg}");
    assert!(
        msg.ends_with(&format!(
            ": nested more than {MAX_DEPTH} levels deep (lists and mappings inside each other); \
             a catalog file needs a few, so it was not read"
        )),
        "{msg}"
    );
}

#[test]
fn a_deeply_nested_manifest_is_refused_and_the_others_still_checked() {
    let good = "backends:\n  web:\n    service: web\n    balnce: roundrobin\n".to_string();
    let deep = format!("nodes:\n  lb1:\n    vars:\n      x: {}\n", nested(200_000));
    let errs = manifest_errors(&[("a.yaml", good), ("b.yaml", deep)]);
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(errs[0].contains("did you mean `balance`"), "{errs:?}");
    assert!(
        errs[1].starts_with("m/b.yaml:4:") && errs[1].contains("nested more than 64 levels deep"),
        "{errs:?}"
    );
}

#[test]
fn a_file_over_the_size_limit_is_refused_by_name() {
    let mut text = String::from("services: {}\n");
    text.push_str(&"#".repeat(MAX_BYTES));
    let err = Catalog::parse(Path::new("cat.yaml"), &text).expect_err("refused");
    assert_eq!(
        err.to_string(),
        "cat.yaml: larger than 8 MiB, the most a catalog file may be, so it was not read"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("cat.yaml");
    std::fs::write(&file, &text).expect("write");
    let err = Catalog::load_file(&file).expect_err("refused");
    assert!(err.to_string().contains("larger than 8 MiB"), "{err}");

    std::fs::write(dir.path().join("big.yaml"), &text).expect("write");
    let err = Manifests::load(dir.path()).expect_err("refused");
    assert_eq!(
        err.to_string(),
        format!(
            "{}: larger than 8 MiB, the most a manifest file may be, so it was not read",
            dir.path().join("big.yaml").display()
        )
    );
}
