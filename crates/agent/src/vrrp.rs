//! keepalived as it reports itself: for each VRRP instance of this node,
//! the state keepalived itself is in, and — separately — whether this
//! node holds the instance's addresses. Read by `converge status` (its
//! keepalived section) and by the rollout's health gate, so a module of
//! its own rather than a part of either.
//!
//! The two must not be inferred from each other. A keepalived killed with
//! `SIGKILL` leaves its VIPs on the interface, so "the addresses are here"
//! would say MASTER for a node where nothing runs VRRP; and an instance
//! whose track script fails is in FAULT with no addresses, which would
//! look like BACKUP.
//!
//! So keepalived reports its state. The shipped template gives every
//! instance a `notify` hook, which keepalived 2.2.7 runs on every
//! transition (including the first one after start, `STOP` on an orderly
//! shutdown, and none on a reload) with `INSTANCE NAME STATE PRIORITY`
//! appended. The hook writes one line, `STATE PRIORITY PID`, to
//! `ROOT/run/converge/keepalived/NAME.state` by rename; `PID` is its
//! parent (`$PPID`), the VRRP process that ran it. A report counts only
//! while that process is alive and is a child of the keepalived named by
//! the pidfile: a file left by a killed keepalived, or by a VRRP process
//! its parent has since respawned, reads as `UNKNOWN`, never as the state
//! it last had. No clocks are compared.
//!
//! What else keepalived 2.2.7 offers, and why not: the notify FIFO needs a
//! reader that keepalived starts but does not restart, so one dead reader
//! loses every later transition; the `SIGUSR1` and `SIGJSON` dumps go to
//! fixed names in `/tmp` (shared by every keepalived in a mount namespace,
//! private under systemd's `PrivateTmp`), are written asynchronously, and
//! need a signal to the daemon, which a read-only status must not send.
//!
//! Addresses are read in keepalived's own network namespace, the one it
//! adds its VIPs in (`/proc/PID/net/fib_trie` for IPv4, `if_inet6` for
//! IPv6), so converge reads the right ones even when it runs in another
//! namespace than keepalived (a container beside it, or the tests' network
//! namespaces). With no keepalived running they come from `ip -o addr
//! show` in converge's namespace, all interfaces. Where the two
//! views disagree (a stale VIP beside a keepalived that is not running,
//! MASTER without its addresses, BACKUP or FAULT with them) the instance
//! carries a warning.

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Command;

use converge_model::manifest::{Reload, Target, Validator};
use converge_model::{Layout, Manifest, NodeDesired};
use serde::Serialize;

/// Where the shipped template's `notify` hook writes `NAME.state`, under
/// `--root`. `templates/keepalived.conf.tera` spells the same path.
pub const STATE_DIR: &str = "/run/converge/keepalived";

/// keepalived's state of one VRRP instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum VrrpState {
    /// Holds the VIP and sends adverts.
    Master,
    /// Ready to take over.
    Backup,
    /// Cannot take over: a track script, interface or address failed.
    Fault,
    /// The running keepalived is shutting down.
    Stop,
    /// No report from the keepalived running now, or none runs; the
    /// instance's `state_note` says which.
    Unknown,
}

impl VrrpState {
    fn parse(word: &str) -> Option<Self> {
        Some(match word {
            "MASTER" => Self::Master,
            "BACKUP" => Self::Backup,
            "FAULT" => Self::Fault,
            "STOP" => Self::Stop,
            _ => return None,
        })
    }

    /// The name keepalived uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Master => "MASTER",
            Self::Backup => "BACKUP",
            Self::Fault => "FAULT",
            Self::Stop => "STOP",
            Self::Unknown => "UNKNOWN",
        }
    }
}

