//! `ApiError`: every way a request can fail, answered as `application/problem+json` (RFC 9457)
//! with a stable `code` and the request's id. The one place that knows HTTP statuses.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;

use crate::domain::{FieldError, ValidationErrors};
use crate::ticketing::{TicketingError, Unknown};
use gorgias::GorgiasError;

/// What went wrong, from the caller's point of view.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the body is not JSON.
    #[error("the body is not valid JSON: {0}")]
    MalformedJson(String),
    /// 400 (shape problems) or 422 (rule problems): the body is JSON but not a valid ticket.
    #[error("{0}")]
    Invalid(ValidationErrors),
    /// 415: the body is not declared as JSON.
    #[error("the body must be sent with Content-Type: application/json")]
    UnsupportedMediaType,
    /// 413: the body is larger than the configured limit.
    #[error("the body is larger than the limit of {0} bytes")]
    PayloadTooLarge(usize),
    /// 400: the body could not be read (client aborted, bad framing).
    #[error("the body could not be read")]
    UnreadableBody,
    /// 400: a header we read has an unusable value.
    #[error("{0}")]
    BadHeader(String),
    /// 401: no or unknown bearer token.
    #[error("a valid bearer token is required")]
    Unauthorized,
    /// 404: no such route.
    #[error("no such resource")]
    NotFound,
    /// 405: the route exists but not with this method.
    #[error("this method is not allowed here")]
    MethodNotAllowed,
    /// 409: the same idempotency key is still being worked on.
    #[error("a request with this Idempotency-Key is still in progress")]
    IdempotencyInProgress,
    /// 422: the same idempotency key was used with another body.
    #[error("this Idempotency-Key was already used with a different request body")]
    IdempotencyMismatch,
    /// 502/503/504: Gorgias failed us.
    #[error(transparent)]
    Upstream(#[from] TicketingError),
    /// 503: the idempotency store (Redis) cannot be used right now.
    #[error("the idempotency store is unavailable; retry shortly")]
    StoreUnavailable,
    /// 503: the outbox for asynchronous requests cannot be written or read.
    #[error("the outbox for asynchronous requests is unavailable; retry shortly")]
    OutboxUnavailable,
    /// 503: this service is not ready (health checks).
    #[error("{0}")]
    NotReady(String),
    /// 504: the inbound deadline passed.
    #[error("the request took longer than its deadline")]
    DeadlineExceeded,
    /// 503: more requests are in flight than this replica serves at once; shed before memory
    /// grows.
    #[error("this replica is at its limit of concurrent requests; retry shortly")]
    Overloaded,
    /// 400 `connection_required`, 404 `unknown_connection` or 503: the request's Gorgias
    /// account could not be had.
    #[error(transparent)]
    Account(#[from] crate::accounts::AccountError),
    /// 503 `connection_needs_reconnect`: Gorgias refused this connection's credentials; a
    /// new `PUT /connections/{id}` fixes it.
    #[error(
        "Gorgias refused the credentials of connection {0}; it needs reconnecting (PUT \
         /connections/{0} with new credentials)"
    )]
    NeedsReconnect(crate::accounts::ConnectionId),
    /// A delivery's connection was deleted before it was delivered (its final problem).
    #[error("the connection this ticket was accepted for was deleted")]
    ConnectionDeleted,
    /// 409: a connection with queued deliveries is deleted without `force=true`.
    #[error(
        "{0} deliveries are queued for this connection; DELETE with ?force=true to fail them \
         and delete it anyway"
    )]
    ConnectionHasDeliveries(u64),
    /// 404: a feature this deployment was not set up for (why, and which setting enables it).
    /// Not a 5xx: nothing failed, and a caller probing the route must not page anyone.
    #[error("{0}")]
    NotEnabled(&'static str),
    /// 400: an OAuth2 callback's `state` is unknown, used before, or lapsed.
    #[error(
        "this OAuth2 callback's state is unknown, was used already, or has expired; start the \
         install again"
    )]
    OAuthState,
    /// 400: Gorgias refused the install (the merchant declined, or the code was refused).
    #[error("the OAuth2 install was refused: {0}")]
    OAuthRefused(String),
    /// 502: Gorgias's token endpoint failed during an install.
    #[error("Gorgias's token endpoint failed; start the install again")]
    OAuthFailed,
    /// 400: a path parameter is malformed.
    #[error("{0}")]
    BadPath(String),
    /// 400: the query string is malformed.
    #[error("{0}")]
    BadQuery(String),
    /// 500: a bug. Never caused by a caller or by Gorgias.
    #[error("internal error")]
    Internal,
}

