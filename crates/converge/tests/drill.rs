//! `converge drill` end to end: a real `consul agent -dev`, two real HTTP
//! servers (Python's `http.server`, each its own process) registered with
//! Consul HTTP health checks, a real HAProxy in master-worker mode and
//! `converge run --consul` keeping it equal to the catalog. The drill
//! stops one server with SIGSTOP: probes through the frontend fail until
//! Consul's check marks it critical and converge takes it out; the drill
//! then undoes the fault with SIGCONT. `CONVERGE_DRILL_KEEP=DIR` keeps
//! the reports.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::drill::{self, report_of, Reports};
use common::{assert_exit, haproxy_site, stderr, stdout, RunningDaemon, Workspace};
use converge_testkit::consul::ConsulAgent;
use converge_testkit::{free_port, http, wait, Child, Haproxy};
use nix::sys::signal::Signal;

const DEADLINE: Duration = Duration::from_secs(30);

/// `python3 -m http.server` on 127.0.0.1:`port`, serving a directory
/// holding a file named after the server.
fn web_server(dir: &Path, name: &str) -> (Child, u16) {
    let root = dir.join(name);
    std::fs::create_dir_all(&root).expect("server dir");
    std::fs::write(root.join("name"), name).expect("name file");
    let port = free_port();
    let child = Child::spawn(
        name,
        Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .arg("--directory")
            .arg(&root)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .expect("python3 http.server");
    wait::until(DEADLINE, &format!("{name} to answer"), || {
        http::get(port, "/name").is_some()
    })
    .expect("server up");
    (child, port)
}

struct Stack {
    consul: ConsulAgent,
    servers: Vec<(Child, u16)>,
    ws: Workspace,
    front: u16,
    daemon: RunningDaemon,
    _haproxy: Haproxy,
    reports: Reports,
}

impl Stack {
    fn start() -> Self {
        let consul = ConsulAgent::start().expect("consul agent -dev");
        let ws = Workspace::custom(
            &haproxy_site(free_port(), "", "haproxy", true),
            "services: {}\n",
        );
        let servers: Vec<(Child, u16)> = ["web-1", "web-2"]
            .iter()
            .map(|name| web_server(&ws.path("www"), name))
            .collect();
        for (i, (_, port)) in servers.iter().enumerate() {
            // Registered as a service registers itself, with Consul's own
            // HTTP check against it.
            consul
                .agent_register(&format!(
                    r#"{{"ID":"web-{n}","Name":"web","Address":"127.0.0.1","Port":{port},
                       "Check":{{"HTTP":"http://127.0.0.1:{port}/name","Interval":"500ms","Timeout":"300ms"}}}}"#,
                    n = i + 1
                ))
                .expect("register");
        }
        let site = ws.read("manifests/site.yaml");
        let front = site
            .split("127.0.0.1:")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .and_then(|p| p.parse().ok())
            .expect("frontend port");
        let daemon = ws.run_daemon_with_consul(&consul, &[]);
        ws.wait_file("etc/haproxy/haproxy.cfg", DEADLINE, "both servers", |c| {
            c.matches("    server ").count() == 2
        });
        let haproxy = ws.start_haproxy();
        let s = Self {
            consul,
            servers,
            ws,
            front,
            daemon,
            _haproxy: haproxy,
            reports: Reports::new(),
        };
        s.wait_both_serve();
        s
    }

    /// Waits until requests through the frontend reach both servers.
    fn wait_both_serve(&self) {
        let want: BTreeSet<String> = ["web-1", "web-2"].map(String::from).into();
        wait::until(DEADLINE, "requests to reach both servers", || {
            (0..6)
                .filter_map(|_| http::get(self.front, "/name"))
                .collect::<BTreeSet<_>>()
                == want
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", self.ws.daemon_log()));
    }

    /// `converge drill --scenario backend-kill` against this stack.
    fn drill_command(&self, extra: &[&str]) -> Command {
        let mut args = vec!["--interval", "50ms", "--probe-timeout", "500ms"];
        args.extend_from_slice(extra);
        drill::command(
            &self.ws,
            "backend-kill",
            &self.consul,
            &self.daemon,
            &self.reports,
            &args,
        )
    }

    fn drill(&self, extra: &[&str]) -> Output {
        self.drill_command(extra)
            .output()
            .expect("run converge drill")
    }

    fn pid(&self, i: usize) -> String {
        self.servers[i].0.pid().to_string()
    }
}

fn listing(dir: &Path) -> BTreeSet<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

#[test]
fn backend_kill_passes_within_budget_fails_over_it_and_undoes_the_fault() {
    let s = Stack::start();
    let pid = s.pid(1);

    // PASS: web-2 stops; converge takes it out once Consul's check fails.
    let out = s.drill(&[
        "--backend",
        "web",
        "--fault-pid",
        &pid,
        "--signal",
        "STOP",
        "--rto-budget",
        "20s",
    ]);
    assert_exit(&out, 0);
    assert!(
        stdout(&out).starts_with("PASS backend-kill"),
        "{}",
        stdout(&out)
    );
    let (dir, json) = report_of(&stdout(&out));
    let r = &json["report"];
    assert_eq!(r["verdict"], "PASS");
    assert_eq!(r["failure_observed"], true, "{json:#}");
    assert_eq!(r["fault"]["undo_result"], "undone");
    let rto = r["rto_ms"].as_u64().expect("rto");
    assert!(rto > 0 && rto <= 20_000, "{rto}");
    let kinds: Vec<&str> = r["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(
        kinds.contains(&"saw-change") && kinds.contains(&"reloaded"),
        "{kinds:?}"
    );
    let md = std::fs::read_to_string(dir.join("report.md")).expect("md");
    // The parts add up to the RTO, or a little more when the change went
    // live just after the recovering probe started. HAProxy can also get
    // every probe to the live server before converge's change (its
    // `option redispatch` retries): then the report says it is not split.
    let split = &json["split"];
    if split.is_null() {
        assert!(md.contains("Not split"), "{md}");
    } else {
        let parts: u64 = ["before_converge_ms", "converge_ms", "after_converge_ms"]
            .iter()
            .map(|k| {
                split[k]
                    .as_u64()
                    .unwrap_or_else(|| panic!("{k} in {json:#}"))
            })
            .sum();
        assert!(
            parts >= rto && parts <= rto + 1000,
            "split {split} against RTO {rto}"
        );
    }
    let csv = std::fs::read_to_string(dir.join("health-timeline.csv")).expect("csv");
    assert!(
        csv.lines().any(|l| l.contains(",after-fault,false,")),
        "{csv}"
    );
    assert!(
        md.contains("converge reloaded") && md.contains("![timeline](timeline.svg)"),
        "{md}"
    );
    assert!(std::fs::read_to_string(dir.join("timeline.svg"))
        .expect("svg")
        .contains("</svg>"));
    // Undone: the server answers again and comes back behind the frontend.
    wait::until(DEADLINE, "web-2 to answer after SIGCONT", || {
        http::get(s.servers[1].1, "/name").is_some()
    })
    .expect("web-2 continued");
    s.wait_both_serve();

    // FAIL: the same fault against a budget no failover meets.
    let out = s.drill(&[
        "--fault-pid",
        &pid,
        "--signal",
        "STOP",
        "--rto-budget",
        "1ms",
    ]);
    assert_exit(&out, 1);
    assert!(
        stdout(&out).contains("over the 1 ms budget"),
        "{}",
        stdout(&out)
    );
    let (_, json) = report_of(&stdout(&out));
    assert_eq!(json["report"]["verdict"], "FAIL");
    assert_eq!(json["report"]["fault"]["undo_result"], "undone");
    s.wait_both_serve();
}

#[test]
fn an_interrupted_drill_undoes_its_consul_maintenance() {
    let s = Stack::start();
    // No fault named, Consul on loopback: the local default, maintenance
    // mode on the first passing instance. An unreachable --settle keeps
    // the drill waiting whatever the probes see: interrupt it.
    let log = s.ws.path("drill.log");
    let mut cmd = s.drill_command(&[
        "--rto-budget",
        "5s",
        "--timeout",
        "120s",
        "--settle",
        "60000",
    ]);
    let out = s.ws.path("drill.out");
    cmd.stdout(std::fs::File::create(&out).expect("stdout"))
        .stderr(std::fs::File::create(&log).expect("log"));
    let mut drill = Child::spawn("converge drill", &mut cmd).expect("spawn drill");
    let maintenance = || {
        s.consul
            .get("/v1/health/checks/web")
            .map(|(_, body)| body.contains("_service_maintenance:web-1"))
            .unwrap_or(false)
    };
    wait::until(DEADLINE, "web-1 in maintenance", maintenance)
        .unwrap_or_else(|e| panic!("{e}\n{}", std::fs::read_to_string(&log).unwrap_or_default()));
    drill.signal(Signal::SIGINT).expect("SIGINT");
    let status = drill.wait_exit(DEADLINE).expect("the drill exits");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(text.contains("fault undone"), "{text}");
    assert!(!maintenance(), "maintenance still on after the drill");
    let (_, json) = report_of(&std::fs::read_to_string(&out).expect("stdout"));
    assert_eq!(json["report"]["reason"], "interrupted (SIGINT)");
    assert_eq!(
        json["report"]["fault"]["fault"],
        "Consul maintenance mode on service `web-1`"
    );
    s.wait_both_serve();
}

#[test]
fn refuses_a_public_target_and_an_unhealthy_baseline_without_injecting() {
    let ws = Workspace::examples();
    let reports = ws.path("drills");
    let marker = ws.path("fault-ran");
    let fault = format!("touch {}", marker.display());
    let run = |url: &str| {
        ws.converge(&[
            "drill",
            "--scenario",
            "backend-kill",
            "--rto-budget",
            "5s",
            "--no-daemon",
            "--report-dir",
            &reports.to_string_lossy(),
            "--probe-url",
            url,
            "--fault-command",
            &fault,
            "--interval",
            "10ms",
        ])
    };
    let public = run("http://203.0.113.7/");
    assert_exit(&public, 2);
    assert!(
        stderr(&public).contains("--allow-public"),
        "{}",
        stderr(&public)
    );

    let closed = format!("http://127.0.0.1:{}/", free_port());
    let down = run(&closed);
    assert_exit(&down, 2);
    assert!(
        stderr(&down).contains("not healthy before the fault"),
        "{}",
        stderr(&down)
    );

    assert!(!marker.exists(), "a refused drill ran its fault");
    assert!(
        listing(&reports).is_empty(),
        "a refused drill wrote a report"
    );
}