/// One VRRP instance as this node runs it now.
#[derive(Debug, Serialize)]
pub struct VipLive {
    /// Instance name.
    pub name: String,
    /// Interface.
    pub interface: String,
    /// keepalived's own state for the instance (see the module docs).
    pub state: VrrpState,
    /// The effective priority keepalived reported with `state`.
    pub priority: Option<u8>,
    /// Why `state` is `UNKNOWN`.
    pub state_note: Option<String>,
    /// Every configured address is on this node.
    pub holds_vip: bool,
    /// Addresses present on this node.
    pub held: Vec<String>,
    /// Addresses configured.
    pub addresses: Vec<String>,
    /// keepalived's pid, when its pidfile names a live process.
    pub keepalived_pid: Option<u32>,
    /// Where keepalived's state and the addresses disagree, e.g. a stale
    /// VIP left on the interface by a keepalived that is not running.
    pub warning: Option<String>,
}

/// This node's VRRP instances: keepalived's reports, its pidfile (from the
/// target validated as keepalived and reloaded by signal) and the
/// addresses on the node.
pub(super) fn vips(desired: &NodeDesired, layout: &Layout) -> Result<Vec<VipLive>, String> {
    let pid = desired
        .targets
        .values()
        .find_map(|t| keepalived_pidfile(t, layout))
        .and_then(|p| running_pid(&p));
    let local = addresses_beside(pid)?;
    let dir = layout.path(STATE_DIR);
    Ok(desired
        .vips
        .values()
        .map(|v| {
            let (held, holds_vip) = held(&v.vip.addresses, &local);
            let file = dir.join(format!("{}.state", v.name));
            let report = Report::judge(&file, pid, parent_of);
            VipLive {
                name: v.name.clone(),
                interface: v.node_interface.clone(),
                warning: disagreement(report.state, pid.is_some(), &held, holds_vip),
                state: report.state,
                priority: report.priority,
                state_note: report.note,
                holds_vip,
                held,
                addresses: v.vip.addresses.clone(),
                keepalived_pid: pid,
            }
        })
        .collect())
}

/// The rooted pidfile of `target` when it is keepalived's (validated as
/// keepalived, reloaded by a signal to its pidfile).
fn keepalived_pidfile(target: &Target, layout: &Layout) -> Option<PathBuf> {
    match (&target.validate, &target.reload) {
        (Validator::Keepalived, Reload::Signal { pidfile, .. }) => Some(layout.path(pidfile)),
        _ => None,
    }
}

/// The pid on the first line of `pidfile` (keepalived's, or HAProxy's
/// master in master-worker mode), when that process is alive.
pub(crate) fn running_pid(pidfile: &Path) -> Option<u32> {
    std::fs::read_to_string(pidfile)
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|pid| Path::new(&format!("/proc/{pid}")).exists())
}

/// What the rollout's health gate asks keepalived on a node: the VRRP
/// instances the node takes part in (with their addresses), keepalived's
/// pidfile, and where its `notify` hook reports. Taken from the revision
/// the gate judges, before the switch, so it asks about that revision's
/// instances. What the answers must be is the gate's rule
/// ([`crate::rollout::serving`]); this only reads them, the same way
/// `converge status` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeepalivedGate {
    pidfile: PathBuf,
    dir: PathBuf,
    /// Instance name and its configured addresses.
    instances: Vec<(String, Vec<String>)>,
}

/// One VRRP instance as the gate reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// Instance name.
    pub name: String,
    /// keepalived's own state (see the module docs).
    pub state: VrrpState,
    /// Why `state` is `UNKNOWN`.
    pub note: Option<String>,
    /// Where keepalived's state and the addresses on the node disagree.
    pub warning: Option<String>,
    /// keepalived's pid, when its pidfile names a live process.
    pub keepalived: Option<u32>,
}

impl KeepalivedGate {
    /// `None` when `node` renders no keepalived target reloaded by signal,
    /// or takes part in no VRRP instance: nothing to ask.
    pub fn of(manifest: &Manifest, node: &str, layout: &Layout) -> Option<Self> {
        let wanted = manifest.nodes.get(node)?.targets.as_ref();
        let pidfile = manifest
            .targets
            .iter()
            .filter(|(name, _)| wanted.is_none_or(|w| w.contains(name)))
            .find_map(|(_, t)| keepalived_pidfile(t, layout))?;
        let instances: Vec<(String, Vec<String>)> = manifest
            .vips
            .iter()
            .filter(|(_, v)| v.priorities.contains_key(node))
            .map(|(name, v)| (name.clone(), v.addresses.clone()))
            .collect();
        (!instances.is_empty()).then(|| Self {
            pidfile,
            dir: layout.path(STATE_DIR),
            instances,
        })
    }

