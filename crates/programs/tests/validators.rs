//! Every validator against the real program, with a good and a broken
//! candidate each: `haproxy -c`, `keepalived -t` in a scratch network
//! namespace, PgBouncer's trial start, and argv commands.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use converge_model::manifest::Validator;
use converge_model::{ReloadAction, RenderedFile};
use converge_testkit::process::{pid_alive, read_pidfile};
use converge_testkit::wait;

use converge_programs::validate::{
    validate, validate_within, Candidate, CheckFailure, ValidateError,
};

/// A rendered file for `destination`, staged at `staged` (written here).
fn staged(validator: Validator, destination: &Path, staged: &Path, bytes: &str) -> RenderedFile {
    if let Some(parent) = staged.parent() {
        fs::create_dir_all(parent).expect("mkdir staged");
    }
    fs::write(staged, bytes).expect("write staged");
    RenderedFile {
        target: "test_target".to_string(),
        destination: destination.to_path_buf(),
        bytes: bytes.as_bytes().to_vec(),
        mode: 0o644,
        owner: None,
        group: None,
        validate: validator,
        reload: ReloadAction::None,
        bundle: "test_target".to_string(),
        secret: false,
        backups: 0,
    }
}

/// Validates one file with no siblings.
fn check(
    validator: Validator,
    text: &str,
) -> (tempfile::TempDir, PathBuf, Result<(), ValidateError>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("stage/candidate.conf");
    let file = staged(validator, &dir.path().join("etc/live.conf"), &path, text);
    let result = validate(&Candidate {
        file: &file,
        staged: &path,
        siblings: &[],
    });
    (dir, path, result)
}

fn rejected(result: Result<(), ValidateError>) -> ValidateError {
    let err = result.expect_err("the candidate must be refused");
    assert!(
        matches!(err.failure, CheckFailure::Rejected(_)),
        "expected a refusal, got: {err}"
    );
    err
}

// ---------------------------------------------------------------- haproxy

const HAPROXY_GOOD: &str = "global
    maxconn 100
defaults
    mode http
    timeout connect 1s
    timeout client 5s
    timeout server 5s
frontend fe
    bind 127.0.0.1:18080
    default_backend be
backend be
    server s1 127.0.0.1:9001 check
";

#[test]
fn haproxy_accepts_a_good_config() {
    let (_dir, _, result) = check(Validator::Haproxy, HAPROXY_GOOD);
    result.expect("haproxy accepts");
}

#[test]
fn haproxy_refusal_names_the_line() {
    let broken = HAPROXY_GOOD.replace(
        "    default_backend be\n",
        "    default_backend be\n    bogus_keyword on\n",
    );
    let (dir, path, result) = check(Validator::Haproxy, &broken);
    let err = rejected(result);
    assert_eq!(err.target, "test_target");
    assert!(
        err.command.starts_with("/usr/sbin/haproxy -c -f ")
            || err.command.contains("haproxy -c -f "),
        "{}",
        err.command
    );
    assert!(
        err.command.ends_with(&path.display().to_string()),
        "{}",
        err.command
    );
    // The line is named in the destination's terms: the staged file is
    // gone by the time anyone reads this.
    let line = format!(
        "[(candidate) {}:11]",
        dir.path().join("etc/live.conf").display()
    );
    assert!(err.output.contains(&line), "no {line} in:\n{}", err.output);
    assert!(
        !err.output.contains(&*path.to_string_lossy()),
        "{}",
        err.output
    );
    assert!(
        err.output.contains("unknown keyword 'bogus_keyword'"),
        "{}",
        err.output
    );
    assert!(!err.output.contains("[NOTICE]"), "{}", err.output);
    assert_eq!(
        err.failure,
        CheckFailure::Rejected("exit status 1".to_string())
    );
    let shown = err.to_string();
    assert!(shown.starts_with("target test_target: `"), "{shown}");
    assert!(
        shown.contains("rejected the candidate (exit status 1):\n    [ALERT]"),
        "{shown}"
    );
}

#[test]
fn haproxy_refuses_a_missing_backend() {
    let broken = HAPROXY_GOOD.replace("default_backend be", "default_backend nowhere");
    let (_dir, _, result) = check(Validator::Haproxy, &broken);
    let err = rejected(result);
    assert!(err.output.contains("nowhere"), "{}", err.output);
}

// ------------------------------------------------------------- keepalived

