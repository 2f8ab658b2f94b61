//! The rollout's health gate asking a real PgBouncer over its admin
//! console: `SHOW DATABASES` must route each database of the live
//! `pgbouncer.ini` to the host and port the file gives. A file changed
//! without a `RELOAD` is what a reload that did not take looks like.

use std::path::{Path, PathBuf};

use converge_agent::rollout::serving::{Before, Serving, ROUTES_SETTLE};
use converge_model::{Layout, Manifest, Manifests};
use converge_testkit::free_port;
use converge_testkit::pgbouncer::{trust_config, Pgbouncer};

/// Node lb1 renders `ini` and reloads it over the console in `dir`.
fn manifest(ini: &Path, dir: &Path, port: u16) -> Manifest {
    let text = format!(
        "nodes: {{lb1: {{}}}}\ntargets:\n  pgbouncer:\n    template: pgbouncer.ini.tera\n    \
         destination: {}\n    validate: none\n    \
         reload: {{pgbouncer: {{host: {}, port: {port}, user: admin}}}}\n",
        ini.display(),
        dir.display()
    );
    Manifests::from_sources(Path::new("m"), &[(PathBuf::from("m.yaml"), text)])
        .expect("manifest")
        .manifest
}

#[tokio::test]
async fn the_gate_fails_while_pgbouncer_routes_elsewhere_than_its_live_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let entry = |server: u16| format!("app = host=127.0.0.1 port={server} dbname=app\n");
    let ini = trust_config(dir.path(), port, &entry(10_001)).expect("config");
    let mut pgbouncer = Pgbouncer::start(&ini, port).expect("pgbouncer");
    let serving = Serving::of(&manifest(&ini, dir.path(), port), "lb1", &Layout::new("/"));
    assert_eq!(serving.unchecked(), "");
    let before = serving.before().await;
    assert_eq!(serving.serves(&before).await, Ok(()));

    // The file moves app to another port, and PgBouncer is not reloaded.
    let text = std::fs::read_to_string(&ini).expect("read ini");
    std::fs::write(&ini, text.replace(&entry(10_001), &entry(10_002))).expect("write ini");
    let why = serving.serves(&before).await.expect_err("a stale route");
    assert!(
        why.contains(
            "app: expected host=127.0.0.1 port=10002, PgBouncer has host=127.0.0.1 port=10001"
        ),
        "{why}"
    );
    assert!(why.contains(&format!("for {ROUTES_SETTLE:.0?}")), "{why}");
    pgbouncer.admin("admin", "RELOAD").expect("RELOAD");
    assert_eq!(serving.serves(&before).await, Ok(()));

    // A console that answered before the switch and no longer does fails;
    // one that did not answer before either is not judged.
    pgbouncer.stop();
    let why = serving.serves(&before).await.expect_err("PgBouncer gone");
    assert!(
        why.starts_with("PgBouncer's console: SHOW DATABASES"),
        "{why}"
    );
    assert_eq!(serving.serves(&Before::default()).await, Ok(()));
}
