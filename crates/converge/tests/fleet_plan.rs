//! `converge fleet plan` against a real Consul agent: every node of the
//! manifests, the local (proposed) revision against the published one,
//! with one catalog read from Consul and no live file read.

mod common;

use std::process::Output;

use common::{assert_exit, stderr, stdout, Workspace};
use converge_testkit::consul::ConsulAgent;

/// A secret only the secret file holds.
const APP_SECRET: &str = "SCRAM-app-5d2e8a-value";

/// An HAProxy site for `nodes`, its frontend bound to `port`; its
/// manifests reference a secret file, which stays beside them.
fn site(nodes: &[&str], port: u16) -> String {
    let nodes: String = nodes.iter().map(|n| format!("  {n}: {{}}\n")).collect();
    format!(
        "nodes:\n{nodes}haproxy:\n  stats_socket: /run/haproxy/admin.sock\n\
         frontends:\n  http_in:\n    bind: [\"127.0.0.1:{port}\"]\n    default_backend: web\n\
         backends:\n  web:\n    service: web\n\
         pgbouncer:\n  users:\n    app: {{file: app.pass}}\n\
         targets:\n  haproxy:\n    template: haproxy.cfg.tera\n    destination: /etc/haproxy/haproxy.cfg\n\
         \x20   validate: haproxy\n    reload:\n      signal: {{pidfile: /run/haproxy.pid, signal: SIGUSR2}}\n"
    )
}

fn workspace(consul: &ConsulAgent) -> Workspace {
    consul
        .register_service("web-1", "web", 8081)
        .expect("register");
    // The catalog file is empty: a render against it would have no server,
    // so a `server` line in the output proves the catalog came from Consul.
    let ws = Workspace::custom(&site(&["lb1", "lb2"], 18991), "services: {}\n");
    ws.write("manifests/app.pass", &format!("{APP_SECRET}\n"));
    ws
}

fn fleet_plan(ws: &Workspace, consul: &ConsulAgent, extra: &[&str]) -> Output {
    let url = consul.http_url();
    let mut args = vec!["fleet", "plan", "--consul", url.as_str()];
    args.extend_from_slice(extra);
    let out = ws.converge(&args);
    // The workspace's --root is empty and stays so: the plan compares two
    // renders, and neither needs nor writes a live file.
    assert!(ws.tree().is_empty(), "fleet plan wrote under --root");
    assert!(!stdout(&out).contains(APP_SECRET) && !stderr(&out).contains(APP_SECRET));
    out
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_str(&stdout(out)).unwrap_or_else(|e| panic!("{e}: {}", stdout(out)))
}

