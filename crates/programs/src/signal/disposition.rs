//! What a running process would do with a signal sent now, read from
//! `/proc`.
//!
//! Sending a reload signal is only safe once the process acts on it.
//! HAProxy 2.6 in master-worker mode shows why: its master logs
//! `Loading success.` before it installs its handlers, so a `SIGUSR2` sent
//! at startup takes the default action and ends the master; and during the
//! re-exec a reload performs, `SIGUSR2` is blocked, the new image starts
//! with no handler, sets the signal to `SIG_IGN` and only then installs the
//! handler, so a signal sent in that window stays pending and is thrown
//! away, and the second of two quick reloads never happens.
//!
//! The kernel shows the answer, so this reads it rather than guessing with
//! a delay:
//! - `SigCgt` / `SigIgn` in `/proc/PID/status` (process-wide): a handler
//!   is installed / the signal is set to be ignored;
//! - `SigBlk` in `/proc/PID/task/TID/status`, one per thread: a
//!   process-directed signal goes to any thread that does not block it;
//! - a signalfd's `sigmask` in `/proc/PID/fdinfo/FD`: a program that blocks
//!   a signal and reads it from a signalfd (keepalived 2.2) handles it with
//!   no `SigCgt` bit at all, so `SigCgt` alone would refuse every
//!   keepalived reload.
//!
//! A program that waits for a blocked signal with `sigwait` looks the same
//! as one that will drop it, and is refused; a `command` reload
//! (`kill -HUP ...`) is the way to reload it. What is read is a snapshot:
//! a process can change its mind between the read and the signal, which
//! no reader can rule out, but the windows above are milliseconds to
//! seconds wide and this closes them.

use std::fs;
use std::io;
use std::path::Path;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// What `pid` would do with a signal delivered now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// A handler is installed and some thread has the signal unblocked.
    Caught,
    /// Blocked in every thread and read from a signalfd.
    SignalFd,
    /// Set to `SIG_IGN`: the signal would be lost.
    Ignored,
    /// A handler is installed but every thread blocks the signal and no
    /// signalfd reads it: it would wait, pending, and may be discarded.
    Blocked,
    /// No handler: the default action would apply, which for most reload
    /// signals ends the process.
    Default,
}

impl Disposition {
    /// Whether a signal sent now is acted on.
    pub(crate) fn handles(self) -> bool {
        matches!(self, Disposition::Caught | Disposition::SignalFd)
    }
}

/// The bit for `sig` in a `/proc` signal mask (bit N-1 for signal N).
fn bit(sig: Signal) -> u64 {
    1u64 << (sig as i32 - 1)
}

/// Reads what `pid` would do with `sig`.
///
/// # Errors
///
/// `/proc/PID/status` cannot be read or lacks the `SigCgt`/`SigIgn`/
/// `SigBlk` lines (the process is gone, `/proc` is not mounted or hides
/// it).
pub fn read(pid: Pid, sig: Signal) -> io::Result<Disposition> {
    let proc_dir = Path::new("/proc").join(pid.to_string());
    let status = fs::read_to_string(proc_dir.join("status"))?;
    let caught = mask(&status, "SigCgt")?;
    let ignored = mask(&status, "SigIgn")?;
    let blocked = blocked_in_every_thread(&proc_dir, &status, bit(sig))?;
    Ok(classify(sig, caught, ignored, blocked, || {
        signalfd_reads(&proc_dir, bit(sig))
    }))
}

/// The decision, given the masks; `signalfd` is only asked when the
/// signal is blocked everywhere (it reads every signalfd's fdinfo).
fn classify(
    sig: Signal,
    caught: u64,
    ignored: u64,
    blocked_everywhere: bool,
    signalfd: impl FnOnce() -> bool,
) -> Disposition {
    let b = bit(sig);
    if blocked_everywhere {
        // A blocked signal is queued even when ignored; a signalfd then
        // takes it whatever the handler says.
        if signalfd() {
            Disposition::SignalFd
        } else if ignored & b != 0 {
            Disposition::Ignored
        } else if caught & b != 0 {
            Disposition::Blocked
        } else {
            Disposition::Default
        }
    } else if ignored & b != 0 {
        Disposition::Ignored
    } else if caught & b != 0 {
        Disposition::Caught
    } else {
        Disposition::Default
    }
}

/// The hex mask on the `NAME:` line of a `/proc` status file.
fn mask(status: &str, name: &str) -> io::Result<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("no readable `{name}:` line"),
            )
        })
}