/// The problem document.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem.
    #[serde(rename = "type")]
    #[schema(format = "uri")]
    pub kind: String,
    /// Short, fixed summary of the kind.
    pub title: &'static str,
    /// The HTTP status, repeated.
    pub status: u16,
    /// What happened this time.
    pub detail: String,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// The request's id (also in `X-Request-Id`); in a delivery's status, the delivery's id.
    pub request_id: String,
    /// Field problems, for 400/422 on the body.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<FieldError>)]
    pub errors: Vec<FieldError>,
    /// For `ticket_outcome_unknown`: the `external_id` the ticket carries if it was created,
    /// to look it up in Gorgias (`GET /api/tickets?external_id=`). With an `Idempotency-Key`,
    /// retrying the request does that for you.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
}

/// The most bytes a problem answer takes (field errors of at most 2 × 512 bytes, a detail of
/// at most 4,096, and the fixed members; the answer drops field errors past it).
pub const PROBLEM_MAX_BYTES: usize = 64 * 1024;
/// The most bytes of a problem's `detail`.
const DETAIL_MAX_CHARS: usize = 4096;
/// The most bytes of one field error's `field` or `message`.
const FIELD_MAX_CHARS: usize = 512;

/// `text` cut to at most `max` bytes, on a character boundary (with an ellipsis when cut).
fn bounded(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut at = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    text.truncate(at);
    text.push('…');
    text
}

/// The `Content-Type` of every error answer.
pub const PROBLEM_JSON: &str = "application/problem+json";

