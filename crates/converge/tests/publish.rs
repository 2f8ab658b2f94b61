//! `converge publish` against a real Consul agent: the bundle and the
//! desired revision in KV, validation first, check-and-set against a
//! publication made in between, rollback, the bounded history, and no
//! secret in the bundle.

mod common;

use std::process::Output;

use base64::Engine;
use common::{assert_exit, stderr, stdout, Workspace};
use converge_agent::publish::bundle;
use converge_testkit::consul::ConsulAgent;
use converge_testkit::git::run as git;
use sha2::Digest;

/// A secret value no other file contains.
const APP_SECRET: &str = "SCRAM-app-7c1f0e-value";
const OPS_SECRET: &str = "SCRAM-ops-91ab3d-value";

/// An HAProxy site whose manifests reference two secret files: one
/// beside the manifests, one under `secrets/`.
fn site(note: &str) -> String {
    format!(
        "# {note}\nnodes:\n  lb1: {{}}\nhaproxy:\n  stats_socket: /run/haproxy/admin.sock\n\
         frontends:\n  http_in:\n    bind: [\"127.0.0.1:18998\"]\n    default_backend: web\n\
         backends:\n  web:\n    service: web\n\
         pgbouncer:\n  users:\n    app: {{file: app.pass}}\n    ops: {{file: secrets/ops.pass}}\n\
         targets:\n  haproxy:\n    template: haproxy.cfg.tera\n    destination: /etc/haproxy/haproxy.cfg\n\
         \x20   validate: haproxy\n"
    )
}

fn workspace(consul: &ConsulAgent) -> Workspace {
    consul
        .register_service("web-1", "web", 8081)
        .expect("register");
    let ws = Workspace::custom(&site("first"), "services: {}\n");
    ws.write("manifests/app.pass", &format!("{APP_SECRET}\n"));
    ws.write("manifests/secrets/ops.pass", &format!("{OPS_SECRET}\n"));
    ws
}

fn publish(ws: &Workspace, consul: &ConsulAgent, extra: &[&str]) -> Output {
    let url = consul.http_url();
    let mut args = vec!["publish", "--consul", url.as_str(), "--publisher", "ci"];
    args.extend_from_slice(extra);
    ws.converge(&args)
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_str(&stdout(out)).unwrap_or_else(|e| panic!("{e}: {}", stdout(out)))
}

/// A KV value's bytes, `None` when the key is absent.
fn kv(consul: &ConsulAgent, key: &str) -> Option<Vec<u8>> {
    let (status, body) = consul.get(&format!("/v1/kv/{key}")).expect("kv get");
    if status == 404 {
        return None;
    }
    assert_eq!(status, 200, "{body}");
    let entries: serde_json::Value = serde_json::from_str(&body).expect("json");
    let value = entries[0]["Value"].as_str().unwrap_or_default();
    Some(
        base64::engine::general_purpose::STANDARD
            .decode(value)
            .expect("base64"),
    )
}

fn desired(consul: &ConsulAgent) -> serde_json::Value {
    let bytes = kv(consul, "converge/desired").expect("desired is there");
    serde_json::from_slice(&bytes).expect("desired is JSON")
}

fn sha256(bytes: &[u8]) -> String {
    let hex: String = sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// A new commit with an edited manifest; its short hash.
fn commit(ws: &Workspace, note: &str) -> String {
    ws.write("manifests/site.yaml", &site(note));
    git(ws.dir.path(), &["add", "-A"]);
    git(ws.dir.path(), &["commit", "-q", "-m", note]);
    git(ws.dir.path(), &["rev-parse", "--short", "HEAD"])
}

#[test]
fn publish_puts_the_bundle_and_moves_desired_to_it() {
    let consul = ConsulAgent::start().expect("consul agent -dev");
    let ws = workspace(&consul);
    let out = publish(&ws, &consul, &["--format", "json"]);
    assert_exit(&out, 0);
    let doc = json(&out);
    let revision = doc["revision"].as_str().expect("revision").to_string();
    assert!(revision.starts_with("sha256:"), "no git here: {revision}");
    assert!(doc["previous"].is_null(), "{doc}");

    let d = desired(&consul);
    assert_eq!(d["revision"].as_str(), Some(revision.as_str()));
    assert_eq!(d["publisher"].as_str(), Some("ci"));
    assert_eq!(d["history"].as_array().map(Vec::len), Some(0));
    let bundle = kv(&consul, &format!("converge/bundles/{revision}")).expect("bundle");
    let checksum = sha256(&bundle);
    assert_eq!(
        d["checksum"].as_str(),
        Some(checksum.as_str()),
        "desired's checksum verifies"
    );
    assert_eq!(doc["checksum"].as_str(), Some(checksum.as_str()));
    assert_eq!(doc["size"].as_u64(), Some(bundle.len() as u64));
    let beside = kv(&consul, &format!("converge/bundles/{revision}.sha256")).expect("checksum");
    assert_eq!(String::from_utf8_lossy(&beside), checksum);

    // The manifests and templates, and no secret: neither file, nor any
    // value, in any byte of the unpacked bundle.
    let files = bundle::unpack(&bundle).expect("unpacks");
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.contains(&"manifests/site.yaml"), "{names:?}");
    assert!(names.contains(&"templates/haproxy.cfg.tera"), "{names:?}");
    assert!(
        names
            .iter()
            .all(|n| !n.contains("pass") && !n.contains("secrets")),
        "{names:?}"
    );
    for (name, bytes) in &files {
        let text = String::from_utf8_lossy(bytes);
        assert!(
            !text.contains(APP_SECRET) && !text.contains(OPS_SECRET),
            "{name}"
        );
    }

    // Publishing the same files again writes nothing.
    let out = publish(&ws, &consul, &[]);
    assert_exit(&out, 0);
    assert!(stdout(&out).contains("already names"), "{}", stdout(&out));
}