/// Names interfaces this machine does not have, in every place keepalived
/// looks them up, and uses a track script (script security on).
const KEEPALIVED_GOOD: &str = r#"global_defs {
    router_id lb1
    enable_script_security
    script_user root
}

vrrp_script chk_haproxy {
    script "/bin/true"
    interval 2
}

vrrp_instance VI_1 {
    state BACKUP
    interface eth7
    virtual_router_id 51
    priority 100
    advert_int 1
    unicast_src_ip 192.0.2.1
    unicast_peer {
        192.0.2.2
    }
    virtual_ipaddress {
        192.0.2.10/24 dev eth8
    }
    track_interface {
        eth9 weight -10
    }
    track_script {
        chk_haproxy
    }
    notify_master "/bin/true"
}
"#;

fn host_has(iface: &str) -> bool {
    Path::new("/sys/class/net").join(iface).exists()
}

#[test]
fn keepalived_accepts_a_config_for_interfaces_this_machine_lacks() {
    for iface in ["eth7", "eth8", "eth9"] {
        assert!(
            !host_has(iface),
            "this test needs a machine without {iface}"
        );
    }
    let (_dir, path, result) = check(Validator::Keepalived, KEEPALIVED_GOOD);
    result.expect("keepalived accepts the config in the scratch namespace");
    // Not vacuous: outside the namespace the same file is refused.
    let plain = std::process::Command::new("/usr/sbin/keepalived")
        .args(["-t", "-f"])
        .arg(&path)
        .output()
        .expect("run keepalived");
    assert!(
        !plain.status.success(),
        "keepalived -t passed without the namespace"
    );
    assert!(String::from_utf8_lossy(&plain.stderr).contains("eth7"));
    // And nothing was left behind on the host.
    for iface in ["eth7", "eth8", "eth9"] {
        assert!(!host_has(iface), "{iface} leaked into the host namespace");
    }
}

#[test]
fn keepalived_refuses_an_unknown_keyword() {
    let broken = KEEPALIVED_GOOD.replace(
        "    advert_int 1\n",
        "    advert_int 1\n    bogus_keyword 7\n",
    );
    let (dir, _, result) = check(Validator::Keepalived, &broken);
    let err = rejected(result);
    let expected = format!(
        "((candidate) {}: Line 18) Unknown keyword 'bogus_keyword'",
        dir.path().join("etc/live.conf").display()
    );
    assert!(
        err.output.contains(&expected),
        "no `{expected}` in:\n{}",
        err.output
    );
    assert!(
        err.command.contains("interfaces: eth7, eth8, eth9"),
        "{}",
        err.command
    );
}

#[test]
fn keepalived_refuses_unbalanced_braces_and_bad_values() {
    let unclosed = KEEPALIVED_GOOD.trim_end().trim_end_matches('}');
    let err = rejected(check(Validator::Keepalived, unclosed).2);
    assert!(err.output.contains("missing '}'"), "{}", err.output);

    let bad_vrid = KEEPALIVED_GOOD.replace("virtual_router_id 51", "virtual_router_id 300");
    let err = rejected(check(Validator::Keepalived, &bad_vrid).2);
    assert!(err.output.contains("outside range"), "{}", err.output);

    let missing_script = KEEPALIVED_GOOD.replace("chk_haproxy\n    }", "chk_nothing\n    }");
    let err = rejected(check(Validator::Keepalived, &missing_script).2);
    assert!(
        err.output.contains("chk_nothing not found"),
        "{}",
        err.output
    );
}

#[test]
fn keepalived_refuses_what_its_exit_status_lets_through() {
    // keepalived -t exits 0 for a missing include and for an empty file.
    let with_include = format!("include /nonexistent/converge-test/*.conf\n{KEEPALIVED_GOOD}");
    let err = rejected(check(Validator::Keepalived, &with_include).2);
    assert!(
        err.output.contains("Config files missing"),
        "{}",
        err.output
    );

    let err = rejected(check(Validator::Keepalived, "# nothing here\n\n").2);
    assert!(
        err.output.contains("no configuration at all"),
        "{}",
        err.output
    );
}

#[test]
fn keepalived_refuses_interface_names_before_running_anything() {
    let broken = KEEPALIVED_GOOD.replace("interface eth7", "interface eth7;reboot");
    let err = rejected(check(Validator::Keepalived, &broken).2);
    assert!(
        err.output
            .starts_with("line 14: interface name `eth7;reboot`"),
        "{}",
        err.output
    );
    assert_eq!(
        err.failure,
        CheckFailure::Rejected("refused before running keepalived".to_string())
    );
}

