use std::net::IpAddr;
use std::path::PathBuf;

use converge_model::manifest::Validator;
use converge_model::{ReloadAction, RenderedFile};
use nix::sys::signal::Signal;

use super::*;
use crate::haproxy::cfg::{classify, ip_endpoint, Server};

/// A config with backend `web` marked and holding `slots` (`ADDR:PORT` or
/// `ADDR:PORT disabled`), and an unmarked backend `api`.
fn cfg(bind: &str, slots: &[&str]) -> String {
    let mut s = format!(
        "global\n    stats socket /r/run/admin.sock mode 600 level admin expose-fd listeners\n\
         defaults\n    mode http\n    timeout connect 5s\n\
         frontend fe\n    bind {bind}\n    default_backend web\n\
         backend api\n    server api-1 10.0.0.9:90 check\n\
         backend web\n    balance roundrobin\n    {MARKER} (slots)\n"
    );
    for (i, slot) in slots.iter().enumerate() {
        let (endpoint, disabled) = match slot.split_once(' ') {
            Some((e, d)) => (e, format!(" {d}")),
            None => (*slot, String::new()),
        };
        s.push_str(&format!(
            "    server web-s{} {endpoint} check inter 1s{disabled}\n",
            i + 1
        ));
    }
    s
}

fn server(name: &str, endpoint: &str, enabled: bool) -> Server {
    let (addr, port) = ip_endpoint(endpoint).expect("endpoint");
    Server {
        backend: "web".into(),
        name: name.into(),
        addr,
        port,
        enabled,
        options: vec!["check".into(), "inter".into(), "1s".into()],
    }
}

/// `classify`'s servers before and after, for cases that do not need the
/// rest.
fn servers(live: &str, candidate: &str) -> Result<(PathBuf, Vec<Server>, Vec<Server>), String> {
    classify(live, candidate).map(|c| (c.socket, c.before, c.after))
}

const EMPTY: &str = "127.0.0.1:1 disabled";

#[test]
fn slot_changes_alone_are_membership_only() {
    let live = cfg(":80", &["10.0.0.1:80", "10.0.0.2:80", EMPTY]);
    let candidate = cfg(":80", &["10.0.0.1:80", EMPTY, "10.0.0.3:81"]);
    let (socket, before, after) = servers(&live, &candidate).expect("membership-only");
    assert_eq!(socket, PathBuf::from("/r/run/admin.sock"));
    assert_eq!(
        before,
        vec![
            server("web-s1", "10.0.0.1:80", true),
            server("web-s2", "10.0.0.2:80", true),
            server("web-s3", "127.0.0.1:1", false),
        ]
    );
    assert_eq!(
        after,
        vec![
            server("web-s1", "10.0.0.1:80", true),
            server("web-s2", "127.0.0.1:1", false),
            server("web-s3", "10.0.0.3:81", true),
        ]
    );
}

#[test]
fn anything_else_is_structural() {
    let live = cfg(":80", &["10.0.0.1:80", EMPTY]);
    let cases = [
        ("another line", cfg(":81", &["10.0.0.2:80", EMPTY])),
        ("a host name", cfg(":80", &["app.example:80", EMPTY])),
        ("the client's port", cfg(":80", &["10.0.0.1:0", EMPTY])),
        ("a port offset", cfg(":80", &["10.0.0.1:+1", EMPTY])),
        (
            "other server options",
            cfg(":80", &["10.0.0.1:80", EMPTY]).replace(
                "web-s1 10.0.0.1:80 check",
                "web-s1 10.0.0.1:80 check backup",
            ),
        ),
        (
            "an unmarked backend's server",
            live.replace("api-1 10.0.0.9:90", "api-1 10.0.0.8:90"),
        ),
        ("the marker gone", live.replace(MARKER, "# no longer")),
    ];
    for (what, candidate) in cases {
        assert_ne!(candidate, live, "{what}: the case changes nothing");
        assert!(
            classify(&live, &candidate).is_err(),
            "{what} was taken for a membership-only change"
        );
    }
}

