//! Named network namespaces a test creates, joins with veth pairs and
//! deletes again, so that programs like keepalived can speak VRRP between
//! two "nodes" on one machine.
//!
//! A [`Netns`] is created with `ip netns add` under a name no other test
//! uses (`cvg-PID-N-TAG`: this process, a per-process counter, the caller's
//! tag), with `lo` up. Commands run inside with `ip netns exec NAME ...`
//! ([`Netns::command`]), which switches namespace and then `exec`s the
//! program, so the pid of the spawned [`Child`] is the program's own pid.
//! Addresses are observed with `ip -n NAME -o addr show dev IF`.
//!
//! [`VethPair`] is the usual shape: two namespaces joined by a veth pair
//! with the same interface name on both sides (the link is created straight
//! into the namespaces, so the name never exists in the machine's own
//! namespace) and `10.213.S.1/24` / `10.213.S.2/24` on its ends. These
//! addresses exist only inside the two namespaces, which have no route to
//! anything else, so nothing a test sends there leaves them; two pairs may
//! even reuse a subnet without meeting.
//!
//! Dropping a [`Netns`] stops every process still inside it — found by pid
//! with `ip netns pids NAME` (processes whose network namespace is this
//! one), `SIGTERM`, a grace period, then `SIGKILL` — and then deletes the
//! namespace, which destroys the veth ends in it. Nothing is looked up or
//! killed by name.

use std::ffi::OsStr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::process::{pid_alive, Child, DEFAULT_GRACE};
use crate::wait;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace owned by the test, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    deleted: bool,
}

