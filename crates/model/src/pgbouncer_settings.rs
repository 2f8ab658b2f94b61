//! `pgbouncer.settings`: any `[pgbouncer]` setting PgBouncer knows, passed
//! through to the rendered file, so an operator never forks the template
//! for one setting.
//!
//! Keys are checked here, at load, against the settings PgBouncer 1.18
//! reports in `SHOW CONFIG` (the version Debian 12 ships; the list is
//! [`KNOWN`]): a typo is refused with `file:line` and the nearest name,
//! instead of being found by the trial start of the rendered file. Keys
//! converge renders from its own fields (`listen_port`, `auth_file`, …) are
//! refused with the field to use, so a file never names a key twice.
//! Values are scalars written as they are; whether PgBouncer accepts them
//! (`server_login_retry = soon`) is what the trial start of the rendered
//! file checks, as for every other value. A value holding a line break
//! would add a line of its own and is refused.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

/// Every `[pgbouncer]` key of PgBouncer 1.18 (`SHOW CONFIG`, less
/// `conffile`, which only reports the config path), that converge does not
/// render from a field of its own.
pub const KNOWN: &[&str] = &[
    "application_name_add_host",
    "auth_hba_file",
    "auth_query",
    "auth_user",
    "autodb_idle_timeout",
    "client_idle_timeout",
    "client_login_timeout",
    "client_tls_ca_file",
    "client_tls_cert_file",
    "client_tls_ciphers",
    "client_tls_dheparams",
    "client_tls_ecdhcurve",
    "client_tls_key_file",
    "client_tls_protocols",
    "client_tls_sslmode",
    "disable_pqexec",
    "dns_max_ttl",
    "dns_nxdomain_ttl",
    "dns_zone_check_period",
    "idle_transaction_timeout",
    "ignore_startup_parameters",
    "job_name",
    "listen_backlog",
    "log_connections",
    "log_disconnections",
    "log_pooler_errors",
    "log_stats",
    "logfile",
    "max_db_connections",
    "max_packet_size",
    "max_user_connections",
    "min_pool_size",
    "pkt_buf",
    "pool_mode",
    "query_timeout",
    "query_wait_timeout",
    "reserve_pool_size",
    "reserve_pool_timeout",
    "resolv_conf",
    "sbuf_loopcnt",
    "server_check_delay",
    "server_check_query",
    "server_connect_timeout",
    "server_fast_close",
    "server_idle_timeout",
    "server_lifetime",
    "server_login_retry",
    "server_reset_query",
    "server_reset_query_always",
    "server_round_robin",
    "server_tls_ca_file",
    "server_tls_cert_file",
    "server_tls_ciphers",
    "server_tls_key_file",
    "server_tls_protocols",
    "server_tls_sslmode",
    "so_reuseport",
    "stats_period",
    "stats_users",
    "suspend_timeout",
    "syslog",
    "syslog_facility",
    "syslog_ident",
    "tcp_defer_accept",
    "tcp_keepalive",
    "tcp_keepcnt",
    "tcp_keepidle",
    "tcp_keepintvl",
    "tcp_socket_buffer",
    "tcp_user_timeout",
    "unix_socket_group",
    "unix_socket_mode",
    "verbose",
];

/// PgBouncer keys converge renders itself, and where a manifest sets them.
pub const OWNED: &[(&str, &str)] = &[
    ("listen_addr", "pgbouncer.listen_addr"),
    ("listen_port", "pgbouncer.listen_port"),
    ("auth_type", "pgbouncer.auth_type"),
    ("admin_users", "pgbouncer.admin_users"),
    ("max_client_conn", "pgbouncer.max_client_conn"),
    ("default_pool_size", "pgbouncer.default_pool_size"),
    ("auth_file", "the pgbouncer_userlist target"),
    ("unix_socket_dir", "--root (it is /run/postgresql under it)"),
    (
        "pidfile",
        "--root (it is /run/postgresql/pgbouncer.pid under it)",
    ),
    (
        "user",
        "the service's own user (converge runs PgBouncer with -u)",
    ),
];