#[test]
fn without_an_admin_unix_socket_there_is_no_runtime_path() {
    let live = cfg(":80", &["10.0.0.1:80", EMPTY]);
    let candidate = cfg(":80", &[EMPTY, "10.0.0.1:80"]);
    for socket in [
        "stats socket ipv4@127.0.0.1:9999 level admin",
        "stats socket /r/run/admin.sock level operator",
        "stats timeout 30s",
    ] {
        let edit = |t: &str| {
            t.replace(
                "stats socket /r/run/admin.sock mode 600 level admin expose-fd listeners",
                socket,
            )
        };
        let err = servers(&edit(&live), &edit(&candidate)).expect_err(socket);
        assert!(err.contains("stats socket"), "{socket}: {err}");
    }
    let unix = |t: &str| t.replace("/r/run/admin.sock mode 600 level admin", "unix@/r/a.sock");
    let (socket, _, _) = servers(&unix(&live), &unix(&candidate)).expect("default level");
    assert_eq!(socket, PathBuf::from("/r/a.sock"));
}

#[test]
fn only_backends_with_changes_are_planned() {
    let two = |a: &str, b: &str| {
        let mut t = cfg(":80", &[a, EMPTY]);
        t.push_str(&format!(
            "backend other\n    {MARKER}\n    server other-s1 {b} check\n"
        ));
        t
    };
    let (_, before, after) = servers(
        &two("10.0.0.1:80", "10.0.0.5:80"),
        &two("10.0.0.2:80", "10.0.0.5:80"),
    )
    .expect("membership-only");
    assert!(before.iter().chain(&after).all(|s| s.backend == "web"));
    assert_eq!(after.len(), 2);
}

#[test]
fn ipv6_slots_and_reformatted_lines() {
    let live = cfg(":80", &["[2001:db8::1]:80", EMPTY]);
    let candidate = cfg(":80", &["[2001:db8::2]:80", EMPTY]);
    let (_, _, after) = servers(&live, &candidate).expect("membership-only");
    assert_eq!(after[0].addr, "2001:db8::2".parse::<IpAddr>().expect("ip"));
    // Spacing inside a slot line is no change HAProxy can see.
    let spaced = live.replace("web-s1 [2001", "web-s1   [2001");
    let (_, before, after) = servers(&live, &spaced).expect("membership-only");
    assert_eq!(before, after);
}

#[test]
fn commands_per_transition() {
    let on = |e: &str| server("web-s2", e, true);
    let off = |e: &str| server("web-s2", e, false);
    let cases: [(Server, Server, &[&str]); 5] = [
        (
            off("127.0.0.1:1"),
            on("10.0.0.3:81"),
            &[
                "set server web/web-s2 addr 10.0.0.3 port 81",
                "set server web/web-s2 state ready",
            ],
        ),
        (
            on("10.0.0.3:81"),
            off("127.0.0.1:1"),
            &[
                "set server web/web-s2 state maint",
                "set server web/web-s2 addr 127.0.0.1 port 1",
            ],
        ),
        (
            on("10.0.0.3:81"),
            on("[2001:db8::4]:81"),
            &[
                "set server web/web-s2 state maint",
                "set server web/web-s2 addr 2001:db8::4 port 81",
                "set server web/web-s2 state ready",
            ],
        ),
        (
            off("10.0.0.3:81"),
            on("10.0.0.3:81"),
            &["set server web/web-s2 state ready"],
        ),
        (on("10.0.0.3:81"), on("10.0.0.3:81"), &[]),
    ];
    for (before, after, want) in cases {
        assert_eq!(commands(&before, &after), want, "{before:?} -> {after:?}");
    }
}

#[test]
fn answers_that_count_as_done() {
    let addr = "set server web/web-s2 addr 10.0.0.3 port 81";
    assert!(accepted(
        addr,
        "IP changed from '127.0.0.1' to '10.0.0.3', port changed from '1' to '81' by 'stats socket command'\n\n"
    ));
    assert!(accepted(
        addr,
        "no need to change the addr, port changed from '1' to '81' by 'stats socket command'\n"
    ));
    assert!(!accepted(addr, "No such server.\n\n"));
    assert!(!accepted(addr, "Permission denied\n\n"));
    let add = "add server web/web-3:n1 10.0.0.3:80 check";
    assert!(accepted(add, "New server registered.\n\n"));
    assert!(!accepted(
        add,
        "'cookie' option is not accepted for dynamic server\n\n"
    ));
    assert!(!accepted(add, "Unknown command: 'add'\n"));
    let state = "set server web/web-s2 state ready";
    assert!(accepted(state, "\n"));
    assert!(!accepted(state, "No such backend.\n\n"));
}

