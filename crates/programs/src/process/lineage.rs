//! Children that die with converge, and the record that lets the next run
//! reap the few that might not.
//!
//! Three layers, each covering what the one before cannot:
//!
//! 1. **Parent-death signal.** Every child is started through util-linux
//!    `setpriv --pdeathsig KILL --` (2.33 or later; Debian 12 ships 2.38),
//!    which sets `PR_SET_PDEATHSIG` and then `exec`s the program, so the
//!    kernel sends it `SIGKILL` when converge dies, `kill -9` included,
//!    with no `unsafe` `pre_exec` in converge. The signal fires when the
//!    *thread* that spawned the child exits; the runner waits on the
//!    thread that spawned, so that thread outlives the child. It is not
//!    inherited by the child's own children, and the kernel clears it when
//!    the child changes credentials (`pgbouncer -u postgres`, a setuid
//!    binary).
//! 2. **A PID namespace** for children that change credentials or leave
//!    processes behind ([`Options::pid_namespace`](super::Options), root
//!    only, since an unprivileged one would need a user namespace that
//!    makes the program believe it is root): `unshare --pid --fork
//!    --kill-child=KILL -- /bin/sh -c '"$@"; exit $?' converge-init PROGRAM
//!    ...`. The shell is the namespace's init and never changes
//!    credentials, so its parent-death signal (set by `--kill-child`)
//!    holds; when it dies the kernel kills everything in the namespace,
//!    grandchildren and setuid programs included. `unshare` itself is the
//!    `setpriv` child of layer 1. The program sees its own pid as 2, so
//!    the pidfile it writes is of no use outside; nothing here reads it.
//!    Not used for reload commands (a daemon they start must survive them)
//!    nor for a manifest's validator commands (a check that looks at a
//!    running process by pid would stop seeing it).
//! 3. **A record of started children**, for the window layer 1 cannot
//!    close (converge killed between the `fork` and `setpriv`'s `prctl`)
//!    and for children of children layer 2 does not cover: one empty file
//!    per running child in `converge-children-UID` under the temp dir
//!    (`$TMPDIR`), named `OWNER-OWNERSTART-CHILD-CHILDSTART-KIND`, where the
//!    start times are field 22 of `/proc/PID/stat` and `KIND` is `group`
//!    (kill its process group) or `leader` (a reload command: kill only
//!    the child, never the daemon it may have started). The file is
//!    removed when the child is reaped. The next converge process to start
//!    a child, and `apply` when it takes its lock, reads the files of
//!    owners that are gone (pid dead, or reused: start time differs) and
//!    kills each child whose pid still has the recorded start time, so a
//!    stranger that reused the pid is never signalled. The directory must
//!    be ours (owner, mode `0700`, not a symlink) or nothing is recorded
//!    nor reaped from it.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::{access, geteuid, AccessFlags, Pid};

/// The namespace init: runs the program as its child and waits for it.
/// Not `exec`, so the init never changes credentials.
const INIT: &str = r#""$@"; exit $?"#;

/// `cmd` started through `setpriv --pdeathsig KILL`, inside its own PID
/// namespace when `pid_namespace` is set and converge runs as root.
///
/// # Errors
///
/// The program is not an executable file (found on `PATH` when its name
/// has no `/`), as spawning it directly would have said.
pub(super) fn wrap(cmd: &Command, pid_namespace: bool) -> io::Result<Command> {
    let program = resolve(cmd)?;
    let mut wrapped = Command::new(super::program("setpriv"));
    wrapped.args(["--pdeathsig", "KILL", "--"]);
    if pid_namespace && geteuid().is_root() {
        wrapped
            .arg(super::program("unshare"))
            .args(["--pid", "--fork", "--kill-child=KILL", "--"])
            .args(["/bin/sh", "-c", INIT, "converge-init"]);
    }
    wrapped.arg(program).args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(v) => wrapped.env(key, v),
            None => wrapped.env_remove(key),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        wrapped.current_dir(dir);
    }
    Ok(wrapped)
}

/// The file `cmd` would execute: its program, relative to its working
/// directory when it has a `/`, else the first executable of that name on
/// the `PATH` it will see.
fn resolve(cmd: &Command) -> io::Result<PathBuf> {
    let program = Path::new(cmd.get_program());
    let executable = |p: &Path| p.is_file() && access(p, AccessFlags::X_OK).is_ok();
    let found = if program.as_os_str().as_bytes().contains(&b'/') {
        let p = match cmd.get_current_dir() {
            Some(dir) if program.is_relative() => dir.join(program),
            _ => program.to_path_buf(),
        };
        executable(&p).then_some(p)
    } else {
        let path = cmd
            .get_envs()
            .find(|(k, _)| *k == "PATH")
            .map_or_else(
                || std::env::var_os("PATH"),
                |(_, v)| v.map(OsStr::to_os_string),
            )
            .unwrap_or_default();
        std::env::split_paths(&path)
            .map(|dir| dir.join(program))
            .find(|p| executable(p))
    };
    found.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("No such file or executable: {}", program.display()),
        )
    })
}

/// Field 22 of `/proc/PID/stat`: when the process started, in clock ticks
/// since boot. With the pid, it names one process for the machine's
/// uptime.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses; the
    // fields after it start at the last `)`, with the state (field 3).
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The record of one running child; remove it once the child is reaped.
#[derive(Debug)]
pub(super) struct Record(PathBuf);

