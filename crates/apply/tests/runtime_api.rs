//! Membership-only changes of a runtime-API backend against a real HAProxy
//! in master-worker mode: applied over the stats socket with no reload,
//! the file on disk kept equal to what runs, and every doubt (state that
//! differs from the live file, a structural change) answered with a
//! reload.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use converge_apply::{apply, ApplyOptions, Outcome, ReloadOutcome};
use converge_model::manifest::Validator;
use converge_model::{Layout, ReloadAction, RenderedFile, RenderedSet};
use converge_testkit::backend::{get, HttpBackend};
use converge_testkit::{free_port, wait, Haproxy};

const DEADLINE: Duration = Duration::from_secs(10);

/// A slot: an HTTP backend's port, or empty.
#[derive(Clone, Copy)]
enum Slot {
    To(u16),
    Empty,
}

struct Node {
    root: tempfile::TempDir,
    front: u16,
    haproxy: Haproxy,
}

impl Node {
    fn start(slots: &[Slot]) -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(root.path().join("run")).expect("mkdir run");
        std::fs::create_dir_all(root.path().join("etc/haproxy")).expect("mkdir etc");
        let front = free_port();
        let cfg = root.path().join("etc/haproxy/haproxy.cfg");
        std::fs::write(&cfg, config(root.path(), front, slots, "")).expect("write");
        let haproxy = Haproxy::start(
            &cfg,
            &root.path().join("run/haproxy.pid"),
            &root.path().join("run/admin.sock"),
        )
        .expect("haproxy starts");
        Self {
            root,
            front,
            haproxy,
        }
    }

    fn apply(&self, slots: &[Slot], extra: &str) -> Outcome {
        let set = set(
            self.root.path(),
            config(self.root.path(), self.front, slots, extra),
        );
        let report = apply(&set, &ApplyOptions::default()).expect("apply");
        assert!(
            report.ok(),
            "{report}\nhaproxy log:\n{}",
            self.haproxy.log()
        );
        assert_eq!(
            self.live(),
            String::from_utf8(set.files["haproxy"].bytes.clone()).expect("utf8"),
            "the file on disk is the candidate"
        );
        report.bundle("haproxy").expect("bundle").outcome.clone()
    }

    fn live(&self) -> String {
        std::fs::read_to_string(self.haproxy.config()).expect("config")
    }

    /// Backends reached by requests through HAProxy, once they are `want`.
    fn wait_reached(&self, want: &[&str]) {
        let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
        wait::until(DEADLINE, &format!("requests to reach {want:?}"), || {
            (0..8)
                .filter_map(|_| get(self.front))
                .collect::<BTreeSet<_>>()
                == want
        })
        .unwrap_or_else(|e| {
            panic!(
                "{e}\n{}\nconfig:\n{}",
                self.haproxy.command("show servers state web"),
                self.live()
            )
        });
    }

    /// `show servers state web` as name, address, port and whether in
    /// maintenance (HAProxy's forced-maintenance bit: a `disabled` slot
    /// also carries a "configured" bit the runtime API leaves alone).
    fn servers(&self) -> Vec<String> {
        let answer = self.haproxy.command("show servers state web");
        answer
            .lines()
            .filter(|l| !l.starts_with('#') && l.split_whitespace().count() > 5)
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let admin: u32 = f[6].parse().expect("srv_admin_state");
                format!("{} {}:{} maint={}", f[3], f[4], f[18], admin & 1 != 0)
            })
            .collect()
    }
}

fn config(root: &Path, front: u16, slots: &[Slot], extra: &str) -> String {
    let mut cfg = format!(
        "global\n    stats socket {}/run/admin.sock mode 600 level admin expose-fd listeners\n\
         defaults\n    mode http\n    timeout connect 1s\n    timeout client 5s\n    timeout server 5s\n\
         frontend fe\n    bind 127.0.0.1:{front}\n    default_backend web\n\
         backend web\n    balance roundrobin\n{extra}    # converge: runtime-api\n",
        root.display()
    );
    for (i, slot) in slots.iter().enumerate() {
        let (endpoint, disabled) = match slot {
            Slot::To(port) => (format!("127.0.0.1:{port}"), ""),
            Slot::Empty => ("127.0.0.1:1".to_string(), " disabled"),
        };
        cfg.push_str(&format!(
            "    server web-s{} {endpoint} check inter 500ms{disabled}\n",
            i + 1
        ));
    }
    cfg
}

fn set(root: &Path, bytes: String) -> RenderedSet {
    let layout = Layout::new(root);
    let file = RenderedFile {
        target: "haproxy".into(),
        destination: layout.path("/etc/haproxy/haproxy.cfg"),
        bytes: bytes.into_bytes(),
        mode: 0o644,
        owner: None,
        group: None,
        validate: Validator::Haproxy,
        reload: ReloadAction::Signal {
            pidfile: layout.path("/run/haproxy.pid"),
            signal: "SIGUSR2".into(),
        },
        bundle: "haproxy".into(),
        secret: false,
        backups: 2,
    };
    RenderedSet {
        node: "lb1".into(),
        layout,
        files: BTreeMap::from([("haproxy".to_string(), file)]),
        rejections: Vec::new(),
        warnings: Vec::new(),
        secrets: Vec::new(),
    }
}

fn backends() -> (HttpBackend, HttpBackend, HttpBackend) {
    let b = |n: &str| HttpBackend::start(n).expect("backend");
    (b("b1"), b("b2"), b("b3"))
}

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
