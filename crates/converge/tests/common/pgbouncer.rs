//! The PgBouncer manifest and workspace the follow-the-primary tests
//! share: one node whose PgBouncer routes `app` to the primary of a Consul
//! service.

use std::os::unix::fs::PermissionsExt;

use converge_testkit::postgres::give_to_postgres;

use super::Workspace;

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