impl ApiError {
    /// Status, stable code and title.
    pub fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        use GorgiasError as G;
        match self {
            Self::MalformedJson(_) => (StatusCode::BAD_REQUEST, "malformed_json", "Malformed JSON"),
            Self::Invalid(e) if e.is_shape() => (
                StatusCode::BAD_REQUEST,
                "invalid_body",
                "Invalid request body",
            ),
            Self::Invalid(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                "Validation failed",
            ),
            Self::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Unsupported media type",
            ),
            Self::PayloadTooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "Payload too large",
            ),
            Self::UnreadableBody => (
                StatusCode::BAD_REQUEST,
                "unreadable_body",
                "Unreadable body",
            ),
            Self::BadHeader(_) => (StatusCode::BAD_REQUEST, "invalid_header", "Invalid header"),
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized"),
            Self::NotFound => (StatusCode::NOT_FOUND, "not_found", "Not found"),
            Self::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "Method not allowed",
            ),
            Self::IdempotencyInProgress => (
                StatusCode::CONFLICT,
                "idempotency_in_progress",
                "Request in progress",
            ),
            Self::IdempotencyMismatch => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "Idempotency key reused",
            ),
            Self::NotReady(_) => (StatusCode::SERVICE_UNAVAILABLE, "not_ready", "Not ready"),
            Self::OutboxUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "outbox_unavailable",
                "Outbox unavailable",
            ),
            Self::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "overloaded", "Overloaded"),
            Self::StoreUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "idempotency_store_unavailable",
                "Idempotency store unavailable",
            ),
            Self::DeadlineExceeded => (
                StatusCode::GATEWAY_TIMEOUT,
                "deadline_exceeded",
                "Deadline exceeded",
            ),
            Self::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
            ),
            Self::NeedsReconnect(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "connection_needs_reconnect",
                "Connection needs reconnecting",
            ),
            Self::ConnectionDeleted => {
                (StatusCode::GONE, "connection_deleted", "Connection deleted")
            }
            Self::ConnectionHasDeliveries(_) => (
                StatusCode::CONFLICT,
                "connection_has_deliveries",
                "Connection has queued deliveries",
            ),
            Self::NotEnabled(_) => (StatusCode::NOT_FOUND, "not_enabled", "Not enabled here"),
            Self::BadPath(_) => (StatusCode::BAD_REQUEST, "invalid_path", "Invalid path"),
            Self::OAuthState => (
                StatusCode::BAD_REQUEST,
                "invalid_oauth_state",
                "Invalid OAuth2 state",
            ),
            Self::OAuthRefused(_) => (
                StatusCode::BAD_REQUEST,
                "oauth_refused",
                "OAuth2 install refused",
            ),
            Self::OAuthFailed => (
                StatusCode::BAD_GATEWAY,
                "oauth_exchange_failed",
                "OAuth2 exchange failed",
            ),
            Self::BadQuery(_) => (StatusCode::BAD_REQUEST, "invalid_query", "Invalid query"),
            Self::Account(crate::accounts::AccountError::NeedsReconnect(_)) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "connection_needs_reconnect",
                "Connection needs reconnecting",
            ),
            Self::Account(crate::accounts::AccountError::Required) => (
                StatusCode::BAD_REQUEST,
                "connection_required",
                "Connection required",
            ),
            Self::Account(crate::accounts::AccountError::Unknown) => (
                StatusCode::NOT_FOUND,
                "unknown_connection",
                "Unknown connection",
            ),
            Self::Account(crate::accounts::AccountError::Unavailable) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "connections_unavailable",
                "Connections unavailable",
            ),
            Self::Upstream(TicketingError::Mapping(_)) => (
                StatusCode::BAD_GATEWAY,
                "upstream_invalid_response",
                "Gorgias answered something unreadable",
            ),
            Self::Upstream(TicketingError::OutcomeUnknown { .. }) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "ticket_outcome_unknown",
                "Ticket outcome unknown",
            ),
            Self::Upstream(TicketingError::Gorgias(g)) => match g {
                G::Rejected {
                    status: 401 | 403, ..
                } => (
                    StatusCode::BAD_GATEWAY,
                    "upstream_auth",
                    "Gorgias refused our credentials",
                ),
                G::Rejected { .. } => (
                    StatusCode::BAD_GATEWAY,
                    "upstream_rejected",
                    "Gorgias rejected the request",
                ),
                G::Decode { .. } => (
                    StatusCode::BAD_GATEWAY,
                    "upstream_invalid_response",
                    "Gorgias answered something unreadable",
                ),
                G::ServerError { .. } | G::ConnectionLost { .. } => {
                    (StatusCode::BAD_GATEWAY, "upstream_failed", "Gorgias failed")
                }
                G::RateLimited { .. } => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream_rate_limited",
                    "Gorgias call budget exhausted",
                ),
                G::DeadlineExhausted { .. } => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream_unavailable",
                    "Gorgias unavailable within the deadline",
                ),
                G::Unreachable { .. } => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream_unreachable",
                    "Gorgias is unreachable",
                ),
                G::Timeout { .. } => (
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream_timeout",
                    "Gorgias timed out",
                ),
            },
        }
    }

    /// The caller-facing detail. For Gorgias's refusals it carries Gorgias's own `msg` and field
    /// messages (they say what to fix); never our credentials, URL or the request body.
    fn detail(&self) -> String {
        match self {
            Self::Upstream(TicketingError::Gorgias(GorgiasError::Rejected {
                status,
                msg,
                data,
                ..
            })) => {
                let mut d = format!("Gorgias answered {status}");
                if let Some(m) = msg {
                    d.push_str(": ");
                    d.push_str(m);
                }
                if let Some(data) = data {
                    let fields = flatten_field_messages(data);
                    if !fields.is_empty() {
                        d.push_str(" (");
                        d.push_str(&fields.join("; "));
                        d.push(')');
                    }
                }
                d
            }
            Self::Upstream(TicketingError::Gorgias(g)) => match g {
                GorgiasError::RateLimited { .. } => {
                    "Gorgias's call budget for this account is spent for now; retry after the \
                     delay in Retry-After"
                        .into()
                }
                GorgiasError::DeadlineExhausted { .. } => {
                    "no time was left within the request's deadline to wait for Gorgias (its \
                     rate limit or its retries); retry after the delay in Retry-After"
                        .into()
                }
                GorgiasError::Unreachable { .. } => {
                    "Gorgias could not be reached; retry later".into()
                }
                GorgiasError::Timeout { .. } => {
                    "Gorgias did not answer in time; retrying with the same Idempotency-Key is safe"
                        .into()
                }
                GorgiasError::ServerError { status, .. } => {
                    format!("Gorgias failed with {status}; retry later")
                }
                GorgiasError::ConnectionLost { .. } => {
                    "the connection to Gorgias was lost; retry later".into()
                }
                _ => "Gorgias answered something that could not be read".into(),
            },
            Self::Upstream(TicketingError::Mapping(_)) => {
                "Gorgias answered something that is not a ticket".into()
            }
            Self::Upstream(TicketingError::OutcomeUnknown { why, .. }) => match why {
                Unknown::Gorgias(_) => {
                    "the ticket create was sent but its answer was lost, and Gorgias could not \
                     be asked in time whether it exists; it may. Retry after Retry-After with \
                     the same Idempotency-Key (the retry finds it), or look it up by external_id"
                        .into()
                }
                Unknown::Settling => {
                    "an earlier attempt's create may still appear in Gorgias; retry after \
                     Retry-After with the same Idempotency-Key and it will be looked up first"
                        .into()
                }
                Unknown::Unreadable(_) => {
                    "Gorgias accepted the ticket create but answered something that is not a \
                     ticket; it exists. Look it up by external_id, or retry with the same \
                     Idempotency-Key"
                        .into()
                }
                Unknown::ClaimLost => {
                    "this request lost its claim on the Idempotency-Key before creating the \
                     ticket (another attempt holds it); retry with the same key"
                        .into()
                }
            },
            Self::Invalid(e) => format!(
                "the request body has {} problem(s); see errors",
                e.errors.len()
            ),
            other => other.to_string(),
        }
    }

    /// The problem document this error is answered with: at most [`PROBLEM_MAX_BYTES`],
    /// whichever rule fired and whatever Gorgias said (its messages are quoted in `detail`).
    pub fn problem(&self) -> Problem {
        let (status, code, title) = self.parts();
        Problem {
            kind: format!("urn:gorgias-proxy:problem:{code}"),
            title,
            status: status.as_u16(),
            detail: bounded(self.detail(), DETAIL_MAX_CHARS),
            code,
            request_id: crate::request_id::current_request_id(),
            errors: match self {
                Self::Invalid(e) => e
                    .errors
                    .iter()
                    .take(crate::domain::request::PROBLEMS_SHOWN + 1)
                    .map(|e| FieldError {
                        field: bounded(e.field.clone(), FIELD_MAX_CHARS),
                        message: bounded(e.message.clone(), FIELD_MAX_CHARS),
                        problem: e.problem,
                    })
                    .collect(),
                _ => Vec::new(),
            },
            external_id: match self {
                Self::Upstream(TicketingError::OutcomeUnknown { external_id, .. }) => {
                    Some(external_id.clone())
                }
                _ => None,
            },
        }
    }

    /// How long the caller should wait, for 503s.
    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Upstream(TicketingError::Gorgias(g)) => match g {
                GorgiasError::RateLimited { retry_after, .. }
                | GorgiasError::DeadlineExhausted { retry_after, .. } => {
                    Some(retry_after.unwrap_or(Duration::from_secs(1)))
                }
                GorgiasError::Unreachable { .. } => Some(Duration::from_secs(1)),
                _ => None,
            },
            // At least a second, and whole seconds up: the header is in seconds and must cover
            // the settle window.
            Self::Upstream(TicketingError::OutcomeUnknown { retry_after, .. }) => Some(
                Duration::from_secs(
                    retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0),
                )
                .max(Duration::from_secs(1)),
            ),
            Self::NotReady(_) => Some(Duration::from_secs(5)),
            Self::NeedsReconnect(_)
            | Self::Account(crate::accounts::AccountError::NeedsReconnect(_)) => {
                Some(Duration::from_secs(60))
            }
            Self::StoreUnavailable
            | Self::Overloaded
            | Self::OutboxUnavailable
            | Self::Account(crate::accounts::AccountError::Unavailable) => {
                Some(Duration::from_secs(1))
            }
            _ => None,
        }
    }
}