const STATE: &str = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state \
    srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result \
    srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn \
    srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n\
    3 web 1 web-s1 10.0.0.1 2 0 1 1 13 6 3 4 6 0 0 0 - 80 - 0 0 - - 0\n\
    3 web 2 web-s2 127.0.0.1 0 5 1 1 1 6 3 0 14 0 0 0 - 1 - 0 0 - - 0\n\
    3 web 3 web-s3 ::1 2 4 1 1 0 6 3 2 6 0 0 0 - 8080 - 0 0 - - 0\n\n";

#[test]
fn parses_and_compares_servers_state() {
    let running = parse_servers_state(STATE).expect("parses");
    assert_eq!(
        running[1],
        Running {
            backend: "web".into(),
            op_state: 0,
            name: "web-s2".into(),
            addr: "127.0.0.1".into(),
            port: 1,
            admin: 5
        }
    );
    let want = [
        server("web-s1", "10.0.0.1:80", true),
        server("web-s2", "127.0.0.1:1", false),
        // Left maintenance by `state ready`: only the configured-maint bit
        // stays, which is not maintenance.
        server("web-s3", "[::1]:8080", true),
    ];
    assert_eq!(compare(&running, want.iter()), Ok(()));

    let mut other = want.clone();
    other[1].enabled = true;
    let err = compare(&running, other.iter()).expect_err("state differs");
    assert!(
        err.contains("web-s2 is 127.0.0.1:1 in maintenance"),
        "{err}"
    );
    other = want.clone();
    other[0].port = 81;
    assert!(compare(&running, other.iter()).is_err());
    let err = compare(&running, want[..2].iter()).expect_err("an extra server");
    assert!(err.contains("web-s3"), "{err}");

    assert!(parse_servers_state("Can't find backend.\n").is_err());
}

fn file(target: &str, bytes: &str, validate: Validator, reload: ReloadAction) -> RenderedFile {
    RenderedFile {
        bundle: "haproxy".into(),
        ..crate::testutil::rendered(target, format!("/r/etc/{target}"), bytes, validate, reload)
    }
}

fn signal() -> ReloadAction {
    ReloadAction::Signal {
        pidfile: PathBuf::from("/r/run/haproxy.pid"),
        signal: "SIGUSR2".into(),
    }
}

/// How a member compares with its live file, as the transaction tells
/// [`plan`] (`Change` in `converge-apply`).
#[derive(Debug, Clone, Copy)]
enum Change {
    Changed,
    Metadata,
    New,
}

fn view<'a>(file: &'a RenderedFile, live: Option<&'a str>, change: Change) -> MemberView<'a> {
    MemberView {
        file,
        live: live.map(str::as_bytes),
        rewrites: matches!(change, Change::Changed | Change::New),
    }
}

