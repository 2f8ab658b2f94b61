//! Settings a reload does not apply: a change to one of them takes effect
//! only when the program restarts, so the plan says "needs restart" rather
//! than letting a reload look like it applied everything.
//!
//! PgBouncer (checked on files validated with `pgbouncer`): the `[pgbouncer]`
//! keys PgBouncer 1.18 reports as `changeable = no` in `SHOW CONFIG`
//! (read from the real binary; in its source they carry `CF_NO_RELOAD`,
//! and a `RELOAD` silently keeps the old value). The file is read the way
//! PgBouncer's parser reads it ([`ini`](super::ini)),
//! keys case-insensitive, only the `[pgbouncer]` section counting. A key
//! appearing or disappearing is a change (its default may differ from the
//! value set).

use super::ini::section;

/// `[pgbouncer]` keys PgBouncer 1.18 applies only at startup.
pub const PGBOUNCER_RESTART_ONLY: &[&str] = &[
    "disable_pqexec",
    "job_name",
    "listen_addr",
    "listen_backlog",
    "listen_port",
    "pidfile",
    "pkt_buf",
    "resolv_conf",
    "so_reuseport",
    "unix_socket_dir",
    "unix_socket_group",
    "unix_socket_mode",
    "user",
];

/// The restart-only `[pgbouncer]` keys whose values differ between the
/// live file and the candidate, sorted; empty when there is no live file.
pub fn pgbouncer(live: Option<&[u8]>, candidate: &[u8]) -> Vec<String> {
    let Some(live) = live else {
        return Vec::new();
    };
    let (old, new) = (
        section(&String::from_utf8_lossy(live), "pgbouncer", true),
        section(&String::from_utf8_lossy(candidate), "pgbouncer", true),
    );
    PGBOUNCER_RESTART_ONLY
        .iter()
        .filter(|k| old.get(**k) != new.get(**k))
        .map(|k| k.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIVE: &str = "[databases]\napp = host=10.0.0.1 port=5432\n\
                        [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = 6432\n\
                        pidfile = /run/pgb.pid\ndefault_pool_size = 20\n";

    #[test]
    fn database_and_reloadable_changes_need_no_restart() {
        let new = LIVE
            .replace("10.0.0.1", "10.0.0.2")
            .replace("default_pool_size = 20", "default_pool_size = 30");
        assert!(pgbouncer(Some(LIVE.as_bytes()), new.as_bytes()).is_empty());
    }

    #[test]
    fn listen_and_pidfile_changes_need_a_restart() {
        let new = LIVE
            .replace("listen_port = 6432", "LISTEN_PORT = 6433")
            .replace("pidfile = /run/pgb.pid\n", "")
            + "unix_socket_dir = /tmp\n";
        assert_eq!(
            pgbouncer(Some(LIVE.as_bytes()), new.as_bytes()),
            ["listen_port", "pidfile", "unix_socket_dir"]
        );
    }

    #[test]
    fn only_the_pgbouncer_section_and_the_last_value_count() {
        let new = format!("{LIVE}listen_port = 6432\n[other]\nlisten_port = 1\n; user = x\n");
        assert!(pgbouncer(Some(LIVE.as_bytes()), new.as_bytes()).is_empty());
        assert!(pgbouncer(None, LIVE.as_bytes()).is_empty());
    }
}
