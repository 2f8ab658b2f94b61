//! A real `redis-server` per test: its own temp dir, a free loopback port,
//! no persistence, started in the foreground as our child and stopped by
//! its pid on drop.
//!
//! [`command`] speaks RESP over a plain TCP connection, so a test can ask a
//! server directly, or through HAProxy's frontend, exactly as a client
//! would, without depending on `redis-cli`. A failover here is the one a
//! Sentinel performs, done by hand: [`Redis::promote`] (`REPLICAOF NO ONE`)
//! on the replica, [`Redis::follow`] (`REPLICAOF host port`) on the old
//! primary.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::process::Child;
use crate::{free_port, wait};

/// How long starting a [`Redis`] waits for the server to answer `PING`.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A running `redis-server` on 127.0.0.1, stopped by pid on drop.
#[derive(Debug)]
pub struct Redis {
    child: Child,
    port: u16,
    /// Its `requirepass` (and `masterauth`), if any.
    password: Option<String>,
    log: PathBuf,
    // Last: the directory goes after the server stopped.
    _dir: tempfile::TempDir,
}

impl Redis {
    /// Starts a primary.
    ///
    /// # Errors
    ///
    /// No `redis-server`, or it does not answer within [`DEADLINE`] (the
    /// message carries its log).
    pub fn primary() -> Result<Self, String> {
        Self::start(None, None)
    }

    /// Starts a replica of the server on 127.0.0.1:`primary` and waits
    /// until its link to the primary is up.
    ///
    /// # Errors
    ///
    /// As [`Redis::primary`], or the link is not up within [`DEADLINE`].
    pub fn replica_of(primary: u16) -> Result<Self, String> {
        let r = Self::start(Some(primary), None)?;
        r.wait_linked()?;
        Ok(r)
    }

    /// Starts a primary that requires `password` (`requirepass`).
    ///
    /// # Errors
    ///
    /// As [`Redis::primary`].
    pub fn primary_with_password(password: &str) -> Result<Self, String> {
        Self::start(None, Some(password))
    }

    /// Starts a replica of the primary on `primary` that requires, and
    /// replicates with, `password`.
    ///
    /// # Errors
    ///
    /// As [`Redis::replica_of`].
    pub fn replica_with_password(primary: u16, password: &str) -> Result<Self, String> {
        let r = Self::start(Some(primary), Some(password))?;
        r.wait_linked()?;
        Ok(r)
    }

    fn start(primary: Option<u16>, password: Option<&str>) -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("converge-redis-")
            .tempdir()
            .map_err(|e| format!("cannot create a temp dir: {e}"))?;
        let port = free_port();
        let log = dir.path().join("redis.log");
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir.path())
            .arg("--logfile")
            .arg(&log);
        if let Some(p) = primary {
            cmd.args(["--replicaof", "127.0.0.1", &p.to_string()]);
        }
        if let Some(pw) = password {
            cmd.args(["--requirepass", pw, "--masterauth", pw]);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = Child::spawn(format!("redis-server :{port}"), &mut cmd)
            .map_err(|e| format!("{e} (install the redis-server package)"))?;
        let mut r = Self {
            child,
            port,
            password: password.map(str::to_string),
            log,
            _dir: dir,
        };
        let ready = wait::until(DEADLINE, &format!("redis-server on {port}"), || {
            command_as(port, password, &["PING"]).as_deref() == Ok("PONG")
        });
        if let Err(e) = ready {
            r.child.stop();
            return Err(format!("{e}\n{}", r.log()));
        }
        Ok(r)
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its log.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `role:…` from `INFO replication`: `master` or `slave`.
    pub fn role(&self) -> Option<String> {
        let info = self.command(&["INFO", "replication"]).ok()?;
        info.lines()
            .find_map(|l| l.trim().strip_prefix("role:").map(str::to_string))
    }

    /// Makes this server a primary (`REPLICAOF NO ONE`), as Sentinel does
    /// with the replica it promotes.
    ///
    /// # Errors
    ///
    /// The server refused or did not answer.
    pub fn promote(&self) -> Result<(), String> {
        self.expect_ok(&["REPLICAOF", "NO", "ONE"])
    }

    /// Makes this server a replica of 127.0.0.1:`primary` (`REPLICAOF`),
    /// as Sentinel does with a demoted primary, and waits until the link is
    /// up.
    ///
    /// # Errors
    ///
    /// The server refused, or the link is not up within [`DEADLINE`].
    pub fn follow(&self, primary: u16) -> Result<(), String> {
        self.expect_ok(&["REPLICAOF", "127.0.0.1", &primary.to_string()])?;
        self.wait_linked()
    }

    fn wait_linked(&self) -> Result<(), String> {
        wait::until(
            DEADLINE,
            &format!("redis {} to replicate", self.port),
            || {
                self.command(&["INFO", "replication"])
                    .is_ok_and(|i| i.contains("master_link_status:up"))
            },
        )
        .map_err(|e| format!("{e}\n{}", self.log()))
    }

    /// Sends one command to this server, authenticated when it has a
    /// password (see [`command_as`]).
    ///
    /// # Errors
    ///
    /// As [`command`].
    pub fn command(&self, args: &[&str]) -> Result<String, String> {
        command_as(self.port, self.password.as_deref(), args)
    }

    fn expect_ok(&self, args: &[&str]) -> Result<(), String> {
        match self.command(args)?.as_str() {
            "OK" => Ok(()),
            other => Err(format!("{args:?} on redis {}: {other}", self.port)),
        }
    }

    /// Stops the server now (`SIGTERM`, then `SIGKILL`). Idempotent.
    pub fn stop(&mut self) {
        self.child.stop();
    }
}