    /// Each instance's state as the running keepalived reports it, and
    /// whether the addresses on the node agree with it.
    pub fn observe(&self) -> Result<Vec<Observed>, String> {
        let keepalived = running_pid(&self.pidfile);
        Ok(self.observe_with(keepalived, parent_of, &addresses_beside(keepalived)?))
    }

    fn observe_with(
        &self,
        keepalived: Option<u32>,
        parent_of: impl Fn(u32) -> Option<u32>,
        local: &[String],
    ) -> Vec<Observed> {
        self.instances
            .iter()
            .map(|(name, addresses)| {
                let file = self.dir.join(format!("{name}.state"));
                let report = Report::judge(&file, keepalived, &parent_of);
                let (held, holds_vip) = held(addresses, local);
                Observed {
                    name: name.clone(),
                    warning: disagreement(report.state, keepalived.is_some(), &held, holds_vip),
                    state: report.state,
                    note: report.note,
                    keepalived,
                }
            })
            .collect()
    }
}

/// Which of `addresses` are among the node's `local` ones, and whether
/// all are.
fn held(addresses: &[String], local: &[String]) -> (Vec<String>, bool) {
    let same = |a: &str, l: &str| match (a.parse::<IpAddr>(), l.parse::<IpAddr>()) {
        (Ok(a), Ok(l)) => a == l,
        _ => a == l,
    };
    let held: Vec<String> = addresses
        .iter()
        .filter(|a| local.iter().any(|l| same(bare(a), l)))
        .cloned()
        .collect();
    let all = held.len() == addresses.len();
    (held, all)
}

/// An address without its `/prefix`.
fn bare(addr: &str) -> &str {
    addr.split('/').next().unwrap_or(addr)
}

/// The node's addresses in the network namespace of `keepalived` when it
/// runs, else in converge's own (see the module docs).
fn addresses_beside(keepalived: Option<u32>) -> Result<Vec<String>, String> {
    let Some(pid) = keepalived else {
        return local_addresses();
    };
    let read = |file: &str| {
        let path = format!("/proc/{pid}/net/{file}");
        std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))
    };
    let mut all = fib_trie_local(&read("fib_trie")?);
    // A kernel without IPv6 has no if_inet6: no IPv6 address either.
    all.extend(read("if_inet6").map(|t| if_inet6(&t)).unwrap_or_default());
    Ok(all)
}

/// The local IPv4 addresses of a `/proc/net/fib_trie`: each `|-- ADDR`
/// leaf followed by a `/32 host LOCAL` route.
fn fib_trie_local(text: &str) -> Vec<String> {
    let mut leaf = None;
    let mut local = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(addr) = line.strip_prefix("|-- ") {
            leaf = Some(addr);
        } else if line.starts_with("/32 host LOCAL") {
            if let Some(addr) = leaf {
                if !local.iter().any(|l| l == addr) {
                    local.push(addr.to_string());
                }
            }
        }
    }
    local
}

/// The addresses of a `/proc/net/if_inet6`: 32 hex digits first on a line.
fn if_inet6(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| u128::from_str_radix(l.split_whitespace().next()?, 16).ok())
        .map(|bits| Ipv6Addr::from(bits).to_string())
        .collect()
}

/// Every address on the node, without prefixes.
fn local_addresses() -> Result<Vec<String>, String> {
    let output = Command::new("ip")
        .args(["-o", "addr", "show"])
        .output()
        .map_err(|e| format!("cannot run `ip -o addr show`: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "`ip -o addr show` failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            f.find(|w| *w == "inet" || *w == "inet6")?;
            f.next().map(|a| bare(a).to_string())
        })
        .collect())
}

/// What keepalived last said about an instance, judged against the
/// processes running now.
#[derive(Debug, PartialEq, Eq)]
struct Report {
    state: VrrpState,
    priority: Option<u8>,
    note: Option<String>,
}

impl Report {
    fn unknown(note: String) -> Self {
        Self {
            state: VrrpState::Unknown,
            priority: None,
            note: Some(note),
        }
    }