impl Netns {
    /// Creates `cvg-PID-N-TAG` with `lo` up.
    ///
    /// # Errors
    ///
    /// When `ip netns add` fails (typically: not root, or no `CAP_SYS_ADMIN`);
    /// the message carries its output.
    pub fn new(tag: &str) -> Result<Self, String> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Self::named(format!("cvg-{}-{n}-{tag}", std::process::id()))
    }

    fn named(name: String) -> Result<Self, String> {
        run_ip(&["netns", "add", &name])?;
        // From here on, drop deletes it even if the next step fails.
        let ns = Self {
            name,
            deleted: false,
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n NAME ARGS` to completion and returns its stdout.
    ///
    /// # Errors
    ///
    /// When `ip` cannot run or exits non-zero; the message has its stderr.
    pub fn ip(&self, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run_ip(&all)
    }

    /// A command that runs `program` inside the namespace
    /// (`ip netns exec NAME program`); add arguments and spawn it, e.g.
    /// with [`Child::spawn`].
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `program ARGS` inside the namespace to completion; its stdout.
    ///
    /// # Errors
    ///
    /// When it cannot run or exits non-zero; the message has its stderr.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<String, String> {
        let mut cmd = self.command(program);
        cmd.args(args);
        output(
            &format!("{program} {} in {}", args.join(" "), self.name),
            cmd,
        )
    }

    /// Spawns `program ARGS` inside the namespace as a guarded [`Child`].
    ///
    /// # Errors
    ///
    /// The spawn error.
    pub fn spawn(&self, name: &str, program: &str, args: &[&str]) -> Result<Child, String> {
        let mut cmd = self.command(program);
        cmd.args(args).stdin(Stdio::null());
        Child::spawn(format!("{name} in {}", self.name), &mut cmd).map_err(|e| e.to_string())
    }

    /// The addresses (CIDR form, IPv4 and IPv6) on interface `dev`.
    ///
    /// # Errors
    ///
    /// When `ip` fails, e.g. because there is no such interface.
    pub fn addresses(&self, dev: &str) -> Result<Vec<String>, String> {
        let out = self.ip(&["-o", "addr", "show", "dev", dev])?;
        Ok(parse_addresses(&out))
    }

    /// True when `dev` carries `addr` (with or without its `/prefix`).
    /// An interface that cannot be read counts as not carrying it.
    pub fn has_address(&self, dev: &str, addr: &str) -> bool {
        let bare = addr.split('/').next().unwrap_or(addr);
        self.addresses(dev)
            .map(|all| all.iter().any(|a| a.split('/').next() == Some(bare)))
            .unwrap_or(false)
    }

    /// The pids of the processes whose network namespace is this one.
    pub fn pids(&self) -> Vec<u32> {
        run_ip(&["netns", "pids", &self.name])
            .map(|out| out.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Stops every process inside (by pid: `SIGTERM`, [`DEFAULT_GRACE`],
    /// `SIGKILL`), then deletes the namespace. Idempotent.
    ///
    /// # Errors
    ///
    /// When a process survives `SIGKILL` or `ip netns del` fails.
    pub fn delete(&mut self) -> Result<(), String> {
        if self.deleted {
            return Ok(());
        }
        let pids = self.pids();
        for &pid in &pids {
            let _ = kill(pid_of(pid), Signal::SIGTERM);
        }
        let all_gone = || pids.iter().all(|&p| !pid_alive(p));
        let what = format!("the processes in {} to exit", self.name);
        let mut stuck = None;
        if wait::until(DEFAULT_GRACE, &what, all_gone).is_err() {
            for &pid in &pids {
                if pid_alive(pid) {
                    let _ = kill(pid_of(pid), Signal::SIGKILL);
                }
            }
            stuck = wait::until(Duration::from_secs(5), &what, all_gone).err();
        }
        // Delete even when a process is stuck: its namespace lives on
        // with it, but the name and the mount go away.
        run_ip(&["netns", "del", &self.name])?;
        self.deleted = true;
        stuck.map_or(Ok(()), Err)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = self.delete() {
            eprintln!(
                "testkit: cannot clean up network namespace {}: {e}",
                self.name
            );
        }
    }
}

/// Two namespaces joined by a veth pair, addressed on a private /24.
#[derive(Debug)]
pub struct VethPair {
    /// Side A, holding `.1`.
    pub a: Netns,
    /// Side B, holding `.2`.
    pub b: Netns,
    iface: String,
    subnet: u8,
}

impl VethPair {
    /// Creates namespaces `...-a` and `...-b`, a veth pair named `iface` on
    /// both sides, `10.213.S.1/24` on A and `10.213.S.2/24` on B, all up.
    ///
    /// # Errors
    ///
    /// When a step fails; whatever was created is deleted again.
    pub fn new(iface: &str) -> Result<Self, String> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let a = Netns::named(format!("cvg-{pid}-{n}-a"))?;
        let b = Netns::named(format!("cvg-{pid}-{n}-b"))?;
        // Only for readability of `ip` output; pairs are isolated anyway.
        let subnet = u8::try_from((pid.wrapping_add(n)) % 254 + 1).unwrap_or(1);
        let pair = Self {
            a,
            b,
            iface: iface.to_string(),
            subnet,
        };
        pair.a.ip(&[
            "link",
            "add",
            iface,
            "type",
            "veth",
            "peer",
            "name",
            iface,
            "netns",
            pair.b.name(),
        ])?;
        for (ns, host) in [(&pair.a, 1), (&pair.b, 2)] {
            let cidr = format!("{}/24", pair.host(host));
            ns.ip(&["addr", "add", &cidr, "dev", iface])?;
            ns.ip(&["link", "set", iface, "up"])?;
        }
        Ok(pair)
    }

    /// The interface name (the same on both sides).
    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// `10.213.S.host`, an address on the pair's subnet.
    pub fn host(&self, host: u8) -> String {
        format!("10.213.{}.{host}", self.subnet)
    }
}

fn run_ip(args: &[&str]) -> Result<String, String> {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    output(&format!("ip {}", args.join(" ")), cmd)
}

fn output(shown: &str, mut cmd: Command) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Addresses from `ip -o addr show` lines (`2: eth0    inet 10.0.0.1/24 ...`).
fn parse_addresses(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == "inet" || *w == "inet6")?;
            words.next().map(str::to_string)
        })
        .collect()
}

fn pid_of(pid: u32) -> Pid {
    Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ip_o_addr_output() {
        let out = "2: vrrp0    inet 10.213.9.1/24 scope global vrrp0\\       valid_lft forever preferred_lft forever\n\
                   2: vrrp0    inet 10.213.9.100/24 scope global secondary vrrp0\\       valid_lft forever\n\
                   2: vrrp0    inet6 fe80::1/64 scope link \\       valid_lft forever\n";
        assert_eq!(
            parse_addresses(out),
            ["10.213.9.1/24", "10.213.9.100/24", "fe80::1/64"]
        );
    }
}
