//! Membership-only changes of a runtime-API backend against a real HAProxy
//! in master-worker mode: applied over the stats socket with no reload
//! (slots changed, servers beyond them added and deleted as dynamic
//! servers), the file on disk kept equal to what runs, and every doubt
//! (state that differs from the live file, a structural change, a server
//! that does not drain in time, a command HAProxy refuses) answered with a
//! validated reload.

use std::os::unix::fs::PermissionsExt;

use converge_apply::{apply, ApplyOptions, Outcome, ReloadOutcome};
use converge_testkit::wait;

mod common;
#[path = "runtime_api/node.rs"]
mod node;

use common::set;
use converge_testkit::backend::get;
use node::{answer, backends, config, Held, Node, Slot, DEADLINE};

#[test]
fn membership_changes_go_through_the_runtime_api_and_a_later_reload_keeps_them() {
    let (b1, b2, b3) = backends();
    let node = Node::start(&[Slot::To(b1.port()), Slot::Empty, Slot::Empty]);
    node.wait_reached(&["b1"]);
    let worker = node.haproxy.worker_pid().expect("worker");

    // Two instances join.
    let outcome = node.apply(
        &[
            Slot::To(b1.port()),
            Slot::To(b2.port()),
            Slot::To(b3.port()),
        ],
        "",
    );
    assert_eq!(outcome, Outcome::RuntimeUpdated { servers: 2 });
    node.wait_reached(&["b1", "b2", "b3"]);

    // One leaves, and another takes its slot.
    let outcome = node.apply(&[Slot::Empty, Slot::To(b3.port()), Slot::To(b2.port())], "");
    assert_eq!(outcome, Outcome::RuntimeUpdated { servers: 3 });
    node.wait_reached(&["b2", "b3"]);
    assert_eq!(
        node.haproxy.worker_pid(),
        Some(worker),
        "no reload: the same worker serves\n{}",
        node.haproxy.log()
    );
    assert!(
        !node.haproxy.log().contains("Reloading"),
        "{}",
        node.haproxy.log()
    );

    // What runs is what the file says: a reload changes nothing.
    let before = node.servers();
    let mut haproxy = node.haproxy;
    haproxy.reload().expect("reload");
    let node = Node { haproxy, ..node };
    assert_ne!(node.haproxy.worker_pid(), Some(worker));
    assert_eq!(node.servers(), before);
    node.wait_reached(&["b2", "b3"]);
}

#[test]
fn a_structural_change_reloads() {
    let (b1, b2, _b3) = backends();
    let node = Node::start(&[Slot::To(b1.port()), Slot::Empty]);
    node.wait_reached(&["b1"]);
    let worker = node.haproxy.worker_pid();
    let outcome = node.apply(
        &[Slot::To(b1.port()), Slot::To(b2.port())],
        "    option httpchk GET /\n",
    );
    assert_eq!(
        outcome,
        Outcome::Applied {
            reload: ReloadOutcome::Reloaded
        }
    );
    wait::until(DEADLINE, "a new worker", || {
        node.haproxy.worker_pid().is_some_and(|w| Some(w) != worker)
    })
    .expect("reloaded");
    node.wait_reached(&["b1", "b2"]);
}

#[test]
fn servers_that_differ_from_the_live_file_are_reloaded_into_line() {
    let (b1, b2, _b3) = backends();
    let node = Node::start(&[Slot::To(b1.port()), Slot::Empty]);
    node.wait_reached(&["b1"]);
    let worker = node.haproxy.worker_pid();
    // Someone changed the running HAProxy behind converge's back.
    node.haproxy.command("set server web/web-s1 state maint");
    let outcome = node.apply(&[Slot::To(b1.port()), Slot::To(b2.port())], "");
    assert_eq!(
        outcome,
        Outcome::Applied {
            reload: ReloadOutcome::Reloaded
        },
        "the runtime state was not the live file's, so the file is reloaded"
    );
    wait::until(DEADLINE, "a new worker", || {
        node.haproxy.worker_pid().is_some_and(|w| Some(w) != worker)
    })
    .expect("reloaded");
    node.wait_reached(&["b1", "b2"]);
}

#[test]
fn with_haproxy_stopped_the_files_wait_for_its_start() {
    let (b1, b2, _b3) = backends();
    let mut node = Node::start(&[Slot::To(b1.port()), Slot::Empty]);
    node.haproxy.stop();
    let outcome = node.apply(&[Slot::To(b1.port()), Slot::To(b2.port())], "");
    assert_eq!(
        outcome,
        Outcome::Applied {
            reload: ReloadOutcome::NotRunning
        }
    );
}

