//! `POST /ticket`: the one operation.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use super::route::Route;
use crate::accounts::{Account, CreateError};
use crate::domain::{NewTicket, StoredTicket};
use crate::error::ApiError;
use crate::idempotency::{self, Claim, StoredAnswer};
use crate::state::AppState;
use crate::ticketing::{Attempt, Fence, Unfenced};
use crate::traces::TRACE_TARGET;
use std::time::Duration;

pub(crate) fn router() -> Router<AppState> {
    Router::new().route("/ticket", post(create_ticket))
}

/// The header callers set to make retries safe.
pub(crate) const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Set on an answer replayed for a repeated `Idempotency-Key`.
pub(crate) const IDEMPOTENCY_REPLAYED: &str = "idempotency-replayed";

/// Validates the body, then finds or creates the customer and creates the ticket. With an
/// `Idempotency-Key`, the first final answer is stored and replayed to retries.
async fn create_ticket(
    State(state): State<AppState>,
    route: Route,
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
    // Parsed once: both the idempotency fingerprint and validation read this value.
    let parsed = serde_json::from_slice::<serde_json::Value>(&body);
    if let Some(outbox) = &state.outbox
        && let Some(wait) = super::tickets::async_preference(&headers)
    {
        let key = match headers.get(IDEMPOTENCY_KEY) {
            Some(k) => Some(valid_key(k)?),
            None => None,
        };
        let value = parsed.map_err(|e| ApiError::MalformedJson(json_error(&e)))?;
        let ticket =
            NewTicket::parse_with(&value, &route.account.rules).map_err(ApiError::Invalid)?;
        // What is delivered is what was validated now, not the body re-read under whatever
        // rules hold when the delivery runs.
        let stored = StoredTicket::encode(&ticket).map_err(|_| ApiError::Internal)?;
        let fingerprint = idempotency::fingerprint_parsed(Some(&value), &body);
        let wait = wait.min(state.request_deadline);
        return super::tickets::accept(outbox, &route, key, &fingerprint, &stored, wait).await;
    }
    let Some(key) = headers.get(IDEMPOTENCY_KEY) else {
        // Without a key every request is its own logical ticket, with a fresh marker.
        let external_id = uuid::Uuid::new_v4().to_string();
        let work = {
            let state = state.clone();
            let account = route.account;
            Box::pin(async move {
                create(&state, &account, parsed, &external_id, None)
                    .await
                    .unwrap_or_else(IntoResponse::into_response)
            })
        };
        return detached(&state, work).await;
    };
    let key = valid_key(key)?;
    // Keys are scoped by caller and connection: two services choosing the same key never
    // share a record, nor a ticket, and neither does one key sent to two merchants.
    let key = format!("{}:{key}", route.scope());
    let fingerprint = idempotency::fingerprint_parsed(parsed.as_ref().ok(), &body);
    let claim = state
        .idempotency
        .claim(&key, &fingerprint)
        .await
        .map_err(|_| ApiError::StoreUnavailable)?;
    let token = match claim {
        Claim::Acquired(token) => {
            tracing::info!(target: TRACE_TARGET, "idempotency claim");
            token
        }
        Claim::Replay(answer) => {
            tracing::info!(target: TRACE_TARGET, "idempotency replay");
            crate::metrics::idempotency_replay();
            return Ok(replay(answer));
        }
        Claim::InProgress => {
            tracing::info!(target: TRACE_TARGET, "idempotency in progress");
            return Err(ApiError::IdempotencyInProgress);
        }
        Claim::Mismatch => return Err(ApiError::IdempotencyMismatch),
    };
    let external_id = idempotency::external_id(&key, &fingerprint);
    let work = {
        let state = state.clone();
        let account = route.account;
        Box::pin(async move {
            // The lease lives exactly as long as the work: renewed alongside it, gone with it.
            let resp = tokio::select! {
                r = create(&state, &account, parsed, &external_id, Some(&token)) => {
                    r.unwrap_or_else(IntoResponse::into_response)
                }
                () = state.idempotency.keep_alive(&token) => {
                    unreachable!("keep_alive never completes")
                }
            };
            settle(&state, token, resp).await
        })
    };
    detached(&state, work).await
}

/// Runs a request's work in a task of its own, tracked for the shutdown drain: a caller that
/// hangs up (its timeout, a proxy's) drops this handler, but not the work. The ticket is still
/// made once, and with a key its answer is stored for the caller's retry; without one, the
/// customer and ticket calls are not left half done.
///
/// The work comes boxed: its state machine (the whole customer-and-ticket use case) is some
/// 10 KB, and unboxed it was copied several times per request on its way into the task.
async fn detached(
    state: &AppState,
    work: std::pin::Pin<Box<dyn Future<Output = Response> + Send + 'static>>,
) -> Result<Response, ApiError> {
    let request_id = crate::request_id::current_request_id();
    let span = tracing::Span::current();
    // The trace span goes along too: the Gorgias calls made in the task are its children.
    let task = state.tasks.spawn(crate::traces::scope(
        crate::traces::current(),
        crate::request_id::REQUEST_ID
            .scope(request_id, tracing::Instrument::instrument(work, span)),
    ));
    task.await.map_err(|e| {
        tracing::error!(panicked = e.is_panic(), "the request's work did not finish");
        ApiError::Internal
    })
}

