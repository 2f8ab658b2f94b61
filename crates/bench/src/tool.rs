//! The two tools under test, started as child processes against the
//! shared [`Stack`], each behind its own [`CountingProxy`] to Consul.
//!
//! - converge: `converge run --consul PROXY --wait-min --wait-max`,
//!   JSON logs to a file, reloads counted by `converge_reloads_total` on
//!   its `/metrics`.
//! - consul-template: `consul-template -consul-addr PROXY -template
//!   "IN:OUT:/bin/sh reload.sh ..." [-wait MIN:MAX]`, logs to a file,
//!   reloads counted by the lines its reload command appends.
//!
//! Either is stopped by its pid when dropped (testkit's [`Child`]).

use std::fmt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use converge_testkit::{free_port, http, wait, Child};

use crate::stack::{Stack, DEADLINE};
use converge_testkit::proxy::CountingProxy;

/// Which tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `converge run`, reloading HAProxy like consul-template does.
    Converge,
    /// `converge run` with the `web` backend opted in to runtime-API
    /// updates (`runtime_api: {slots: 4}`): membership changes reach HAProxy
    /// over its stats socket instead of a reload. consul-template has no
    /// counterpart, and the rendered file differs (fixed slots).
    ConvergeRuntimeApi,
    /// consul-template.
    ConsulTemplate,
}

impl Kind {
    /// Runtime-API slots converge's manifest gets for this kind.
    pub fn slots(self) -> Option<u32> {
        (self == Kind::ConvergeRuntimeApi).then_some(4)
    }

    /// A file-name-safe label.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Converge => "converge",
            Kind::ConvergeRuntimeApi => "converge-runtime-api",
            Kind::ConsulTemplate => "consul-template",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Converge => "converge",
            Kind::ConvergeRuntimeApi => "converge (runtime API)",
            Kind::ConsulTemplate => "consul-template",
        })
    }
}

/// The quiescence pair both tools get (`--wait-min/--wait-max`, `-wait`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait {
    /// Quiet time that ends a burst.
    pub min: Duration,
    /// Longest a burst may delay a render.
    pub max: Duration,
}

impl Wait {
    /// Parses `MIN:MAX` (`500ms:5s`); `0s:0s` disables waiting.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (min, max) = s.split_once(':').ok_or("expected MIN:MAX, e.g. 500ms:5s")?;
        let d = |v: &str| humantime::parse_duration(v).map_err(|e| format!("`{v}`: {e}"));
        Ok(Self {
            min: d(min)?,
            max: d(max)?,
        })
    }

    /// True when neither tool should wait.
    pub fn is_off(&self) -> bool {
        self.min.is_zero() && self.max.is_zero()
    }
}

impl fmt::Display for Wait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_off() {
            f.write_str("off")
        } else {
            write!(f, "{}ms:{}ms", self.min.as_millis(), self.max.as_millis())
        }
    }
}

/// A running tool.
pub struct Running {
    /// Which one.
    pub kind: Kind,
    /// Its process.
    pub child: Child,
    /// Its Consul connection, counted.
    pub proxy: CountingProxy,
    /// Its log file.
    pub log: PathBuf,
    listen: Option<u16>,
    counter: PathBuf,
}