/// A candidate the validator rejects after the runtime API already gave
/// HAProxy its servers (they go out while the validator runs): HAProxy is
/// reloaded on the live file, which stays as it was.
///
/// `haproxy -c` does not reject a membership-only change of a file it
/// accepted, so the rejection comes from a stand-in named for what it is:
/// a `haproxy` script first on `PATH` that refuses candidates naming one
/// backend's port and runs the real haproxy for everything else. `PATH`
/// is put back, and the script deleted, before the test ends.
#[test]
fn a_rejected_candidate_undoes_the_runtime_update() {
    let (b1, b2, _b3) = backends();
    let node = Node::start(&[Slot::To(b1.port()), Slot::Empty]);
    node.wait_reached(&["b1"]);
    let (before, live, worker) = (node.servers(), node.live(), node.haproxy.worker_pid());

    let stand_in = tempfile::tempdir().expect("tempdir");
    let script = stand_in.path().join("haproxy");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nif [ \"$1\" = -c ] && grep -q ':{} ' \"$3\"; then\n  \
             echo '[ALERT] (1) : refused by the test stand-in' >&2; exit 1\nfi\n\
             exec /usr/sbin/haproxy \"$@\"\n",
            b2.port()
        ),
    )
    .expect("write stand-in");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut with_stand_in = vec![stand_in.path().to_path_buf()];
    with_stand_in.extend(std::env::split_paths(&path));
    std::env::set_var("PATH", std::env::join_paths(with_stand_in).expect("PATH"));
    let set = set(
        node.root.path(),
        config(
            node.root.path(),
            node.front,
            &[Slot::To(b1.port()), Slot::To(b2.port())],
            "",
        ),
    );
    let report = apply(&set, &ApplyOptions::default());
    std::env::set_var("PATH", path);
    drop(stand_in);

    let report = report.expect("apply");
    let Outcome::Rejected { error } = &report.bundle("haproxy").expect("bundle").outcome else {
        panic!("expected a rejection:\n{report}");
    };
    assert_eq!(node.live(), live, "the live file is untouched");
    wait::until(
        DEADLINE,
        "HAProxy to run the live file's servers again",
        || node.servers() == before,
    )
    .unwrap_or_else(|e| panic!("{e}: {:?} against {before:?}", node.servers()));
    assert_ne!(node.haproxy.worker_pid(), worker, "by a reload");
    node.wait_reached(&["b1"]);
    assert!(error.contains("refused by the test stand-in"), "{error}");
    assert!(
        error.contains("undone by reloading the live files"),
        "{error}"
    );
}

/// `show servers state web` after a reload of the file on disk equals
/// what ran before it: the runtime API left HAProxy as the file says.
fn reload_changes_nothing(node: Node) -> Node {
    let (before, worker) = (node.servers(), node.haproxy.worker_pid());
    let mut haproxy = node.haproxy;
    haproxy.reload().expect("reload");
    let node = Node { haproxy, ..node };
    assert_ne!(node.haproxy.worker_pid(), worker, "reloaded");
    // Checks of the new worker start from the same state as the runtime
    // API started them, so only names, addresses, maintenance, weights
    // and whether checks run are compared.
    assert_eq!(node.servers(), before, "config:\n{}", node.live());
    node
}

#[test]
fn an_instance_beyond_the_slots_joins_and_leaves_without_a_reload() {
    let (b1, b2, _b3) = backends();
    let node = Node::start(&[Slot::To(b1.port())]);
    node.wait_reached(&["b1"]);
    let worker = node.haproxy.worker_pid();

    let outcome = node.apply(&[Slot::To(b1.port()), Slot::Own("web-2:n1", b2.port())], "");
    assert_eq!(outcome, Outcome::RuntimeUpdated { servers: 1 });
    node.wait_reached(&["b1", "b2"]);
    assert_eq!(node.haproxy.worker_pid(), worker, "no reload");
    assert!(
        node.servers()
            .iter()
            .any(|s| s.starts_with("web-2:n1 ") && s.ends_with("check=6")),
        "its checks run: {:?}",
        node.servers()
    );
    let node = reload_changes_nothing(node);
    node.wait_reached(&["b1", "b2"]);

    // It leaves again, now a server the file gave HAProxy at its reload.
    let worker = node.haproxy.worker_pid();
    let outcome = node.apply(&[Slot::To(b1.port())], "");
    assert_eq!(outcome, Outcome::RuntimeUpdated { servers: 1 });
    node.wait_reached(&["b1"]);
    assert_eq!(node.haproxy.worker_pid(), worker, "no reload");
    reload_changes_nothing(node).wait_reached(&["b1"]);
}

/// A node whose only serving server holds the one request a client sent
/// through HAProxy, unanswered.
fn node_with_a_held_request(
    held: &Held,
) -> (
    Node,
    std::thread::JoinHandle<Option<String>>,
    std::net::TcpStream,
) {
    let node = Node::start(&[Slot::Empty, Slot::Own("held:n1", held.port())]);
    let front = node.front;
    let client = std::thread::spawn(move || get(front));
    let conn = held.request();
    (node, client, conn)
}

fn in_maintenance(node: &Node, server: &str) -> bool {
    node.servers()
        .iter()
        .any(|l| l.starts_with(&format!("{server} ")) && l.contains("maint=true"))
}

