//! What one read of each endpoint the source could watch costs in the
//! datacenter: answer size plain and gzipped, and the agent's CPU per
//! read. Sent as raw HTTP/1.0 so the answer's bytes are counted as they
//! travel, compressed or not.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::dc::Datacenter;
use crate::stats::ms;

/// Reads per endpoint and encoding, averaged (the agent's CPU counter
/// moves in 10 ms steps).
const ROUNDS: u32 = 5;

/// The endpoints, as the source would ask them.
const ENDPOINTS: [&str; 7] = [
    "/v1/health/state/any",
    "/v1/health/state/any?filter=Status%20!%3D%20%22passing%22",
    "/v1/health/state/critical",
    "/v1/health/state/warning",
    "/v1/catalog/services",
    "/v1/health/service/s0",
    "/v1/health/service/s0?cached",
];

/// A Markdown table of the endpoints' costs.
pub fn table(dc: &Datacenter) -> anyhow::Result<String> {
    let mut o = String::from(
        "| endpoint | answer | gzipped | read time | agent CPU per read |\n|---|---:|---:|---:|---:|\n",
    );
    for path in ENDPOINTS {
        let (plain, _, _) = read(dc, path, false)?;
        let (zipped, took, cpu) = read(dc, path, true)?;
        o.push_str(&format!(
            "| `{}` | {plain} B | {zipped} B | {} | {} |\n",
            path.replace("%20", " ")
                .replace("%21", "!")
                .replace("%3D", "=")
                .replace("%22", "\""),
            ms(took),
            ms(cpu)
        ));
    }
    Ok(o)
}

/// Reads `path` [`ROUNDS`] times: answer bytes, mean time and mean agent
/// CPU per read.
fn read(dc: &Datacenter, path: &str, gzip: bool) -> anyhow::Result<(usize, Duration, Duration)> {
    let addr = dc.agent.http_addr();
    let encoding = if gzip {
        "Accept-Encoding: gzip\r\n"
    } else {
        ""
    };
    let cpu0 = dc.agent_cpu();
    let t = Instant::now();
    let mut size = 0;
    for _ in 0..ROUNDS {
        let mut s = TcpStream::connect(addr)?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{encoding}\r\n")?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        let head_end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(raw.len(), |p| p + 4);
        anyhow::ensure!(raw.starts_with(b"HTTP/1.0 200"), "GET {path}: not 200");
        size = raw.len() - head_end;
    }
    Ok((size, t.elapsed() / ROUNDS, (dc.agent_cpu() - cpu0) / ROUNDS))
}
