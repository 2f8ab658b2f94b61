//! The shipped example manifests, catalog and templates render as intended.

use std::path::{Path, PathBuf};

use converge_model::{Catalog, Layout, Manifests, RenderedSet};
use converge_render::{render, Templates};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn render_node(node: &str, catalog: &Catalog) -> RenderedSet {
    let manifests = Manifests::load(&repo().join("manifests")).expect("example manifests load");
    manifests.validate().expect("example manifests validate");
    let desired = manifests.for_node(node).expect("node");
    let templates = Templates::load(&repo().join("templates")).expect("templates");
    render(&desired, catalog, &templates, &Layout::new("/srv/demo")).expect("render")
}

fn example_catalog() -> Catalog {
    Catalog::load_file(&repo().join("examples/catalog.yaml")).expect("catalog")
}

fn text(set: &RenderedSet, target: &str) -> String {
    String::from_utf8(set.files[target].bytes.clone()).expect("utf8")
}

#[test]
fn haproxy_gets_only_healthy_tagged_instances() {
    let set = render_node("lb1", &example_catalog());
    let cfg = text(&set, "haproxy");
    assert!(
        cfg.contains("server web-1:app1 10.20.1.11:8080 check"),
        "{cfg}"
    );
    assert!(
        cfg.contains("server web-2:app2 10.20.1.12:8080 check"),
        "{cfg}"
    );
    assert!(!cfg.contains("web-3"), "critical instance rendered:\n{cfg}");
    assert!(
        !cfg.contains("web-canary"),
        "untagged instance rendered:\n{cfg}"
    );
    // api includes warning instances by manifest choice.
    assert!(cfg.contains("server api-2:app2 10.20.1.12:9090"), "{cfg}");
    assert!(cfg.contains("cookie WSSERVER insert"), "{cfg}");
    assert!(
        cfg.contains("stats socket /srv/demo/run/haproxy/admin.sock"),
        "{cfg}"
    );
    assert!(
        cfg.contains("    stats timeout 30s\n    httpclient.ssl.verify none\n\n"),
        "{cfg}"
    );
}

#[test]
fn warning_instances_are_left_out_unless_the_backend_includes_them() {
    // `web` leaves include_warning at its default; `api` sets it.
    let text_catalog = r#"
services:
  web:
    - {id: web-1, node: app1, address: 10.20.1.11, port: 8080, tags: [prod], health: passing}
    - {id: web-2, node: app2, address: 10.20.1.12, port: 8080, tags: [prod], health: warning}
  api:
    - {id: api-2, node: app2, address: 10.20.1.12, port: 9090, health: warning}
"#;
    let catalog = Catalog::parse(Path::new("warning.yaml"), text_catalog).expect("parses");
    let cfg = text(&render_node("lb1", &catalog), "haproxy");
    assert!(
        cfg.contains("server web-1:app1 10.20.1.11:8080 check"),
        "{cfg}"
    );
    assert!(!cfg.contains("web-2"), "warning instance rendered:\n{cfg}");
    assert!(cfg.contains("server api-2:app2 10.20.1.12:9090"), "{cfg}");
}

#[test]
fn pgbouncer_follows_primary_and_replicas() {
    let set = render_node("lb1", &example_catalog());
    let ini = text(&set, "pgbouncer");
    assert!(
        ini.contains("app = host=10.20.3.31 port=5432 dbname=app"),
        "{ini}"
    );
    assert!(
        ini.contains("app_ro = host=10.20.3.32,10.20.3.33 port=5432 dbname=app"),
        "{ini}"
    );
    assert!(
        ini.contains("auth_file = /srv/demo/etc/pgbouncer/userlist.txt"),
        "{ini}"
    );
    let users = text(&set, "pgbouncer_userlist");
    assert!(
        users.starts_with("\"app\" \"SCRAM-SHA-256$4096:"),
        "{users}"
    );
    assert_eq!(
        set.files["pgbouncer"].bundle,
        set.files["pgbouncer_userlist"].bundle
    );
}

#[test]
fn keepalived_priority_and_state_are_per_node() {
    let one = text(&render_node("lb1", &example_catalog()), "keepalived");
    let two = text(&render_node("lb2", &example_catalog()), "keepalived");
    assert!(
        one.contains("state MASTER") && one.contains("priority 150"),
        "{one}"
    );
    assert!(
        two.contains("state BACKUP") && two.contains("priority 100"),
        "{two}"
    );
    assert!(
        one.contains("unicast_src_ip 10.20.0.11") && one.contains("        10.20.0.12"),
        "{one}"
    );
}

#[test]
fn rendering_twice_is_byte_identical() {
    let a = render_node("lb1", &example_catalog());
    let b = render_node("lb1", &example_catalog());
    for (name, f) in &a.files {
        assert_eq!(
            f.bytes, b.files[name].bytes,
            "target {name} differs between renders"
        );
    }
}