/// Sends one command to 127.0.0.1:`port` (a server, or a proxy in front of
/// one) and returns its reply: a simple or bulk string's text, an integer's
/// digits, `(nil)` for a null bulk string.
///
/// # Errors
///
/// The connection failed, timed out (5 s), or the reply is an error
/// (`-READONLY …` from a replica, say; the text is the message).
pub fn command(port: u16, args: &[&str]) -> Result<String, String> {
    command_as(port, None, args)
}

/// [`command`], after `AUTH password` on the same connection when a
/// password is given (a server with `requirepass`, or a proxy in front of
/// one).
///
/// # Errors
///
/// As [`command`]; a refused `AUTH` is an error naming `AUTH` only.
pub fn command_as(port: u16, password: Option<&str>, args: &[&str]) -> Result<String, String> {
    let what = format!("{} on 127.0.0.1:{port}", args.join(" "));
    let conn = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("{what}: {e}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| format!("{what}: {e}"))?;
    let mut reader = BufReader::new(&conn);
    if let Some(pw) = password {
        send(&conn, &["AUTH", pw]).map_err(|e| format!("AUTH on 127.0.0.1:{port}: {e}"))?;
        reply(&mut reader, &format!("AUTH on 127.0.0.1:{port}"))?;
    }
    send(&conn, args).map_err(|e| format!("{what}: {e}"))?;
    reply(&mut reader, &what)
}

/// Writes `args` as one RESP array.
fn send(conn: &TcpStream, args: &[&str]) -> std::io::Result<()> {
    let mut request = format!("*{}\r\n", args.len());
    for a in args {
        request.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    (&*conn).write_all(request.as_bytes())
}

/// Reads one reply; `what` names the command in errors.
fn reply(reader: &mut BufReader<&TcpStream>, what: &str) -> Result<String, String> {
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .map_err(|e| format!("{what}: {e}"))?;
    let line = line.trim_end();
    let (kind, rest) = line.split_at(line.len().min(1));
    match kind {
        "+" | ":" => Ok(rest.to_string()),
        "-" => Err(format!("{what}: {rest}")),
        "$" => {
            let len: i64 = rest
                .parse()
                .map_err(|_| format!("{what}: bad bulk length {rest:?}"))?;
            let Ok(len) = usize::try_from(len) else {
                return Ok("(nil)".to_string());
            };
            let mut body = vec![0; len + 2];
            reader
                .read_exact(&mut body)
                .map_err(|e| format!("{what}: {e}"))?;
            body.truncate(len);
            Ok(String::from_utf8_lossy(&body).into_owned())
        }
        "" => Err(format!("{what}: connection closed without a reply")),
        _ => Err(format!("{what}: unexpected reply {line:?}")),
    }
}