#[test]
fn a_leaving_server_is_deleted_once_its_last_request_is_answered() {
    let (b1, _b2, _b3) = backends();
    let held = Held::start();
    let (node, client, conn) = node_with_a_held_request(&held);
    let worker = node.haproxy.worker_pid();
    let outcome = std::thread::scope(|s| {
        // The request is answered only once the server takes no new ones.
        let answerer = s.spawn(|| {
            wait::until(DEADLINE, "held:n1 in maintenance", || {
                in_maintenance(&node, "held:n1")
            })
            .expect("maintenance first");
            answer(conn, "held");
        });
        let outcome = node.apply(&[Slot::To(b1.port())], "");
        answerer.join().expect("answerer");
        outcome
    });
    assert_eq!(outcome, Outcome::RuntimeUpdated { servers: 2 });
    assert_eq!(client.join().expect("client").as_deref(), Some("held"));
    assert_eq!(node.haproxy.worker_pid(), worker, "no reload");
    node.wait_reached(&["b1"]);
    reload_changes_nothing(node);
}

#[test]
fn a_server_that_does_not_drain_in_time_is_reloaded_out_and_its_request_finishes() {
    let (b1, _b2, _b3) = backends();
    let held = Held::start();
    let (node, client, conn) = node_with_a_held_request(&held);
    let worker = node.haproxy.worker_pid();
    let candidate = config(node.root.path(), node.front, &[Slot::To(b1.port())], "").replace(
        "# converge: runtime-api",
        "# converge: runtime-api drain=300ms then=reload",
    );
    let outcome = node.apply_config(candidate);
    assert_eq!(
        outcome,
        Outcome::Applied {
            reload: ReloadOutcome::Reloaded
        },
        "del server refused while the request runs: a reload instead"
    );
    wait::until(DEADLINE, "a new worker", || {
        node.haproxy.worker_pid().is_some_and(|w| Some(w) != worker)
    })
    .expect("reloaded");
    node.wait_reached(&["b1"]);
    // The old worker kept the request, as on any reload.
    answer(conn, "held");
    assert_eq!(client.join().expect("client").as_deref(), Some("held"));
    reload_changes_nothing(node);
}

#[test]
fn a_drain_that_times_out_may_shut_the_sessions_down_instead() {
    let (b1, _b2, _b3) = backends();
    let held = Held::start();
    let (node, client, _conn) = node_with_a_held_request(&held);
    let worker = node.haproxy.worker_pid();
    let policy = |cfg: String| {
        cfg.replace(
            "# converge: runtime-api",
            "# converge: runtime-api drain=200ms then=shutdown",
        )
    };
    // The policy is part of the file: once live, a change under it.
    let live = policy(node.live());
    std::fs::write(node.haproxy.config(), &live).expect("write");
    let mut haproxy = node.haproxy;
    haproxy.reload().expect("reload");
    let node = Node { haproxy, ..node };
    let (client, conn) = {
        // The reload's old worker holds the first request; hold a new one.
        drop(client);
        let front = node.front;
        (std::thread::spawn(move || get(front)), held.request())
    };
    let worker_now = node.haproxy.worker_pid();
    assert_ne!(worker_now, worker);
    let outcome = node.apply_config(policy(config(
        node.root.path(),
        node.front,
        &[Slot::To(b1.port())],
        "",
    )));
    assert_eq!(outcome, Outcome::RuntimeUpdated { servers: 2 });
    assert_eq!(node.haproxy.worker_pid(), worker_now, "no reload");
    assert_eq!(client.join().expect("client"), None, "its session was shut");
    drop(conn);
    node.wait_reached(&["b1"]);
}

/// A candidate adding a dynamic server with an option `haproxy -c`
/// refuses: the command went out while the validator ran (HAProxy may
/// refuse it too), the file stays, and HAProxy runs the live file's
/// servers again.
#[test]
fn a_refused_dynamic_server_never_reaches_the_running_config() {
    let (b1, b2, _b3) = backends();
    let node = Node::start(&[Slot::To(b1.port())]);
    node.wait_reached(&["b1"]);
    let (before, live) = (node.servers(), node.live());
    let candidate = config(
        node.root.path(),
        node.front,
        &[Slot::To(b1.port()), Slot::Own("web-2:n1", b2.port())],
        "",
    )
    .replace(
        &format!("web-2:n1 127.0.0.1:{} check inter 500ms", b2.port()),
        &format!(
            "web-2:n1 127.0.0.1:{} check inter 500ms weight 9999",
            b2.port()
        ),
    );
    let report = apply(&set(node.root.path(), candidate), &ApplyOptions::default()).expect("apply");
    let Outcome::Rejected { error } = &report.bundle("haproxy").expect("bundle").outcome else {
        panic!("expected a rejection:\n{report}");
    };
    assert!(error.contains("weight"), "{error}");
    assert_eq!(node.live(), live, "the live file is untouched");
    wait::until(DEADLINE, "HAProxy to run the live file's servers", || {
        node.servers() == before
    })
    .unwrap_or_else(|e| panic!("{e}: {:?} against {before:?}", node.servers()));
    node.wait_reached(&["b1"]);
}