#[test]
fn hostile_catalog_values_are_rejected_per_instance_and_the_rest_renders() {
    let text_catalog = r#"
services:
  web:
    - {id: web-1, node: app1, address: 10.20.1.11, port: 8080, tags: [prod], health: passing}
    - {id: evil, node: app2, address: "10.0.0.9:80 check\n    server pwned 6.6.6.6", port: 8080, tags: [prod], health: passing}
    - {id: "web#2", node: app2, address: 10.20.1.12, port: 8080, tags: [prod], health: passing}
    - {id: web-4, node: app4, address: 10.20.1.14, port: 8080, tags: [prod, "x y"], health: passing}
  postgres:
    - {id: pg1, node: db1, address: 10.20.3.31, port: 5432, tags: [primary], health: passing, meta: {note: "a;b"}}
"#;
    let catalog = Catalog::parse(Path::new("hostile.yaml"), text_catalog).expect("parses");
    let set = render_node("lb1", &catalog);
    let cfg = text(&set, "haproxy");
    assert!(cfg.contains("server web-1:app1 "), "{cfg}");
    assert!(
        !cfg.contains("pwned") && !cfg.contains("web#2") && !cfg.contains("web-4"),
        "{cfg}"
    );
    // An id is never refused for its characters: it reaches the config
    // only through its derived name.
    assert!(
        cfg.contains("server web_232:app2 10.20.1.12:8080 check"),
        "{cfg}"
    );
    let fields: Vec<(&str, &str)> = set
        .rejections
        .iter()
        .map(|r| (r.instance.as_str(), r.field.as_str()))
        .collect();
    assert!(fields.contains(&("evil", "address")), "{fields:?}");
    assert!(!fields.iter().any(|(i, _)| *i == "web#2"), "{fields:?}");
    assert!(fields.contains(&("web-4", "tags")), "{fields:?}");
    assert!(fields.contains(&("pg1", "meta.note")), "{fields:?}");
    let ini = text(&set, "pgbouncer");
    assert!(ini.contains(";; app: no healthy primary"), "{ini}");
}

#[test]
fn two_primaries_route_nowhere_and_warn() {
    let text_catalog = r#"
services:
  postgres:
    - {id: pg1, node: db1, address: 10.20.3.31, port: 5432, tags: [primary], health: passing}
    - {id: pg2, node: db2, address: 10.20.3.32, port: 5432, tags: [master], health: passing}
"#;
    let catalog = Catalog::parse(Path::new("split.yaml"), text_catalog).expect("parses");
    let set = render_node("lb1", &catalog);
    assert!(!text(&set, "pgbouncer").contains("app = host="));
    assert!(
        set.warnings
            .iter()
            .any(|w| w.contains("claim to be primary")),
        "{:?}",
        set.warnings
    );
}

#[test]
#[ignore = "manual: dumps the rendered examples to $DUMP_DIR"]
fn dump() {
    let dir = PathBuf::from(std::env::var("DUMP_DIR").expect("DUMP_DIR"));
    let set = render_node("lb1", &example_catalog());
    for (name, f) in &set.files {
        std::fs::write(dir.join(name), &f.bytes).expect("write");
    }
}

/// keepalived's config does not depend on the catalog, so only a new
/// revision changes it (and the rollout's locks cover every reload of it).
#[test]
fn keepalived_renders_the_same_bytes_whatever_the_catalog() {
    let empty = Catalog::parse(Path::new("empty.yaml"), "services: {}\n").expect("parses");
    let full = render_node("lb1", &example_catalog());
    let bare = render_node("lb1", &empty);
    assert_ne!(full.files["haproxy"].bytes, bare.files["haproxy"].bytes);
    assert_eq!(
        full.files["keepalived"].bytes,
        bare.files["keepalived"].bytes
    );
}

#[test]
fn a_keepalived_template_that_reads_the_catalog_does_not_render() {
    let dir = tempfile::tempdir().expect("templates dir");
    for entry in std::fs::read_dir(repo().join("templates")).expect("templates") {
        let path = entry.expect("entry").path();
        std::fs::copy(&path, dir.path().join(path.file_name().expect("name"))).expect("copy");
    }
    std::fs::write(
        dir.path().join("keepalived.conf.tera"),
        "{% for b in backends %}# {{ b.name }}\n{% endfor %}",
    )
    .expect("template");
    let manifests = Manifests::load(&repo().join("manifests")).expect("example manifests load");
    let desired = manifests.for_node("lb1").expect("node");
    let templates = Templates::load(dir.path()).expect("templates");
    let err = render(
        &desired,
        &example_catalog(),
        &templates,
        &Layout::new("/srv/demo"),
    )
    .expect_err("keepalived reads no catalog");
    let message = err.to_string();
    assert!(
        message.contains("target keepalived") && message.contains("backends"),
        "{message}"
    );
}
