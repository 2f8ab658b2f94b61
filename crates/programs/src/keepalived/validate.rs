//! `keepalived -t -f STAGED` in a throwaway network namespace that has the
//! interfaces the config names.
//!
//! `keepalived -t` refuses a config naming an interface that does not exist
//! on the checking machine (`Non-existent interface specified in
//! configuration`, exit 5), and the machine running the check (a CI runner,
//! the manifest author's laptop, or the node before a NIC rename) rarely has
//! the node's `eth7`. So the check runs as:
//!
//! ```text
//! unshare --net --pid --fork --kill-child=KILL [--map-root-user] -- /bin/sh -c SCRIPT converge-keepalived-check STAGED IFACE...
//! ```
//!
//! where SCRIPT creates each IFACE (a `dummy` link, or a `bridge` where the
//! kernel has no dummy driver, as on some VM kernels) and then `exec`s
//! `keepalived -t -f STAGED`. The path and the names are positional
//! arguments, never part of the script text. The namespaces have no name
//! and no other member, so they disappear with the process, even on
//! `SIGKILL`; keepalived is the init of its PID namespace, so the
//! processes it forks die with it, and it dies with converge (see
//! [`lineage`](crate::process::lineage)).
//! `--map-root-user` is added when not running as root (unprivileged user
//! namespaces must then be enabled).
//!
//! Interface names are collected from `interface X`, `dev X`, `iif X`,
//! `oif X`, `lvs_sync_daemon[_interface] X`, `interfaces X...` and the
//! lines of `track_interface { ... }` blocks, outside comments and quoted
//! strings; each must be a valid Linux name (`[A-Za-z0-9_.-]`, 1 to 15
//! bytes; the kernel also refuses `:`). Files pulled in with `include` are
//! not scanned, so interfaces named only there stay missing and the check
//! fails closed.
//!
//! What `-t` catches in 2.2.7 (verified, exit status 5 unless noted):
//! unknown keywords and blocks, unbalanced braces, out-of-range or
//! non-numeric values (VRID 300, `priority abc`, `advert_int abc`),
//! unknown `state` or `auth_type`, malformed VIPs and unicast peers,
//! `nopreempt` with `state MASTER`, a `track_script` naming no
//! `vrrp_script`, a `vrrp_script` whose program is missing or insecure
//! (world-writable), a `script_user` that does not exist (or, without one,
//! a missing default `keepalived_script` user), and scripts configured
//! without `enable_script_security` (exit 6, `SECURITY VIOLATION`).
//! Script paths and users are looked up on the checking machine.
//!
//! What it does not catch: a missing `notify_*` script (exit 0), extra
//! tokens after a value (`router_id a b c`), and — exit 0 with only a
//! message — a missing config file or `include` target (`Config files
//! missing ...`), which this module turns into a refusal. An empty file also
//! exits 0 and would run keepalived with no VRRP instance at all, dropping
//! every VIP on the node; it is refused before keepalived runs.
//!
//! When not root, files owned by root show up as owned by the overflow
//! user inside the user namespace, so keepalived calls root-owned scripts
//! insecure (`Disabling track script ... due to insecure`); such a refusal
//! carries a note saying so.

use std::process::Command;
use std::time::Duration;

use crate::check::{run_checked, Candidate, CheckFailure, ValidateError, MAX_LINES};
use crate::process;

/// Sets up the interfaces, then becomes keepalived. `$1` is the candidate,
/// the rest are interface names; exit 97 means the setup failed.
const SCRIPT: &str = r#"file=$1; shift
PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
for name in "$@"; do
  ip link show dev "$name" >/dev/null 2>&1 && continue
  ip link add "$name" type dummy 2>/dev/null || ip link add "$name" type bridge || {
    echo "converge: cannot create interface $name in the scratch network namespace" >&2
    exit 97
  }
  ip link set "$name" up || exit 97
done
exec keepalived -t -f "$file"
"#;

/// Exit status of [`SCRIPT`] when it could not build the namespace.
const SETUP_FAILED: i32 = 97;

/// The most interfaces one config may make the check create.
const MAX_INTERFACES: usize = 256;