#[test]
fn each_node_shows_the_change_from_the_published_revision() {
    let consul = ConsulAgent::start().expect("consul agent -dev");
    let ws = workspace(&consul);

    // Nothing published: compared against nothing, every target new.
    let out = fleet_plan(&ws, &consul, &[]);
    assert_exit(&out, 2);
    let text = stdout(&out);
    assert!(text.contains("published revision: none"), "{text}");
    assert!(text.contains("node lb1: 1 new"), "{text}");
    assert!(text.contains("node lb2: 1 new"), "{text}");
    assert!(
        text.contains("server web-1"),
        "the catalog from Consul:\n{text}"
    );

    let url = consul.http_url();
    let published = ws.converge(&["publish", "--consul", &url, "--publisher", "ci"]);
    assert_exit(&published, 0);

    // The checkout is what is published: no node changes, though nothing
    // is live under --root (where `converge plan` would say "new").
    let out = fleet_plan(&ws, &consul, &[]);
    assert_exit(&out, 0);
    let text = stdout(&out);
    assert!(text.contains("=== lb1: no change"), "{text}");
    assert!(text.contains("0 of 2 nodes change"), "{text}");

    // The proposed change: a new port, and a node added.
    ws.write("manifests/site.yaml", &site(&["lb1", "lb2", "lb3"], 18992));
    let out = fleet_plan(&ws, &consul, &[]);
    assert_exit(&out, 2);
    let text = stdout(&out);
    for node in ["lb1", "lb2"] {
        assert!(text.contains(&format!("=== {node}: changes")), "{text}");
        assert!(
            text.contains(&format!("node {node}: 0 new, 1 changed")),
            "{text}"
        );
    }
    assert!(text.contains("=== lb3: new node"), "{text}");
    assert!(text.contains("-    bind 127.0.0.1:18991"), "{text}");
    assert!(text.contains("+    bind 127.0.0.1:18992"), "{text}");
    assert!(text.contains("--- a/etc/haproxy/haproxy.cfg"), "{text}");
    assert!(text.contains("reload: SIGUSR2"), "the action:\n{text}");
    assert!(text.contains("3 of 3 nodes change"), "{text}");

    let out = fleet_plan(&ws, &consul, &["--format", "json"]);
    assert_exit(&out, 2);
    let doc = json(&out);
    assert_eq!(doc["changes"], true);
    assert!(doc["published"].is_string(), "{doc}");
    let nodes = doc["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3);
    let lb1 = &nodes[0];
    assert_eq!(lb1["node"], "lb1");
    assert_eq!(lb1["in_published"], true);
    let file = &lb1["plan"]["files"][0];
    assert_eq!(file["target"], "haproxy");
    assert_eq!(file["change"], "changed");
    assert!(
        file["diff"]
            .as_str()
            .is_some_and(|d| d.contains("+    bind 127.0.0.1:18992")),
        "{file}"
    );
    assert_eq!(nodes[2]["in_published"], false);
    assert_eq!(nodes[2]["plan"]["files"][0]["change"], "new");

    // A node dropped from the proposed manifests is named as such.
    ws.write("manifests/site.yaml", &site(&["lb1"], 18991));
    let out = fleet_plan(&ws, &consul, &[]);
    assert_exit(&out, 2);
    let text = stdout(&out);
    assert!(text.contains("=== lb1: no change"), "{text}");
    assert!(text.contains("=== lb2: dropped"), "{text}");
    assert!(
        text.contains("dropped    haproxy  /etc/haproxy/haproxy.cfg"),
        "{text}"
    );
}

#[test]
fn a_local_manifest_that_does_not_load_is_an_error_naming_its_line() {
    let consul = ConsulAgent::start().expect("consul agent -dev");
    let ws = workspace(&consul);
    let broken = site(&["lb1"], 18991).replace("default_backend: web", "default_backend: nowhere");
    ws.write("manifests/site.yaml", &broken);
    let out = fleet_plan(&ws, &consul, &[]);
    assert_exit(&out, 1);
    let line = 1 + broken
        .lines()
        .position(|l| l.contains("nowhere"))
        .expect("the broken line");
    assert!(
        stderr(&out).contains(&format!("site.yaml:{line}:")),
        "no file:line in:\n{}",
        stderr(&out)
    );
    let out = fleet_plan(&ws, &consul, &["--format", "json"]);
    assert_exit(&out, 1);
    assert!(json(&out)["error"].is_object(), "{}", stdout(&out));
}

#[test]
fn the_catalog_can_come_from_the_file() {
    let consul = ConsulAgent::start().expect("consul agent -dev");
    let ws = workspace(&consul);
    let out = fleet_plan(&ws, &consul, &["--catalog-source", "file"]);
    assert_exit(&out, 2);
    let text = stdout(&out);
    assert!(
        !text.contains("server web-1"),
        "the empty catalog file:\n{text}"
    );
    assert!(text.contains("node lb1: 1 new"), "{text}");
}

#[test]
fn a_published_bundle_that_fails_its_checksum_is_refused() {
    let consul = ConsulAgent::start().expect("consul agent -dev");
    let ws = workspace(&consul);
    let url = consul.http_url();
    let out = ws.converge(&["publish", "--consul", &url, "--format", "json"]);
    assert_exit(&out, 0);
    let revision = json(&out)["revision"]
        .as_str()
        .expect("revision")
        .to_string();
    // Altered in KV by hand: no publisher writes such a bundle.
    consul
        .kv_put(&format!("converge/bundles/{revision}"), "not the bundle")
        .expect("corrupt bundle");
    let out = fleet_plan(&ws, &consul, &[]);
    assert_exit(&out, 1);
    assert!(stderr(&out).contains("checksum"), "{}", stderr(&out));
}

/// The rights `fleet plan` needs, as the README documents them.
const REVIEWER: &str = r#"key_prefix "converge/" { policy = "read" }
service_prefix "" { policy = "read" }
node_prefix "" { policy = "read" }"#;

#[test]
fn the_documented_reviewer_policy_is_enough() {
    let consul = ConsulAgent::start_with_acl().expect("consul with ACLs, default deny");
    let ws = workspace(&consul);
    let url = consul.http_url();
    let as_token = |token: &str, extra: &[&str]| {
        let mut args = vec!["fleet", "plan", "--consul", url.as_str()];
        args.extend_from_slice(extra);
        ws.converge_env(&args, &[("CONSUL_HTTP_TOKEN", token)])
    };
    let admin = consul.management_token().expect("management token");
    let out = ws.converge_env(
        &["publish", "--consul", &url],
        &[("CONSUL_HTTP_TOKEN", admin)],
    );
    assert_exit(&out, 0);

    let reviewer = consul.create_token(REVIEWER).expect("token");
    let out = as_token(&reviewer, &[]);
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("0 of 2 nodes change"),
        "{}",
        stdout(&out)
    );

    // Keys only: enough with the catalog from the file.
    let keys_only = consul
        .create_token(r#"key_prefix "converge/" { policy = "read" }"#)
        .expect("token");
    assert_exit(&as_token(&keys_only, &["--catalog-source", "file"]), 0);
    // No right to the keys: an error, not a plan against nothing.
    let nothing = consul
        .create_token(r#"node_prefix "" { policy = "read" }"#)
        .expect("token");
    let out = as_token(&nothing, &[]);
    assert_exit(&out, 1);
}
