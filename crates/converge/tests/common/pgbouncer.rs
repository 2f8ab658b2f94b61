//! The PgBouncer manifest, workspace and stack the follow-the-primary
//! tests share: one node whose PgBouncer routes `app` to the primary of a
//! Consul service, and two real PostgreSQL clusters registered in a real
//! Consul agent.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use converge_testkit::consul::ConsulAgent;
use converge_testkit::patroni::PatroniCluster;
use converge_testkit::pgbouncer::Pgbouncer;
use converge_testkit::postgres::{give_to_postgres, Postgres};
use converge_testkit::{free_port, wait};

use super::{RunningDaemon, Workspace};

/// The manifest: one node, `app` following the primary of service
/// `postgres`, PgBouncer on 127.0.0.1:`port` with trust auth (users must
/// still be listed in the auth file), its files owned by `postgres` so
/// PgBouncer can re-read them after dropping root. `reload` is the YAML of
/// both targets' reload action.
pub fn site(port: u16, reload: &str) -> String {
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

/// [`site`] with the settings the example manifests use to follow a
/// Patroni primary (`server_login_retry`, `server_connect_timeout`,
/// `server_fast_close`), so the Patroni tests run PgBouncer configured as
/// a deployment that follows a Patroni primary would be.
pub fn patroni_site(port: u16, reload: &str) -> String {
    site(port, reload).replace(
        "  default_pool_size: 5\n",
        "  default_pool_size: 5\n  settings: {server_login_retry: 0.5, \
         server_connect_timeout: 3, server_fast_close: true}\n",
    )
}

/// What the Patroni tests start from: a Consul agent, a Patroni cluster
/// of service `postgres` registered in it, and a node following its
/// primary ([`patroni_site`]) with its daemon running; PgBouncer's port is
/// chosen, PgBouncer itself not started, since each test waits for its
/// own condition first.
pub struct PatroniNode {
    pub consul: ConsulAgent,
    pub cluster: PatroniCluster,
    pub port: u16,
    pub ws: Workspace,
    pub daemon: RunningDaemon,
}

impl PatroniNode {
    /// Starts it all; `reload` gives both targets' reload YAML for
    /// PgBouncer's port.
    pub fn start(reload: impl FnOnce(u16) -> String) -> Self {
        let consul = ConsulAgent::start().expect("consul agent -dev");
        let cluster = PatroniCluster::start(&consul, "postgres").expect("patroni cluster");
        let port = free_port();
        let ws = workspace(&patroni_site(port, &reload(port)), "services: {}\n");
        let daemon = ws.run_daemon_with_consul(&consul, &[]);
        Self {
            consul,
            cluster,
            port,
            ws,
            daemon,
        }
    }
}

/// Both targets SIGHUP the pid in PgBouncer's pidfile.
pub const SIGHUP: &str =
    "    reload:\n      signal: {pidfile: /run/postgresql/pgbouncer.pid, signal: SIGHUP}\n";

/// A workspace for `site` and `catalog` where PgBouncer, running as
/// `postgres`, reaches the files under the root and can write its pidfile
/// and socket there.
pub fn workspace(site: &str, catalog: &str) -> Workspace {
    let ws = Workspace::custom(site, catalog);
    ws.write("manifests/secrets/app", "");
    ws.write("manifests/secrets/converge", "");
    for dir in [ws.dir.path(), &ws.root()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let run = ws.root().join("run/postgresql");
    std::fs::create_dir_all(&run).expect("run dir");
    give_to_postgres(&run).expect("chown run dir");
    ws
}

/// Generous: two cores shared with other suites.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// How many clients of `db` wait in PgBouncer for a server connection
/// (`cl_waiting` of `SHOW POOLS`); 0 while the console cannot be asked.
pub fn waiting(pgbouncer: &Pgbouncer, db: &str) -> u32 {
    pgbouncer
        .show("converge", "SHOW POOLS")
        .unwrap_or_default()
        .iter()
        .filter(|pool| pool["database"] == db)
        .filter_map(|pool| pool["cl_waiting"].parse::<u32>().ok())
        .sum()
}

/// Consul, clusters A and B, the daemon and PgBouncer.
pub struct Stack {
    pub consul: ConsulAgent,
    pub a: Postgres,
    pub b: Postgres,
    pub ws: Workspace,
    pub daemon: RunningDaemon,
    pub pgbouncer: Option<Pgbouncer>,
}

impl Stack {
    /// Everything up, A primary, PgBouncer serving the rendered file.
    pub fn start(reload: &str) -> Self {
        Self::start_on(free_port(), reload, &[])
    }

    /// Same, with PgBouncer listening on `port` and extra daemon flags.
    pub fn start_on(port: u16, reload: &str, daemon_args: &[&str]) -> Self {
        Self::start_with(&site(port, reload), port, daemon_args)
    }

    /// Same, with the manifest `site` (PgBouncer on `port`).
    pub fn start_with(site: &str, port: u16, daemon_args: &[&str]) -> Self {
        let consul = ConsulAgent::start().expect("consul agent -dev");
        let a = Postgres::start().expect("cluster A");
        let b = Postgres::start().expect("cluster B");
        consul
            .register_service_with_ttl("pg-a", "postgres", a.port(), &["primary"])
            .expect("register A");
        consul
            .register_service_with_ttl("pg-b", "postgres", b.port(), &["replica"])
            .expect("register B");
        let ws = workspace(site, "services: {}\n");
        let daemon = ws.run_daemon_with_consul(&consul, daemon_args);
        let mut s = Self {
            consul,
            a,
            b,
            ws,
            daemon,
            pgbouncer: None,
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

    pub fn config_path(&self) -> std::path::PathBuf {
        self.ws.root().join("etc/pgbouncer/pgbouncer.ini")
    }

    pub fn config(&self) -> String {
        std::fs::read_to_string(self.config_path()).unwrap_or_default()
    }

    pub fn wait_config(&self, cond: impl Fn(&str) -> bool, what: &str) {
        self.ws
            .wait_file("etc/pgbouncer/pgbouncer.ini", DEADLINE, what, cond);
    }

    pub fn pgbouncer(&self) -> &Pgbouncer {
        self.pgbouncer.as_ref().expect("pgbouncer started")
    }

    /// The port of the cluster a new connection through PgBouncer lands
    /// on, or the error a client would see.
    pub fn landing(&self) -> Result<u16, String> {
        self.pgbouncer()
            .sql("app", "app", "select inet_server_port()")
            .and_then(|s| s.parse().map_err(|e| format!("`{s}`: {e}")))
    }

    /// Moves the primary tag, Patroni-style: the old primary gives it up
    /// first, then the new one takes it.
    pub fn switch(&self, to_b: bool) {
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

    pub fn wait_landing(&self, port: u16, what: &str) {
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

    pub fn diagnostics(&self) -> String {
        format!(
            "config:\n{}\ndaemon log:\n{}\npgbouncer log:\n{}",
            self.config(),
            self.ws.daemon_log(),
            self.pgbouncer().log()
        )
    }
}

/// Both targets reload over the admin console's unix socket, with PAUSE.
pub fn pause_reload(port: u16) -> String {
    pause_reload_within(port, 90)
}

/// Same, with PAUSE given up after `timeout_secs`.
pub fn pause_reload_within(port: u16, timeout_secs: u64) -> String {
    format!(
        "    reload:\n      pgbouncer: {{host: /run/postgresql, port: {port}, user: converge, \
         pause: true, timeout_secs: {timeout_secs}}}\n"
    )
}
