//! The files one agent runs from, all in its temp dir: the HCL config
//! (loopback-only listeners on the agent's ports, ACLs and HTTPS when
//! asked for), the TLS certificates and the log.
//!
//! The config, not the command line, carries the management token, and is
//! made readable by its owner only. The certificates are made by the consul
//! binary itself (`consul tls`), so they are what a real deployment gets.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::ConsulAgent;

impl ConsulAgent {
    pub(super) fn write_config(&self) -> Result<(), String> {
        let p = &self.ports;
        let mut hcl = format!(
            r#"node_name = "{node}"
data_dir = "{data_dir}"
bind_addr = "127.0.0.1"
client_addr = "127.0.0.1"
advertise_addr = "127.0.0.1"
advertise_addr_wan = "127.0.0.1"
disable_update_check = true
disable_anonymous_signature = true
log_level = "warn"
ports {{
  http = {http}
  https = {https}
  dns = {dns}
  serf_lan = {serf_lan}
  serf_wan = {serf_wan}
  server = {server}
  grpc = {grpc}
  grpc_tls = -1
}}
"#,
            node = self
                .client_of
                .as_ref()
                .map_or("converge-test", |(_, n)| n.as_str()),
            data_dir = self.dir.path().join("data").display(),
            http = p.http,
            https = if self.tls { i32::from(p.https) } else { -1 },
            dns = p.dns,
            serf_lan = p.serf_lan,
            serf_wan = p.serf_wan,
            server = p.server,
            grpc = p.grpc,
        );
        if self.tls {
            let (ca, _, _) = self.tls_files();
            let (server_cert, server_key) = self.server_cert();
            hcl.push_str(&format!(
                r#"tls {{
  https {{
    ca_file = "{ca}"
    cert_file = "{server_cert}"
    key_file = "{server_key}"
    verify_incoming = true
  }}
}}
"#,
                ca = ca.display(),
                server_cert = server_cert.display(),
                server_key = server_key.display(),
            ));
        }
        if let Some((join, _)) = &self.client_of {
            hcl.push_str(&format!(
                "server = false\nretry_join = [\"127.0.0.1:{join}\"]\nretry_interval = \"1s\"\n"
            ));
        }
        if let Some(limit) = self.conn_limit {
            hcl.push_str(&format!(
                "limits {{\n  http_max_conns_per_client = {limit}\n}}\n"
            ));
        }
        if let Some(token) = &self.management_token {
            hcl.push_str(&format!(
                r#"acl {{
  enabled = true
  default_policy = "deny"
  down_policy = "deny"
  tokens {{
    initial_management = "{token}"
    agent = "{token}"
  }}
}}
"#
            ));
        }
        let path = self.config_path();
        fs::write(&path, hcl).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        // The config holds the management token: keep it private.
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("cannot chmod {}: {e}", path.display()))
    }

    /// Sets Consul's limit of connections per client address
    /// (`limits.http_max_conns_per_client`, 200 by default) and reloads
    /// the running agent, which applies it without a restart.
    ///
    /// # Errors
    ///
    /// The config could not be written or the agent refused the reload.
    pub fn set_http_conn_limit(&mut self, limit: u32) -> Result<(), String> {
        self.conn_limit = Some(limit);
        self.write_config()?;
        self.put_ok("/v1/agent/reload", "")
    }

    fn tls_dir(&self) -> PathBuf {
        self.dir.path().join("tls")
    }

    /// CA certificate, client certificate and client key (PEM) of a
    /// [`ConsulAgent::start_with_tls`] agent.
    pub fn tls_files(&self) -> (PathBuf, PathBuf, PathBuf) {
        let d = self.tls_dir();
        (
            d.join("consul-agent-ca.pem"),
            d.join("dc1-client-consul-0.pem"),
            d.join("dc1-client-consul-0-key.pem"),
        )
    }

    /// The `CONSUL_*` variables of a client reaching this TLS agent at
    /// `address` (its HTTPS URL, or a proxy's in front of it) with the
    /// agent's CA, the client certificate and the name the server's
    /// certificate carries (`server.dc1.consul`, which no DNS resolves, so
    /// it is sent and verified while the connection goes to `address`).
    pub fn tls_client_vars(&self, address: &str) -> Vec<(&'static str, String)> {
        let (ca, cert, key) = self.tls_files();
        vec![
            ("CONSUL_HTTP_ADDR", address.to_string()),
            ("CONSUL_CACERT", ca.display().to_string()),
            ("CONSUL_CLIENT_CERT", cert.display().to_string()),
            ("CONSUL_CLIENT_KEY", key.display().to_string()),
            ("CONSUL_TLS_SERVER_NAME", "server.dc1.consul".to_string()),
        ]
    }

    fn server_cert(&self) -> (PathBuf, PathBuf) {
        let d = self.tls_dir();
        (
            d.join("dc1-server-consul-0.pem"),
            d.join("dc1-server-consul-0-key.pem"),
        )
    }

    /// A CA, a server certificate (for 127.0.0.1 and localhost) and a
    /// client certificate, made by the consul binary itself.
    pub(super) fn make_certificates(&self) -> Result<(), String> {
        let dir = self.tls_dir();
        fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        for args in [
            &["tls", "ca", "create"][..],
            &["tls", "cert", "create", "-server", "-dc", "dc1"][..],
            &["tls", "cert", "create", "-client", "-dc", "dc1"][..],
        ] {
            let out = Command::new(&self.binary)
                .args(args)
                .current_dir(&dir)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("cannot run consul {}: {e}", args.join(" ")))?;
            if !out.status.success() {
                return Err(format!(
                    "consul {} failed: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        Ok(())
    }

    pub(super) fn config_path(&self) -> PathBuf {
        self.dir.path().join("agent.hcl")
    }

    pub(super) fn log_path(&self) -> PathBuf {
        self.dir.path().join("consul.log")
    }
}