/// Records the work's answer under its key: a final one (201, or a 4xx the same body will
/// always get) is stored for replay; anything else marks the key failed, so the caller's retry
/// runs again and looks the ticket up by `external_id` first.
async fn settle(state: &AppState, token: idempotency::ClaimToken, resp: Response) -> Response {
    let status = resp.status();
    if status == StatusCode::CREATED || status.is_client_error() {
        let (parts, body) = resp.into_parts();
        // Our own answer, already in memory: reading it cannot fail.
        let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
            return ApiError::Internal.into_response();
        };
        if bytes.len() > MAX_STORED_ANSWER {
            // Not kept: the retry runs again and finds this very ticket by `external_id`.
            if let Err(e) = state.idempotency.release(token).await {
                tracing::warn!(error = %e, "could not release the idempotency key");
            }
            return Response::from_parts(parts, axum::body::Body::from(bytes));
        }
        let answer = StoredAnswer {
            status: status.as_u16(),
            content_type: parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/json")
                .to_owned(),
            body: String::from_utf8_lossy(&bytes).into_owned(),
        };
        if let Err(e) = state.idempotency.complete(token, answer).await {
            tracing::warn!(error = %e, "could not store the idempotent answer");
        }
        return Response::from_parts(parts, axum::body::Body::from(bytes));
    }
    if let Err(e) = state.idempotency.release(token).await {
        tracing::warn!(error = %e, "could not release the idempotency key");
    }
    resp
}

/// Largest answer stored for replay: 64 KiB, so a key's record stays small in the database
/// and in Redis. Problem answers are bounded below it; a larger ticket answer (many long
/// messages) is not stored, and the caller's retry finds that very ticket by `external_id`.
const MAX_STORED_ANSWER: usize = 64 * 1024;

/// An `Idempotency-Key` header's value, when it is 1 to 255 visible ASCII characters.
fn valid_key(key: &HeaderValue) -> Result<&str, ApiError> {
    key.to_str()
        .ok()
        .filter(|k| idempotency::is_valid_key(k))
        .ok_or_else(|| {
            ApiError::BadHeader("Idempotency-Key must be 1 to 255 visible ASCII characters".into())
        })
}

fn replay(answer: StoredAnswer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    let mut resp = (status, answer.body).into_response();
    if let Ok(v) = HeaderValue::from_str(&answer.content_type) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp.headers_mut()
        .insert(IDEMPOTENCY_REPLAYED, HeaderValue::from_static("true"));
    resp
}

/// The fence of a keyed request: its create is sent only while its key's claim is still ours,
/// and the key records that a create was sent.
struct KeyFence<'a> {
    store: &'a idempotency::IdempotencyStore,
    claim: &'a idempotency::ClaimToken,
}

#[async_trait::async_trait]
impl Fence for KeyFence<'_> {
    async fn may_create(&self) -> bool {
        match self.store.fence(self.claim).await {
            Ok(held) => held,
            Err(e) => {
                // Unfenced, a create could race another replica's: better not to create.
                tracing::warn!(error = %e, "could not fence a ticket create");
                false
            }
        }
    }
}

/// Parses, validates and creates: the request's work once the idempotency gate is passed.
/// With a key's `claim`, every create is fenced by it, and what an earlier attempt with the
/// key left behind (a create that may have landed, its settle window) is honoured.
async fn create(
    state: &AppState,
    account: &Account,
    parsed: Result<serde_json::Value, serde_json::Error>,
    external_id: &str,
    claim: Option<&idempotency::ClaimToken>,
) -> Result<Response, ApiError> {
    let value = parsed.map_err(|e| ApiError::MalformedJson(json_error(&e)))?;
    let ticket = NewTicket::parse_with(&value, &account.rules).map_err(ApiError::Invalid)?;
    tracing::debug!(
        messages = ticket.messages.len(),
        "valid ticket request; creating it in Gorgias"
    );
    let deadline = super::deadline_after(state.request_deadline);
    let fence = claim.map(|claim| KeyFence {
        store: &state.idempotency,
        claim,
    });
    let attempt = Attempt {
        external_id,
        deadline,
        reconcile_first: claim.is_some_and(|c| c.reconcile_first),
        settle_remaining: claim.map_or(Duration::ZERO, |c| c.settle_remaining),
        wait_in_attempt: true,
        fence: fence
            .as_ref()
            .map_or(&Unfenced as &dyn Fence, |f| f as &dyn Fence),
    };
    let created = tokio::time::timeout_at(
        deadline + Duration::from_millis(250),
        state.accounts.create_ticket(account, &ticket, &attempt),
    )
    .await
    .map_err(|_| ApiError::DeadlineExceeded)?;
    match created {
        Ok(created) => Ok(created_response(&created)),
        Err(CreateError::Ticketing(e)) => Err(e.into()),
        Err(CreateError::NeedsReconnect(id)) => Err(ApiError::NeedsReconnect(id)),
    }
}

/// A typical created ticket's answer fits in this many bytes (the recorded one is under 5 KiB).
const ANSWER_CAPACITY: usize = 8 * 1024;

/// The created ticket as a 201, serialised once into a buffer sized for a typical answer.
///
/// Not through axum's `Json`: it starts from 128 bytes and writes through `BytesMut`'s
/// `io::Write` adapter, which does not inline serde_json's many small writes. Under callgrind
/// (scenario 1) this took the answer's encoding from 45k to 34k instructions per request.
fn created_response(ticket: &crate::output::Ticket) -> Response {
    let mut body = Vec::with_capacity(ANSWER_CAPACITY);
    if let Err(e) = serde_json::to_writer(&mut body, ticket) {
        // Our own plain struct; kept so a slip answers 500 rather than panicking.
        tracing::error!(error = %e, "could not encode the created ticket");
        return ApiError::Internal.into_response();
    }
    (
        StatusCode::CREATED,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
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
