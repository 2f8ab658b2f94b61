//! The local agent's write endpoints a failover drill injects its faults
//! through: a service instance's maintenance mode and a TTL check's
//! status. Sent through the same [`Client`] as everything else, so a drill
//! reaches an agent that wants TLS, a token file or a namespace the way
//! `converge run` does.

use super::Client;
use crate::error::Error;

/// What a TTL check is set to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckStatus {
    /// `PUT /v1/agent/check/pass/:id`.
    Pass,
    /// `PUT /v1/agent/check/fail/:id`.
    Fail,
}

impl CheckStatus {
    fn verb(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Fail => "fail",
        }
    }
}

impl Client {
    /// `PUT /v1/agent/service/maintenance/:id?enable=…&reason=…`: takes the
    /// instance out of (or back into) every health answer.
    pub async fn agent_service_maintenance(
        &self,
        id: &str,
        enable: bool,
        reason: &str,
    ) -> Result<(), Error> {
        let endpoint = format!("/v1/agent/service/maintenance/{id}");
        let params = [("enable", enable.to_string()), ("reason", reason.into())];
        self.transport
            .put(
                &["v1", "agent", "service", "maintenance", id],
                &endpoint,
                &params,
                Vec::new(),
            )
            .await
    }

    /// `PUT /v1/agent/check/{pass,fail}/:id?note=…`: sets a TTL check.
    pub async fn agent_check_update(
        &self,
        id: &str,
        status: CheckStatus,
        note: &str,
    ) -> Result<(), Error> {
        let verb = status.verb();
        let endpoint = format!("/v1/agent/check/{verb}/{id}");
        self.transport
            .put(
                &["v1", "agent", "check", verb, id],
                &endpoint,
                &[("note", note.into())],
                Vec::new(),
            )
            .await
    }
}
