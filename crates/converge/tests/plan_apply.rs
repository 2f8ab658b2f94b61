//! `plan`, `apply --once` and `validate` on the example repository, driven
//! through the built binary with the real haproxy, pgbouncer and keepalived
//! as validators.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use common::{assert_exit, stderr, stdout, Workspace};

#[test]
fn plan_on_an_empty_root_shows_new_files_and_exits_2_touching_nothing() {
    let ws = Workspace::examples();
    let before = ws.tree();
    let out = ws.converge(&["plan", "--node", "lb1"]);
    assert_exit(&out, 2);
    let text = stdout(&out);
    assert!(text.contains("+++ b/"), "{text}");
    assert!(text.contains("server web-1:app1 10.20.1.11:8080"), "{text}");
    assert!(text.contains("new"), "{text}");
    assert_eq!(ws.tree(), before, "plan must not write anything");
}

/// Inode, mtime and bytes of every file under the root.
fn snapshot(ws: &Workspace) -> Vec<(std::path::PathBuf, u64, i64, i64, Vec<u8>)> {
    ws.tree()
        .into_iter()
        .map(|(path, bytes)| {
            let m = std::fs::metadata(&path).expect("meta");
            (path, m.ino(), m.mtime(), m.mtime_nsec(), bytes)
        })
        .collect()
}

#[test]
fn plan_works_on_a_read_only_root_and_changes_nothing() {
    let ws = Workspace::examples();
    let out = ws.converge_read_only_root(&["plan", "--node", "lb1"]);
    assert_exit(&out, 2);
    let text = stdout(&out);
    assert!(text.contains("server web-1:app1 10.20.1.11:8080"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("new ")), "{text}");
    let created: Vec<_> = std::fs::read_dir(ws.root()).expect("root").collect();
    assert!(created.is_empty(), "plan created {created:?}");

    assert_exit(&ws.converge(&["apply", "--once", "--node", "lb1"]), 0);
    let before = snapshot(&ws);
    assert!(!before.is_empty());
    let out = ws.converge_read_only_root(&["plan", "--node", "lb1"]);
    assert_exit(&out, 0);
    let text = stdout(&out);
    assert!(
        text.lines().any(|l| l.starts_with("unchanged  haproxy ")),
        "{text}"
    );
    assert!(!text.contains("+++ b/"), "{text}");
    assert_eq!(snapshot(&ws), before, "plan changed the applied tree");
}

#[test]
fn plan_json_is_machine_readable() {
    let ws = Workspace::examples();
    let out = ws.converge(&["plan", "--node", "lb1", "--format", "json"]);
    assert_exit(&out, 2);
    let doc: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(doc["changes"], serde_json::Value::Bool(true));
    assert_eq!(doc["node"], "lb1");
}

#[test]
fn plan_never_shows_secrets() {
    let ws = Workspace::examples();
    let out = ws.converge(&["plan", "--node", "lb1"]);
    let text = stdout(&out) + &stderr(&out);
    let vrrp = ws.read("manifests/secrets/vrrp.pass");
    let scram = ws.read("manifests/secrets/app.scram");
    assert!(!text.contains(vrrp.trim()), "VRRP password leaked:\n{text}");
    assert!(!text.contains(scram.trim()), "SCRAM secret leaked:\n{text}");
    assert!(text.contains("auth_pass ********"), "{text}");
}

#[test]
fn after_a_secret_rotation_plan_shows_neither_the_old_nor_the_new_value() {
    let ws = Workspace::examples();
    assert_exit(&ws.converge(&["apply", "--once", "--node", "lb1"]), 0);
    let old = ws.read("manifests/secrets/vrrp.pass").trim().to_string();
    ws.write("manifests/secrets/vrrp.pass", "r0tatedPw\n");
    for format in ["text", "json"] {
        let out = ws.converge(&["plan", "--node", "lb1", "--format", format, "-vv"]);
        assert_exit(&out, 2);
        let all = stdout(&out) + &stderr(&out);
        assert!(
            !all.contains(&old),
            "old VRRP password leaked ({format}):\n{all}"
        );
        assert!(
            !all.contains("r0tatedPw"),
            "new VRRP password leaked ({format}):\n{all}"
        );
        let diff = match format {
            "json" => {
                let doc: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
                let files = doc["plan"]["files"].as_array().expect("files").clone();
                files
                    .iter()
                    .find(|f| f["target"] == "keepalived")
                    .and_then(|f| f["diff"].as_str().map(str::to_string))
                    .expect("keepalived diff")
            }
            _ => stdout(&out),
        };
        assert!(
            diff.contains("-        auth_pass ********")
                && diff.contains("+        auth_pass ********"),
            "the changed line must still show, masked ({format}):\n{diff}"
        );
    }
}

