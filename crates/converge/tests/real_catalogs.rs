//! Catalog data in the shapes real tools write, against a real
//! `consul agent -dev` and a real HAProxy: ids Consul picks by default on
//! several nodes, Patroni's, Nomad's and odd characters; an address that
//! does not resolve; an empty answer; and a hold that `plan`,
//! `apply --once` and the daemon must all decide the same way.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{
    assert_exit, haproxy_site, http_backends, register_web, stdout, RunningDaemon, Workspace,
};
use converge_testkit::backend::{get, HttpBackend};
use converge_testkit::consul::ConsulAgent;
use converge_testkit::standin::EmptyAnswerProxy;
use converge_testkit::{free_port, wait, Haproxy};

const DEADLINE: Duration = Duration::from_secs(20);

/// Backends reached by `n` requests through HAProxy on `front`.
fn reached(front: u16, n: usize) -> BTreeSet<String> {
    (0..n).filter_map(|_| get(front)).collect()
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// `converge ARGS --consul URL` in `ws`.
fn converge_consul(ws: &Workspace, url: &str, args: &[&str]) -> std::process::Output {
    let mut all = args.to_vec();
    all.extend_from_slice(&["--node", "lb1", "--consul", url]);
    ws.converge(&all)
}

/// Waits until a plan against `url` adds `n` servers: Consul has every
/// registration the test made (catalog writes reach the health endpoint
/// a moment later).
fn wait_planned(ws: &Workspace, url: &str, n: usize) {
    wait::until(DEADLINE, &format!("{n} servers in a plan"), || {
        stdout(&converge_consul(ws, url, &["plan"]))
            .matches("+    server ")
            .count()
            == n
    })
    .expect("catalog synced");
}

fn config(ws: &Workspace) -> String {
    std::fs::read_to_string(ws.root().join("etc/haproxy/haproxy.cfg")).unwrap_or_default()
}

/// A passing TTL check in an agent registration body.
const PASSING: &str = r#""Check":{"Name":"ttl","TTL":"10m","Status":"passing"}"#;

#[test]
fn ids_real_tools_write_each_get_a_server_and_haproxy_serves_them_all() {
    let consul = ConsulAgent::start().expect("consul agent -dev");
    let b = http_backends(5);
    // Registered without an ID on two other Consul nodes: Consul sets
    // ID = "web" on both.
    for (node, backend) in [("app1", &b[0]), ("app2", &b[1])] {
        consul
            .catalog_register(&format!(
                r#"{{"Node":"{node}","Address":"127.0.0.1",
                    "Service":{{"Service":"web","Address":"127.0.0.1","Port":{}}}}}"#,
                backend.port()
            ))
            .expect("catalog register");
    }
    // On this agent: Patroni's `scope/member` (patroni/dcs/consul.py,
    // `register_service`), Nomad's `_nomad-task-ALLOC-TASK-SERVICE-PORT`
    // (command/agent/consul, `MakeAllocServiceID`), and `@` and `:`.
    for (id, backend) in [
        ("pgdrill/pg1", &b[2]),
        (
            "_nomad-task-5f6c0a3e-2b1d-4f7e-9a8b-0c1d2e3f4a5b-web-web-http",
            &b[3],
        ),
        ("web@eu-1:8080", &b[4]),
    ] {
        consul
            .agent_register(&format!(
                r#"{{"ID":"{id}","Name":"web","Address":"127.0.0.1","Port":{},{PASSING}}}"#,
                backend.port()
            ))
            .expect("agent register");
    }
    let front = free_port();
    let ws = Workspace::custom(&haproxy_site(front, "", "haproxy", true), "services: {}\n");
    let url = consul.http_url();
    wait_planned(&ws, &url, 5);
    let out = converge_consul(&ws, &url, &["apply", "--once"]);
    assert_exit(&out, 0);
    let cfg = config(&ws);
    for line in [
        "server web:app1 ",
        "server web:app2 ",
        "server pgdrill_2fpg1:converge-test ",
        "server __nomad-task-5f6c0a3e-2b1d-4f7e-9a8b-0c1d2e3f4a5b-web-web-http:converge-test ",
        "server web_40eu-1_3a8080:converge-test ",
    ] {
        assert!(cfg.contains(line), "{line} missing:\n{cfg}");
    }
    let _haproxy: Haproxy = ws.start_haproxy();
    let all = names(&["b1", "b2", "b3", "b4", "b5"]);
    wait::until(DEADLINE, "HAProxy to reach every instance", || {
        reached(front, 20) == all
    })
    .unwrap_or_else(|e| panic!("{e}\n{cfg}"));
}

