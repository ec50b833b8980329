//! How a call to Gorgias can fail, classified by what the caller of the client should do.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

/// A failed Gorgias call. Cheap to clone (causes are behind `Arc`) so single-flight caches can
/// hand the same error to every waiter. Never holds a credential: the request that failed is
/// not kept, only its endpoint label.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GorgiasError {
    /// No connection could be made: the request was never sent, so any call may be retried.
    #[error("Gorgias is unreachable ({endpoint})")]
    Unreachable {
        /// Which call.
        endpoint: &'static str,
        /// The transport error.
        #[source]
        source: Arc<reqwest::Error>,
    },
    /// The call was sent but no complete answer came back in time. Its effect is unknown.
    #[error("Gorgias did not answer in time ({endpoint})")]
    Timeout {
        /// Which call.
        endpoint: &'static str,
    },
    /// The call was sent and the connection failed before a complete answer. Effect unknown.
    #[error("the connection to Gorgias was lost mid-call ({endpoint})")]
    ConnectionLost {
        /// Which call.
        endpoint: &'static str,
        /// The transport error.
        #[source]
        source: Arc<reqwest::Error>,
    },
    /// 429: the account's call budget is spent for now.
    #[error("Gorgias rate-limited us ({endpoint})")]
    RateLimited {
        /// Which call.
        endpoint: &'static str,
        /// How long Gorgias asked us to wait, when it said.
        retry_after: Option<Duration>,
    },
    /// Our own pacing or the inbound deadline leaves no time for another attempt.
    #[error("no time left in the request's deadline for another Gorgias call ({endpoint})")]
    DeadlineExhausted {
        /// Which call.
        endpoint: &'static str,
        /// When a retry may succeed.
        retry_after: Option<Duration>,
    },
    /// A 4xx other than 429: Gorgias refused the call and will refuse it again.
    #[error("Gorgias refused the call with {status} ({endpoint})")]
    Rejected {
        /// Which call.
        endpoint: &'static str,
        /// The HTTP status.
        status: u16,
        /// Gorgias's `error.msg`, when the body had one.
        msg: Option<String>,
        /// Gorgias's `error.data` (field messages), when present.
        data: Option<Value>,
    },
    /// A 5xx: Gorgias failed. For a write, its effect is unknown.
    #[error("Gorgias failed with {status} ({endpoint})")]
    ServerError {
        /// Which call.
        endpoint: &'static str,
        /// The HTTP status.
        status: u16,
    },
    /// A 2xx whose body is not what the endpoint returns.
    #[error("Gorgias answered {endpoint} with a body we cannot read")]
    Decode {
        /// Which call.
        endpoint: &'static str,
        /// Why it could not be read.
        #[source]
        source: Arc<serde_json::Error>,
    },
}

impl GorgiasError {
    /// True when a failed write may nonetheless have taken effect on Gorgias's side, so it must
    /// be reconciled (looked up) before it is sent again.
    pub fn is_ambiguous(&self) -> bool {
        match self {
            Self::Timeout { .. } | Self::ConnectionLost { .. } | Self::ServerError { .. } => true,
            // A write answered 2xx with a body we cannot read: it happened, we just cannot
            // tell what it made (a ticket without its id).
            Self::Decode { endpoint, .. } => endpoint.starts_with("POST "),
            _ => false,
        }
    }

    /// True when the same call may succeed if sent again later (given it is safe to resend).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { .. }
            | Self::Timeout { .. }
            | Self::ConnectionLost { .. }
            | Self::RateLimited { .. } => true,
            // A 500 is Gorgias's bug, not a passing state: sending the same call again is
            // unlikely to help (writes are still reconciled, see `is_ambiguous`).
            Self::ServerError { status, .. } => matches!(status, 502..=504),
            Self::DeadlineExhausted { .. } | Self::Rejected { .. } | Self::Decode { .. } => false,
        }
    }

    /// The wait Gorgias (or our pacing) asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. } | Self::DeadlineExhausted { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }

    /// The endpoint label of the failed call.
    pub fn endpoint(&self) -> &'static str {
        match self {
            Self::Unreachable { endpoint, .. }
            | Self::Timeout { endpoint }
            | Self::ConnectionLost { endpoint, .. }
            | Self::RateLimited { endpoint, .. }
            | Self::DeadlineExhausted { endpoint, .. }
            | Self::Rejected { endpoint, .. }
            | Self::ServerError { endpoint, .. }
            | Self::Decode { endpoint, .. } => endpoint,
        }
    }
}

/// Why a [`crate::GorgiasClient`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The credentials contain characters an HTTP header cannot carry.
    #[error("the Gorgias credentials contain invalid characters")]
    Credentials,
    /// The HTTP stack (TLS) could not start.
    #[error("the HTTP client could not be built")]
    Http(#[source] reqwest::Error),
}