// Long on purpose: the scratch namespace's set-up, the check and the
// verdict, in the order they run; split, each piece would need the others'
// state.
pub(crate) fn check(candidate: &Candidate<'_>, timeout: Duration) -> Result<(), ValidateError> {
    let shown = format!("keepalived -t -f {}", candidate.staged.display());
    let refuse = |how: &str, output: String| {
        Err(ValidateError::new(
            candidate,
            shown.clone(),
            CheckFailure::Rejected(how.to_string()),
            output,
        ))
    };
    let text = String::from_utf8_lossy(&candidate.file.bytes);
    let tokens = tokenize(&text);
    if tokens.is_empty() {
        return refuse(
            "refused before running keepalived",
            "the candidate holds no configuration at all; keepalived -t accepts an empty \
             file, and keepalived would then run with no VRRP instance, releasing every VIP"
                .to_string(),
        );
    }
    let names = match interfaces(&tokens) {
        Ok(n) => n,
        Err(e) => return refuse("refused before running keepalived", e),
    };
    let root = nix::unistd::geteuid().is_root();
    let mut cmd = Command::new(process::program("unshare"));
    // Its own PID namespace too, so keepalived and the processes it forks
    // die with converge (see `process::lineage`).
    cmd.args(["--net", "--pid", "--fork", "--kill-child=KILL"]);
    if !root {
        cmd.arg("--map-root-user");
    }
    cmd.args(["--", "/bin/sh", "-c", SCRIPT, "converge-keepalived-check"])
        .arg(candidate.staged)
        .args(&names);
    let shown = in_namespace(&shown, &names);
    let (status, output) =
        run_checked(candidate, &mut cmd, timeout).map_err(|e| ValidateError {
            command: shown.clone(),
            ..e
        })?;
    let excerpt = process::excerpt(output.lines(), MAX_LINES);
    let not_run = |output: String| {
        Err(ValidateError::new(
            candidate,
            shown.clone(),
            CheckFailure::NotRun,
            output,
        ))
    };
    if status.code() == Some(SETUP_FAILED) || output.starts_with("unshare:") {
        return not_run(format!(
            "{excerpt}\n(the command run was `{}`)",
            process::display(&cmd)
        ));
    }
    if !status.success() {
        let mut output = excerpt;
        if !root && output.contains("insecure") {
            output.push_str(
                "\nnote: the check ran without root, in a user namespace where root-owned \
                 scripts appear owned by nobody, so keepalived's script security refuses \
                 them; run the check as root to judge script security",
            );
        }
        return Err(ValidateError::new(
            candidate,
            shown.clone(),
            CheckFailure::Rejected(process::describe(status)),
            output,
        ));
    }
    if output.contains("Config files missing") {
        return Err(ValidateError::new(
            candidate,
            shown.clone(),
            CheckFailure::Rejected(
                "exit status 0, but keepalived could not read a config file".to_string(),
            ),
            excerpt,
        ));
    }
    Ok(())
}

/// The command as shown, with the interfaces of its scratch namespace.
fn in_namespace(shown: &str, names: &[String]) -> String {
    format!(
        "{shown} (in a scratch network namespace with {}: {})",
        if names.len() == 1 {
            "interface"
        } else {
            "interfaces"
        },
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    )
}

/// A word of the config, with its 1-based line number.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Token<'a> {
    text: &'a str,
    line: usize,
    quoted: bool,
}

/// Splits keepalived config text into words: `{` and `}` are words of
/// their own, `"..."` is one (quoted) word, `#` or `!` at the start of a
/// word comments out the rest of the line.
fn tokenize(text: &str) -> Vec<Token<'_>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line_no = n + 1;
        let mut rest = line;
        loop {
            rest = rest.trim_start();
            let Some(c) = rest.chars().next() else { break };
            match c {
                '#' | '!' => break,
                '{' | '}' => {
                    out.push(Token {
                        text: &rest[..1],
                        line: line_no,
                        quoted: false,
                    });
                    rest = &rest[1..];
                }
                '"' => {
                    let body = &rest[1..];
                    let end = body.find('"').unwrap_or(body.len());
                    out.push(Token {
                        text: &body[..end],
                        line: line_no,
                        quoted: true,
                    });
                    rest = body.get(end + 1..).unwrap_or("");
                }
                _ => {
                    let end = rest
                        .find(|c: char| c.is_whitespace() || matches!(c, '{' | '}' | '"'))
                        .unwrap_or(rest.len());
                    out.push(Token {
                        text: &rest[..end],
                        line: line_no,
                        quoted: false,
                    });
                    rest = &rest[end..];
                }
            }
        }
    }
    out
}

/// Keywords followed by one interface name.
const NAME_AFTER: &[&str] = &[
    "interface",
    "dev",
    "iif",
    "oif",
    "lvs_sync_daemon",
    "lvs_sync_daemon_interface",
];

