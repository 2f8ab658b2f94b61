//! The world both tools run against: one real `consul agent -dev`, three
//! loopback HTTP backends registered as service `web` with TTL checks, one
//! real HAProxy in master-worker mode, and a work directory holding
//! converge's manifests and templates, the consul-template template and its
//! reload command.
//!
//! Both tools write the same file (`root/etc/haproxy/haproxy.cfg`), which
//! is the one HAProxy was started on, and reload the same master through
//! the same pidfile. They run one after the other, never together.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use converge_testkit::backend::HttpBackend;
use converge_testkit::consul::ConsulAgent;
use converge_testkit::{free_port, wait, Haproxy};

/// How long a condition in the harness may take before the run fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The instance whose check the benchmark flips (the second of three).
pub const FLIPPED: usize = 1;

/// Where the two tools' binaries are.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `converge`.
    pub converge: PathBuf,
    /// `consul-template`.
    pub consul_template: PathBuf,
}

/// Consul, backends, HAProxy and the work directory.
pub struct Stack {
    /// The work directory (kept with `--keep`).
    pub dir: tempfile::TempDir,
    /// The Consul agent both tools read.
    pub consul: ConsulAgent,
    /// b1, b2, b3.
    pub backends: Vec<HttpBackend>,
    /// TTL check ids of web-1..web-3 (and of every extra instance later).
    pub checks: Vec<String>,
    /// HAProxy's frontend port.
    pub front: u16,
    /// The HAProxy both tools reload.
    pub haproxy: Option<Haproxy>,
    /// The tools.
    pub bins: Binaries,
    /// consul-template reloads with the naive command (no wait for the
    /// master's SIGUSR2 handler).
    pub naive_ct_reload: bool,
}

/// The repository root (templates are copied from there).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

