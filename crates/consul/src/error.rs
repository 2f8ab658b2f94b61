//! What can go wrong talking to Consul, and whether trying again can help.
//!
//! Every variant names the endpoint (the request path, never the full URL
//! with the query string, and never the token, which travels in a header
//! only). Consul's own answer is kept, trimmed to [`BODY_LIMIT`] bytes, so
//! an operator reads "ACL not found" or "Permission denied: token lacks
//! service:read" instead of a bare status code.
//!
//! The split that matters to the daemon is [`Error::retry`], one of three
//! [`Retry`] answers:
//!
//! - [`Retry::Soon`] ([`Error::is_retryable`]): a refused connection, a
//!   timeout, a 5xx or a 429 goes away by waiting, so the caller backs
//!   off and keeps its last good data;
//! - [`Retry::Slowly`]: a 403, an ACL refusal. It is a configuration
//!   problem, reported as such, but one that can end without converge
//!   being told: `ACL not found` is often ACL replication lag on a
//!   secondary datacenter or a token restored with the same SecretID, and
//!   an operator fixes a policy for a valid token without restarting
//!   anything. So it is asked again, at a slow capped pace;
//! - [`Retry::Never`]: a request Consul rejects as malformed (a filter it
//!   cannot parse, a parameter it does not know) or an unusable client
//!   configuration. Nothing on Consul's side changes that; the
//!   [source](crate::source) stops asking until it is restarted.

use reqwest::StatusCode;

/// How Consul words a filter expression it cannot parse.
const FILTER_ERROR: &str = "Failed to create boolean expression evaluator";

/// Longest piece of a Consul response body kept in an error.
pub const BODY_LIMIT: usize = 512;

/// An error from the Consul client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The client configuration is unusable (bad address, unreadable token
    /// file or certificate). Not retryable.
    #[error("invalid Consul client configuration: {0}")]
    Config(String),

    /// Consul could not be reached: connection refused or reset, DNS, TLS
    /// handshake. Retryable.
    #[error("cannot reach Consul for {endpoint}: {message}")]
    Connect {
        /// Request path, e.g. `/v1/health/service/web`.
        endpoint: String,
        /// What the transport said.
        message: String,
    },

    /// No answer within the request timeout (which is longer than a
    /// blocking query's `wait`, so this is a real stall). Retryable.
    #[error("Consul did not answer {endpoint} within {timeout_ms} ms")]
    Timeout {
        /// Request path.
        endpoint: String,
        /// The timeout that expired.
        timeout_ms: u128,
    },

    /// The token is missing a permission, does not exist, or Consul
    /// filtered the answer by ACL so it cannot be trusted as complete.
    /// A configuration error, asked again only slowly ([`Retry::Slowly`]).
    #[error(
        "Consul denied {endpoint} (ACL): {message}; check that the token \
         (CONSUL_HTTP_TOKEN / CONSUL_HTTP_TOKEN_FILE) has the needed policy"
    )]
    PermissionDenied {
        /// Request path.
        endpoint: String,
        /// Consul's answer, or what was filtered.
        message: String,
    },

    /// Consul refused the request itself: a malformed `filter`
    /// expression, a bad parameter. Asking again cannot help; the query
    /// (usually from a manifest) must be fixed. Not retryable.
    #[error("Consul rejected the request to {endpoint}: {message}")]
    InvalidRequest {
        /// Request path.
        endpoint: String,
        /// Consul's answer.
        message: String,
    },

    /// Any other unexpected status. 5xx and 429 are retryable, other 4xx
    /// are not.
    #[error("Consul answered {endpoint} with HTTP {status}: {body}")]
    Status {
        /// Request path.
        endpoint: String,
        /// HTTP status.
        status: u16,
        /// Consul's response body, trimmed.
        body: String,
    },

    /// Consul answered 200 with something that is not what the endpoint
    /// documents. Retryable (a proxy in the way, a partial write), but the
    /// answer is never used.
    #[error("Consul answered {endpoint} with data converge cannot use: {message}")]
    Decode {
        /// Request path.
        endpoint: String,
        /// What was wrong with it.
        message: String,
    },
}

/// Whether, and how soon, asking Consul again can help; see the module
/// docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// A fault that waiting fixes: ask again with the normal backoff.
    Soon,
    /// A refusal (ACL) that an operator or Consul itself may lift at any
    /// time: ask again with a slow backoff
    /// ([`Backoff::for_refusals`](crate::Backoff::for_refusals)).
    Slowly,
    /// A request that will be refused the same way however often it is
    /// sent: do not ask again until restarted.
    Never,
}

impl Error {
    /// Whether, and how soon, asking again can help.
    pub fn retry(&self) -> Retry {
        match self {
            Error::Connect { .. } | Error::Timeout { .. } | Error::Decode { .. } => Retry::Soon,
            Error::Status { status, .. } if *status >= 500 || *status == 429 => Retry::Soon,
            Error::PermissionDenied { .. } => Retry::Slowly,
            Error::Status { .. } | Error::Config(_) | Error::InvalidRequest { .. } => Retry::Never,
        }
    }