#[test]
fn apply_then_plan_is_clean_and_a_second_apply_writes_nothing() {
    let ws = Workspace::examples();
    let out = ws.converge(&["apply", "--once", "--node", "lb1"]);
    assert_exit(&out, 0);
    let cfg = ws.root().join("etc/haproxy/haproxy.cfg");
    let userlist = ws.root().join("etc/pgbouncer/userlist.txt");
    assert!(std::fs::read_to_string(&cfg)
        .expect("cfg")
        .contains("backend web"));
    assert_eq!(
        std::fs::metadata(&userlist)
            .expect("userlist")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let inode = std::fs::metadata(&cfg).expect("meta").ino();

    let out = ws.converge(&["plan", "--node", "lb1"]);
    assert_exit(&out, 0);

    let out = ws.converge(&["apply", "--once", "--node", "lb1"]);
    assert_exit(&out, 0);
    assert_eq!(
        std::fs::metadata(&cfg).expect("meta").ino(),
        inode,
        "unchanged file was rewritten"
    );
}

#[test]
fn validate_accepts_the_examples_with_the_real_programs() {
    let ws = Workspace::examples();
    let out = ws.converge(&["validate"]);
    assert_exit(&out, 0);
    let text = stdout(&out);
    for node in ["lb1", "lb2"] {
        for target in ["haproxy", "pgbouncer", "pgbouncer_userlist", "keepalived"] {
            assert!(text.contains(&format!("ok    {node} {target}")), "{text}");
        }
    }
}

#[test]
fn validate_reports_a_config_the_real_program_rejects() {
    let ws = Workspace::examples();
    break_haproxy_config(&ws);
    let out = ws.converge(&["validate"]);
    assert_exit(&out, 1);
    let text = stdout(&out);
    assert!(
        text.contains("FAIL  lb1 haproxy") && text.contains("bogus_directive"),
        "{text}"
    );
    // The node and the destination, not a scratch path that is gone.
    assert!(
        text.contains("(candidate for lb1) /etc/haproxy/haproxy.cfg:"),
        "{text}"
    );
    assert!(
        !text.contains("converge-validate-") && !text.contains("(candidate) (candidate)"),
        "{text}"
    );
}

/// Replaces `from` with `to` in the workspace file `rel`; returns the
/// 1-based line `from` started on.
fn break_line(ws: &Workspace, rel: &str, from: &str, to: &str) -> usize {
    let text = ws.read(rel);
    let at = text
        .find(from)
        .unwrap_or_else(|| panic!("{rel} has no `{from}`"));
    ws.write(rel, &text.replacen(from, to, 1));
    text[..at].matches('\n').count() + 1
}

/// A template edit that renders fine but gives every backend a directive
/// HAProxy does not know.
fn break_haproxy_config(ws: &Workspace) {
    break_line(
        ws,
        "templates/haproxy.cfg.tera",
        "    balance {{ be.balance }}",
        "    balance {{ be.balance }}\n    bogus_directive on",
    );
}

#[test]
fn validate_reports_every_broken_template_and_bad_manifest_in_one_run() {
    let ws = Workspace::examples();
    let haproxy = break_line(
        &ws,
        "templates/haproxy.cfg.tera",
        "maxconn {{ haproxy.maxconn }}",
        "maxconn {{ haproxy.maxconn }",
    );
    let pgbouncer = break_line(
        &ws,
        "templates/pgbouncer.ini.tera",
        "listen_port = {{ pgbouncer.listen_port }}",
        "listen_port = {% if %}",
    );
    let manifest = break_line(
        &ws,
        "manifests/http.yaml",
        "default_backend: redis",
        "default_backend: rediss",
    );
    let out = ws.converge(&["validate"]);
    assert_exit(&out, 1);
    let text = stdout(&out) + &stderr(&out);
    for (file, line, what) in [
        (
            "haproxy.cfg.tera",
            haproxy,
            "target haproxy: template syntax error",
        ),
        (
            "pgbouncer.ini.tera",
            pgbouncer,
            "target pgbouncer: template syntax error",
        ),
        ("http.yaml", manifest, "frontends.redis_in.default_backend"),
    ] {
        let at = format!("{file}:{line}:");
        assert!(
            text.lines().any(|l| l.contains(&at) && l.contains(what)),
            "no `{at} ... {what}` in:\n{text}"
        );
    }
}

#[test]
fn a_candidate_the_real_haproxy_rejects_keeps_the_live_file_and_leaves_no_temp_files() {
    let ws = Workspace::examples();
    assert_exit(&ws.converge(&["apply", "--once", "--node", "lb1"]), 0);
    let cfg = ws.root().join("etc/haproxy/haproxy.cfg");
    let listing = || -> Vec<String> {
        let dir = cfg.parent().expect("dir");
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let (bytes, inode, names) = (
        std::fs::read(&cfg).expect("cfg"),
        std::fs::metadata(&cfg).expect("meta").ino(),
        listing(),
    );
    break_haproxy_config(&ws);
    let out = ws.converge(&["apply", "--once", "--node", "lb1"]);
    assert_exit(&out, 1);
    let text = stdout(&out);
    assert!(
        text.contains("[ALERT]")
            && text.contains("unknown keyword 'bogus_directive'")
            && text.contains("kept the live files"),
        "{text}"
    );
    assert_eq!(
        std::fs::read(&cfg).expect("cfg"),
        bytes,
        "live file changed"
    );
    assert_eq!(std::fs::metadata(&cfg).expect("meta").ino(), inode);
    assert_eq!(listing(), names, "files left beside the live one");
}

#[test]
fn a_broken_template_names_file_and_line_and_changes_nothing() {
    let ws = Workspace::examples();
    assert_exit(&ws.converge(&["apply", "--once", "--node", "lb1"]), 0);
    let before = ws.tree();
    let t = ws.read("templates/haproxy.cfg.tera").replace(
        "maxconn {{ haproxy.maxconn }}",
        "maxconn {{ haproxy.maxconn }\n",
    );
    ws.write("templates/haproxy.cfg.tera", &t);
    let out = ws.converge(&["apply", "--once", "--node", "lb1"]);
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(
        err.contains("haproxy.cfg.tera:3:")
            && err.contains(": target haproxy: template syntax error"),
        "{err}"
    );
    assert_eq!(ws.tree(), before);

    // A missing variable names the target and the line too.
    let t = ws.read("templates/haproxy.cfg.tera").replace(
        "maxconn {{ haproxy.maxconn }\n",
        "maxconn {{ haproxy.no_such_setting }}",
    );
    ws.write("templates/haproxy.cfg.tera", &t);
    let out = ws.converge(&["apply", "--once", "--node", "lb1"]);
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(err.contains("haproxy.cfg.tera:3: target haproxy"), "{err}");
    assert_eq!(ws.tree(), before);
}

#[test]
fn a_bad_manifest_is_reported_with_its_location_and_changes_nothing() {
    let ws = Workspace::examples();
    let m = ws
        .read("manifests/http.yaml")
        .replace("default_backend: redis", "default_backend: rediss");
    ws.write("manifests/http.yaml", &m);
    let before = ws.tree();
    let out = ws.converge(&["apply", "--once", "--node", "lb1"]);
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(
        err.contains("http.yaml:")
            && err.contains("frontends.redis_in.default_backend")
            && err.contains("did you mean `redis`"),
        "{err}"
    );
    assert_eq!(ws.tree(), before);
}

#[test]
fn a_typo_in_a_pgbouncer_setting_is_refused_at_load_with_file_line_and_the_nearest_name() {
    let ws = Workspace::examples();
    let m = ws.read("manifests/postgres.yaml");
    let line = m
        .lines()
        .position(|l| l.trim() == "server_login_retry: 0.5")
        .expect("the example sets server_login_retry")
        + 1;
    ws.write(
        "manifests/postgres.yaml",
        &m.replace("server_login_retry: 0.5", "server_login_rety: 0.5"),
    );
    let before = ws.tree();
    let out = ws.converge(&["plan", "--node", "lb1"]);
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(
        err.contains(&format!("postgres.yaml:{line}:"))
            && err
                .contains("unknown field `server_login_rety`, did you mean `server_login_retry`?"),
        "{err}"
    );
    assert_eq!(ws.tree(), before);
}

#[test]
fn a_secret_file_that_would_inject_config_is_refused_by_field_and_file() {
    let ws = Workspace::examples();
    ws.write(
        "manifests/secrets/vrrp.pass",
        "pw\n    virtual_ipaddress {\n        10.9.9.9/32\n    }\n",
    );
    let out = ws.converge(&["apply", "--once", "--node", "lb1"]);
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(
        err.contains("auth_pass")
            && err.contains("secrets/vrrp.pass")
            && err.contains("line break"),
        "{err}"
    );
    assert!(ws.tree().is_empty(), "nothing may be written");
}

#[test]
fn hostile_catalog_data_is_rejected_by_name_and_the_rest_applies() {
    let ws = Workspace::examples();
    let c = ws.read("catalog.yaml").replace(
        "    - {id: web-2, node: app2, address: 10.20.1.12,",
        "    - {id: web-2, node: app2, address: \"10.20.1.12\\n    server x 6.6.6.6:80 #\",",
    );
    ws.write("catalog.yaml", &c);
    let out = ws.converge(&["apply", "--once", "--node", "lb1"]);
    // Applied, but an instance is left out: not the desired state.
    assert_exit(&out, 3);
    let text = stdout(&out);
    assert!(
        text.contains("left out: service web instance web-2 on node app2: address"),
        "{text}"
    );
    let cfg = std::fs::read_to_string(ws.root().join("etc/haproxy/haproxy.cfg")).expect("cfg");
    assert!(
        cfg.contains("server web-1:app1 ") && !cfg.contains("6.6.6.6"),
        "{cfg}"
    );
}

#[test]
fn an_unknown_node_is_a_clear_error() {
    let ws = Workspace::examples();
    let out = ws.converge(&["plan", "--node", "lb9"]);
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("node `lb9` is not defined; known nodes: lb1, lb2"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bad_flags_get_usage_not_a_panic() {
    let ws = Workspace::examples();
    // A usage error must not exit 2, which `plan` reserves for "changes".
    let out = ws.converge(&["plan", "--format", "yaml"]);
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("invalid value 'yaml'"),
        "{}",
        stderr(&out)
    );
    let out = ws.converge(&["apply", "--node", "lb1"]);
    assert_exit(&out, 1);
    assert!(stderr(&out).contains("--once"), "{}", stderr(&out));
    // Flags with defaults are options, never shown as required.
    let out = ws.converge(&["apply", "--lock-timeout", "5", "--format", "json"]);
    assert_exit(&out, 1);
    let usage = stderr(&out);
    let usage = usage
        .lines()
        .find(|l| l.starts_with("Usage:"))
        .unwrap_or_else(|| panic!("no usage line:\n{usage}"));
    assert_eq!(usage, "Usage: converge apply --once [OPTIONS]");
}

#[test]
fn a_failing_reload_rolls_back_and_reloads_the_old_files() {
    let ws = Workspace::examples();
    let root = ws.root();
    let count = ws.path("reloads");
    let cfg = root.join("etc/haproxy/haproxy.cfg");
    // The reload fails exactly when the live config carries server web-9.
    let t = ws.read("manifests/targets.yaml").replacen(
        "    reload:\n      signal:\n        pidfile: /run/haproxy.pid\n        signal: SIGUSR2\n",
        &format!(
            "    reload:\n      shell: \"echo reload >> {}; ! grep -q web-9 {}\"\n",
            count.display(),
            cfg.display()
        ),
        1,
    );
    ws.write("manifests/targets.yaml", &t);
    assert_exit(&ws.converge(&["apply", "--once", "--node", "lb1"]), 0);
    let old = std::fs::read(&cfg).expect("old");
    std::fs::remove_file(&count).expect("reset counter");

    let c = ws
        .read("catalog.yaml")
        .replace("{id: web-2,", "{id: web-9,");
    ws.write("catalog.yaml", &c);
    let out = ws.converge(&["apply", "--once", "--node", "lb1"]);
    assert_exit(&out, 1);
    assert!(stdout(&out).contains("rolled back"), "{}", stdout(&out));
    assert_eq!(
        std::fs::read(&cfg).expect("cfg"),
        old,
        "old file must be back byte for byte"
    );
    assert_eq!(
        ws.read("reloads").lines().count(),
        2,
        "reload of the new file, then of the restored old one"
    );
}

#[test]
fn status_with_nothing_running_reports_each_section_s_error() {
    let ws = Workspace::examples();
    assert_exit(&ws.converge(&["apply", "--once", "--node", "lb1"]), 0);
    let port = converge_testkit::free_port();
    let out = ws.converge(&[
        "status",
        "--node",
        "lb1",
        "--daemon",
        &format!("127.0.0.1:{port}"),
    ]);
    // Nothing found wrong, but nothing could be asked: unknown.
    assert_exit(&out, 1);
    let text = stdout(&out);
    assert!(text.contains("daemon not reachable"), "{text}");
    assert!(text.contains("cannot ask HAProxy"), "{text}");
    assert!(
        text.contains("haproxy ") && !text.contains("(missing)"),
        "{text}"
    );
    assert!(text.contains("keepalived NOT running"), "{text}");
}

#[test]
fn relative_paths_are_taken_from_the_working_directory() {
    let ws = Workspace::examples();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_converge"))
        .current_dir(ws.dir.path())
        .args([
            "apply",
            "--once",
            "--node",
            "lb1",
            "--manifests",
            "manifests",
        ])
        .args([
            "--templates",
            "templates",
            "--catalog",
            "catalog.yaml",
            "--root",
            "root",
        ])
        .env_remove("CONSUL_HTTP_ADDR")
        .env_remove("CONVERGE_ROOT")
        .output()
        .expect("run converge");
    assert_exit(&out, 0);
    // The stats socket under a relative root is still a path to HAProxy,
    // not host:port, so `haproxy -c` accepted the candidate.
    let cfg = std::fs::read_to_string(ws.root().join("etc/haproxy/haproxy.cfg")).expect("cfg");
    let socket = format!("stats socket {}/", ws.root().display());
    assert!(cfg.contains(&socket), "{cfg}");
}
