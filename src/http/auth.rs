//! Inbound auth: `Authorization: Bearer <token>` against `API_TOKENS`, compared in constant time.
//! Health, readiness, metrics and the OpenAPI document stay open (probes and scrapers carry no
//! token); only `POST /ticket` is guarded.

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
    if state.auth.is_open() {
        return next.run(req).await;
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    match presented.and_then(|t| state.auth.identify(t)) {
        Some(caller) => {
            let mut req = req;
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        None => ApiError::Unauthorized.into_response(),
    }
}
