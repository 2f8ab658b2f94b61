//! Every desired state has a revision: the Git commit of the manifests
//! (`-dirty` with uncommitted or untracked files under the manifests or
//! templates), else a content hash; `plan`, `apply` and the daemon name it.

mod common;

use std::time::Duration;

use common::{assert_exit, haproxy_site, stdout, web_catalog, Workspace};
use converge_testkit::git::run as git;

/// A workspace whose directory is a Git repository with everything
/// committed; returns it and the short commit.
fn committed() -> (Workspace, String) {
    let ws = Workspace::custom(
        &haproxy_site(converge_testkit::free_port(), "", "haproxy", false),
        &web_catalog(&[8081]),
    );
    let dir = ws.dir.path();
    git(dir, &["init", "-q"]);
    std::fs::write(dir.join(".gitignore"), "root/\n").expect("gitignore");
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "site"]);
    let head = git(dir, &["rev-parse", "--short", "HEAD"]);
    (ws, head)
}

fn plan_revision(ws: &Workspace) -> String {
    let out = ws.converge(&["plan", "--node", "lb1", "--format", "json"]);
    assert_exit(&out, 2);
    let doc: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    doc["revision"].as_str().expect("revision").to_string()
}

#[test]
fn plan_and_apply_name_the_commit_and_say_dirty_after_an_edit() {
    let (ws, head) = committed();
    let out = ws.converge(&["plan", "--node", "lb1"]);
    assert_exit(&out, 2);
    assert!(
        stdout(&out)
            .lines()
            .any(|l| l == format!("revision {head}")),
        "{}",
        stdout(&out)
    );
    assert_eq!(plan_revision(&ws), head);

    // An edit of a tracked manifest: dirty.
    let site = ws.read("manifests/site.yaml");
    ws.write("manifests/site.yaml", &format!("{site}\n# edited\n"));
    assert_eq!(plan_revision(&ws), format!("{head}-dirty"));
    git(ws.dir.path(), &["checkout", "--", "manifests/site.yaml"]);
    assert_eq!(plan_revision(&ws), head, "clean again");

    // An untracked template: dirty too; a file elsewhere in the
    // repository is not part of the desired state.
    ws.write("notes.txt", "unrelated\n");
    assert_eq!(plan_revision(&ws), head, "outside both directories");
    ws.write("templates/new.tera", "x\n");
    assert_eq!(plan_revision(&ws), format!("{head}-dirty"));
    std::fs::remove_file(ws.path("templates/new.tera")).expect("rm");

    let out = ws.converge(&["apply", "--once", "--node", "lb1", "--format", "json"]);
    assert_exit(&out, 0);
    let doc: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(doc["revision"].as_str(), Some(head.as_str()));
    let out = ws.converge(&["apply", "--once", "--node", "lb1"]);
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains(&format!("revision {head}\n")),
        "{}",
        stdout(&out)
    );
}

#[test]
fn without_git_the_revision_is_a_content_hash_of_both_directories() {
    let ws = Workspace::custom(
        &haproxy_site(converge_testkit::free_port(), "", "haproxy", false),
        &web_catalog(&[8081]),
    );
    let first = plan_revision(&ws);
    let hex = first.strip_prefix("sha256:").expect("content hash");
    assert!(
        hex.len() == 12 && hex.chars().all(|c| c.is_ascii_hexdigit()),
        "{first}"
    );
    assert_eq!(plan_revision(&ws), first, "stable");

    // The same files in another directory: the same revision.
    let other = Workspace::custom(&ws.read("manifests/site.yaml"), &web_catalog(&[9999]));
    assert_eq!(
        plan_revision(&other),
        first,
        "the catalog is not part of it"
    );

    let tera = ws.read("templates/haproxy.cfg.tera");
    ws.write("templates/haproxy.cfg.tera", &format!("{tera}\n"));
    assert_ne!(plan_revision(&ws), first, "a template byte changed");
}

#[test]
fn the_daemon_reports_the_revision_in_status_and_metrics() {
    let (ws, head) = committed();
    let daemon = ws.run_daemon(&[]);
    let info = |rev: &str| format!("converge_revision_info{{revision=\"{rev}\"}}");
    converge_testkit::wait::until(Duration::from_secs(15), "the revision in status", || {
        daemon.status()["revision"].as_str() == Some(head.as_str())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", ws.daemon_log()));
    assert_eq!(daemon.metric(&info(&head)), 1.0);

    // A manifest edit is picked up with its new name, and the old series
    // goes: one revision is in force at a time.
    let site = ws.read("manifests/site.yaml");
    ws.write("manifests/site.yaml", &format!("{site}\n# edited\n"));
    let dirty = format!("{head}-dirty");
    converge_testkit::wait::until(Duration::from_secs(15), "the dirty revision", || {
        daemon.status()["revision"].as_str() == Some(dirty.as_str())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", ws.daemon_log()));
    assert_eq!(daemon.metric(&info(&dirty)), 1.0);
    let text = converge_testkit::http::get(daemon.listen, "/metrics").expect("metrics");
    assert!(!text.contains(&info(&head)), "{text}");
}
