//! The admin API: `/connections`, guarded by its own bearer tokens (`ADMIN_TOKENS`). A caller
//! token is refused here, and an admin token on `POST /ticket`: managing merchants'
//! credentials and opening tickets are different powers.
//!
//! No answer carries a secret: what is stored is sealed, and what is answered is a
//! [`crate::connections::View`].

use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::accounts::ConnectionId;
use crate::connections::{Connections, View, parse_spec};
use crate::error::ApiError;
use crate::state::AppState;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/connections", get(list))
        .route(
            "/connections/{connection_id}",
            get(show).put(put).delete(remove),
        )
        .route("/connections/{connection_id}/check", post(check))
}

/// Middleware: lets the request through with an admin token, else answers 401. With no admin
/// token configured the admin API is off: every request is 401.
pub(crate) async fn require_admin(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let presented = super::auth::bearer(&req);
    match presented {
        Some(token) if !state.admin.is_open() && state.admin.accepts(token) => next.run(req).await,
        _ => ApiError::Unauthorized.into_response(),
    }
}

fn stored(state: &AppState) -> Result<&Connections, ApiError> {
    state.accounts.connections().ok_or(ApiError::NotEnabled(
        "stored connections need a database (OUTBOX_URL is off)",
    ))
}

fn id(raw: &str) -> Result<ConnectionId, ApiError> {
    ConnectionId::parse(raw).ok_or_else(|| {
        ApiError::BadPath(
            "the connection id must be 1 to 64 letters, digits, '.', '_' or '-'".into(),
        )
    })
}

fn unavailable(e: &crate::connections::ConnectionsError) -> ApiError {
    tracing::error!(error = %e, "the connections cannot be used");
    ApiError::Account(crate::accounts::AccountError::Unavailable)
}

/// `PUT /connections/{id}`: creates (201) or replaces (200) a connection.
async fn put(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    body: Result<Json<serde_json::Value>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let connections = stored(&state)?;
    let id = id(&raw)?;
    let Json(body) = body.map_err(|r| match r {
        axum::extract::rejection::JsonRejection::MissingJsonContentType(_) => {
            ApiError::UnsupportedMediaType
        }
        axum::extract::rejection::JsonRejection::JsonSyntaxError(e) => {
            ApiError::MalformedJson(e.body_text().chars().take(200).collect())
        }
        _ => ApiError::UnreadableBody,
    })?;
    let spec = parse_spec(&body, state.allow_custom_base_urls).map_err(ApiError::Invalid)?;
    let keys = state.accounts.keys().ok_or(ApiError::NotEnabled(
        "CONNECTIONS_KEY is not set: secrets cannot be stored sealed",
    ))?;
    let created = connections
        .put(&id, &spec, keys)
        .await
        .map_err(|e| unavailable(&e))?;
    state.accounts.forget(&id).await;
    tracing::info!(connection_id = %id, created, "connection stored");
    let view = view_of(connections, &id).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view)).into_response())
}

async fn view_of(connections: &Connections, id: &ConnectionId) -> Result<View, ApiError> {
    let record = connections
        .get(id)
        .await
        .map_err(|e| unavailable(&e))?
        .ok_or(ApiError::Account(crate::accounts::AccountError::Unknown))?;
    let queued = connections.queued(id).await.map_err(|e| unavailable(&e))?;
    Ok(record.view(queued))
}

/// `GET /connections/{id}`: the connection and its state, without any secret.
async fn show(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<View>, ApiError> {
    let connections = stored(&state)?;
    Ok(Json(view_of(connections, &id(&raw)?).await?))
}

/// `GET /connections` parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Page {
    limit: Option<u32>,
    cursor: Option<String>,
}

/// One page of connections.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ConnectionPage {
    /// The connections, in id order.
    pub connections: Vec<View>,
    /// Pass as `cursor` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// The largest page.
const PAGE_MAX: u32 = 100;

/// `GET /connections?limit=&cursor=`: a page of connections in id order.
async fn list(
    State(state): State<AppState>,
    page: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ConnectionPage>, ApiError> {
    let connections = stored(&state)?;
    let Query(page) = page
        .map_err(|_| ApiError::BadQuery("the parameters are limit (1 to 100) and cursor".into()))?;
    let limit = page.limit.unwrap_or(50);
    if !(1..=PAGE_MAX).contains(&limit) {
        return Err(ApiError::BadQuery("limit must be 1 to 100".into()));
    }
    let cursor = match page.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => {
            Some(id(c).map_err(|_| ApiError::BadQuery("cursor is not a connection id".into()))?)
        }
    };
    let records = connections
        .list(cursor.as_ref(), limit + 1)
        .await
        .map_err(|e| unavailable(&e))?;
    let more = records.len() > limit as usize;
    let mut views = Vec::with_capacity(records.len().min(limit as usize));
    for record in records.into_iter().take(limit as usize) {
        let queued = connections
            .queued(&record.id)
            .await
            .map_err(|e| unavailable(&e))?;
        views.push(record.view(queued));
    }
    let next_cursor = more
        .then(|| views.last().map(|v| v.connection_id.clone()))
        .flatten();
    Ok(Json(ConnectionPage {
        connections: views,
        next_cursor,
    }))
}

/// `DELETE` parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Force {
    force: Option<bool>,
}

/// `DELETE /connections/{id}[?force=true]`: 409 while deliveries are queued for it, unless
/// forced, when they become `failed` with the problem `connection_deleted`.
async fn remove(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    force: Result<Query<Force>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let connections = stored(&state)?;
    let id = id(&raw)?;
    let Query(force) =
        force.map_err(|_| ApiError::BadQuery("the one parameter is force=true".into()))?;
    let force = force.force.unwrap_or(false);
    if connections
        .get(&id)
        .await
        .map_err(|e| unavailable(&e))?
        .is_none()
    {
        return Err(ApiError::Account(crate::accounts::AccountError::Unknown));
    }
    let queued = connections.queued(&id).await.map_err(|e| unavailable(&e))?;
    if queued > 0 && !force {
        return Err(ApiError::ConnectionHasDeliveries(queued));
    }
    let problem = serde_json::to_string(&ApiError::ConnectionDeleted.problem())
        .unwrap_or_else(|_| "{}".into());
    connections
        .delete(&id, problem, state.webhooks.is_some())
        .await
        .map_err(|e| unavailable(&e))?;
    state.accounts.forget(&id).await;
    tracing::info!(connection_id = %id, failed_deliveries = queued, "connection deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /connections/{id}/check`: the `check` preflight against that account, as JSON
/// (read-only; at most 4 Gorgias calls).
async fn check(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let connections = stored(&state)?;
    let id = id(&raw)?;
    let record = connections
        .get(&id)
        .await
        .map_err(|e| unavailable(&e))?
        .ok_or(ApiError::Account(crate::accounts::AccountError::Unknown))?;
    let keys = state.accounts.keys().ok_or(ApiError::Account(
        crate::accounts::AccountError::Unavailable,
    ))?;
    let (base_url, auth) = record.target(keys)?;
    let (client, ticketing, _) =
        state
            .accounts
            .factory()
            .settings(true, base_url, auth, &record.settings.overrides());
    let report = crate::commands::check_account(&client, &ticketing).await;
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        report.render_json(),
    )
        .into_response())
}
