//! Inbound auth: `Authorization: Bearer <token>` against `API_TOKENS`, compared in constant time.
//! Health, readiness, metrics and the OpenAPI document stay open (probes and scrapers carry no
//! token); `POST /ticket` and `GET /tickets/{id}` take caller tokens, `/connections` admin
//! tokens (see `connections`), and neither kind is accepted where the other is.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::state::AppState;

/// Middleware: lets the request through with a known bearer token, else answers 401.
pub(crate) async fn require_token(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let presented = bearer(&req);
    // An admin token is never a caller's, even when caller auth is off.
    if presented.is_some_and(|t| !state.admin.is_open() && state.admin.accepts(t)) {
        return ApiError::Unauthorized.into_response();
    }
    if state.auth.is_open() {
        return next.run(req).await;
    }
    match presented.and_then(|t| state.auth.identify(t)) {
        Some(caller) => {
            let mut req = req;
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        None => ApiError::Unauthorized.into_response(),
    }
}

/// The bearer token a request presents, if any.
pub(crate) fn bearer(req: &Request) -> Option<&str> {
    bearer_of(req.headers())
}

/// The bearer token in `headers`, if any.
pub(crate) fn bearer_of(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
}