/// Gorgias's `error.data` is `{field: [messages]}`, possibly nested (`{"messages": {"0": {...}}}`).
/// Flattens it to `path: message` strings.
fn flatten_field_messages(data: &Value) -> Vec<String> {
    fn walk(v: &Value, path: &str, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(v, &p, out);
                }
            }
            Value::Array(items) => items.iter().for_each(|i| walk(i, path, out)),
            Value::String(s) => out.push(format!("{path}: {s}")),
            Value::Null => {}
            other => out.push(format!("{path}: {other}")),
        }
    }
    let mut out = Vec::new();
    walk(data, "", &mut out);
    out.truncate(50);
    out
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, _) = self.parts();
        if status.is_server_error() {
            // Logged once, here; the cause chain may name the endpoint but never a body or key.
            tracing::error!(code, error = %self, cause = ?std::error::Error::source(&self).map(ToString::to_string), "request failed");
        } else {
            tracing::info!(code, status = status.as_u16(), "request refused");
        }
        let retry_after = self.retry_after();
        let mut problem = self.problem();
        // The bounds on each member keep an answer near its size; escaping (a control
        // character is six bytes in JSON) can still inflate it, so the last word is here.
        let mut body = serde_json::to_vec(&problem).unwrap_or_default();
        while body.len() > PROBLEM_MAX_BYTES && !problem.errors.is_empty() {
            let keep = problem.errors.len() / 2;
            problem.errors.truncate(keep);
            body = serde_json::to_vec(&problem).unwrap_or_default();
        }
        let mut resp = (status, body).into_response();
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(wait) = retry_after {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if matches!(status, StatusCode::UNAUTHORIZED) {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp.extensions_mut().insert(ProblemCode(code));
        resp
    }
}

/// The problem `code` of an error answer, carried to the request's trace span (which sees the
/// response, not the error it came from).
#[derive(Debug, Clone, Copy)]
pub struct ProblemCode(pub &'static str);

impl From<GorgiasError> for ApiError {
    fn from(e: GorgiasError) -> Self {
        Self::Upstream(TicketingError::Gorgias(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn gorgias_field_messages_are_flattened_with_their_paths() {
        let d = json!({"sender": ["Missing data for required field."],
                       "messages": {"0": {"channel": ["Missing data."]}}});
        let mut got = flatten_field_messages(&d);
        got.sort();
        assert_eq!(
            got,
            [
                "messages.0.channel: Missing data.",
                "sender: Missing data for required field."
            ]
        );
    }
}