    /// Reads `file` (see the module docs) for the keepalived whose parent
    /// process is `keepalived`; `parent_of` gives a live process's parent.
    fn judge(file: &Path, keepalived: Option<u32>, parent_of: impl Fn(u32) -> Option<u32>) -> Self {
        let Some(keepalived) = keepalived else {
            return Self::unknown(
                "keepalived is not running (its pidfile names no live process)".into(),
            );
        };
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Self::unknown(format!(
                    "keepalived (pid {keepalived}) has not reported this instance's state in {}: \
                     it reports on the instance's next transition or its next restart",
                    file.display()
                ))
            }
            Err(e) => return Self::unknown(format!("cannot read {}: {e}", file.display())),
        };
        let line = text.trim();
        let mut words = line.split_whitespace();
        let (Some(state), Some(priority), Some(reporter), None) = (
            words.next().and_then(VrrpState::parse),
            words.next().and_then(|p| p.parse::<u8>().ok()),
            words.next().and_then(|p| p.parse::<u32>().ok()),
            words.next(),
        ) else {
            return Self::unknown(format!(
                "{} holds `{line}`, not `STATE PRIORITY PID`",
                file.display()
            ));
        };
        if parent_of(reporter) != Some(keepalived) {
            return Self::unknown(format!(
                "the last report ({}) came from VRRP process {reporter}, which is no longer \
                 keepalived's (pid {keepalived}); the running one has not reported yet",
                state.as_str()
            ));
        }
        Self {
            state,
            priority: Some(priority),
            note: None,
        }
    }
}

/// The parent of a live (not zombie) process, from `/proc/PID/stat`.
pub(crate) fn parent_of(pid: u32) -> Option<u32> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// `PID (COMM) STATE PPID ...`; COMM may hold spaces and parentheses.
fn parse_stat(stat: &str) -> Option<u32> {
    let mut rest = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    let state = rest.next()?;
    let ppid = rest.next()?.parse().ok()?;
    (state != "Z" && state != "X").then_some(ppid)
}

