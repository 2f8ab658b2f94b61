//! Sessions and the KV writes tied to them: what a node's report needs so
//! that a dead node's report is seen as stale rather than trusted.
//!
//! A session is created on the agent's own node with a TTL and
//! `Behavior = release`: when it is invalidated (the TTL ran out without
//! a renewal, the node's `serfHealth` failed, or it was destroyed) Consul
//! keeps the keys it held but clears their `Session`. A reader therefore
//! tells a live report from a stale one by whether its key still has a
//! session.

use std::time::Duration;

use serde::Deserialize;

use super::transport::kv_segments;
use super::Client;
use crate::error::Error;

/// `PUT /v1/session/create`'s answer.
#[derive(Debug, Deserialize)]
struct Created {
    #[serde(rename = "ID")]
    id: String,
}

impl Client {
    /// `PUT /v1/session/create`: a session on the agent's node named
    /// `name`, invalidated `ttl` after its last renewal (Consul may take
    /// up to twice that), releasing its keys when invalidated. Returns
    /// its id.
    pub async fn session_create(&self, name: &str, ttl: Duration) -> Result<String, Error> {
        let body = serde_json::json!({
            "Name": name,
            "TTL": format!("{}s", ttl.as_secs().max(10)),
            "Behavior": "release",
            "LockDelay": "0s",
        });
        let created: Created = self
            .transport
            .put(
                &["v1", "session", "create"],
                "/v1/session/create",
                &[],
                body.to_string().into_bytes(),
            )
            .await?;
        Ok(created.id)
    }

    /// `PUT /v1/session/renew/:id`: restarts the session's TTL. `false`
    /// when the session no longer exists (it expired or was destroyed):
    /// the caller creates a new one.
    pub async fn session_renew(&self, id: &str) -> Result<bool, Error> {
        let endpoint = format!("/v1/session/renew/{id}");
        let renewed: Result<serde_json::Value, Error> = self
            .transport
            .put(&["v1", "session", "renew", id], &endpoint, &[], Vec::new())
            .await;
        match renewed {
            Ok(_) => Ok(true),
            Err(Error::Status { status: 404, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `PUT /v1/session/destroy/:id`: ends the session now, releasing its
    /// keys.
    pub async fn session_destroy(&self, id: &str) -> Result<bool, Error> {
        let endpoint = format!("/v1/session/destroy/{id}");
        self.transport
            .put(
                &["v1", "session", "destroy", id],
                &endpoint,
                &[],
                Vec::new(),
            )
            .await
    }

    /// `PUT /v1/kv/:key?acquire=:session`: writes `value` and ties the key
    /// to `session`. `false` when Consul refused (another session holds
    /// the key, or `session` is no longer valid).
    pub async fn kv_acquire(&self, key: &str, value: &[u8], session: &str) -> Result<bool, Error> {
        let endpoint = format!("/v1/kv/{key}");
        let params = [("acquire", session.to_string())];
        let wrote: Result<bool, Error> = self
            .transport
            .put(&kv_segments(key), &endpoint, &params, value.to_vec())
            .await;
        match wrote {
            // Consul answers an acquire with an unknown session with a 500
            // "invalid session": the caller needs a new session, not a retry.
            Err(Error::Status {
                status: 500,
                ref body,
                ..
            }) if body.contains("session") => Ok(false),
            other => other,
        }
    }
}