// -------------------------------------------------------------- pgbouncer

/// A candidate whose own listener, socket dir and pidfile could not be
/// used on this machine: it only passes if the overrides take effect.
fn pgbouncer_ini(auth_file: &Path, taken_port: u16) -> String {
    format!(
        ";; test candidate
[databases]
app = host=127.0.0.1 port=5432 dbname=app pool_mode=transaction

[pgbouncer]
listen_addr = 192.0.2.123
listen_port = {taken_port}
unix_socket_dir = /nonexistent/converge-test
pidfile = /nonexistent/converge-test/pgbouncer.pid
auth_type = md5
auth_file = {}
pool_mode = session
max_client_conn = 100
default_pool_size = 20
",
        auth_file.display()
    )
}

struct PgBundle {
    dir: tempfile::TempDir,
    ini: RenderedFile,
    ini_staged: PathBuf,
    siblings: Vec<(PathBuf, PathBuf)>,
    // Held so the candidate's own port is taken while the check runs.
    _listener: std::net::TcpListener,
}

/// A config and a userlist bundle: the userlist's final destination does
/// not exist; its candidate is staged elsewhere.
fn pg_bundle(edit: impl Fn(String) -> String, userlist: &str) -> PgBundle {
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = listener.local_addr().expect("addr").port();
    let userlist_dest = dir.path().join("etc/pgbouncer/userlist.txt");
    let userlist_staged = dir.path().join("stage/.userlist.txt.converge-new");
    let ini_dest = dir.path().join("etc/pgbouncer/pgbouncer.ini");
    let ini_staged = dir.path().join("stage/.pgbouncer.ini.converge-new");
    let text = edit(pgbouncer_ini(&userlist_dest, taken));
    let ini = staged(Validator::Pgbouncer, &ini_dest, &ini_staged, &text);
    let _userlist = staged(Validator::None, &userlist_dest, &userlist_staged, userlist);
    PgBundle {
        siblings: vec![
            (ini_dest, ini_staged.clone()),
            (userlist_dest, userlist_staged),
        ],
        dir,
        ini,
        ini_staged,
        _listener: listener,
    }
}

const USERLIST: &str = "\"app\" \"md5e1a5d8b4a5e1c1f7c8a0c3e4f5a6b7c8\"\n";

impl PgBundle {
    fn check(&self) -> Result<(), ValidateError> {
        validate(&Candidate {
            file: &self.ini,
            staged: &self.ini_staged,
            siblings: &self.siblings,
        })
    }
}

#[test]
fn pgbouncer_accepts_a_good_config_with_its_staged_userlist() {
    let b = pg_bundle(|s| s, USERLIST);
    assert!(
        !b.siblings[1].0.exists(),
        "the live userlist must not exist for this test"
    );
    b.check().expect("pgbouncer comes up on the candidate");
    // The check stopped and reaped the PgBouncer it started: nothing this
    // thread spawned is left.
    let children =
        fs::read_to_string("/proc/thread-self/children").expect("this thread's children");
    assert_eq!(
        children.trim(),
        "",
        "the trial PgBouncer outlived the check"
    );
    assert!(!b.dir.path().join("nonexistent").exists());
}

#[test]
fn pgbouncer_uses_the_staged_userlist_not_the_live_path() {
    // Without the sibling the config points at a userlist that does not
    // exist; PgBouncer still starts but logs an ERROR, which is refused.
    let b = pg_bundle(|s| s, USERLIST);
    let alone = validate(&Candidate {
        file: &b.ini,
        staged: &b.ini_staged,
        siblings: &[],
    });
    let err = rejected(alone);
    assert!(
        err.output.contains("could not open auth_file"),
        "{}",
        err.output
    );
    assert_eq!(
        err.failure,
        CheckFailure::Rejected("it started, but logged errors".to_string())
    );

    // A broken staged userlist is refused: its contents were read.
    let b = pg_bundle(|s| s, "this is not a userlist\n\"unterminated\n");
    let err = rejected(b.check());
    assert!(err.output.contains("broken auth file"), "{}", err.output);
    assert!(
        err.command
            .contains(&format!("auth_file = {}", b.siblings[1].1.display())),
        "{}",
        err.command
    );
}