/// Starts `kind` with `wait`. `rust_log` is converge's `RUST_LOG`; the
/// caller has written converge's manifest.
pub fn start(
    stack: &Stack,
    kind: Kind,
    wait: Wait,
    tag: &str,
    rust_log: &str,
) -> anyhow::Result<Running> {
    let proxy = CountingProxy::start(stack.consul.http_addr()).context("counting proxy")?;
    let log = stack.path(&format!("logs/{}-{tag}.log", kind.label()));
    let out = std::fs::File::create(&log).context("tool log")?;
    let err = out.try_clone()?;
    let (child, listen) = match kind {
        Kind::Converge | Kind::ConvergeRuntimeApi => {
            let listen = free_port();
            let mut cmd = Command::new(&stack.bins.converge);
            cmd.args(["run", "--node", "lb1", "--log-format", "json"])
                .args(["--listen", &format!("127.0.0.1:{listen}")])
                .args(stack.input_flags())
                .args(["--consul", &proxy.url()])
                .args(["--wait-min", &format!("{}ms", wait.min.as_millis())])
                .args(["--wait-max", &format!("{}ms", wait.max.as_millis())])
                .env("RUST_LOG", rust_log)
                .env("NO_COLOR", "1")
                .env_remove("CONSUL_HTTP_ADDR")
                .env_remove("CONSUL_HTTP_TOKEN")
                .env_remove("CONSUL_HTTP_TOKEN_FILE")
                .env_remove("CONVERGE_FAILPOINT");
            (spawn(&mut cmd, "converge run", out, err)?, Some(listen))
        }
        Kind::ConsulTemplate => {
            let mut cmd = Command::new(&stack.bins.consul_template);
            cmd.args(["-log-level", "info", "-consul-addr", &proxy.addr()])
                .arg("-template")
                .arg(stack.ct_template_arg());
            if !wait.is_off() {
                cmd.arg("-wait").arg(wait.to_string());
            }
            cmd.env_remove("CONSUL_HTTP_ADDR")
                .env_remove("CONSUL_HTTP_TOKEN");
            (spawn(&mut cmd, "consul-template", out, err)?, None)
        }
    };
    let running = Running {
        kind,
        child,
        proxy,
        log,
        listen,
        counter: stack.ct_counter(),
    };
    running.wait_ready()?;
    Ok(running)
}

fn spawn(
    cmd: &mut Command,
    name: &str,
    out: std::fs::File,
    err: std::fs::File,
) -> anyhow::Result<Child> {
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    Child::spawn(name, cmd).context("spawn")
}

impl Running {
    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Reloads it has performed: `converge_reloads_total`, or the lines the
    /// consul-template reload command appended.
    pub fn reloads(&self) -> u64 {
        match self.kind {
            Kind::Converge | Kind::ConvergeRuntimeApi => {
                self.metric("converge_reloads_total").unwrap_or(0.0) as u64
            }
            Kind::ConsulTemplate => std::fs::read_to_string(&self.counter)
                .map(|t| t.lines().count() as u64)
                .unwrap_or(0),
        }
    }

    /// Membership changes converge handed to HAProxy's runtime API
    /// (`converge_runtime_api_updates_total`); 0 for consul-template.
    pub fn runtime_updates(&self) -> u64 {
        match self.kind {
            Kind::Converge | Kind::ConvergeRuntimeApi => self
                .metric("converge_runtime_api_updates_total")
                .unwrap_or(0.0) as u64,
            Kind::ConsulTemplate => 0,
        }
    }

    /// Ready: a blocking query to Consul is open through the proxy (the
    /// first answer came back and the tool is now waiting for changes), and
    /// converge also reports itself converged.
    fn wait_ready(&self) -> anyhow::Result<()> {
        let what = format!("{} to open a blocking query and settle", self.kind);
        wait::until(DEADLINE, &what, || {
            let blocking = self.proxy.seen().iter().any(|s| s.blocking);
            let converged = match self.listen {
                Some(port) => http::get(port, "/status")
                    .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
                    .is_some_and(|v| v["converged"] == true),
                None => true,
            };
            blocking && converged
        })
        .map_err(|e| anyhow::anyhow!("{e}\nlog tail:\n{}", self.log_tail(30)))
    }

    /// converge's `/status` (JSON text); `None` for consul-template.
    pub fn status(&self) -> Option<String> {
        http::get(self.listen?, "/status")
    }

    /// A metric from converge's `/metrics`.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let text = http::get(self.listen?, "/metrics")?;
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == name).then(|| v.trim().parse().ok()).flatten()
        })
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Warning and error lines in its log (converge's JSON `level`, or
    /// consul-template's `[WARN]`/`[ERR]` prefixes).
    pub fn complaints(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter(|l| match self.kind {
                Kind::Converge | Kind::ConvergeRuntimeApi => {
                    l.contains("\"level\":\"WARN\"") || l.contains("\"level\":\"ERROR\"")
                }
                Kind::ConsulTemplate => l.contains("[WARN]") || l.contains("[ERR]"),
            })
            .map(str::to_string)
            .collect()
    }

    /// Stops it (SIGTERM, grace, SIGKILL) and reaps it.
    pub fn stop(mut self) {
        self.child.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_pairs() {
        let w = Wait::parse("500ms:5s").expect("parse");
        assert_eq!(w.to_string(), "500ms:5000ms");
        assert!(Wait::parse("0s:0s").expect("parse").is_off());
        assert!(Wait::parse("5s").is_err());
    }
}
