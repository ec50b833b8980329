//! `POST /ticket`: the one operation.

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};

use crate::app::AppState;
use crate::domain::NewTicket;
use crate::error::ApiError;

pub(crate) fn router() -> Router<AppState> {
    Router::new().route("/ticket", post(create_ticket))
}

/// Validates the body, then finds or creates the customer and creates the ticket.
async fn create_ticket(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    if !is_json(&headers) {
        return Err(ApiError::UnsupportedMediaType);
    }
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(state.body_limit)
        } else {
            ApiError::UnreadableBody
        }
    })?;
    let value: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| ApiError::MalformedJson(json_error(&e)))?;
    let ticket = NewTicket::parse(&value).map_err(ApiError::Invalid)?;
    tracing::debug!(
        messages = ticket.messages.len(),
        "valid ticket request; creating it in Gorgias"
    );
    let deadline = super::deadline_after(state.request_deadline);
    // Issue-3 idempotency will derive this from `Idempotency-Key`; without one, every inbound
    // request is its own logical ticket and gets a fresh marker.
    let external_id = uuid::Uuid::new_v4().to_string();
    let created = tokio::time::timeout_at(
        deadline + std::time::Duration::from_millis(250),
        state
            .ticketing
            .create_ticket(&ticket, &external_id, deadline),
    )
    .await
    .map_err(|_| ApiError::DeadlineExceeded)??;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// `application/json` or any `application/*+json`, parameters allowed.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = ct.split(';').next().unwrap_or_default().trim();
    let Some((kind, sub)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (sub.eq_ignore_ascii_case("json")
            || sub.len() > 5 && sub[sub.len() - 5..].eq_ignore_ascii_case("+json"))
}

/// serde_json's message with its position; it never quotes the input, so no PII leaks.
fn json_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Eof => "the body ended early",
        Category::Syntax => "syntax error",
        Category::Data => "unexpected data",
        Category::Io => "could not read the body",
    };
    format!("{what} at line {} column {}", e.line(), e.column())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn json_content_types_are_recognised() {
        let check = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_str(v).unwrap());
            is_json(&h)
        };
        assert!(check("application/json"));
        assert!(check("Application/JSON; charset=utf-8"));
        assert!(check("application/problem+json"));
        assert!(!check("text/plain"));
        assert!(!check("application/jsonx"));
        assert!(!check("+json"));
        assert!(!is_json(&HeaderMap::new()));
    }
}