#[test]
fn pgbouncer_refuses_a_bad_value_with_file_and_line() {
    let b = pg_bundle(
        |s| s.replace("pool_mode = session", "pool_mode = sideways"),
        USERLIST,
    );
    let err = rejected(b.check());
    let expected = format!(
        "ERROR invalid value \"sideways\" for parameter pool_mode in configuration ((candidate) {}:12)",
        b.ini.destination.display()
    );
    assert!(
        err.output.contains(&expected),
        "no `{expected}` in:\n{}",
        err.output
    );
    assert!(
        err.output.contains("FATAL cannot load config file"),
        "{}",
        err.output
    );
    assert!(
        !err.output.contains("check.ini"),
        "wrapper noise kept:\n{}",
        err.output
    );
}

#[test]
fn pgbouncer_refuses_unknown_keys_and_bad_database_lines() {
    let b = pg_bundle(
        |s| s.replace("max_client_conn = 100", "max_clinet_conn = 100"),
        USERLIST,
    );
    let err = rejected(b.check());
    assert!(
        err.output
            .contains("unknown parameter: pgbouncer/max_clinet_conn"),
        "{}",
        err.output
    );

    let mut b = pg_bundle(|s| s.replace("dbname=app", "dbname=app bogus=1"), USERLIST);
    b.ini.owner = Some("nobody".to_string());
    let err = rejected(b.check());
    if nix::unistd::geteuid().is_root() {
        assert!(
            err.command.contains(" -u nobody "),
            "runs as the target's owner: {}",
            err.command
        );
    }
    assert!(
        err.output
            .contains("unrecognized connection parameter: bogus"),
        "{}",
        err.output
    );
}

// ---------------------------------------------------------------- command

fn argv(args: &[&str]) -> Validator {
    Validator::Command(args.iter().map(|s| s.to_string()).collect())
}

#[test]
fn command_substitutes_every_placeholder() {
    let (_dir, _, result) = check(argv(&["grep", "-q", "listen", "{}"]), "listen here\n");
    result.expect("grep finds the word");
    let (_dir, _, result) = check(argv(&["cmp", "--", "{}", "{}"]), "x\n");
    result.expect("both placeholders are the same file");
    let (_dir, _, result) = check(argv(&["test", "--file={}", "=", "--file={}"]), "x\n");
    result.expect("placeholders inside arguments");
}

#[test]
fn command_refusal_carries_the_output() {
    let (dir, path, result) = check(
        argv(&[
            "sh",
            "-c",
            "echo \"bad line 3 in $1\" >&2; exit 3",
            "sh",
            "{}",
        ]),
        "x\n",
    );
    let err = rejected(result);
    assert_eq!(
        err.failure,
        CheckFailure::Rejected("exit status 3".to_string())
    );
    assert_eq!(
        err.output,
        format!(
            "bad line 3 in (candidate) {}",
            dir.path().join("etc/live.conf").display()
        )
    );
    assert!(
        err.command.ends_with(&format!("sh {}", path.display())),
        "{}",
        err.command
    );
}

#[test]
fn command_is_killed_with_its_children_at_the_deadline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pidfile = dir.path().join("bg.pid");
    let path = dir.path().join("c.conf");
    let script = format!("sleep 60 & echo $! > {}; wait", pidfile.display());
    let file = staged(argv(&["sh", "-c", &script]), &path, &path, "x");
    let err = validate_within(
        &Candidate {
            file: &file,
            staged: &path,
            siblings: &[],
        },
        Duration::from_millis(500),
    )
    .expect_err("times out");
    assert_eq!(
        err.failure,
        CheckFailure::TimedOut(Duration::from_millis(500))
    );
    let bg = read_pidfile(&pidfile).expect("background pid");
    wait::until(
        Duration::from_secs(2),
        "the validator's child to be gone",
        || !pid_alive(bg),
    )
    .expect("the whole process group was killed");
}

#[test]
fn command_that_cannot_run_is_not_an_acceptance() {
    let (_dir, _, result) = check(argv(&["/nonexistent/converge-validator", "{}"]), "x");
    let err = result.expect_err("refused");
    assert_eq!(err.failure, CheckFailure::NotRun);
    assert!(err.output.contains("No such file"), "{}", err.output);

    let (_dir, _, result) = check(argv(&[]), "x");
    assert_eq!(result.expect_err("refused").failure, CheckFailure::NotRun);
}

#[test]
fn none_accepts() {
    let (_dir, _, result) = check(Validator::None, "anything");
    result.expect("no check");
}