#[test]
fn a_manifest_that_does_not_validate_is_refused_and_nothing_is_written() {
    let consul = ConsulAgent::start().expect("consul agent -dev");
    let ws = workspace(&consul);
    let broken = site("broken").replace("default_backend: web", "default_backend: nowhere");
    ws.write("manifests/site.yaml", &broken);
    let validate = ws.converge(&["validate", "--consul", &consul.http_url()]);
    assert_exit(&validate, 1);
    let out = publish(&ws, &consul, &[]);
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(err.contains("site.yaml:"), "no file:line in:\n{err}");
    assert_eq!(
        err.lines().find(|l| l.contains("site.yaml:")),
        stderr(&validate).lines().find(|l| l.contains("site.yaml:")),
        "the same error as validate"
    );
    let (status, _) = consul.get("/v1/kv/converge/?recurse").expect("kv");
    assert_eq!(status, 404, "nothing under the prefix");

    let out = publish(&ws, &consul, &["--format", "json"]);
    assert_exit(&out, 1);
    assert_eq!(json(&out)["error"]["kind"].as_str(), Some("manifest"));
}

#[test]
fn a_publication_made_in_between_is_refused_unless_forced() {
    let consul = ConsulAgent::start().expect("consul agent -dev");
    let ws = workspace(&consul);
    let first = json(&publish(&ws, &consul, &["--format", "json"]))["revision"]
        .as_str()
        .expect("revision")
        .to_string();

    // Someone else publishes in between (by hand, as another tool would).
    let mut theirs = desired(&consul);
    theirs["revision"] = "fedcba9".into();
    theirs["publisher"] = "someone".into();
    consul
        .kv_put("converge/desired", &theirs.to_string())
        .expect("their publication");

    ws.write("manifests/site.yaml", &site("second"));
    let out = publish(
        &ws,
        &consul,
        &["--expect-revision", &first, "--format", "json"],
    );
    assert_exit(&out, 1);
    let doc = json(&out);
    assert_eq!(doc["error"]["kind"].as_str(), Some("conflict"), "{doc}");
    let message = doc["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("fedcba9") && message.contains("someone") && message.contains("--force"),
        "{message}"
    );
    assert_eq!(
        desired(&consul)["revision"].as_str(),
        Some("fedcba9"),
        "theirs stands"
    );

    let out = publish(&ws, &consul, &["--expect-revision", &first, "--force"]);
    assert_exit(&out, 0);
    let d = desired(&consul);
    assert_ne!(d["revision"].as_str(), Some("fedcba9"));
    assert_eq!(d["history"][0]["revision"].as_str(), Some("fedcba9"));
}

