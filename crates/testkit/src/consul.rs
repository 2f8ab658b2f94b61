//! A real `consul agent -dev` per test, on free loopback ports.
//!
//! Every listener (HTTP, DNS, serf LAN and WAN, server RPC, gRPC) gets its
//! own free port on 127.0.0.1; HTTPS and gRPC-TLS are disabled; the agent
//! binds, advertises and serves on loopback only, and its update check and
//! anonymous usage signature are turned off, so a test never sends a packet
//! off the machine. `-dev` keeps the Raft state in memory: a
//! [`ConsulAgent::restart`] brings the agent back on the same ports, config
//! and data dir with a fresh Raft log and a *lower* index, which is exactly
//! the "index went backwards" case clients must handle. The agent restores
//! the services registered through it, with their last check status, from
//! the data dir.
//!
//! [`ConsulAgent::start_with_acl`] enables ACLs with `default_policy =
//! "deny"` and a known initial management token, written to a config file
//! (never to the command line). [`ConsulAgent::create_token`] makes tokens
//! with narrower policies.
//!
//! The helpers talk to the agent with a tiny blocking HTTP/1.0 client over
//! `std::net`, so this module needs no async runtime. The agent is stopped
//! by pid when dropped (`SIGTERM`, then `SIGKILL`, then reaped).
//!
//! The binary is `$CONVERGE_CONSUL_BIN`, else `target/peers/bin/consul`
//! (built by `scripts/build-peers.sh`), else `consul` on `PATH`; if none
//! exists, starting fails with a message saying how to build it.

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::ports::free_port;
use crate::process::Child;
use crate::wait;

/// How long an agent gets to elect itself leader.
pub const START_DEADLINE: Duration = Duration::from_secs(60);

/// The ports one agent listens on.
#[derive(Debug, Clone, Copy)]
pub struct ConsulPorts {
    /// HTTP API.
    pub http: u16,
    /// DNS.
    pub dns: u16,
    /// Serf LAN gossip.
    pub serf_lan: u16,
    /// Serf WAN gossip.
    pub serf_wan: u16,
    /// Server RPC.
    pub server: u16,
    /// gRPC (xDS).
    pub grpc: u16,
    /// HTTPS API (used only by [`ConsulAgent::start_with_tls`]).
    pub https: u16,
}

impl ConsulPorts {
    fn pick() -> Self {
        Self {
            http: free_port(),
            dns: free_port(),
            serf_lan: free_port(),
            serf_wan: free_port(),
            server: free_port(),
            grpc: free_port(),
            https: free_port(),
        }
    }
}

/// A running `consul agent -dev`, stopped on drop.
#[derive(Debug)]
pub struct ConsulAgent {
    binary: PathBuf,
    dir: tempfile::TempDir,
    ports: ConsulPorts,
    management_token: Option<String>,
    tls: bool,
    child: Option<Child>,
}

/// Finds the consul binary: `$CONVERGE_CONSUL_BIN`, then
/// `target/peers/bin/consul` under the workspace, then `consul` on `PATH`.
///
/// # Errors
///
/// A message naming every place looked at and how to build the binary.
pub fn consul_binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("CONVERGE_CONSUL_BIN") {
        let p = PathBuf::from(p);
        if is_executable(&p) {
            return Ok(p);
        }
        return Err(format!(
            "CONVERGE_CONSUL_BIN={} is not an executable file",
            p.display()
        ));
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let built = workspace.join("target/peers/bin/consul");
    if is_executable(&built) {
        return Ok(built);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("consul");
            if is_executable(&p) {
                return Ok(p);
            }
        }
    }
    Err(format!(
        "no consul binary: CONVERGE_CONSUL_BIN is unset, {} does not exist, and there is no \
         consul on PATH; build it with scripts/build-peers.sh (these tests need the real agent)",
        built.display()
    ))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

impl ConsulAgent {
    /// Starts a dev agent without ACLs and waits until it has a leader.
    ///
    /// # Errors
    ///
    /// No binary, the agent exited, or no leader before [`START_DEADLINE`]
    /// (the message carries the end of the agent's log).
    pub fn start() -> Result<Self, String> {
        Self::launch(None, false)
    }

    /// Starts a dev agent with ACLs enabled, `default_policy = "deny"`,
    /// and a random initial management token ([`ConsulAgent::management_token`]).
    ///
    /// # Errors
    ///
    /// As [`ConsulAgent::start`], or the management token never became
    /// usable.
    pub fn start_with_acl() -> Result<Self, String> {
        Self::launch(Some(random_uuid()?), false)
    }

