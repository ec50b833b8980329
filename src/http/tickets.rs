//! Asynchronous tickets: `POST /ticket` with `Prefer: respond-async` is written to the outbox
//! and answered 202 with where to look (`Location: /tickets/{id}`); `GET /tickets/{id}` is that
//! status resource. A caller sees only its own deliveries.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::route::{Route, Scope};
use crate::error::ApiError;
use crate::outbox::{Accepted, Delivery, DeliveryStatus, Outbox, Status};
use crate::state::AppState;

/// The answer to an accepted asynchronous request (202).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AcceptedTicket {
    /// Opaque id of the delivery.
    pub id: String,
    /// Where it stands (`queued`, or later on a replay).
    pub status: Status,
    /// `GET` this for its status (also in `Location`).
    pub status_url: String,
}

pub(crate) fn router() -> Router<AppState> {
    Router::new().route("/tickets/{id}", get(status))
}

/// Reads RFC 7240 `Prefer`: `Some(wait)` when `respond-async` is asked for, with the `wait`
/// preference in seconds (0 when absent or unreadable). Names are case-insensitive; several
/// headers and comma-separated lists are read alike; parameters after `;` are ignored.
pub(crate) fn async_preference(headers: &HeaderMap) -> Option<Duration> {
    let mut asynchronous = false;
    let mut wait = Duration::ZERO;
    for value in headers.get_all("prefer") {
        let Ok(value) = value.to_str() else { continue };
        for preference in value.split(',') {
            let token = preference.split(';').next().unwrap_or_default().trim();
            let (name, arg) = match token.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
                None => (token, None),
            };
            if name.eq_ignore_ascii_case("respond-async") {
                asynchronous = true;
            } else if name.eq_ignore_ascii_case("wait")
                && let Some(secs) = arg.and_then(|a| a.parse::<u64>().ok())
            {
                wait = Duration::from_secs(secs);
            }
        }
    }
    asynchronous.then_some(wait)
}

/// Writes the validated request to the outbox (or finds the one its key names), waits up to
/// `wait` for its delivery, and answers 201 with the ticket or 202 with where to look.
pub(crate) async fn accept(
    outbox: &Outbox,
    route: &Route,
    key: Option<&str>,
    fingerprint: &str,
    body: &[u8],
    wait: Duration,
) -> Result<Response, ApiError> {
    let scope = route.scope();
    let accepted = outbox
        .accept(
            &scope,
            route.account.connection_column(),
            key,
            fingerprint,
            body,
            crate::traces::traceparent(&crate::traces::current()).as_deref(),
        )
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "the outbox cannot be written");
            ApiError::OutboxUnavailable
        })?;
    let (delivery, replayed) = match accepted {
        Accepted::New(d) => {
            if key.is_some() {
                tracing::info!(target: crate::traces::TRACE_TARGET, "idempotency claim");
            }
            (d, false)
        }
        Accepted::Existing(d) => {
            tracing::info!(target: crate::traces::TRACE_TARGET, "idempotency replay");
            (d, true)
        }
        Accepted::Mismatch => return Err(ApiError::IdempotencyMismatch),
    };
    let delivery = if wait.is_zero() || is_final(&delivery) {
        delivery
    } else {
        wait_for(outbox, &scope, delivery, wait).await
    };
    let mut resp = match (&delivery.status, &delivery.ticket) {
        (Status::Delivered, Some(ticket)) => {
            let mut r = (StatusCode::CREATED, ticket.clone()).into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        _ => {
            let url = status_url(&delivery.id);
            let mut r = (
                StatusCode::ACCEPTED,
                Json(AcceptedTicket {
                    id: delivery.id.clone(),
                    status: delivery.status,
                    status_url: url.clone(),
                }),
            )
                .into_response();
            if let Ok(v) = HeaderValue::from_str(&url) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            r.headers_mut().insert(
                "preference-applied",
                HeaderValue::from_static("respond-async"),
            );
            r
        }
    };
    if replayed {
        resp.headers_mut().insert(
            super::ticket::IDEMPOTENCY_REPLAYED,
            HeaderValue::from_static("true"),
        );
    }
    Ok(resp)
}

fn is_final(d: &Delivery) -> bool {
    matches!(d.status, Status::Delivered | Status::Failed)
}

fn status_url(id: &str) -> String {
    format!("/tickets/{id}")
}

/// Waits until the delivery is final or `wait` passes; the delivery as last seen.
async fn wait_for(outbox: &Outbox, scope: &str, mut last: Delivery, wait: Duration) -> Delivery {
    let until = tokio::time::Instant::now() + wait;
    loop {
        // Registered before looking, so a delivery finishing in between still wakes us.
        let finished = outbox.finished();
        tokio::pin!(finished);
        finished.as_mut().enable();
        match outbox.get(scope, &last.id).await {
            Ok(Some(d)) if is_final(&d) => return d,
            Ok(Some(d)) => last = d,
            _ => return last,
        }
        // Woken by a delivery finishing here; with a shared outbox another replica may finish
        // it, so look again at least every 250 ms.
        let next_look = until.min(tokio::time::Instant::now() + Duration::from_millis(250));
        let _ = tokio::time::timeout_at(next_look, finished).await;
        if tokio::time::Instant::now() >= until {
            return match outbox.get(scope, &last.id).await {
                Ok(Some(d)) => d,
                _ => last,
            };
        }
    }
}

/// `GET /tickets/{id}`: the delivery's status, with the ticket once delivered or the problem a
/// synchronous request would have received.
async fn status(
    State(state): State<AppState>,
    Scope(scope): Scope,
    Path(id): Path<String>,
) -> Result<Json<DeliveryStatus>, ApiError> {
    let outbox = state.outbox.as_ref().ok_or(ApiError::NotFound)?;
    let delivery = outbox
        .get(&scope, &id)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "the outbox cannot be read");
            ApiError::OutboxUnavailable
        })?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(delivery.document()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefer(values: &[&str]) -> Option<Duration> {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("prefer", HeaderValue::from_str(v).unwrap());
        }
        async_preference(&h)
    }

    #[test]
    fn prefer_is_read_as_rfc_7240_says() {
        assert_eq!(prefer(&[]), None);
        assert_eq!(prefer(&["return=minimal"]), None);
        assert_eq!(prefer(&["respond-async"]), Some(Duration::ZERO));
        assert_eq!(
            prefer(&["Respond-Async, wait=10"]),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            prefer(&["wait=5", "respond-async"]),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            prefer(&["respond-async; x=1 , wait=\"3\""]),
            Some(Duration::from_secs(3))
        );
        assert_eq!(prefer(&["respond-async, wait=soon"]), Some(Duration::ZERO));
    }
}
