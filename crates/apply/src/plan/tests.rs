use std::os::unix::fs::PermissionsExt;

use super::*;
use crate::testutil::{tree, Fixture};

fn write(path: &std::path::Path, bytes: &str, mode: u32) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, bytes).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[test]
fn nothing_on_disk_plans_every_target_as_new() {
    let mut fx = Fixture::new();
    fx.add(
        "haproxy",
        "/etc/haproxy/haproxy.cfg",
        "global\n  maxconn 10\n",
    );
    fx.add("keepalived", "/etc/keepalived/keepalived.conf", "vrrp\n");
    let plan = plan(&fx.set).expect("plan");
    assert!(plan.has_changes());
    assert!(plan.files.iter().all(|f| f.change == Change::New));
    let h = &plan.files[0];
    assert_eq!(h.target, "haproxy");
    assert!(h.old_sha256.is_none());
    assert_eq!(h.new_sha256, sha256_hex(b"global\n  maxconn 10\n"));
    assert!(
        h.diff
            .starts_with("--- /dev/null\n+++ b/etc/haproxy/haproxy.cfg\n"),
        "{}",
        h.diff
    );
    assert!(h.diff.contains("+  maxconn 10\n"), "{}", h.diff);
    let text = plan.to_text();
    assert!(text.contains("new        haproxy     "), "{text}");
    assert!(
        text.contains("node lb1: 2 new, 0 changed, 0 metadata only, 0 unchanged"),
        "{text}"
    );
}

#[test]
fn identical_bytes_and_mode_are_unchanged() {
    let mut fx = Fixture::new();
    fx.add("app", "/etc/app.cfg", "a\nb\n");
    write(&fx.path("/etc/app.cfg"), "a\nb\n", 0o644);
    let plan = plan(&fx.set).expect("plan");
    assert!(!plan.has_changes());
    assert_eq!(plan.files[0].change, Change::Unchanged);
    assert!(plan.files[0].diff.is_empty());
    assert_eq!(
        plan.files[0].old_sha256.as_deref(),
        Some(plan.files[0].new_sha256.as_str())
    );
}

#[test]
fn changed_bytes_give_a_unified_diff_with_three_lines_of_context() {
    let mut fx = Fixture::new();
    let old: String = (1..=10).map(|i| format!("line {i}\n")).collect();
    let new = old.replace("line 5\n", "line five\n");
    fx.add("app", "/etc/app.cfg", &new).reload = converge_model::ReloadAction::Command(vec![
        "systemctl".into(),
        "reload".into(),
        "app".into(),
    ]);
    write(&fx.path("/etc/app.cfg"), &old, 0o644);
    let plan = plan(&fx.set).expect("plan");
    let f = &plan.files[0];
    assert_eq!(f.change, Change::Changed);
    let expected = "--- a/etc/app.cfg\n+++ b/etc/app.cfg\n@@ -2,7 +2,7 @@\n line 2\n line 3\n line 4\n-line 5\n+line five\n line 6\n line 7\n line 8\n";
    assert_eq!(f.diff, expected);
    let text = plan.to_text();
    assert!(
        text.contains(&format!(
            "changed    app  {}  validate: none  reload: run: systemctl reload app",
            fx.path("/etc/app.cfg").display()
        )),
        "{text}"
    );
}

#[test]
fn mode_drift_with_equal_bytes_is_reported_as_metadata() {
    let mut fx = Fixture::new();
    fx.add("userlist", "/etc/pgbouncer/userlist.txt", "\"app\" \"x\"\n")
        .mode = 0o600;
    write(
        &fx.path("/etc/pgbouncer/userlist.txt"),
        "\"app\" \"x\"\n",
        0o644,
    );
    let plan = plan(&fx.set).expect("plan");
    assert!(plan.has_changes());
    let f = &plan.files[0];
    assert_eq!(f.change, Change::Metadata);
    assert_eq!(f.metadata, ["mode 0644 -> 0600"]);
    assert!(f.diff.is_empty());
    assert!(plan.to_text().contains("~ userlist"), "{}", plan.to_text());
}

#[test]
fn plan_touches_nothing() {
    let mut fx = Fixture::new();
    fx.add("present", "/etc/present.cfg", "new\n");
    fx.add("absent", "/etc/absent/deep/absent.cfg", "new\n");
    write(&fx.path("/etc/present.cfg"), "old\n", 0o640);
    let before = tree(fx.root());
    let plan = plan(&fx.set).expect("plan");
    assert!(plan.has_changes());
    assert_eq!(
        tree(fx.root()),
        before,
        "plan wrote, created or removed something"
    );
    assert!(
        !fx.set.layout.state_dir().exists(),
        "plan created the state dir"
    );
}

#[test]
fn an_unreadable_destination_is_an_error_naming_its_path() {
    let mut fx = Fixture::new();
    fx.add("app", "/etc/app.cfg", "x\n");
    // Running as root, permissions do not stop a read; a directory in the
    // file's place does.
    std::fs::create_dir_all(fx.path("/etc/app.cfg")).expect("mkdir");
    let err = plan(&fx.set).expect_err("directory at destination");
    let msg = err.to_string();
    assert!(msg.contains("target app"), "{msg}");
    assert!(
        msg.contains(&fx.path("/etc/app.cfg").display().to_string()),
        "{msg}"
    );
}