    /// Starts a dev agent that also serves HTTPS ([`ConsulAgent::https_url`])
    /// with certificates made by `consul tls` in the temp dir, requiring a
    /// client certificate signed by the same CA ([`ConsulAgent::tls_files`]).
    /// Plain HTTP stays on for the helpers.
    ///
    /// # Errors
    ///
    /// As [`ConsulAgent::start`], or `consul tls` failed.
    pub fn start_with_tls() -> Result<Self, String> {
        Self::launch(None, true)
    }

    fn launch(management_token: Option<String>, tls: bool) -> Result<Self, String> {
        let binary = consul_binary()?;
        let mut last_err = String::new();
        // A free port can be taken between our probe and consul's bind;
        // a fresh set of ports is the fix, not a failed test.
        for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("converge-consul-")
                .tempdir()
                .map_err(|e| format!("cannot create a temp dir for consul: {e}"))?;
            let mut agent = Self {
                binary: binary.clone(),
                dir,
                ports: ConsulPorts::pick(),
                management_token: management_token.clone(),
                tls,
                child: None,
            };
            if tls {
                agent.make_certificates()?;
            }
            agent.write_config()?;
            match agent.spawn_and_wait() {
                Ok(()) => return Ok(agent),
                Err(e) => last_err = e,
            }
        }
        Err(last_err)
    }

    fn write_config(&self) -> Result<(), String> {
        let p = &self.ports;
        let mut hcl = format!(
            r#"node_name = "converge-test"
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

    fn server_cert(&self) -> (PathBuf, PathBuf) {
        let d = self.tls_dir();
        (
            d.join("dc1-server-consul-0.pem"),
            d.join("dc1-server-consul-0-key.pem"),
        )
    }

    /// `https://127.0.0.1:<https port>` of a TLS agent.
    pub fn https_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.ports.https)
    }

    /// A CA, a server certificate (for 127.0.0.1 and localhost) and a
    /// client certificate, made by the consul binary itself.
    fn make_certificates(&self) -> Result<(), String> {
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

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("agent.hcl")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("consul.log")
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| format!("cannot open consul log: {e}"))?;
        let log2 = log
            .try_clone()
            .map_err(|e| format!("cannot clone consul log handle: {e}"))?;
        let mut cmd = Command::new(&self.binary);
        cmd.arg("agent")
            .arg("-dev")
            .arg("-config-file")
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .env_remove("CONSUL_HTTP_TOKEN")
            .env_remove("CONSUL_HTTP_ADDR");
        let child = Child::spawn("consul agent -dev", &mut cmd).map_err(|e| e.to_string())?;
        self.child = Some(child);
        let res = self.wait_ready();
        if res.is_err() {
            if let Some(mut c) = self.child.take() {
                c.stop();
            }
        }
        res
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let what = format!("consul on 127.0.0.1:{} to elect a leader", self.ports.http);
        let mut exited = None;
        let leader = wait::until(START_DEADLINE, &what, || {
            if let Some(c) = self.child.as_mut() {
                if let Some(s) = c.try_status() {
                    exited = Some(s);
                    return true;
                }
            }
            matches!(self.get("/v1/status/leader"), Ok((200, body)) if body.trim().len() > 2)
        });
        if let Some(status) = exited {
            return Err(format!(
                "consul exited during startup ({status}); log tail:\n{}",
                self.log_tail()
            ));
        }
        leader.map_err(|e| format!("{e}; log tail:\n{}", self.log_tail()))?;
        if self.management_token.is_some() {
            let what = "the ACL management token to become usable";
            wait::until(START_DEADLINE, what, || {
                matches!(self.get("/v1/acl/token/self"), Ok((200, _)))
            })
            .map_err(|e| format!("{e}; log tail:\n{}", self.log_tail()))?;
        }
        Ok(())
    }

    /// The last lines of the agent's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// `127.0.0.1:<http port>`.
    pub fn http_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.ports.http))
    }

    /// `http://127.0.0.1:<http port>`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.http_addr())
    }

    /// Every port the agent listens on.
    pub fn ports(&self) -> ConsulPorts {
        self.ports
    }

    /// The agent's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::pid)
    }

    /// The initial management token of an ACL agent.
    pub fn management_token(&self) -> Option<&str> {
        self.management_token.as_deref()
    }

    /// Stops the agent (the temp dir and ports are kept for
    /// [`ConsulAgent::start_again`]).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.stop();
        }
    }

    /// Starts a stopped agent again on the same ports and config, and waits
    /// for a leader. The Raft state starts afresh (lower index); services
    /// registered through this agent are restored from the data dir.
    ///
    /// # Errors
    ///
    /// As [`ConsulAgent::start`].
    pub fn start_again(&mut self) -> Result<(), String> {
        if self.child.is_some() {
            return Err("consul is still running; stop it first".into());
        }
        // The listening sockets of the old process may take a moment to be
        // released; retry a few times before giving up.
        let mut last = String::new();
        for _ in 0..5 {
            match self.spawn_and_wait() {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Stops and starts the agent (same ports, same config).
    ///
    /// # Errors
    ///
    /// As [`ConsulAgent::start_again`].
    pub fn restart(&mut self) -> Result<(), String> {
        self.stop();
        self.start_again()
    }

    /// Registers service instance `id` of `name` on 127.0.0.1:`port` with
    /// `tags` and one TTL check (TTL 10 minutes, initially passing), and
    /// returns the check id to pass to [`ConsulAgent::pass`] and friends.
    ///
    /// # Errors
    ///
    /// Consul refused the registration.
    pub fn register_service_with_ttl(
        &self,
        id: &str,
        name: &str,
        port: u16,
        tags: &[&str],
    ) -> Result<String, String> {
        let check_id = format!("ttl:{id}");
        let tags = tags
            .iter()
            .map(|t| json_string(t))
            .collect::<Vec<_>>()
            .join(",");
        let body = format!(
            r#"{{"ID":{id},"Name":{name},"Address":"127.0.0.1","Port":{port},"Tags":[{tags}],
               "Check":{{"CheckID":{check},"Name":"ttl","TTL":"10m","Status":"passing"}}}}"#,
            id = json_string(id),
            name = json_string(name),
            check = json_string(&check_id),
        );
        self.put_ok("/v1/agent/service/register", &body)?;
        Ok(check_id)
    }

    /// Registers a service on this agent from the JSON body of Consul's
    /// `/v1/agent/service/register`, as a tool that registers itself sends
    /// it (an `ID` in its own format, or none so Consul takes the name).
    ///
    /// # Errors
    ///
    /// Consul refused the registration.
    pub fn agent_register(&self, body: &str) -> Result<(), String> {
        self.put_ok("/v1/agent/service/register", body)
    }

    /// Registers a node and its service through `/v1/catalog/register`
    /// (the JSON body as Consul takes it): how instances on other Consul
    /// nodes appear without running an agent for each node.
    ///
    /// # Errors
    ///
    /// Consul refused the registration.
    pub fn catalog_register(&self, body: &str) -> Result<(), String> {
        self.put_ok("/v1/catalog/register", body)
    }

    /// Registers a service instance with no check at all.
    ///
    /// # Errors
    ///
    /// Consul refused the registration.
    pub fn register_service(&self, id: &str, name: &str, port: u16) -> Result<(), String> {
        let body = format!(
            r#"{{"ID":{},"Name":{},"Address":"127.0.0.1","Port":{port}}}"#,
            json_string(id),
            json_string(name)
        );
        self.put_ok("/v1/agent/service/register", &body)
    }

    /// Marks a TTL check passing.
    ///
    /// # Errors
    ///
    /// Consul refused the update.
    pub fn pass(&self, check_id: &str) -> Result<(), String> {
        self.put_ok(
            &format!("/v1/agent/check/pass/{}", path_escape(check_id)),
            "",
        )
    }

    /// Marks a TTL check warning.
    ///
    /// # Errors
    ///
    /// Consul refused the update.
    pub fn warn(&self, check_id: &str) -> Result<(), String> {
        self.put_ok(
            &format!("/v1/agent/check/warn/{}", path_escape(check_id)),
            "",
        )
    }

    /// Marks a TTL check critical.
    ///
    /// # Errors
    ///
    /// Consul refused the update.
    pub fn fail(&self, check_id: &str) -> Result<(), String> {
        self.put_ok(
            &format!("/v1/agent/check/fail/{}", path_escape(check_id)),
            "",
        )
    }

    /// Deregisters a service instance (and its checks).
    ///
    /// # Errors
    ///
    /// Consul refused.
    pub fn deregister(&self, service_id: &str) -> Result<(), String> {
        self.put_ok(
            &format!("/v1/agent/service/deregister/{}", path_escape(service_id)),
            "",
        )
    }

    /// Writes a KV entry.
    ///
    /// # Errors
    ///
    /// Consul refused.
    pub fn kv_put(&self, key: &str, value: &str) -> Result<(), String> {
        self.put_ok(&format!("/v1/kv/{key}"), value)
    }

    /// On an ACL agent: creates a policy from HCL `rules` and a token
    /// holding it, and returns the token's secret.
    ///
    /// # Errors
    ///
    /// Consul refused, or its answer had no `SecretID`.
    pub fn create_token(&self, rules: &str) -> Result<String, String> {
        let name = format!("p-{}", random_uuid()?);
        let policy = format!(
            r#"{{"Name":{},"Rules":{}}}"#,
            json_string(&name),
            json_string(rules)
        );
        let (status, body) = self.request("PUT", "/v1/acl/policy", &policy)?;
        if status != 200 {
            return Err(format!("creating ACL policy: HTTP {status}: {body}"));
        }
        let policy_id =
            json_field(&body, "ID").ok_or_else(|| format!("no ID in ACL policy answer: {body}"))?;
        let token = format!(r#"{{"Policies":[{{"ID":{}}}]}}"#, json_string(&policy_id));
        let (status, body) = self.request("PUT", "/v1/acl/token", &token)?;
        if status != 200 {
            return Err(format!("creating ACL token: HTTP {status}: {body}"));
        }
        json_field(&body, "SecretID")
            .ok_or_else(|| format!("no SecretID in ACL token answer: {body}"))
    }

    /// `GET path` with the management token (if any): status and body.
    ///
    /// # Errors
    ///
    /// The agent could not be reached.
    pub fn get(&self, path: &str) -> Result<(u16, String), String> {
        self.request("GET", path, "")
    }

    fn put_ok(&self, path: &str, body: &str) -> Result<(), String> {
        match self.request("PUT", path, body)? {
            (200, _) => Ok(()),
            (status, body) => Err(format!("PUT {path}: HTTP {status}: {}", body.trim())),
        }
    }

    /// One HTTP/1.0 request (so the answer is never chunked and the
    /// connection closes after it).
    fn request(&self, method: &str, path: &str, body: &str) -> Result<(u16, String), String> {
        let addr = self.http_addr();
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("{method} {path}: cannot connect to consul at {addr}: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        let token = self
            .management_token
            .as_ref()
            .map(|t| format!("X-Consul-Token: {t}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{token}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream
            .write_all(req.as_bytes())
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("{method} {path}: not an HTTP answer: {head}"))?;
        Ok((status, body.to_string()))
    }
}

impl Drop for ConsulAgent {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Open TCP connections from this process to `127.0.0.1:port`, counted
/// from `/proc/self/net/tcp` (established sockets whose remote port is
/// `port`) joined with this process's socket inodes in `/proc/self/fd`.
pub fn open_connections_to(port: u16) -> usize {
    let mut inodes = std::collections::HashSet::new();
    if let Ok(entries) = fs::read_dir("/proc/self/fd") {
        for e in entries.flatten() {
            if let Ok(target) = fs::read_link(e.path()) {
                let t = target.to_string_lossy();
                if let Some(inode) = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                    inodes.insert(inode.to_string());
                }
            }
        }
    }
    let mut count = 0;
    for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                continue;
            }
            let remote_port = f[2]
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            // State 01 is ESTABLISHED.
            if remote_port == Some(port) && f[3] == "01" && inodes.contains(f[9]) {
                count += 1;
            }
        }
    }
    count
}

