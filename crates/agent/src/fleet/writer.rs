//! Writes a node's report to `<prefix>/nodes/<node>` under a session of
//! the node, and keeps the session alive.
//!
//! The report is written when its content changes, never on a timer: an
//! idle node sends only its session renewals (one every half TTL) and the
//! blocking query on `<prefix>/desired`. A session that expired or
//! vanished (the node's agent restarted, Consul lost its state) is
//! replaced and the report written again with it; on shutdown the
//! session is destroyed, so a stopped node reads as stale at once.
//!
//! The session's id is kept in a file under the state directory: a daemon
//! killed and started again takes its session back while it lives, instead
//! of waiting for it to expire before the key can be acquired again.

use std::path::PathBuf;
use std::time::Duration;

use converge_consul::{Backoff, Client};
use tokio::sync::watch;

use super::report::NodeReport;

/// Default session TTL (`converge run --report-ttl`).
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);

/// Where the report goes and how long its session lives.
#[derive(Debug, Clone)]
pub struct Target {
    /// `<prefix>/nodes/<node>`.
    pub key: String,
    /// The session's TTL.
    pub ttl: Duration,
    /// File keeping the session's id across restarts.
    pub session_file: PathBuf,
}

/// The session and what was last written with it.
struct Writer {
    client: Client,
    key: String,
    ttl: Duration,
    session_file: PathBuf,
    session: Option<String>,
    written: Option<NodeReport>,
}

/// Starts the writer: it writes every report `reports` carries to
/// `target`, until `shutdown` turns true. Needs a running tokio runtime.
pub fn spawn(
    client: Client,
    target: Target,
    mut reports: watch::Receiver<Option<NodeReport>>,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut w = Writer {
            client,
            key: target.key,
            ttl: target.ttl,
            session: std::fs::read_to_string(&target.session_file)
                .ok()
                .map(|s| s.trim().to_string()),
            session_file: target.session_file,
            written: None,
        };
        // The previous run's session, if it still lives.
        w.renew().await;
        let mut backoff = Backoff::for_consul();
        let mut renew = tokio::time::interval(target.ttl / 2);
        renew.tick().await;
        loop {
            let want = reports.borrow_and_update().clone();
            let mut pause = None;
            if let Some(report) = want {
                match w.write(&report).await {
                    Ok(()) => backoff.reset(),
                    Err(e) => {
                        tracing::warn!(key = %w.key, error = %e, "cannot write the node report; trying again");
                        pause = Some(backoff.next_delay());
                    }
                }
            }
            let stop = tokio::select! {
                () = stopped(&mut shutdown) => true,
                _ = tokio::time::sleep(pause.unwrap_or_default()), if pause.is_some() => false,
                changed = reports.changed(), if pause.is_none() => changed.is_err(),
                _ = renew.tick() => {
                    w.renew().await;
                    false
                }
            };
            if stop {
                break;
            }
        }
        w.close().await;
    })
}

/// Returns once `shutdown` turns true (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

impl Writer {
    /// Writes `report` unless the same content is already written with a
    /// live session.
    async fn write(&mut self, report: &NodeReport) -> Result<(), converge_consul::Error> {
        if self.session.is_some() && self.written.as_ref().is_some_and(|w| w.same_as(report)) {
            return Ok(());
        }
        let body = serde_json::to_vec_pretty(report).unwrap_or_default();
        for _ in 0..2 {
            let session = match &self.session {
                Some(s) => s.clone(),
                None => {
                    let name = format!("converge report {}", report.node);
                    let s = self.client.session_create(&name, self.ttl).await?;
                    let kept = self
                        .session_file
                        .parent()
                        .map_or(Ok(()), std::fs::create_dir_all)
                        .and_then(|()| std::fs::write(&self.session_file, &s));
                    if let Err(e) = kept {
                        tracing::warn!(file = %self.session_file.display(), error = %e, "cannot keep the report's session id; a restart waits for it to expire");
                    }
                    self.session = Some(s.clone());
                    s
                }
            };
            if self.client.kv_acquire(&self.key, &body, &session).await? {
                self.written = Some(report.clone());
                return Ok(());
            }
            // Refused: if our session still lives, another holds the key
            // (until it expires); if not, make a new one.
            if self.client.session_renew(&session).await? {
                break;
            }
            self.session = None;
        }
        Err(converge_consul::Error::Status {
            endpoint: format!("/v1/kv/{}", self.key),
            status: 409,
            body: "another session holds the key (it is released when that session expires)".into(),
        })
    }

    /// Renews the session; a session Consul no longer knows is dropped,
    /// so the next write makes a new one.
    async fn renew(&mut self) {
        let Some(id) = &self.session else { return };
        match self.client.session_renew(id).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(
                    "the report's session expired; writing the report again with a new one"
                );
                self.session = None;
                self.written = None;
            }
            Err(e) => tracing::warn!(error = %e, "cannot renew the report's session"),
        }
    }

    /// Destroys the session: the report stays, marked stale.
    async fn close(&mut self) {
        if let Some(id) = self.session.take() {
            let _ = self.client.session_destroy(&id).await;
            let _ = std::fs::remove_file(&self.session_file);
        }
    }
}