#[test]
fn an_unresolvable_address_is_disabled_and_later_changes_still_land() {
    let consul = ConsulAgent::start().expect("consul agent -dev");
    let b = http_backends(2);
    consul
        .register_service_with_ttl("web-1", "web", b[0].port(), &[])
        .expect("register");
    for (id, address) in [("typo", "typo.invalid"), ("bad", "999.999.999.999")] {
        consul
            .agent_register(&format!(
                r#"{{"ID":"{id}","Name":"web","Address":"{address}","Port":8080,{PASSING}}}"#
            ))
            .expect("agent register");
    }
    let front = free_port();
    let ws = Workspace::custom(&haproxy_site(front, "", "haproxy", true), "services: {}\n");
    let url = consul.http_url();
    let out = converge_consul(&ws, &url, &["apply", "--once"]);
    assert_exit(&out, 0);
    let cfg = config(&ws);
    assert!(
        cfg.contains("server typo:converge-test typo.invalid:8080"),
        "{cfg}"
    );
    let haproxy = ws.start_haproxy();
    assert_eq!(haproxy.servers("web").len(), 3, "{cfg}");
    assert_eq!(reached(front, 6), names(&["b1"]));

    // A later change lands although the unresolvable servers are still
    // in the catalog.
    consul
        .register_service_with_ttl("web-2", "web", b[1].port(), &[])
        .expect("register");
    let out = converge_consul(&ws, &url, &["apply", "--once"]);
    assert_exit(&out, 0);
    assert!(stdout(&out).contains("reloaded"), "{}", stdout(&out));
    wait::until(DEADLINE, "HAProxy to serve web-2 too", || {
        reached(front, 10) == names(&["b1", "b2"])
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", haproxy.log()));
}

/// A site with two backends, `web` and `api`, each fed by its service,
/// neither with a guard rule of its own.
fn two_backends(front: u16) -> String {
    format!(
        "nodes:\n  lb1: {{}}\nhaproxy:\n  stats_socket: /run/haproxy/admin.sock\n\
         frontends:\n  http_in:\n    bind: [\"127.0.0.1:{front}\"]\n    default_backend: web\n\
         \x20   routes:\n      - {{path_prefix: /api, backend: api}}\n\
         backends:\n  web:\n    service: web\n  api:\n    service: api\n\
         targets:\n  haproxy:\n    template: haproxy.cfg.tera\n    destination: /etc/haproxy/haproxy.cfg\n\
         \x20   validate: haproxy\n"
    )
}

#[test]
fn an_empty_answer_is_held_for_every_backend_by_plan_and_apply() {
    let consul = ConsulAgent::start().expect("consul agent -dev");
    let b = http_backends(3);
    register_web(&consul, &b[..2]);
    consul
        .register_service_with_ttl("api-1", "api", b[2].port(), &[])
        .expect("register api");
    let ws = Workspace::custom(&two_backends(free_port()), "services: {}\n");
    let url = consul.http_url();
    wait_planned(&ws, &url, 3);
    assert_exit(&converge_consul(&ws, &url, &["apply", "--once"]), 0);
    let before = config(&ws);

    // The same agent, behind a proxy that answers every service with [].
    let empty = EmptyAnswerProxy::start(consul.http_addr()).expect("stand-in proxy");
    let plan = converge_consul(&ws, &empty.url(), &["plan"]);
    assert_exit(&plan, 2);
    let text = stdout(&plan);
    for backend in ["web", "api"] {
        assert!(
            text.contains(&format!(
                "held: {backend} (service {backend}): would leave no server"
            )),
            "{text}"
        );
    }
    assert!(
        !text.contains("-    server "),
        "a held plan removes nothing:\n{text}"
    );

    let apply = converge_consul(&ws, &empty.url(), &["apply", "--once"]);
    assert_exit(&apply, 3);
    assert!(stdout(&apply).contains("held: web"), "{}", stdout(&apply));
    assert_eq!(config(&ws), before, "nothing held was written");

    // An operator accepts the empty `web` once; `api` stays held.
    let released = converge_consul(&ws, &empty.url(), &["apply", "--once", "--release", "web"]);
    assert_exit(&released, 3);
    let cfg = config(&ws);
    let web = cfg
        .split("\nbackend web\n")
        .nth(1)
        .expect("backend web stays");
    assert!(!web.contains("    server "), "{cfg}");
    assert!(cfg.contains("server api-1:converge-test "), "{cfg}");
}

#[test]
fn plan_and_apply_once_hold_what_the_daemon_holds() {
    let consul = ConsulAgent::start().expect("consul agent -dev");
    let b: Vec<HttpBackend> = http_backends(3);
    let checks = register_web(&consul, &b);
    let ws = Workspace::custom(
        &haproxy_site(free_port(), "", "haproxy", true),
        "services: {}\n",
    );
    let daemon: RunningDaemon = ws.run_daemon_with_consul(&consul, &[]);
    let status = |what: &str, cond: &dyn Fn(&serde_json::Value) -> bool| {
        wait::until(DEADLINE, what, || cond(&daemon.status()))
            .unwrap_or_else(|e| panic!("{e}\nstatus: {}\n{}", daemon.status(), ws.daemon_log()));
    };
    status("3 servers converged", &|s| {
        s["converged"] == true && s["backends"]["web"]["servers"] == 3
    });
    for c in &checks {
        consul.fail(c).expect("fail");
    }
    status("the daemon to hold web, in its haproxy target", &|s| {
        s["holds"].as_array().is_some_and(|h| !h.is_empty())
            && s["targets"]["haproxy"]["outcome"] == "held"
    });
    let held = daemon.status();
    let reason = held["holds"][0]["reason"].as_str().expect("reason");
    let cfg = config(&ws);

    let url = consul.http_url();
    let plan = converge_consul(&ws, &url, &["plan"]);
    assert_exit(&plan, 2);
    let line = format!("held: web (service web): {reason};");
    assert!(stdout(&plan).contains(&line), "{line}\n{}", stdout(&plan));
    let json = converge_consul(&ws, &url, &["plan", "--format", "json"]);
    let doc: serde_json::Value = serde_json::from_str(&stdout(&json)).expect("plan json");
    assert_eq!(
        doc["holds"], held["holds"],
        "plan and the daemon hold alike"
    );
    assert_eq!(
        held["targets"]["haproxy"]["held_by"],
        serde_json::json!(["web"])
    );
    assert_eq!(
        doc["held_targets"],
        serde_json::json!({"haproxy": ["web"]}),
        "the same target held: {doc}"
    );

    let apply = converge_consul(&ws, &url, &["apply", "--once"]);
    assert_exit(&apply, 3);
    assert!(stdout(&apply).contains(&line), "{}", stdout(&apply));
    assert_eq!(
        config(&ws),
        cfg,
        "apply --once kept the servers, as the daemon did"
    );
    drop(daemon);

    let released = converge_consul(&ws, &url, &["plan", "--release", "web"]);
    assert_exit(&released, 2);
    let text = stdout(&released);
    assert!(!text.contains("held:"), "{text}");
    // The checks failed one by one, so the daemon may have applied a
    // drop or two before the last server was held: whatever is live goes.
    let live = cfg.matches("    server web-").count();
    assert!(live >= 1, "{cfg}");
    assert_eq!(text.matches("-    server web-").count(), live, "{text}");
}

#[test]
fn a_catalog_file_with_one_id_on_two_nodes_renders_both_and_a_duplicated_identity_neither() {
    let front = free_port();
    let catalog = "services:\n  web:\n\
        \x20   - {id: web, node: app1, address: 127.0.0.1, port: 8001, health: passing}\n\
        \x20   - {id: web, node: app2, address: 127.0.0.1, port: 8002, health: passing}\n\
        \x20   - {id: web-3, node: app3, address: 127.0.0.1, port: 8003, health: passing}\n\
        \x20   - {id: web-3, node: app3, address: 127.0.0.2, port: 8003, health: passing}\n";
    let ws = Workspace::custom(&haproxy_site(front, "", "haproxy", false), catalog);
    let out = ws.converge(&["apply", "--once", "--node", "lb1"]);
    assert_exit(&out, 3);
    let cfg = config(&ws);
    assert!(
        cfg.contains("server web:app1 127.0.0.1:8001 check"),
        "{cfg}"
    );
    assert!(
        cfg.contains("server web:app2 127.0.0.1:8002 check"),
        "{cfg}"
    );
    assert!(!cfg.contains("web-3"), "{cfg}");
    let text = stdout(&out);
    assert_eq!(
        text.matches("left out: service web instance web-3 on node app3: id")
            .count(),
        2,
        "{text}"
    );
}