fn random_uuid() -> Result<String, String> {
    let mut b = [0u8; 16];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

/// A JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The string value of the first `"name": "..."` in a JSON text (enough
/// for Consul's flat ACL answers; values there hold no escapes).
fn json_field(json: &str, name: &str) -> Option<String> {
    let key = format!("\"{name}\"");
    let mut rest = json;
    while let Some(at) = rest.find(&key) {
        let after = rest[at + key.len()..].trim_start();
        if let Some(v) = after.strip_prefix(':') {
            let v = v.trim_start().strip_prefix('"')?;
            return v.split_once('"').map(|(s, _)| s.to_string());
        }
        rest = &rest[at + key.len()..];
    }
    None
}

fn path_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_helpers() {
        assert_eq!(json_string("a\"b\\c\n"), r#""a\"b\\c\n""#);
        let body = r#"{"AccessorID": "a-1", "SecretID":"s-2", "Policies": []}"#;
        assert_eq!(json_field(body, "SecretID").as_deref(), Some("s-2"));
        assert_eq!(json_field(body, "AccessorID").as_deref(), Some("a-1"));
        assert_eq!(json_field(body, "Nope"), None);
    }

    #[test]
    fn uuids_are_well_formed() {
        let u = random_uuid().expect("uuid");
        assert_eq!(u.len(), 36);
        assert_eq!(u.matches('-').count(), 4);
        assert_eq!(&u[14..15], "4");
    }

    #[test]
    fn own_loopback_connection_is_counted() {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        assert_eq!(open_connections_to(port), 0);
        let _a = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect");
        let _b = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect");
        let (_sa, _) = listener.accept().expect("accept");
        let (_sb, _) = listener.accept().expect("accept");
        // The accepted ends have the client's port as remote, not `port`.
        assert_eq!(open_connections_to(port), 2);
    }
}
