//! PgBouncer follows the Postgres primary, end to end: two real PostgreSQL
//! clusters A and B, a real `consul agent -dev` holding their registrations
//! (Patroni-style `primary`/`replica` tags), a real PgBouncer on the file
//! converge renders, and `converge run --consul` as a child process.
//!
//! What is observed is what an application sees: `psql` through PgBouncer
//! and `inet_server_port()`, which names the cluster the query ran on.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{RunningDaemon, Workspace};
use converge_testkit::consul::ConsulAgent;
use converge_testkit::pgbouncer::Pgbouncer;
use converge_testkit::postgres::{give_to_postgres, psql_command, Postgres};
use converge_testkit::{free_port, wait, Child};

/// Generous: two cores shared with other suites.
const DEADLINE: Duration = Duration::from_secs(60);

/// The manifest: one node, `app` following the primary of service
/// `postgres`, PgBouncer on 127.0.0.1:`port` with trust auth (users must
/// still be listed in the auth file), its files owned by `postgres` so
/// PgBouncer can re-read them after dropping root. `reload` is the YAML of
/// both targets' reload action.
fn site(port: u16, reload: &str) -> String {
    format!(
        "nodes:\n  lb1: {{}}\n\
         pgbouncer:\n  listen_addr: 127.0.0.1\n  listen_port: {port}\n  auth_type: trust\n\
         \x20 admin_users: [converge]\n  default_pool_size: 5\n\
         \x20 users:\n    app: {{file: secrets/app}}\n    converge: {{file: secrets/converge}}\n\
         databases:\n  app:\n    service: postgres\n    role: primary\n    pool_mode: transaction\n\
         targets:\n\
         \x20 pgbouncer:\n    template: pgbouncer.ini.tera\n    destination: /etc/pgbouncer/pgbouncer.ini\n\
         \x20   owner: postgres\n    mode: \"0640\"\n    validate: pgbouncer\n    bundle: pgbouncer\n{reload}\
         \x20 pgbouncer_userlist:\n    template: userlist.txt.tera\n    destination: /etc/pgbouncer/userlist.txt\n\
         \x20   owner: postgres\n    mode: \"0600\"\n    validate: none\n    bundle: pgbouncer\n    secret: true\n{reload}"
    )
}

/// Both targets SIGHUP the pid in PgBouncer's pidfile.
const SIGHUP: &str =
    "    reload:\n      signal: {pidfile: /run/postgresql/pgbouncer.pid, signal: SIGHUP}\n";

/// Consul, clusters A and B, the daemon and PgBouncer.
struct Stack {
    consul: ConsulAgent,
    a: Postgres,
    b: Postgres,
    ws: Workspace,
    daemon: RunningDaemon,
    pgbouncer: Option<Pgbouncer>,
    port: u16,
}

impl Stack {
    /// Everything up, A primary, PgBouncer serving the rendered file.
    fn start(reload: &str) -> Self {
        let consul = ConsulAgent::start().expect("consul agent -dev");
        let a = Postgres::start().expect("cluster A");
        let b = Postgres::start().expect("cluster B");
        consul
            .register_service_with_ttl("pg-a", "postgres", a.port(), &["primary"])
            .expect("register A");
        consul
            .register_service_with_ttl("pg-b", "postgres", b.port(), &["replica"])
            .expect("register B");
        let port = free_port();
        let ws = Workspace::custom(&site(port, reload), "services: {}\n");
        ws.write("manifests/secrets/app", "");
        ws.write("manifests/secrets/converge", "");
        // PgBouncer runs as `postgres`: it must reach the files under the
        // root and write its pidfile and socket there.
        for dir in [ws.dir.path(), &ws.root()] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        let run = ws.root().join("run/postgresql");
        std::fs::create_dir_all(&run).expect("run dir");
        give_to_postgres(&run).expect("chown run dir");
        let url = consul.http_url();
        let daemon = ws.run_daemon(&["--consul", &url]);
        let mut s = Self {
            consul,
            a,
            b,
            ws,
            daemon,
            pgbouncer: None,
            port,
        };
        let a_port = s.a.port();
        s.wait_config(
            |c| c.contains(&format!("port={a_port} ")),
            "app → A rendered",
        );
        s.pgbouncer = Some(
            Pgbouncer::start(&s.config_path(), port)
                .unwrap_or_else(|e| panic!("{e}\nconfig:\n{}\n{}", s.config(), s.ws.daemon_log())),
        );
        s
    }

    fn config_path(&self) -> std::path::PathBuf {
        self.ws.root().join("etc/pgbouncer/pgbouncer.ini")
    }

    fn config(&self) -> String {
        std::fs::read_to_string(self.config_path()).unwrap_or_default()
    }

    fn wait_config(&self, cond: impl Fn(&str) -> bool, what: &str) {
        wait::until(DEADLINE, what, || cond(&self.config())).unwrap_or_else(|e| {
            panic!(
                "{e}\nconfig:\n{}\ndaemon log:\n{}",
                self.config(),
                self.ws.daemon_log()
            )
        });
    }

    fn pgbouncer(&self) -> &Pgbouncer {
        self.pgbouncer.as_ref().expect("pgbouncer started")
    }

    /// The port of the cluster a new connection through PgBouncer lands
    /// on, or the error a client would see.
    fn landing(&self) -> Result<u16, String> {
        self.pgbouncer()
            .sql("app", "app", "select inet_server_port()")
            .and_then(|s| s.parse().map_err(|e| format!("`{s}`: {e}")))
    }

    /// Moves the primary tag, Patroni-style: the old primary gives it up
    /// first, then the new one takes it.
    fn switch(&self, to_b: bool) {
        let (old, new) = if to_b {
            ("pg-a", "pg-b")
        } else {
            ("pg-b", "pg-a")
        };
        let port = |id: &str| {
            if id == "pg-a" {
                self.a.port()
            } else {
                self.b.port()
            }
        };
        self.consul
            .register_service_with_ttl(old, "postgres", port(old), &["replica"])
            .expect("demote");
        self.consul
            .register_service_with_ttl(new, "postgres", port(new), &["primary"])
            .expect("promote");
    }

    fn wait_landing(&self, port: u16, what: &str) {
        wait::until(DEADLINE, what, || self.landing() == Ok(port)).unwrap_or_else(|e| {
            panic!(
                "{e}\nlast: {:?}\nconfig:\n{}\ndaemon log:\n{}\npgbouncer log:\n{}",
                self.landing(),
                self.config(),
                self.ws.daemon_log(),
                self.pgbouncer().log()
            )
        });
    }

    fn diagnostics(&self) -> String {
        format!(
            "config:\n{}\ndaemon log:\n{}\npgbouncer log:\n{}",
            self.config(),
            self.ws.daemon_log(),
            self.pgbouncer().log()
        )
    }
}

#[test]
fn moving_the_primary_tag_moves_pgbouncer_to_the_new_primary() {
    let s = Stack::start(SIGHUP);
    assert_eq!(s.landing(), Ok(s.a.port()), "{}", s.diagnostics());

    s.switch(true);
    s.wait_landing(s.b.port(), "psql through PgBouncer to land on B");
    let cfg = s.config();
    assert!(cfg.contains(&format!("port={} ", s.b.port())), "{cfg}");
    assert!(!cfg.contains(&format!("port={} ", s.a.port())), "{cfg}");

    // And back: the switch is not a one-off.
    s.switch(false);
    s.wait_landing(s.a.port(), "psql through PgBouncer to land on A again");
    assert_eq!(s.daemon.status()["source_error"], serde_json::Value::Null);
}
