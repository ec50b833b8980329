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

/// Config loaded and Gorgias reachable with valid credentials (cached briefly).
async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    state.readiness.check(&state.ticketing).await?;
    Ok(Json(json!({"status": "ready"})))
}