impl Stack {
    /// Starts Consul and the backends, renders the first config with
    /// `converge apply --once`, starts HAProxy on it and writes the
    /// consul-template side (template and reload command).
    pub fn start(bins: Binaries, naive_ct_reload: bool) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("converge-bench-")
            .tempdir()
            .context("work directory")?;
        let consul = ConsulAgent::start().map_err(anyhow::Error::msg)?;
        let backends = ["b1", "b2", "b3"]
            .iter()
            .map(|n| HttpBackend::start(n))
            .collect::<Result<Vec<_>, _>>()
            .context("loopback backends")?;
        let checks = backends
            .iter()
            .enumerate()
            .map(|(i, b)| {
                consul.register_service_with_ttl(&format!("web-{}", i + 1), "web", b.port(), &[])
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(anyhow::Error::msg)?;
        let mut stack = Self {
            dir,
            consul,
            backends,
            checks,
            front: free_port(),
            haproxy: None,
            bins,
            naive_ct_reload,
        };
        for sub in ["manifests", "templates", "root/run/haproxy", "ct", "logs"] {
            std::fs::create_dir_all(stack.path(sub)).with_context(|| format!("mkdir {sub}"))?;
        }
        for t in std::fs::read_dir(repo().join("templates")).context("templates")? {
            let t = t?;
            std::fs::copy(t.path(), stack.path("templates").join(t.file_name()))?;
        }
        std::fs::write(stack.path("catalog.yaml"), "services: {}\n")?;
        stack.write_manifest("haproxy", None)?;

        let out = Command::new(&stack.bins.converge)
            .args(["apply", "--once", "--node", "lb1"])
            .args(stack.input_flags())
            .arg("--consul")
            .arg(stack.consul.http_url())
            .env_remove("CONSUL_HTTP_TOKEN")
            .env_remove("CONVERGE_FAILPOINT")
            .output()
            .with_context(|| format!("running {}", stack.bins.converge.display()))?;
        if !out.status.success() {
            bail!(
                "converge apply --once failed: {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let root = stack.path("root");
        stack.haproxy = Some(
            Haproxy::start(
                &stack.config_path(),
                &root.join("run/haproxy.pid"),
                &root.join("run/haproxy/admin.sock"),
            )
            .map_err(anyhow::Error::msg)?,
        );
        stack.write_consul_template_side()?;
        Ok(stack)
    }

    /// A path in the work directory.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The HAProxy config both tools write.
    pub fn config_path(&self) -> PathBuf {
        self.path("root/etc/haproxy/haproxy.cfg")
    }

    /// The config as it is now.
    pub fn config(&self) -> String {
        std::fs::read_to_string(self.config_path()).unwrap_or_default()
    }

    /// HAProxy's pidfile.
    pub fn pidfile(&self) -> PathBuf {
        self.path("root/run/haproxy.pid")
    }

    /// converge's input flags for this work directory.
    pub fn input_flags(&self) -> Vec<String> {
        [
            ("--manifests", "manifests"),
            ("--templates", "templates"),
            ("--catalog", "catalog.yaml"),
            ("--root", "root"),
        ]
        .iter()
        .flat_map(|(flag, rel)| [flag.to_string(), self.path(rel).display().to_string()])
        .collect()
    }

    /// Writes converge's manifest with `validate` as the target's validator
    /// (`haproxy`, or a `{command: [...]}` mapping) and, with `slots`, the
    /// `web` backend opted in to runtime-API updates.
    pub fn write_manifest(&self, validate: &str, slots: Option<u32>) -> anyhow::Result<()> {
        let runtime = slots
            .map(|n| format!("    runtime_api: {{slots: {n}}}\n"))
            .unwrap_or_default();
        let text = format!(
            r#"nodes:
  lb1: {{}}
haproxy:
  stats_socket: /run/haproxy/admin.sock
frontends:
  http_in:
    bind: ["127.0.0.1:{port}"]
    default_backend: web
backends:
  web:
    service: web
    min_healthy: 1
{runtime}targets:
  haproxy:
    template: haproxy.cfg.tera
    destination: /etc/haproxy/haproxy.cfg
    validate: {validate}
    reload:
      signal: {{pidfile: /run/haproxy.pid, signal: SIGUSR2}}
"#,
            port = self.front
        );
        std::fs::write(self.path("manifests/site.yaml"), text).context("manifest")
    }

    /// The consul-template template: converge's rendered file with its
    /// server lines replaced by a `range service "web"` loop producing the
    /// same lines, so both tools render byte-identical files.
    pub fn ct_template(&self) -> PathBuf {
        self.path("ct/haproxy.cfg.ctmpl")
    }

    /// The reload command consul-template runs after a render.
    pub fn ct_reload_script(&self) -> PathBuf {
        self.path("ct/reload.sh")
    }

    /// One line per reload the consul-template command performed.
    pub fn ct_counter(&self) -> PathBuf {
        self.path("ct/reloads.count")
    }

    fn write_consul_template_side(&self) -> anyhow::Result<()> {
        std::fs::write(self.ct_template(), ct_template_from(&self.config())?)?;
        let script = if self.naive_ct_reload {
            NAIVE_RELOAD_SH
        } else {
            RELOAD_SH
        };
        std::fs::write(self.ct_reload_script(), script)?;
        Ok(())
    }

    /// consul-template's `-template` argument.
    pub fn ct_template_arg(&self) -> String {
        format!(
            "{}:{}:/bin/sh {} {} {} {}",
            self.ct_template().display(),
            self.config_path().display(),
            self.ct_reload_script().display(),
            self.config_path().display(),
            self.pidfile().display(),
            self.ct_counter().display()
        )
    }

    /// Renders the consul-template template once (`-once -dry`, straight
    /// at Consul) and says whether it equals the file converge rendered.
    pub fn templates_render_alike(&self) -> anyhow::Result<Result<(), String>> {
        let out = Command::new(&self.bins.consul_template)
            .args(["-once", "-dry", "-log-level", "err", "-consul-addr"])
            .arg(self.consul.http_addr().to_string())
            .arg("-template")
            // A destination that does not exist: consul-template prints
            // nothing in dry mode for a file that would not change.
            .arg(format!(
                "{}:{}",
                self.ct_template().display(),
                self.path("ct/dry-run.cfg").display()
            ))
            .env_remove("CONSUL_HTTP_ADDR")
            .env_remove("CONSUL_HTTP_TOKEN")
            .stdin(Stdio::null())
            .output()
            .context("consul-template -once -dry")?;
        let text = String::from_utf8_lossy(&out.stdout);
        // Dry mode prints `> DESTINATION` and then the contents.
        let body = text.split_once('\n').map(|(_, b)| b).unwrap_or("");
        let ours = self.config();
        if !out.status.success() {
            return Ok(Err(format!(
                "consul-template -once -dry failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        if body == ours {
            Ok(Ok(()))
        } else {
            let first = body
                .lines()
                .zip(ours.lines())
                .position(|(a, b)| a != b)
                .unwrap_or(body.lines().count().min(ours.lines().count()));
            Ok(Err(format!(
                "renders differ from line {}: consul-template `{}`, converge `{}`",
                first + 1,
                body.lines().nth(first).unwrap_or("<end>"),
                ours.lines().nth(first).unwrap_or("<end>")
            )))
        }
    }

    /// The running HAProxy.
    pub fn haproxy(&self) -> &Haproxy {
        self.haproxy
            .as_ref()
            .unwrap_or_else(|| unreachable!("HAProxy starts in Stack::start"))
    }

    /// Reloads HAProxy's master has reported (`Loading success.` lines):
    /// the count both tools' reloads are checked against.
    pub fn haproxy_reloads(&self) -> usize {
        self.haproxy().log().matches("Loading success.").count()
    }

    /// True once the master handles `SIGUSR2` again after a reload.
    pub fn haproxy_ready(&self) -> bool {
        self.haproxy().master_catches_sigusr2()
    }

    /// Marks the flipped instance critical (`false`) or passing (`true`).
    pub fn set_flipped(&self, passing: bool) -> anyhow::Result<()> {
        let check = &self.checks[FLIPPED];
        let r = if passing {
            self.consul.pass(check)
        } else {
            self.consul.fail(check)
        };
        r.map_err(anyhow::Error::msg)
    }

    /// Name of the flipped backend (what it answers).
    pub fn flipped_name(&self) -> &str {
        self.backends[FLIPPED].name()
    }

    /// True when the config on disk routes to the flipped backend: a
    /// `server` line with its address that is not `disabled` (in
    /// runtime-API mode a slot keeps its line and only gains the flag).
    pub fn config_serves_flipped(&self) -> bool {
        let endpoint = format!(" 127.0.0.1:{} ", self.backends[FLIPPED].port());
        self.config().lines().any(|l| {
            l.starts_with("    server ")
                && l.contains(&endpoint)
                && !l.split_whitespace().any(|w| w == "disabled")
        })
    }

    /// Waits until the config on disk routes to the flipped backend or not.
    pub fn wait_config_has_flipped(&self, present: bool) -> anyhow::Result<()> {
        let what = format!(
            "the config to {} the flipped server",
            if present { "route to" } else { "drop" }
        );
        wait::until(DEADLINE, &what, || self.config_serves_flipped() == present)
            .map_err(|e| anyhow::anyhow!("{e}\n{}", self.diagnose()))
    }

    /// What Consul's catalog and its local agent state say about the
    /// flipped check, and the config's server lines: for failure messages.
    pub fn diagnose(&self) -> String {
        let check = &self.checks[FLIPPED];
        let catalog = self
            .consul
            .get("/v1/health/checks/web")
            .map(|(_, b)| b)
            .unwrap_or_else(|e| e);
        let local = self
            .consul
            .get("/v1/agent/checks")
            .map(|(_, b)| b)
            .unwrap_or_else(|e| e);
        let status = |json: &str| {
            serde_json::from_str::<serde_json::Value>(json)
                .ok()
                .map(|v| {
                    let items: Vec<serde_json::Value> = match v {
                        serde_json::Value::Array(a) => a,
                        serde_json::Value::Object(m) => m.into_iter().map(|(_, v)| v).collect(),
                        _ => Vec::new(),
                    };
                    items
                        .iter()
                        .filter(|c| c["CheckID"] == check.as_str())
                        .map(|c| format!("{} (index {})", c["Status"], c["ModifyIndex"]))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_else(|| json.chars().take(200).collect())
        };
        let servers: Vec<String> = self
            .config()
            .lines()
            .filter(|l| l.starts_with("    server "))
            .take(8)
            .map(str::to_string)
            .collect();
        format!(
            "check {check}: catalog says {}, the local agent says {}; config servers:\n{}",
            status(&catalog),
            status(&local),
            servers.join("\n")
        )
    }

    /// Registers instances `web-4 ..= web-total`, spread over the three
    /// backends' ports, each with a passing TTL check.
    pub fn register_extra(&mut self, total: usize) -> anyhow::Result<()> {
        for i in self.checks.len()..total {
            let port = self.backends[i % self.backends.len()].port();
            let check = self
                .consul
                .register_service_with_ttl(&format!("web-{}", i + 1), "web", port, &[])
                .map_err(anyhow::Error::msg)?;
            self.checks.push(check);
        }
        Ok(())
    }
}

/// consul-template's reload command. The same steps as converge's HAProxy
/// target: check the file with `haproxy -c`, then wait until the master
/// handles `SIGUSR2` before sending it (HAProxy 2.6's master logs
/// `Loading success.` before it installs its handlers; a `SIGUSR2` sent in
/// between kills the master on first start, or is discarded during the
/// re-exec a reload performs, see converge-testkit's `haproxy.rs`).
/// The check reads `SigCgt` with shell builtins only; signal 12 (SIGUSR2)
/// is mask bit 11, the 0x8 bit of the third-last hex digit. The last line appends to the
/// counter file, so the harness can count reloads. The master also
/// removes and rewrites its pidfile during the re-exec (for about 0.1 ms,
/// some 40 ms after the signal), so a missing pidfile is waited for too.
const RELOAD_SH: &str = r#"#!/bin/sh
# $1: config  $2: haproxy pidfile  $3: counter file
haproxy -c -f "$1" >/dev/null 2>&1 || exit 1
# The master removes and rewrites its pidfile while it re-executes for a
# reload; give it a second before concluding HAProxy is not running.
n=0
while [ ! -s "$2" ]; do
  n=$((n + 1))
  [ "$n" -ge 100 ] && exit 0
  sleep 0.01
done
read -r pid rest < "$2"
n=0
while :; do
  ready=no
  while IFS=: read -r key value; do
    if [ "$key" = SigCgt ]; then
      case "$value" in *[89abcdef][0-9a-f][0-9a-f]) ready=yes ;; esac
    fi
  done < "/proc/$pid/status" || exit 1
  [ "$ready" = yes ] && break
  n=$((n + 1))
  [ "$n" -ge 1000 ] && exit 1
  sleep 0.01
done
kill -USR2 "$pid" || exit 1
echo reload >> "$3"
"#;

/// The reload command as it is usually written for consul-template
/// (`haproxy -c -f OUT && kill -USR2 $(cat PIDFILE)`), plus the counter
/// line: it signals the master whether or not it handles SIGUSR2 yet.
/// Only with `--ct-naive-reload`, to show what the wait above prevents.
const NAIVE_RELOAD_SH: &str = r#"#!/bin/sh
# $1: config  $2: haproxy pidfile  $3: counter file
haproxy -c -f "$1" >/dev/null 2>&1 && kill -USR2 $(cat "$2") && echo reload >> "$3"
"#;

/// Turns a config converge rendered into a consul-template template: the
/// `server` lines of `backend web` become one `range service "web"` loop.
pub fn ct_template_from(rendered: &str) -> anyhow::Result<String> {
    if rendered.contains("{{") {
        bail!("the rendered config already holds `{{{{`; cannot turn it into a template");
    }
    let mut out = String::new();
    let mut in_web = false;
    let mut looped = false;
    for line in rendered.split_inclusive('\n') {
        if !line.starts_with(' ') && !line.trim().is_empty() {
            in_web = line.trim_end() == "backend web";
        }
        if in_web && line.starts_with("    server ") {
            if !looped {
                let _ = write!(
                    out,
                    "{{{{ range service \"web\" }}}}    server {{{{ .ID }}}} {{{{ .Address }}}}:{{{{ .Port }}}} check\n{{{{ end }}}}"
                );
                looped = true;
            }
            continue;
        }
        out.push_str(line);
    }
    if !looped {
        bail!("no `server` lines under `backend web` in the rendered config");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_lines_become_one_loop() {
        let cfg = "global\n    maxconn 10\n\nbackend web\n    mode http\n    server web-1 127.0.0.1:1 check\n    server web-2 127.0.0.1:2 check\n\nbackend other\n    server x 1.2.3.4:5 check\n";
        let t = ct_template_from(cfg).expect("template");
        assert_eq!(
            t,
            "global\n    maxconn 10\n\nbackend web\n    mode http\n{{ range service \"web\" }}    server {{ .ID }} {{ .Address }}:{{ .Port }} check\n{{ end }}\nbackend other\n    server x 1.2.3.4:5 check\n"
        );
    }
}