/// `pgbouncer.settings`: known keys and their values as PgBouncer reads
/// them, in key order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct PassThrough(pub BTreeMap<String, String>);

impl PassThrough {
    /// Whether `key` is set.
    pub fn contains(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }
}

/// Editors offer the settings this converge knows, minus those it renders
/// itself; values are PgBouncer's own words, numbers or booleans.
impl schemars::JsonSchema for PassThrough {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "PgbouncerPassThrough".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let keys: Vec<&str> = KNOWN
            .iter()
            .copied()
            .filter(|k| !OWNED.iter().any(|(owned, _)| owned == k))
            .collect();
        schemars::json_schema!({
            "type": "object",
            "description": "Any PgBouncer setting converge does not render itself, as PgBouncer spells it; checked by the trial start.",
            "propertyNames": { "enum": keys },
            "additionalProperties": { "type": ["string", "number", "boolean"] }
        })
    }
}

impl<'de> Deserialize<'de> for PassThrough {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(PassThroughVisitor)
    }
}

struct PassThroughVisitor;

impl<'de> Visitor<'de> for PassThroughVisitor {
    type Value = PassThrough;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a map of PgBouncer settings")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PassThrough, A::Error> {
        let mut out = BTreeMap::new();
        while let Some(key) = map.next_key::<String>()? {
            if let Some((_, field)) = OWNED.iter().find(|(k, _)| *k == key) {
                return Err(de::Error::custom(format_args!(
                    "`{key}` is rendered by converge; set it with {field}"
                )));
            }
            if !KNOWN.contains(&key.as_str()) {
                return Err(de::Error::unknown_field(&key, KNOWN));
            }
            let value = map.next_value::<Scalar>()?.0;
            if value.contains(['\n', '\r']) {
                return Err(de::Error::custom(format_args!(
                    "the value of `{key}` holds a line break; PgBouncer settings are one line"
                )));
            }
            out.insert(key, value);
        }
        Ok(PassThrough(out))
    }
}

/// A YAML scalar (text, number, boolean) as the text PgBouncer reads.
struct Scalar(String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("text, a number or true/false")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            // PgBouncer reads booleans as 1/0.
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(if v { "1" } else { "0" }.to_string()))
            }
        }
        deserializer.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use crate::Manifests;

    fn load(settings: &str) -> Result<crate::Manifest, String> {
        let text = format!(
            "nodes: {{lb1: {{}}}}\npgbouncer:\n  listen_port: 6432\n  settings:\n{settings}"
        );
        Manifests::from_sources(Path::new("m"), &[(PathBuf::from("site.yaml"), text)])
            .map(|m| m.manifest)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn known_settings_pass_through_as_pgbouncer_reads_them() {
        let m = load(
            "    server_login_retry: 1\n    server_fast_close: true\n    \
             logfile: /var/log/postgresql/pgbouncer.log\n",
        )
        .expect("manifest");
        let got: Vec<(&str, &str)> = m
            .pgbouncer
            .settings
            .0
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("logfile", "/var/log/postgresql/pgbouncer.log"),
                ("server_fast_close", "1"),
                ("server_login_retry", "1"),
            ]
        );
    }

    #[test]
    fn a_typo_is_refused_with_file_line_and_the_nearest_name() {
        let err = load("    server_fast_close: 1\n    server_login_rety: 1\n").expect_err("typo");
        assert!(err.contains("site.yaml:6"), "{err}");
        assert!(
            err.contains("unknown field `server_login_rety`, did you mean `server_login_retry`?"),
            "{err}"
        );
    }

    #[test]
    fn keys_converge_renders_and_multi_line_values_are_refused() {
        let err = load("    listen_port: 7000\n").expect_err("owned");
        assert!(
            err.contains(
                "`listen_port` is rendered by converge; set it with pgbouncer.listen_port"
            ),
            "{err}"
        );
        let err = load("    server_check_query: \"select 1\\nlisten_port = 1\"\n")
            .expect_err("line break");
        assert!(err.contains("holds a line break"), "{err}");
    }
}
