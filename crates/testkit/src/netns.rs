//! Named network namespaces a test creates, joins with veth pairs and
//! deletes again, so that programs like keepalived can speak VRRP between
//! two "nodes" on one machine.
//!
//! A [`Netns`] is created with `ip netns add` under a name no other test
//! uses (`cvg-PID-N-TAG`: this process, a per-process counter, the caller's
//! tag), with `lo` up. Commands run inside with `ip netns exec NAME ...`
//! ([`Netns::command`], or [`Netns::enter`] for a command built
//! elsewhere), which switches namespace and then `exec`s the
//! program, so the pid of the spawned [`Child`] is the program's own pid.
//! Addresses are observed with `ip -n NAME -o addr show dev IF`.
//!
//! [`Lan`] is the usual shape: member namespaces (the "nodes") on one
//! Ethernet segment, a bridge in a third namespace that doubles as a client
//! on the segment. Each member is joined to the bridge by a veth pair whose
//! member end has the same name in every member (created straight into the
//! namespaces, so the name never exists in the machine's own namespace),
//! addressed `10.213.S.1/24`, `.2`, ...; the client holds `.254`. These
//! addresses exist only inside the test's namespaces, which have no route
//! to anything else, so nothing a test sends there leaves them; two LANs
//! may even reuse a subnet without meeting. The client can ask which
//! member answers for an address ([`Lan::answering`]), as a host next to
//! the nodes would see it.
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

    /// `cmd` as a command that runs inside the namespace: its program and
    /// arguments after `ip netns exec NAME`, with the environment changes
    /// it sets or removes (not an `env_clear`) and its working directory.
    pub fn enter(&self, cmd: &Command) -> Command {
        let mut inside = self.command(cmd.get_program());
        inside.args(cmd.get_args());
        for (key, value) in cmd.get_envs() {
            match value {
                Some(v) => inside.env(key, v),
                None => inside.env_remove(key),
            };
        }
        if let Some(dir) = cmd.get_current_dir() {
            inside.current_dir(dir);
        }
        inside
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

/// Member namespaces on one Ethernet segment, and a client on it: the
/// client namespace holds a bridge, and each member is joined to the
/// bridge by a veth pair. A client sees what a host on the LB segment
/// sees: which member answers for an address ([`Lan::answering`]).
#[derive(Debug)]
pub struct Lan {
    /// The members; member `i` holds `10.213.S.(i+1)/24` on the interface.
    pub members: Vec<Netns>,
    /// The namespace with the bridge `br0`, holding `10.213.S.254/24`.
    pub client: Netns,
    iface: String,
    subnet: u8,
}

impl Lan {
    /// Creates the client namespace `...-c` with its bridge, and `count`
    /// member namespaces `...-m0`, `...-m1`, ... each with an interface
    /// `iface` on the bridge, all addressed and up.
    ///
    /// # Errors
    ///
    /// When a step fails; whatever was created is deleted again.
    pub fn new(iface: &str, count: usize) -> Result<Self, String> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let subnet = u8::try_from((pid.wrapping_add(n)) % 254 + 1).unwrap_or(1);
        let client = Netns::named(format!("cvg-{pid}-{n}-c"))?;
        let mut lan = Self {
            members: Vec::with_capacity(count),
            client,
            iface: iface.to_string(),
            subnet,
        };
        lan.client
            .ip(&["link", "add", "br0", "type", "bridge", "forward_delay", "0"])?;
        lan.client.ip(&[
            "addr",
            "add",
            &format!("{}/24", lan.host(254)),
            "dev",
            "br0",
        ])?;
        lan.client.ip(&["link", "set", "br0", "up"])?;
        for i in 0..count {
            let ns = Netns::named(format!("cvg-{pid}-{n}-m{i}"))?;
            let port = format!("p{i}");
            lan.client.ip(&[
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                iface,
                "netns",
                ns.name(),
            ])?;
            lan.client
                .ip(&["link", "set", &port, "master", "br0", "up"])?;
            let host = u8::try_from(i + 1).map_err(|_| "too many members".to_string())?;
            ns.ip(&[
                "addr",
                "add",
                &format!("{}/24", lan.host(host)),
                "dev",
                iface,
            ])?;
            ns.ip(&["link", "set", iface, "up"])?;
            lan.members.push(ns);
        }
        Ok(lan)
    }

    /// The members' interface name.
    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// `10.213.S.host`, an address on the segment.
    pub fn host(&self, host: u8) -> String {
        format!("10.213.{}.{host}", self.subnet)
    }

    /// The MAC address of member `i`'s interface.
    ///
    /// # Errors
    ///
    /// When `ip` fails or prints no `link/ether`.
    pub fn mac(&self, i: usize) -> Result<String, String> {
        let ns = self
            .members
            .get(i)
            .ok_or_else(|| format!("no member {i}"))?;
        let out = ns.ip(&["-o", "link", "show", "dev", &self.iface])?;
        let mut words = out.split_whitespace();
        words
            .find(|w| *w == "link/ether")
            .and_then(|_| words.next())
            .map(str::to_string)
            .ok_or_else(|| format!("no MAC address on {} in {}", self.iface, ns.name()))
    }

    /// Which member answers for `addr` as seen from the client: the client
    /// opens a TCP connection to `addr:port` (bash's `/dev/tcp`, 0.3 s
    /// at most); when it is accepted or refused, someone answered, and the
    /// client's neighbour entry for `addr` names that member's MAC.
    /// `None` when nobody answered or the MAC is no member's.
    pub fn answering(&self, addr: &str, port: u16) -> Option<usize> {
        let out = self
            .client
            .command("timeout")
            .args(["0.3", "bash", "-c", "exec 3<>\"/dev/tcp/$0/$1\""])
            .arg(addr)
            .arg(port.to_string())
            .stdin(Stdio::null())
            .output()
            .ok()?;
        let refused = String::from_utf8_lossy(&out.stderr).contains("refused");
        if !(out.status.success() || refused) {
            return None;
        }
        let neigh = self
            .client
            .ip(&["neigh", "show", addr, "dev", "br0"])
            .ok()?;
        let mut words = neigh.split_whitespace();
        let mac = words.find(|w| *w == "lladdr").and_then(|_| words.next())?;
        (0..self.members.len()).find(|&i| self.mac(i).is_ok_and(|m| m == mac))
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
    fn enter_wraps_program_arguments_environment_and_directory() {
        // Never created, so dropping it deletes nothing.
        let ns = Netns {
            name: "cvg-test".into(),
            deleted: true,
        };
        let mut cmd = Command::new("converge");
        cmd.args(["status", "--node", "lb1"])
            .env("A", "1")
            .env_remove("B")
            .current_dir("/tmp");
        let inside = ns.enter(&cmd);
        assert_eq!(inside.get_program(), "ip");
        let args: Vec<&OsStr> = inside.get_args().collect();
        assert_eq!(
            args,
            ["netns", "exec", "cvg-test", "converge", "status", "--node", "lb1"]
        );
        let envs: Vec<(&OsStr, Option<&OsStr>)> = inside.get_envs().collect();
        assert_eq!(
            envs,
            [
                (OsStr::new("A"), Some(OsStr::new("1"))),
                (OsStr::new("B"), None)
            ]
        );
        assert_eq!(inside.get_current_dir(), Some(std::path::Path::new("/tmp")));
    }

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
