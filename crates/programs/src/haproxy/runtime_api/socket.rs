//! The admin stats socket, one command per connection.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::state::{parse_servers_state, Running};
use super::{fallback, Fallback};

/// The admin stats socket: one command per connection.
pub(crate) struct Socket<'a> {
    pub path: &'a Path,
    pub timeout: Duration,
}

impl Socket<'_> {
    pub(crate) fn send(&self, command: &str) -> Result<String, Fallback> {
        self.exchange(command)
            .map_err(|e| Fallback(format!("`{command}`: {e}")))
    }

    pub(crate) fn exchange(&self, command: &str) -> io::Result<String> {
        let mut s = UnixStream::connect(self.path)?;
        s.set_read_timeout(Some(self.timeout))?;
        s.set_write_timeout(Some(self.timeout))?;
        s.write_all(command.as_bytes())?;
        s.write_all(b"\n")?;
        // Without `prompt`, HAProxy answers one command and closes.
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }

    /// The pid of the worker answering, which must not be stopping.
    pub(crate) fn worker(&self) -> Result<u32, Fallback> {
        let info = self.send("show info")?;
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
        };
        let Some(pid) = field("Pid:").and_then(|p| p.parse().ok()) else {
            return fallback(format!("`show info` answered `{}`", info.trim()));
        };
        if field("Stopping:").is_some_and(|s| s != "0") {
            return fallback(format!("worker pid {pid} is stopping"));
        }
        Ok(pid)
    }

    pub(crate) fn servers(&self, backend: &str) -> Result<Vec<Running>, Fallback> {
        let answer = self.send(&format!("show servers state {backend}"))?;
        parse_servers_state(&answer)
            .map_err(|e| Fallback(format!("`show servers state {backend}`: {e}")))
    }
}
