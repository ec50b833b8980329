//! Liveness (`/healthz`) and readiness (`/readyz`); neither needs a token.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::state::AppState;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

/// The process is up and serving. Never calls Gorgias, so a Gorgias outage does not get every
/// replica restarted by its orchestrator.
async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Config loaded, the outbox writable, and Gorgias accepting our credentials (cached briefly).
async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    if let Some(outbox) = &state.outbox {
        // A replica that cannot queue must not take traffic; an outage of Gorgias alone is
        // not a reason (asynchronous requests are still accepted and delivered later).
        outbox
            .check_writable()
            .await
            .map_err(|e| ApiError::NotReady(format!("the outbox cannot be written: {e}")))?;
    }
    // Only the default account decides readiness: one merchant's revoked credentials must
    // not take every replica out of rotation for all the others (each connection's state is
    // in `GET /connections/{id}`).
    if let Some(account) = state.accounts.default_account() {
        state
            .readiness
            .check(&account.ticketing, state.outbox.is_some())
            .await?;
    }
    Ok(Json(json!({"status": "ready"})))
}