    /// Whether waiting a little and asking again can help
    /// ([`Retry::Soon`]).
    pub fn is_retryable(&self) -> bool {
        self.retry() == Retry::Soon
    }

    /// Whether this is a configuration problem (token, address, TLS files)
    /// that an operator has to fix.
    pub fn is_config_error(&self) -> bool {
        matches!(
            self,
            Error::Config(_) | Error::PermissionDenied { .. } | Error::InvalidRequest { .. }
        )
    }

    /// Classifies a non-success answer from Consul.
    pub(crate) fn from_status(endpoint: &str, status: StatusCode, body: &str) -> Self {
        let body = trim_body(body);
        if status == StatusCode::FORBIDDEN {
            return Error::PermissionDenied {
                endpoint: endpoint.to_string(),
                message: if body.is_empty() {
                    "HTTP 403".to_string()
                } else {
                    body
                },
            };
        }
        // Consul answers a filter it cannot parse with a 500, not a 400;
        // retrying it forever would hide a manifest error.
        if status == StatusCode::BAD_REQUEST || body.contains(FILTER_ERROR) {
            return Error::InvalidRequest {
                endpoint: endpoint.to_string(),
                message: format!("HTTP {}: {body}", status.as_u16()),
            };
        }
        Error::Status {
            endpoint: endpoint.to_string(),
            status: status.as_u16(),
            body,
        }
    }

    /// Classifies a transport failure. The message drops the URL that
    /// reqwest includes (it is already named by `endpoint`).
    pub(crate) fn from_transport(endpoint: &str, timeout_ms: u128, err: reqwest::Error) -> Self {
        if err.is_timeout() {
            return Error::Timeout {
                endpoint: endpoint.to_string(),
                timeout_ms,
            };
        }
        if err.is_decode() {
            return Error::Decode {
                endpoint: endpoint.to_string(),
                message: source_chain(&err.without_url()),
            };
        }
        Error::Connect {
            endpoint: endpoint.to_string(),
            message: source_chain(&err.without_url()),
        }
    }
}

/// The error and its causes on one line ("error sending request: tcp
/// connect error: Connection refused").
fn source_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}

/// Consul's body on one line, at most [`BODY_LIMIT`] bytes.
fn trim_body(body: &str) -> String {
    let one_line: String = body
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one_line.len() <= BODY_LIMIT {
        return one_line;
    }
    let mut end = BODY_LIMIT;
    while !one_line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &one_line[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_is_a_config_error_asked_again_slowly_with_consuls_words() {
        let e = Error::from_status(
            "/v1/kv/fleet",
            StatusCode::FORBIDDEN,
            "Permission denied: token with AccessorID 'x' lacks permission 'key:read' on \"fleet\"\n",
        );
        assert!(!e.is_retryable());
        assert_eq!(e.retry(), Retry::Slowly);
        assert!(e.is_config_error());
        let msg = e.to_string();
        assert!(msg.contains("/v1/kv/fleet"), "{msg}");
        assert!(msg.contains("lacks permission 'key:read'"), "{msg}");
        assert!(msg.contains("CONSUL_HTTP_TOKEN"), "{msg}");
    }

    #[test]
    fn server_errors_and_throttling_are_retryable_client_errors_are_not() {
        let s500 = Error::from_status(
            "/v1/x",
            StatusCode::INTERNAL_SERVER_ERROR,
            "No cluster leader",
        );
        let s429 = Error::from_status("/v1/x", StatusCode::TOO_MANY_REQUESTS, "");
        let s400 = Error::from_status("/v1/x", StatusCode::BAD_REQUEST, "bad filter");
        let bad_filter = Error::from_status(
            "/v1/x",
            StatusCode::INTERNAL_SERVER_ERROR,
            "Failed to create boolean expression evaluator: 1:16 (15): no match found",
        );
        assert!(
            matches!(bad_filter, Error::InvalidRequest { .. }),
            "{bad_filter:?}"
        );
        assert!(!bad_filter.is_retryable() && bad_filter.is_config_error());
        assert_eq!(bad_filter.retry(), Retry::Never);
        assert_eq!(s400.retry(), Retry::Never);
        assert!(s500.is_retryable());
        assert!(s429.is_retryable());
        assert!(!s400.is_retryable());
        assert!(s500.to_string().contains("HTTP 500: No cluster leader"));
    }

    #[test]
    fn long_bodies_are_trimmed_to_one_line() {
        let body = format!("line1\nline2{}", "x".repeat(2000));
        let e = Error::from_status("/v1/x", StatusCode::BAD_GATEWAY, &body);
        let Error::Status { body, .. } = e else {
            panic!("expected Status");
        };
        assert!(!body.contains('\n'));
        assert!(body.len() <= BODY_LIMIT + '…'.len_utf8());
        assert!(body.starts_with("line1 line2"));
    }
}