/// A warning when keepalived's state and the addresses on the node
/// disagree.
fn disagreement(
    state: VrrpState,
    running: bool,
    held: &[String],
    holds_vip: bool,
) -> Option<String> {
    let here = held.join(", ");
    if !running {
        return (!held.is_empty()).then(|| {
            format!(
                "stale VIP: {here} still on this node while keepalived is not running (a killed \
                 keepalived leaves its addresses behind; starting it removes them); another node \
                 may hold the VIP too"
            )
        });
    }
    match state {
        VrrpState::Master if !holds_vip => Some(format!(
            "keepalived says MASTER but not every address is on this node (present: {})",
            if held.is_empty() { "none" } else { &here }
        )),
        VrrpState::Backup | VrrpState::Fault | VrrpState::Stop if !held.is_empty() => {
            Some(format!(
                "keepalived says {} but {here} is on this node",
                state.as_str()
            ))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use converge_model::{Catalog, Manifests};
    use converge_render::{render, Templates};

    use super::*;

    /// keepalived's pid in these tests, and its VRRP child.
    const KEEPALIVED: u32 = 700;
    const VRRP: u32 = 701;

    fn judge(text: Option<&str>, keepalived: Option<u32>, parent: Option<u32>) -> Report {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("edge.state");
        if let Some(t) = text {
            std::fs::write(&file, t).expect("write state file");
        }
        Report::judge(
            &file,
            keepalived,
            |pid| {
                if pid == VRRP {
                    parent
                } else {
                    None
                }
            },
        )
    }

    fn note(r: &Report) -> &str {
        assert_eq!(r.state, VrrpState::Unknown, "{r:?}");
        r.note.as_deref().unwrap_or_default()
    }

    #[test]
    fn a_report_from_the_running_vrrp_process_is_the_state() {
        for (line, state) in [
            ("MASTER 150 701\n", VrrpState::Master),
            ("BACKUP 100 701\n", VrrpState::Backup),
            ("FAULT 150 701\n", VrrpState::Fault),
            ("STOP 150 701\n", VrrpState::Stop),
        ] {
            let r = judge(Some(line), Some(KEEPALIVED), Some(KEEPALIVED));
            assert_eq!(
                r,
                Report {
                    state,
                    priority: Some(
                        line.split(' ')
                            .nth(1)
                            .and_then(|p| p.parse().ok())
                            .expect("priority")
                    ),
                    note: None
                }
            );
        }
    }

    #[test]
    fn a_report_from_a_process_that_is_gone_is_unknown_not_its_old_state() {
        // keepalived was killed: its pidfile names no live process.
        let r = judge(Some("MASTER 150 701\n"), None, None);
        assert!(note(&r).contains("not running"), "{r:?}");
        // keepalived restarted (or respawned its VRRP child), and the
        // file is the dead process's.
        let r = judge(Some("MASTER 150 701\n"), Some(KEEPALIVED), None);
        assert!(
            note(&r).contains("MASTER") && note(&r).contains("701"),
            "{r:?}"
        );
        // The pid now belongs to a process that is not keepalived's child.
        let r = judge(Some("MASTER 150 701\n"), Some(KEEPALIVED), Some(1));
        assert!(note(&r).contains("no longer"), "{r:?}");
    }

    #[test]
    fn no_or_unreadable_report_is_unknown() {
        let r = judge(None, Some(KEEPALIVED), Some(KEEPALIVED));
        assert!(note(&r).contains("has not reported"), "{r:?}");
        for bad in [
            "",
            "MASTER\n",
            "SLAVE 150 701\n",
            "MASTER 150 701 extra\n",
            "MASTER 999 701\n",
        ] {
            let r = judge(Some(bad), Some(KEEPALIVED), Some(KEEPALIVED));
            assert!(
                note(&r).contains("not `STATE PRIORITY PID`"),
                "{bad:?}: {r:?}"
            );
        }
    }

    #[test]
    fn parent_comes_from_after_the_last_parenthesis_and_zombies_have_none() {
        assert_eq!(parse_stat("701 (keepalived) S 700 701 700 0 -1"), Some(700));
        assert_eq!(parse_stat("9 (a) b (c) R 3 9 9 0"), Some(3));
        assert_eq!(parse_stat("701 (keepalived) Z 700 701 700 0"), None);
        assert_eq!(parse_stat("701 keepalived S 700"), None);
    }

    #[test]
    fn addresses_are_read_from_the_namespace_files_as_the_kernel_writes_them() {
        let trie = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 0.0.0.0\n        /0 universe UNICAST\n\
                    \x20    +-- 10.0.0.0/24 2 0 2\n        |-- 10.0.0.1\n           /32 host LOCAL\n\
                    \x20       |-- 10.0.0.100\n           /32 host LOCAL\n\
                    \x20       |-- 10.0.0.255\n           /32 link BROADCAST\n\
                    Local:\n        |-- 10.0.0.1\n           /32 host LOCAL\n";
        assert_eq!(fib_trie_local(trie), ["10.0.0.1", "10.0.0.100"]);
        let v6 = "00000000000000000000000000000001 01 80 10 80       lo\n\
                  fd000000000000000000000000000010 04 40 00 82     eth0\n";
        assert_eq!(if_inet6(v6), ["::1", "fd00::10"]);
        let local = ["10.0.0.100".to_string(), "fd00::10".to_string()];
        let vip = ["10.0.0.100/24".to_string(), "fd00:0::10/64".to_string()];
        assert_eq!(held(&vip, &local), (vip.to_vec(), true));
        assert_eq!(held(&vip, &local[..1]), (vip[..1].to_vec(), false));
    }

    #[test]
    fn warnings_name_where_state_and_addresses_disagree() {
        let vip = ["10.0.0.10/24".to_string()];
        let stale = disagreement(VrrpState::Unknown, false, &vip, true).expect("stale VIP");
        assert!(stale.starts_with("stale VIP: 10.0.0.10/24"), "{stale}");
        assert_eq!(disagreement(VrrpState::Unknown, false, &[], false), None);
        assert_eq!(disagreement(VrrpState::Master, true, &vip, true), None);
        assert_eq!(disagreement(VrrpState::Backup, true, &[], false), None);
        assert_eq!(disagreement(VrrpState::Fault, true, &[], false), None);
        let lost = disagreement(VrrpState::Master, true, &[], false).expect("MASTER without VIP");
        assert!(lost.contains("present: none"), "{lost}");
        let kept = disagreement(VrrpState::Fault, true, &vip, true).expect("FAULT with VIP");
        assert!(kept.contains("says FAULT but 10.0.0.10/24"), "{kept}");
    }

    #[test]
    fn the_gate_reads_the_running_keepalived_and_the_addresses_of_each_instance() {
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut manifest = Manifests::load(&repo.join("manifests"))
            .expect("example manifests")
            .manifest;
        let root = tempfile::tempdir().expect("root");
        let layout = Layout::new(root.path());
        let gate = KeepalivedGate::of(&manifest, "lb1", &layout).expect("lb1 runs keepalived");
        let vip = manifest.vips["edge"].addresses.clone();
        assert_eq!(gate.instances, [("edge".to_string(), vip.clone())]);
        assert_eq!(gate.pidfile, layout.path("/run/keepalived.pid"));
        let dir = layout.path(STATE_DIR);
        std::fs::create_dir_all(&dir).expect("state dir");
        let file = dir.join("edge.state");
        let parent = |pid| (pid == VRRP).then_some(KEEPALIVED);
        let here: Vec<String> = vip.iter().map(|a| bare(a).to_string()).collect();
        let read = |keepalived, parent: &dyn Fn(u32) -> Option<u32>, local: &[String]| {
            let mut seen = gate.observe_with(keepalived, parent, local);
            assert_eq!(seen.len(), 1);
            seen.remove(0)
        };

        let none = read(Some(KEEPALIVED), &parent, &[]);
        assert_eq!(none.state, VrrpState::Unknown, "no report yet");
        std::fs::write(&file, "MASTER 150 701\n").expect("state");
        let master = read(Some(KEEPALIVED), &parent, &here);
        assert_eq!((master.state, master.warning), (VrrpState::Master, None));
        assert_eq!(master.keepalived, Some(KEEPALIVED));
        let lost = read(Some(KEEPALIVED), &parent, &[]);
        assert!(lost.warning.is_some_and(|w| w.contains("says MASTER")));
        std::fs::write(&file, "BACKUP 100 701\n").expect("state");
        let kept = read(Some(KEEPALIVED), &parent, &here);
        assert!(kept.warning.is_some_and(|w| w.contains("says BACKUP")));
        // A report left by a VRRP process that is not the running
        // keepalived's, or with no keepalived running, is not this one's.
        assert_eq!(
            read(Some(KEEPALIVED), &|_| None, &[]).state,
            VrrpState::Unknown
        );
        assert_eq!(read(None, &parent, &[]).state, VrrpState::Unknown);

        // Nothing to ask on a node without keepalived or outside any VIP.
        assert_eq!(KeepalivedGate::of(&manifest, "lb9", &layout), None);
        manifest.vips.clear();
        assert_eq!(KeepalivedGate::of(&manifest, "lb1", &layout), None);
    }

    /// The shipped template writes where status reads.
    #[test]
    fn the_shipped_template_reports_into_the_state_dir() {
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
        let manifests = Manifests::load(&repo.join("manifests")).expect("example manifests");
        let templates = Templates::load(&repo.join("templates")).expect("templates");
        let catalog = Catalog::load_file(&repo.join("examples/catalog.yaml")).expect("catalog");
        for root in ["/", "/srv/demo/"] {
            let layout = Layout::new(root);
            let desired = manifests.for_node("lb1").expect("lb1");
            let set = render(&desired, &catalog, &templates, &layout).expect("render");
            let conf = String::from_utf8_lossy(&set.files["keepalived"].bytes).into_owned();
            let dir = format!("'{}'\"", layout.path(STATE_DIR).display());
            assert!(
                conf.lines()
                    .any(|l| l.trim_start().starts_with("notify \"") && l.ends_with(&dir)),
                "no notify hook writing to {dir}:\n{conf}"
            );
        }
    }
}