/// True when no thread of the process can take a signal with mask `b`.
/// Threads that exit while being read are skipped; if no thread can be
/// read, the process's own line (its main thread) decides.
fn blocked_in_every_thread(proc_dir: &Path, status: &str, b: u64) -> io::Result<bool> {
    let mut seen = false;
    if let Ok(tasks) = fs::read_dir(proc_dir.join("task")) {
        for task in tasks.flatten() {
            let Ok(text) = fs::read_to_string(task.path().join("status")) else {
                continue;
            };
            let Ok(blocked) = mask(&text, "SigBlk") else {
                continue;
            };
            if blocked & b == 0 {
                return Ok(false);
            }
            seen = true;
        }
    }
    if seen {
        Ok(true)
    } else {
        Ok(mask(status, "SigBlk")? & b != 0)
    }
}

/// True when one of the process's signalfds is set to read mask `b`.
/// Only descriptors that link to `anon_inode:[signalfd]` are opened, so a
/// pooler with thousands of client sockets costs one readlink each.
fn signalfd_reads(proc_dir: &Path, b: u64) -> bool {
    let Ok(fds) = fs::read_dir(proc_dir.join("fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        let is_signalfd = fs::read_link(fd.path())
            .is_ok_and(|target| target.as_os_str() == "anon_inode:[signalfd]");
        is_signalfd
            && fs::read_to_string(proc_dir.join("fdinfo").join(fd.file_name()))
                .ok()
                .and_then(|info| mask(&info, "sigmask").ok())
                .is_some_and(|m| m & b != 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const USR2: u64 = 1 << 11;

    #[test]
    fn masks_parse_as_hex_with_bit_n_minus_one_for_signal_n() {
        let status = "Name:\thaproxy\nSigQ:\t0/63\nSigPnd:\t0000000000000000\n\
                      SigBlk:\t0000000000000000\nSigIgn:\t0000000004001004\n\
                      SigCgt:\t0000000100716a03\n";
        assert_eq!(
            mask(status, "SigCgt").expect("SigCgt"),
            0x0000_0001_0071_6a03
        );
        assert_eq!(mask(status, "SigIgn").expect("SigIgn"), 0x0400_1004);
        assert!(mask(status, "SigCgt").expect("SigCgt") & bit(Signal::SIGUSR2) != 0);
        assert_eq!(bit(Signal::SIGHUP), 1);
        assert_eq!(bit(Signal::SIGUSR2), USR2);
        assert!(mask(status, "Sig").is_err(), "a prefix is not a field");
        assert!(mask("SigCgt:\tzz\n", "SigCgt").is_err());
    }

    // The masks below are what HAProxy 2.6.12's master and keepalived
    // 2.2.7 showed in /proc on Debian 12.

    #[test]
    fn a_haproxy_master_that_serves_handles_usr2() {
        let d = classify(Signal::SIGUSR2, 0x1_0071_6a03, 0x400_1004, false, || {
            panic!("signalfd is only asked when blocked")
        });
        assert_eq!(d, Disposition::Caught);
        assert!(d.handles());
    }

    #[test]
    fn a_re_executing_haproxy_master_does_not_handle_usr2() {
        // Just after execve: blocked, no handler.
        let blocked = 0x31_0a01 & USR2 != 0;
        assert!(blocked);
        let d = classify(Signal::SIGUSR2, 0x1_0000_0000, 0x400_1004, blocked, || {
            false
        });
        assert_eq!(d, Disposition::Default);
        // Then SIG_IGN, before the handler.
        let d = classify(Signal::SIGUSR2, 0x1_0070_2205, 0x400_1800, blocked, || {
            false
        });
        assert_eq!(d, Disposition::Ignored);
        // The old image while it handles the previous SIGUSR2: the handler
        // is still there but the signal is blocked until the exec.
        let d = classify(Signal::SIGUSR2, 0x1_0071_6a03, 0x400_1004, blocked, || {
            false
        });
        assert_eq!(d, Disposition::Blocked);
        assert!(!d.handles());
    }

    #[test]
    fn keepalived_reading_a_signalfd_handles_hup_with_no_sigcgt() {
        let blocked = 0x4000_0008_0001_4a03_u64 & bit(Signal::SIGHUP) != 0;
        let d = classify(Signal::SIGHUP, 0, 0xbfff_fff6_7ffa_b034, blocked, || true);
        assert_eq!(d, Disposition::SignalFd);
        assert!(d.handles());
    }

    #[test]
    fn no_handler_is_the_default_action() {
        let d = classify(Signal::SIGUSR2, 0, 0, false, || false);
        assert_eq!(d, Disposition::Default);
        assert!(!d.handles());
    }

    #[test]
    fn this_test_process_reads_as_not_handling_usr2() {
        // The test harness installs no SIGUSR2 handler.
        let d = read(Pid::this(), Signal::SIGUSR2).expect("read own /proc");
        assert_eq!(d, Disposition::Default);
    }
}
