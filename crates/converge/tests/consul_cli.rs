//! `plan` and `apply --once` against a real Consul agent: `--consul` and the
//! HashiCorp environment variables, a token without permission, and an
//! agent that is down; and the daemon picking up a token rotated in its
//! file on SIGHUP.

mod common;

use common::{assert_exit, haproxy_site, stderr, stdout, Workspace};
use converge_testkit::consul::ConsulAgent;
use converge_testkit::{free_port, wait};
use nix::sys::signal::Signal;

fn manifest() -> String {
    haproxy_site(18080, "", "haproxy", false)
}

#[test]
fn plan_reads_the_live_catalog_with_flag_or_env() {
    let consul = ConsulAgent::start().expect("consul agent -dev");
    let ok = consul
        .register_service_with_ttl("web-1", "web", 8081, &[])
        .expect("register");
    let bad = consul
        .register_service_with_ttl("web-2", "web", 8082, &[])
        .expect("register");
    consul.pass(&ok).expect("pass");
    consul.fail(&bad).expect("fail");
    let ws = Workspace::custom(&manifest(), "services: {}\n");

    let out = ws.converge(&["plan", "--node", "lb1", "--consul", &consul.http_url()]);
    assert_exit(&out, 2);
    let text = stdout(&out);
    assert!(
        text.contains("+    server web-1:converge-test 127.0.0.1:8081 check"),
        "{text}"
    );
    assert!(
        !text.contains("web-2"),
        "critical instance planned:\n{text}"
    );

    let out = ws.converge_env(
        &["plan", "--node", "lb1"],
        &[("CONSUL_HTTP_ADDR", &consul.http_url())],
    );
    assert_exit(&out, 2);
    assert!(
        stdout(&out).contains("server web-1:converge-test "),
        "{}",
        stdout(&out)
    );

    // A datacenter is asked for by name: the agent's own (a dev agent's is
    // dc1) reads the same; one Consul does not know is an error that says
    // so and changes nothing.
    let url = consul.http_url();
    let dc = |name: &str| {
        ws.converge(&[
            "plan",
            "--node",
            "lb1",
            "--consul",
            &url,
            "--consul-datacenter",
            name,
        ])
    };
    let out = dc("dc1");
    assert_exit(&out, 2);
    assert!(
        stdout(&out).contains("server web-1:converge-test "),
        "{}",
        stdout(&out)
    );
    let out = dc("nowhere");
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(
        err.contains("No path to datacenter") && err.contains("nothing was changed"),
        "{err}"
    );

    // A namespace or partition, from the variable or the flag, reaches
    // Consul; this OSS agent refuses it, and converge says so rather than
    // plan from the default namespace.
    let plan = ["plan", "--node", "lb1", "--consul", url.as_str()];
    let out = ws.converge_env(&plan, &[("CONSUL_NAMESPACE", "team-a")]);
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(
        err.contains("Namespaces are a Consul Enterprise feature")
            && err.contains("nothing was changed"),
        "{err}"
    );
    let out = ws.converge(&[&plan[..], &["--consul-partition", "team-a"]].concat());
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(
        err.contains("Partitions are a Consul Enterprise feature"),
        "{err}"
    );
}

/// An ACL policy that may read every service and node.
const READ_SERVICES: &str =
    r#"service_prefix "" { policy = "read" } node_prefix "" { policy = "read" }"#;

/// An ACL agent with `web-1` registered, a workspace rendering `web`, and
/// a token that may read KV but no service.
fn acl_setup() -> (ConsulAgent, Workspace, String) {
    let consul = ConsulAgent::start_with_acl().expect("consul with ACLs");
    consul
        .register_service_with_ttl("web-1", "web", 8081, &[])
        .expect("register");
    let ws = Workspace::custom(&manifest(), "services: {}\n");
    let weak = consul
        .create_token(r#"key_prefix "" { policy = "read" }"#)
        .expect("token");
    (consul, ws, weak)
}

#[test]
fn a_token_without_permission_is_a_clear_error_and_changes_nothing() {
    let (consul, ws, weak) = acl_setup();
    let out = ws.converge_env(
        &[
            "apply",
            "--once",
            "--node",
            "lb1",
            "--consul",
            &consul.http_url(),
        ],
        &[("CONSUL_HTTP_TOKEN", &weak)],
    );
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(
        err.contains("denied")
            && err.contains("may not read service \"web\"")
            && err.contains("nothing was changed"),
        "{err}"
    );
    assert!(!err.contains(&weak), "token leaked into the error:\n{err}");
    assert!(ws.tree().is_empty(), "nothing may be written");

    let good = consul.create_token(READ_SERVICES).expect("token");
    let out = ws.converge_env(
        &["plan", "--node", "lb1", "--consul", &consul.http_url()],
        &[("CONSUL_HTTP_TOKEN", &good)],
    );
    assert_exit(&out, 2);

    // The same token from a file named by the flag; a missing file is an
    // error naming it.
    ws.write("consul.token", &format!("{good}\n"));
    let token_file = ws.path("consul.token");
    let flag = |file: &std::path::Path| {
        ws.converge(&[
            "plan",
            "--node",
            "lb1",
            "--consul",
            &consul.http_url(),
            "--consul-token-file",
            &file.display().to_string(),
        ])
    };
    assert_exit(&flag(&token_file), 2);
    let missing = token_file.with_file_name("absent.token");
    let out = flag(&missing);
    assert_exit(&out, 1);
    let want = format!("cannot read Consul token file {}", missing.display());
    assert!(stderr(&out).contains(&want), "{}", stderr(&out));
}

#[test]
fn an_unreachable_agent_fails_without_touching_files() {
    let ws = Workspace::custom(&manifest(), "services: {}\n");
    let url = format!("http://127.0.0.1:{}", free_port());
    let out = ws.converge(&[
        "apply",
        "--once",
        "--node",
        "lb1",
        "--consul",
        &url,
        "--consul-timeout",
        "2s",
    ]);
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("nothing was changed"),
        "{}",
        stderr(&out)
    );
    assert!(ws.tree().is_empty());
}

#[test]
fn sighup_reads_a_rotated_token_file_and_reconnects() {
    let deadline = std::time::Duration::from_secs(20);
    let (consul, ws, weak) = acl_setup();
    ws.write("consul.token", &format!("{weak}\n"));
    let token_file = ws.path("consul.token").display().to_string();
    let mut daemon = ws.run_daemon_with_consul(&consul, &["--consul-token-file", &token_file]);
    wait::until(deadline, "the denied token to be reported", || {
        daemon.status()["source_error"]
            .as_str()
            .is_some_and(|e| e.contains("may not read service"))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", ws.daemon_log()));
    assert!(
        ws.tree().is_empty(),
        "nothing may be written without the catalog"
    );

    // The operator rotates the token in place and signals the daemon.
    let good = consul.create_token(READ_SERVICES).expect("token");
    ws.write("consul.token", &format!("{good}\n"));
    daemon.child.signal(Signal::SIGHUP).expect("SIGHUP");
    ws.wait_file("etc/haproxy/haproxy.cfg", deadline, "web-1 rendered", |c| {
        c.contains("server web-1:converge-test 127.0.0.1:8081 ")
    });
    wait::until(deadline, "the daemon to converge", || {
        daemon.status()["converged"] == true
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", ws.daemon_log()));
    assert!(!ws.daemon_log().contains(&good), "token in the log");
}