#[test]
fn a_secret_target_never_shows_its_contents() {
    let mut fx = Fixture::new();
    fx.add(
        "userlist",
        "/etc/pgbouncer/userlist.txt",
        "\"app\" \"SCRAM-SHA-256$4096:newsalt\"\n",
    )
    .secret = true;
    write(
        &fx.path("/etc/pgbouncer/userlist.txt"),
        "\"app\" \"SCRAM-SHA-256$4096:oldsalt\"\n",
        0o600,
    );
    let plan = plan(&fx.set).expect("plan");
    let f = &plan.files[0];
    assert_eq!(f.change, Change::Changed);
    assert!(
        f.diff
            .contains("contents of secret target `userlist` are hidden"),
        "{}",
        f.diff
    );
    let json = serde_json::to_string(&plan).expect("json");
    for out in [plan.to_text(), json] {
        assert!(
            !out.contains("newsalt") && !out.contains("oldsalt"),
            "{out}"
        );
    }
}

#[test]
fn after_a_rotation_the_old_value_in_the_live_file_is_masked() {
    // Only today's value is known; the live file's is not a secret any
    // more, yet it must not show.
    let mut fx = Fixture::new();
    fx.secret("hunter2");
    fx.add(
        "keepalived",
        "/etc/keepalived/keepalived.conf",
        "vrrp_instance v {\n  auth_pass hunter2\n}\n",
    );
    write(
        &fx.path("/etc/keepalived/keepalived.conf"),
        "vrrp_instance v {\n  auth_pass 0ldpass\n}\n",
        0o644,
    );
    let plan = plan(&fx.set).expect("plan");
    let f = &plan.files[0];
    assert_eq!(f.change, Change::Changed);
    assert!(f.diff.contains("-  auth_pass ********"), "{}", f.diff);
    assert!(f.diff.contains("+  auth_pass ********"), "{}", f.diff);
    let json = serde_json::to_string(&plan).expect("json");
    for out in [plan.to_text(), json] {
        assert!(
            !out.contains("0ldpass") && !out.contains("hunter2"),
            "{out}"
        );
    }
}

#[test]
fn json_names_the_change_kind() {
    let mut fx = Fixture::new();
    fx.add("app", "/etc/app.cfg", "x\n");
    let plan = plan(&fx.set).expect("plan");
    let v: serde_json::Value = serde_json::to_value(&plan).expect("json");
    assert_eq!(v["node"], "lb1");
    assert_eq!(v["files"][0]["change"], "new");
    assert_eq!(v["files"][0]["validate"], "none");
}

/// An HAProxy config whose backend `web` takes runtime-API updates: two
/// slots, the second one as given.
fn slots(second: &str) -> String {
    format!(
        "global\n    stats socket /run/haproxy/admin.sock mode 600 level admin expose-fd listeners\n\
         backend web\n    {}\n    server web-s1 10.0.0.1:80 check\n    server web-s2 {second}\n",
        converge_model::RUNTIME_API_MARKER
    )
}

#[test]
fn a_membership_only_change_says_it_goes_through_the_runtime_api() {
    let mut fx = Fixture::new();
    let pidfile = fx.path("/run/haproxy.pid");
    let f = fx.add(
        "haproxy",
        "/etc/haproxy/haproxy.cfg",
        &slots("10.0.0.2:80 check"),
    );
    f.validate = Validator::Haproxy;
    f.reload = converge_model::ReloadAction::Signal {
        pidfile,
        signal: "SIGUSR2".into(),
    };
    let dest = fx.path("/etc/haproxy/haproxy.cfg");
    write(&dest, &slots("127.0.0.1:1 check disabled"), 0o644);

    let p = plan(&fx.set).expect("plan");
    assert_eq!(p.files[0].runtime_api_servers, Some(1));
    let text = p.to_text();
    assert!(
        text.contains(
            "reload: HAProxy runtime API, 1 server (reload only if HAProxy cannot take it: SIGUSR2"
        ),
        "{text}"
    );
    assert!(
        text.contains("runtime    haproxy: set server web/web-s2\n"),
        "{text}"
    );
    let json = serde_json::to_value(&p).expect("json");
    assert_eq!(json["files"][0]["runtime_api_servers"], 1);
    assert_eq!(
        json["files"][0]["runtime_api_actions"],
        serde_json::json!(["set server web/web-s2"])
    );

    // An instance beyond the slots joins as a dynamic server.
    fx.file("haproxy").bytes = (slots("127.0.0.1:1 check disabled")
        + "    server web-3:n1 10.0.0.3:80 check\n")
        .into_bytes();
    let text = plan(&fx.set).expect("plan").to_text();
    assert!(
        text.contains("runtime    haproxy: add server web/web-3:n1\n"),
        "{text}"
    );

    // Anything structural reloads, and the plan says only that.
    fx.file("haproxy").bytes = slots("10.0.0.2:80 check")
        .replace("backend web\n", "backend web\n    balance leastconn\n")
        .into_bytes();
    let p = plan(&fx.set).expect("plan");
    assert_eq!(p.files[0].runtime_api_servers, None);
    assert!(!p.to_text().contains("runtime API"), "{}", p.to_text());
}
