//! The agent's HTTP API as the tests use it: register and deregister
//! services, set TTL checks, write KV entries, make ACL tokens.
//!
//! A tiny blocking HTTP/1.0 client over `std::net` (an HTTP/1.0 answer is
//! never chunked and the connection closes after it), so the test support
//! needs no async runtime and no HTTP library, and a test's own client is
//! never the one that sets up the world it checks. Every request carries
//! the management token when the agent has one.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use super::ConsulAgent;

impl ConsulAgent {
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

    pub(super) fn put_ok(&self, path: &str, body: &str) -> Result<(), String> {
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
        crate::http::status_and_body(&format!("{method} {path}"), &raw)
    }
}

/// A random (version 4) UUID, for the management token and policy names.
pub(super) fn random_uuid() -> Result<String, String> {
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
pub(super) fn json_string(s: &str) -> String {
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
}