#[test]
fn rollback_moves_back_and_the_history_is_bounded() {
    let consul = ConsulAgent::start().expect("consul agent -dev");
    let ws = workspace(&consul);
    std::fs::write(ws.path(".gitignore"), "root/\n").expect("gitignore");
    git(ws.dir.path(), &["init", "-q"]);
    let mut revisions = Vec::new();
    for note in ["one", "two", "three", "four"] {
        let rev = commit(&ws, note);
        let out = publish(&ws, &consul, &["--history", "2"]);
        assert_exit(&out, 0);
        assert!(
            stdout(&out).contains(&format!("revision {rev}\n")),
            "{}",
            stdout(&out)
        );
        revisions.push(rev);
    }
    let d = desired(&consul);
    assert_eq!(d["revision"].as_str(), Some(revisions[3].as_str()));
    let history: Vec<&str> = d["history"]
        .as_array()
        .expect("history")
        .iter()
        .filter_map(|h| h["revision"].as_str())
        .collect();
    assert_eq!(history, [revisions[2].as_str(), revisions[1].as_str()]);
    let bundle = |rev: &str| kv(&consul, &format!("converge/bundles/{rev}"));
    assert!(
        bundle(&revisions[0]).is_none(),
        "beyond the history: deleted"
    );
    assert!(kv(
        &consul,
        &format!("converge/bundles/{}.sha256", revisions[0])
    )
    .is_none());
    assert!(bundle(&revisions[1]).is_some());

    // A dirty tree is not published.
    ws.write("manifests/site.yaml", &site("uncommitted"));
    let out = publish(&ws, &consul, &[]);
    assert_exit(&out, 1);
    assert!(stderr(&out).contains("uncommitted"), "{}", stderr(&out));
    git(ws.dir.path(), &["checkout", "--", "manifests/site.yaml"]);

    let url = consul.http_url();
    let rollback = |extra: &[&str]| {
        let mut args = vec!["publish", "--rollback", "--consul", url.as_str()];
        args.extend_from_slice(extra);
        ws.converge(&args)
    };
    let out = rollback(&["--format", "json"]);
    assert_exit(&out, 0);
    let doc = json(&out);
    assert_eq!(doc["revision"].as_str(), Some(revisions[2].as_str()));
    assert_eq!(doc["previous"].as_str(), Some(revisions[3].as_str()));
    let d = desired(&consul);
    assert_eq!(d["revision"].as_str(), Some(revisions[2].as_str()));
    assert_eq!(
        d["checksum"].as_str().map(str::to_string),
        bundle(&revisions[2]).map(|b| sha256(&b))
    );
    assert!(bundle(&revisions[3]).is_none(), "rolled back from: deleted");

    // A stale expectation stops a rollback too; then back once more, and
    // at the start of the history there is nothing left to go back to.
    let out = rollback(&["--expect-revision", &revisions[3]]);
    assert_exit(&out, 1);
    assert_exit(&rollback(&[]), 0);
    assert_eq!(
        desired(&consul)["revision"].as_str(),
        Some(revisions[1].as_str())
    );
    let out = rollback(&[]);
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("no earlier revision"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_bundle_larger_than_a_kv_value_is_refused() {
    let consul = ConsulAgent::start().expect("consul agent -dev");
    let ws = workspace(&consul);
    // Random hex in a template comment: half a byte of entropy per byte,
    // so about 600 KiB compressed.
    let mut noise = String::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while noise.len() < 1200 * 1024 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        noise.push_str(&format!("{x:016x}"));
    }
    ws.write("templates/noise.tera", &format!("{{# {noise} #}}\n"));
    let out = publish(&ws, &consul, &["--format", "json"]);
    assert_exit(&out, 1);
    let doc = json(&out);
    assert_eq!(doc["error"]["kind"].as_str(), Some("too_large"), "{doc}");
    let (status, _) = consul.get("/v1/kv/converge/?recurse").expect("kv");
    assert_eq!(status, 404, "nothing written");
}

/// The publisher's minimal policy, as the README gives it: write under the
/// prefix, and read the catalog its validation renders against.
const PUBLISHER: &str = r#"key_prefix "converge/" { policy = "write" }
service_prefix "" { policy = "read" }
node_prefix "" { policy = "read" }"#;

#[test]
fn the_documented_publisher_policy_is_enough_and_less_is_refused() {
    let consul = ConsulAgent::start_with_acl().expect("consul with ACLs, default deny");
    let ws = workspace(&consul);
    let url = consul.http_url();
    let with_token = |token: &str| {
        ws.converge_env(
            &["publish", "--consul", &url, "--format", "json"],
            &[("CONSUL_HTTP_TOKEN", token)],
        )
    };

    // Read-only under the prefix: refused at the first write, and nothing
    // the fleet follows exists.
    let reader = consul
        .create_token(&PUBLISHER.replace(r#"policy = "write""#, r#"policy = "read""#))
        .expect("token");
    let out = with_token(&reader);
    assert_exit(&out, 1);
    let doc = json(&out);
    assert_eq!(doc["error"]["kind"].as_str(), Some("consul"), "{doc}");
    assert!(kv(&consul, "converge/desired").is_none());

    let publisher = consul.create_token(PUBLISHER).expect("token");
    let out = with_token(&publisher);
    assert_exit(&out, 0);
    let revision = json(&out)["revision"]
        .as_str()
        .expect("revision")
        .to_string();
    assert_eq!(
        desired(&consul)["revision"].as_str(),
        Some(revision.as_str())
    );
}
