//! consul-template's side of the scale benchmark: a template listing every
//! instance of every watched service with its status (what converge's
//! snapshot holds), rendered to a file; a flip has arrived when the file
//! shows it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use converge_testkit::consul::External;
use converge_testkit::proxy::CountingProxy;
use converge_testkit::Child;

use super::dc::{self, measure as phases, Datacenter, Row, Sampler, Watcher};
use super::ScaleArgs;
use crate::procstat;

/// Measures consul-template (`bin`) watching `s0 … s{W-1}` over plain
/// HTTP at the agent's current connection limit (`limit`, for the label).
pub fn measure(
    dc: &mut Datacenter,
    args: &ScaleArgs,
    bin: &Path,
    limit: &str,
) -> anyhow::Result<Row> {
    let dir = tempfile::Builder::new()
        .prefix("converge-scale-ct-")
        .tempdir()?;
    let template = dir.path().join("services.ctmpl");
    let out = dir.path().join("services.txt");
    fs::write(&template, template_text(args.watched))?;
    let proxy = CountingProxy::start(dc.agent.http_addr()).context("counting proxy")?;
    let sampler = Sampler::start(dc.agent.http_addr().port());
    let log = fs::File::create(dir.path().join("consul-template.log"))?;
    let mut cmd = Command::new(bin);
    cmd.args(["-log-level", "warn", "-consul-addr", &proxy.addr()])
        .arg("-template")
        .arg(format!("{}:{}", template.display(), out.display()))
        .env_remove("CONSUL_HTTP_ADDR")
        .env_remove("CONSUL_HTTP_TOKEN")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let started = Instant::now();
    let child = Child::spawn("consul-template", &mut cmd).context("consul-template")?;
    let mut row = Row {
        label: format!("consul-template, {limit}"),
        ..Row::default()
    };
    let mut w = Template {
        child,
        out,
        seen: None,
    };
    let rendered = wait_for(args.startup_timeout, || w.out.is_file());
    row.peak_connections = sampler.peak();
    if !rendered {
        row.memory = w.memory();
        row.note = format!(
            "rendered nothing in {:?}; {} requests sent",
            args.startup_timeout,
            proxy.seen().len()
        );
        return Ok(row);
    }
    row.startup = Some(started.elapsed());
    w.seen = modified(&w.out);
    phases(dc, args, &mut w, &proxy, true, &mut row)?;
    row.peak_connections = sampler.peak();
    Ok(row)
}

/// One block per watched service: `ID STATUS ADDRESS:PORT` per instance,
/// whatever its health (`|any`), after a leading newline so every line
/// can be found as `\nID STATUS `.
fn template_text(watched: usize) -> String {
    let mut t = String::from("\n");
    for i in 0..watched {
        t.push_str(&format!(
            "{{{{range service \"s{i}|any\"}}}}{{{{.ID}}}} {{{{.Status}}}} {{{{.Address}}}}:{{{{.Port}}}}\n{{{{end}}}}"
        ));
    }
    t
}

struct Template {
    child: Child,
    out: PathBuf,
    /// The rendered file's modification time when last read.
    seen: Option<SystemTime>,
}

impl Watcher for Template {
    fn shows(&mut self, e: External, status: &str, deadline: Duration) -> bool {
        let line = format!("\n{} {status} ", e.id());
        wait_for(deadline, || {
            let now = modified(&self.out);
            if now == self.seen {
                return false;
            }
            self.seen = now;
            fs::read_to_string(&self.out).is_ok_and(|text| text.contains(&line))
        })
    }

    fn cpu(&self) -> Duration {
        procstat::sample(self.child.pid()).map_or(Duration::ZERO, |s| dc::ticks(s.own_ticks))
    }

    fn memory(&self) -> (u64, u64) {
        procstat::sample(self.child.pid()).map_or((0, 0), |s| (s.rss_kib, s.hwm_kib))
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Polls `done` every millisecond until it holds or `deadline` passes.
pub(super) fn wait_for(deadline: Duration, mut done: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + deadline;
    while Instant::now() < until {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}