impl Record {
    /// Records `child`; `group` says whether a leftover is killed with its
    /// whole process group. `None` (logged) when it cannot be recorded:
    /// the child runs all the same, covered by layers 1 and 2.
    pub(super) fn create(child: u32, group: bool) -> Option<Record> {
        let dir = own_dir()?;
        let (me, my_start) = (std::process::id(), start_time(std::process::id())?);
        // A child that already exited has no start time to record.
        let start = start_time(child)?;
        let kind = if group { "group" } else { "leader" };
        let path = dir.join(format!("{me}-{my_start}-{child}-{start}-{kind}"));
        match fs::File::create(&path) {
            Ok(_) => Some(Record(path)),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot record a started child");
                None
            }
        }
    }

    /// Forgets the child: it has been reaped.
    pub(super) fn remove(self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// One parsed record name.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    owner: u32,
    owner_start: u64,
    child: u32,
    child_start: u64,
    group: bool,
}

fn parse(name: &str) -> Option<Entry> {
    let mut parts = name.split('-');
    let entry = Entry {
        owner: parts.next()?.parse().ok()?,
        owner_start: parts.next()?.parse().ok()?,
        child: parts.next()?.parse().ok()?,
        child_start: parts.next()?.parse().ok()?,
        group: match parts.next()? {
            "group" => true,
            "leader" => false,
            _ => return None,
        },
    };
    parts.next().is_none().then_some(entry)
}

/// Kills what converge processes that are gone left running, as their
/// records say, and removes those records; returns how many were killed.
pub fn reap_leftovers() -> usize {
    let Some(dir) = own_dir() else {
        return 0;
    };
    let Ok(entries) = fs::read_dir(&dir) else {
        return 0;
    };
    let mut killed = 0;
    for file in entries.flatten() {
        let name = file.file_name();
        let Some(entry) = name.to_str().and_then(parse) else {
            continue;
        };
        if start_time(entry.owner) == Some(entry.owner_start) {
            continue; // its converge still runs and owns it
        }
        if start_time(entry.child) == Some(entry.child_start) {
            let Ok(raw) = i32::try_from(entry.child) else {
                continue;
            };
            let pid = Pid::from_raw(raw);
            // The leader is alive with its recorded start time, so it is
            // our child and its pid is still its group id.
            let sent = if entry.group {
                killpg(pid, Signal::SIGKILL)
            } else {
                kill(pid, Signal::SIGKILL)
            };
            if sent.is_ok() {
                killed += 1;
                tracing::warn!(
                    pid = entry.child,
                    owner = entry.owner,
                    group = entry.group,
                    "killed a child left running by a converge process that is gone"
                );
            }
        }
        let _ = fs::remove_file(file.path());
    }
    killed
}

/// The record directory, created if missing; `None` (logged) unless it is
/// a real directory owned by us that nobody else may write or read.
fn own_dir() -> Option<PathBuf> {
    let dir = record_dir();
    let _ = fs::DirBuilder::new().mode(0o700).create(&dir);
    match fs::symlink_metadata(&dir) {
        Ok(m) if m.is_dir() && m.uid() == geteuid().as_raw() && m.mode() & 0o077 == 0 => Some(dir),
        Ok(_) => {
            tracing::warn!(
                dir = %dir.display(),
                "not recording children: the directory is not ours alone"
            );
            None
        }
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "not recording children");
            None
        }
    }
}

/// `converge-children-UID` in the temp dir.
pub fn record_dir() -> PathBuf {
    record_dir_in(&std::env::temp_dir())
}

/// `converge-children-UID` in `tmp`: where a converge process whose
/// `TMPDIR` is `tmp` records its children.
pub fn record_dir_in(tmp: &Path) -> PathBuf {
    tmp.join(format!("converge-children-{}", geteuid().as_raw()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_names_round_trip_and_reject_anything_else() {
        assert_eq!(
            parse("10-20-30-40-group"),
            Some(Entry {
                owner: 10,
                owner_start: 20,
                child: 30,
                child_start: 40,
                group: true
            })
        );
        assert_eq!(parse("10-20-30-40-leader").map(|e| e.group), Some(false));
        assert_eq!(parse("10-20-30-40-other"), None);
        assert_eq!(parse("10-20-30-40-group-1"), None);
        assert_eq!(parse("10-20-30"), None);
        assert_eq!(parse(".tmp"), None);
    }

    #[test]
    fn start_time_reads_past_a_command_name_with_parentheses() {
        let me = std::process::id();
        let t = start_time(me).expect("own start time");
        assert_eq!(start_time(me), Some(t), "stable");
        assert!(start_time(u32::MAX).is_none());
    }

    #[test]
    fn wrapping_keeps_program_arguments_environment_and_directory() {
        let mut cmd = Command::new("prog");
        cmd.arg("a b")
            .env("K", "v")
            .env_remove("GONE")
            .current_dir("/");
        assert!(wrap(&cmd, false).is_err(), "no such program");
        let mut cmd = Command::new("sh");
        cmd.arg("a b")
            .env("K", "v")
            .env_remove("GONE")
            .current_dir("/");
        let w = wrap(&cmd, false).expect("sh is on PATH");
        let args: Vec<_> = w
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(&args[..3], ["--pdeathsig", "KILL", "--"]);
        assert!(args[3].ends_with("/sh"), "{args:?}");
        assert_eq!(args[4], "a b");
        assert_eq!(w.get_envs().count(), 2);
        assert_eq!(w.get_current_dir(), Some(Path::new("/")));
        assert!(record_dir_in(Path::new("/t")).starts_with("/t"));
    }
}