/// The interface names the config uses, sorted and deduplicated.
fn interfaces(tokens: &[Token<'_>]) -> Result<Vec<String>, String> {
    let mut names: Vec<(&str, usize)> = Vec::new();
    let word = |i: usize| tokens.get(i).filter(|t| !t.quoted);
    let mut i = 0;
    while let Some(t) = tokens.get(i) {
        i += 1;
        if t.quoted {
            continue;
        }
        if NAME_AFTER.contains(&t.text) {
            if let Some(next) = word(i).filter(|n| n.line == t.line && !is_brace(n)) {
                names.push((next.text, next.line));
                i += 1;
            }
        } else if t.text == "interfaces" {
            while let Some(next) = word(i).filter(|n| n.line == t.line && !is_brace(n)) {
                names.push((next.text, next.line));
                i += 1;
            }
        } else if t.text == "track_interface" && word(i).is_some_and(|n| n.text == "{") {
            // One interface per line (`eth0 weight -10`) until `}`.
            i += 1;
            let mut last_line = 0;
            while let Some(n) = tokens.get(i) {
                if n.text == "}" && !n.quoted {
                    i += 1;
                    break;
                }
                if n.line != last_line && !n.quoted {
                    names.push((n.text, n.line));
                    last_line = n.line;
                }
                i += 1;
            }
        }
    }
    for (name, line) in &names {
        check_name(name).map_err(|why| format!("line {line}: interface name `{name}` {why}"))?;
    }
    let mut unique: Vec<String> = names.iter().map(|(n, _)| (*n).to_string()).collect();
    unique.sort();
    unique.dedup();
    if unique.len() > MAX_INTERFACES {
        return Err(format!(
            "the config names {} interfaces; the check creates at most {MAX_INTERFACES}",
            unique.len()
        ));
    }
    Ok(unique)
}

fn is_brace(t: &Token<'_>) -> bool {
    !t.quoted && (t.text == "{" || t.text == "}")
}

/// Linux interface name rules (`dev_valid_name`), narrowed to a plain
/// charset.
fn check_name(name: &str) -> Result<(), &'static str> {
    if name.starts_with('$') {
        return Err("comes from a keepalived `$` variable, which the check cannot expand");
    }
    if name.is_empty() || name.len() > 15 {
        return Err("must be 1 to 15 characters long");
    }
    if name == "." || name == ".." {
        return Err("is not a valid interface name");
    }
    if name.contains(':') {
        return Err(
            "contains `:`, which Linux does not allow in interface names \
                    (`eth0:1` is an address label, not an interface)",
        );
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err("may only contain letters, digits, `_`, `.` and `-`");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(text: &str) -> Result<Vec<String>, String> {
        interfaces(&tokenize(text))
    }

    #[test]
    fn collects_interface_names_from_every_place_keepalived_takes_one() {
        let text = r#"
global_defs {
    lvs_sync_daemon bond0 VI_1
}
vrrp_instance VI_1 {   # interface in_a_comment
    interface eth7
    ! dev in_a_bang_comment
    virtual_ipaddress {
        192.0.2.10/24 dev eth8 label eth8:vip
    }
    virtual_routes {
        src 192.0.2.10 to 198.51.100.0/24 via 192.0.2.1 dev vlan.100
    }
    virtual_rules {
        from 192.0.2.10 table 100 iif eth10
    }
    track_interface {
        eth9 weight -10
        eth11
    }
    notify_master "/bin/ip link set dev quoted_dev up"
}
"#;
        assert_eq!(
            names(text),
            Ok(
                ["bond0", "eth10", "eth11", "eth7", "eth8", "eth9", "vlan.100"]
                    .map(String::from)
                    .to_vec()
            )
        );
    }

    #[test]
    fn refuses_names_linux_would_refuse() {
        let err = names("vrrp_instance X {\n interface eth0:1\n}\n").expect_err("colon");
        assert!(err.starts_with("line 2: interface name `eth0:1`"), "{err}");
        assert!(names("interface abcdefghijklmnop\n").is_err(), "16 chars");
        assert!(names("interface abcdefghijklmno\n").is_ok(), "15 chars");
        assert!(names("interface et;h0\n").is_err());
        assert!(names("interface $IFACE\n").is_err());
        assert!(names("interface ..\n").is_err());
    }

    #[test]
    fn braces_and_quotes_split_words() {
        let t = tokenize("a{b \"c d\"}\n# x\n  e ! f");
        let words: Vec<(&str, usize, bool)> =
            t.iter().map(|t| (t.text, t.line, t.quoted)).collect();
        assert_eq!(
            words,
            vec![
                ("a", 1, false),
                ("{", 1, false),
                ("b", 1, false),
                ("c d", 1, true),
                ("}", 1, false),
                ("e", 3, false)
            ]
        );
        assert!(tokenize("# only a comment\n\n   ! another\n").is_empty());
    }
}