#[test]
fn a_bundle_is_planned_only_when_every_rewrite_is_membership_only() {
    let live = cfg(":80", &["10.0.0.1:80", EMPTY]);
    let candidate = cfg(":80", &["10.0.0.1:80", "10.0.0.2:80"]);
    let haproxy = file("haproxy", &candidate, Validator::Haproxy, signal());
    let map = file("map", "a b\n", Validator::None, signal());

    let p = plan([
        view(&haproxy, Some(&live), Change::Changed),
        view(&map, Some("a b\n"), Change::Metadata),
    ])
    .expect("planned");
    assert_eq!(p.targets.len(), 1);
    let t = &p.targets[0];
    assert_eq!(
        t.master,
        Some((PathBuf::from("/r/run/haproxy.pid"), Signal::SIGUSR2))
    );
    assert_eq!(t.actions(), ["set server web/web-s2"]);

    // A sibling whose bytes change needs the reload.
    assert_eq!(
        plan([
            view(&haproxy, Some(&live), Change::Changed),
            view(&map, Some("a c\n"), Change::Changed),
        ]),
        None
    );
    // A new file: nothing to compare with.
    assert_eq!(plan([view(&haproxy, None, Change::New)]), None);
    // Nothing rewritten: nothing to do here.
    assert_eq!(plan([view(&map, Some("a b\n"), Change::Metadata)]), None);

    let quiet = file(
        "haproxy",
        &candidate,
        Validator::Haproxy,
        ReloadAction::None,
    );
    assert_eq!(
        plan([view(&quiet, Some(&live), Change::Changed)]),
        None,
        "a target with no reload is never touched at runtime"
    );
    let command = file(
        "haproxy",
        &candidate,
        Validator::Haproxy,
        ReloadAction::Command(vec!["systemctl".into(), "reload".into(), "haproxy".into()]),
    );
    let p = plan([view(&command, Some(&live), Change::Changed)]).expect("planned");
    assert_eq!(p.targets[0].master, None);
}

/// `cfg` with one server line of its own per `extra` (`NAME ADDR:PORT`)
/// after the slots.
fn with_extra(slots: &[&str], extra: &[&str]) -> String {
    let mut s = cfg(":80", slots);
    for e in extra {
        s.push_str(&format!("    server {e} check inter 1s\n"));
    }
    s
}

fn actions(live: &str, candidate: &str) -> Option<Vec<String>> {
    let haproxy = file("haproxy", candidate, Validator::Haproxy, signal());
    let p = plan([view(&haproxy, Some(live), Change::Changed)])?;
    Some(p.actions().flat_map(|(_, a)| a).collect())
}

#[test]
fn servers_beyond_the_slots_join_and_leave_as_dynamic_servers() {
    let full = ["10.0.0.1:80", "10.0.0.2:80"];
    let live = with_extra(&full, &[]);
    let more = with_extra(&full, &["web-3:n1 10.0.0.3:80", "web-4:n1 10.0.0.4:80"]);
    assert_eq!(
        actions(&live, &more).expect("dynamic"),
        ["add server web/web-3:n1", "add server web/web-4:n1"]
    );
    // One leaves, and the other moves into a freed slot.
    let fewer = with_extra(&["10.0.0.1:80", "10.0.0.4:80"], &["web-3:n1 10.0.0.3:80"]);
    assert_eq!(
        actions(&more, &fewer).expect("dynamic"),
        ["set server web/web-s2", "del server web/web-4:n1"]
    );
    // A slot more or fewer is a server added or deleted like any other.
    assert_eq!(
        actions(
            &live,
            &with_extra(&["10.0.0.1:80", "10.0.0.2:80", EMPTY], &[])
        )
        .expect("slot"),
        ["add server web/web-s3"]
    );
}

#[test]
fn servers_haproxy_would_not_add_at_runtime_are_reloaded_in() {
    let live = with_extra(&["10.0.0.1:80"], &[]);
    let candidate = with_extra(&["10.0.0.1:80"], &["web-2:n1 10.0.0.2:80"]);
    let sticky = |t: &str| t.replace("check inter 1s", "check inter 1s cookie c");
    let source = |t: &str| t.replace("balance roundrobin", "balance source");
    let inherited = |t: &str| {
        t.replace(
            "timeout connect 5s",
            "timeout connect 5s\n    default-server inter 3s",
        )
    };
    for (what, edit) in [
        ("a cookie", &sticky as &dyn Fn(&str) -> String),
        ("a static algorithm", &source),
        ("default-server options", &inherited),
    ] {
        assert_eq!(actions(&edit(&live), &edit(&candidate)), None, "{what}");
        // Deleting needs none of that.
        assert_eq!(
            actions(&edit(&candidate), &edit(&live)).expect(what),
            ["del server web/web-2:n1"],
            "{what}"
        );
    }
    // A server's options changing is not membership.
    let other = candidate.replace("10.0.0.2:80 check inter 1s", "10.0.0.2:80 check inter 2s");
    let err = classify(&candidate, &other).expect_err("options changed");
    assert!(err.contains("web/web-2:n1: other options"), "{err}");
}
