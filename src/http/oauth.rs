//! Installing a connection with OAuth2: `GET /oauth/authorize` sends the merchant to Gorgias
//! with a single-use `state`; `GET /oauth/callback` checks that state, exchanges the code for
//! tokens and stores the connection.
//!
//! `/oauth/authorize` takes an admin token, or a short-lived link an admin call signed
//! (`POST /connections/{id}/oauth-link`), so the link can be handed to the merchant's browser
//! without the admin token. `/oauth/callback` takes no token (the browser comes back from
//! Gorgias): its `state`, stored server-side, single-use and expiring, is what guards it.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::accounts::ConnectionId;
use crate::connections::{AuthSpec, Settings, Spec, parse_target};
use crate::domain::ValidationErrors;
use crate::error::ApiError;
use crate::state::AppState;

/// How long an install's `state` (and a signed link) stays usable.
const STATE_TTL: Duration = Duration::from_secs(600);

/// `/oauth/authorize` and `/oauth/callback` (authenticated on their own terms).
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/oauth/authorize", get(authorize))
        .route("/oauth/callback", get(callback))
}

/// `POST /connections/{id}/oauth-link` (behind the admin middleware).
pub(crate) fn admin_router() -> Router<AppState> {
    Router::new().route("/connections/{connection_id}/oauth-link", post(link))
}

/// What an install is for: the connection id and the account.
struct Install {
    id: ConnectionId,
    base_url: url::Url,
    subdomain: Option<String>,
}

fn install(
    state: &AppState,
    id: Option<&str>,
    subdomain: Option<&str>,
    base_url: Option<&str>,
) -> Result<Install, ApiError> {
    let mut errors = ValidationErrors::default();
    let id = match id.map(ConnectionId::parse) {
        Some(Some(id)) => Some(id),
        Some(None) => {
            errors.shape(
                "connection_id",
                "must be 1 to 64 letters, digits, '.', '_' or '-'",
            );
            None
        }
        None => {
            errors.shape("connection_id", "is required");
            None
        }
    };
    let target = parse_target(
        &mut errors,
        subdomain,
        base_url,
        state.allow_custom_base_urls,
    );
    match (id, target) {
        (Some(id), Some((base_url, subdomain))) if errors.errors.is_empty() => Ok(Install {
            id,
            base_url,
            subdomain,
        }),
        _ => Err(ApiError::Invalid(errors)),
    }
}

/// The message a link's signature covers.
fn signed_part(id: &str, subdomain: &str, base_url: &str, expires: &str) -> String {
    format!("oauth-link\n{id}\n{subdomain}\n{base_url}\n{expires}")
}

/// What an install needs: the OAuth2 app, the database, and the key to seal tokens with.
fn install_parts(
    state: &AppState,
) -> Result<
    (
        &crate::accounts::OAuth,
        &crate::connections::Connections,
        &crate::secrets::Keyring,
    ),
    ApiError,
> {
    let oauth = state.accounts.oauth().ok_or_else(oauth_off)?;
    let connections = state
        .accounts
        .connections()
        .ok_or(ApiError::NotEnabled("stored connections need a database"))?;
    let keys = state.accounts.keys().ok_or(ApiError::NotEnabled(
        "CONNECTIONS_KEY is not set: tokens cannot be stored sealed",
    ))?;
    Ok((oauth, connections, keys))
}

fn oauth_off() -> ApiError {
    ApiError::NotEnabled(
        "OAuth2 installs need OAUTH_CLIENT_ID, OAUTH_CLIENT_SECRET and OAUTH_REDIRECT_URL",
    )
}

/// `GET /oauth/authorize?connection_id=…&subdomain=…`: a 302 to Gorgias's consent page.
async fn authorize(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let get = |k: &str| q.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let (oauth, connections, keys) = install_parts(&state)?;
    let admin = super::auth::bearer_of(&headers)
        .is_some_and(|t| !state.admin.is_open() && state.admin.accepts(t));
    let signed = match (get("expires"), get("sig")) {
        (Some(expires), Some(sig)) => {
            let live = expires
                .parse::<u64>()
                .is_ok_and(|at| at > crate::outbox::now_ms() / 1000);
            let message = signed_part(
                get("connection_id").unwrap_or_default(),
                get("subdomain").unwrap_or_default(),
                get("base_url").unwrap_or_default(),
                expires,
            );
            live && keys.verify(&message, sig)
        }
        _ => false,
    };
    if !admin && !signed {
        return Err(ApiError::Unauthorized);
    }
    let install = install(
        &state,
        get("connection_id"),
        get("subdomain"),
        get("base_url"),
    )?;
    let nonce: String = (0..32)
        .map(|_| format!("{:02x}", fastrand::u8(..)))
        .collect();
    // `fastrand` is not a CSPRNG: the state also carries a UUIDv4 (OS randomness).
    let state_token = format!("{nonce}{}", uuid::Uuid::new_v4().simple());
    connections
        .put_state(
            &state_token,
            &install.id,
            &install.base_url,
            install.subdomain.as_deref(),
            STATE_TTL,
        )
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "could not store an OAuth2 state");
            ApiError::Account(crate::accounts::AccountError::Unavailable)
        })?;
    let url = oauth
        .client
        .authorize_url(&install.base_url, &state_token)
        .ok_or(ApiError::Internal)?;
    tracing::info!(connection_id = %install.id, "OAuth2 install started");
    Ok((StatusCode::FOUND, [(header::LOCATION, url.to_string())]).into_response())
}

/// `POST /connections/{id}/oauth-link` (`{"subdomain": …}` or `{"base_url": …}`): a link to
/// `/oauth/authorize` that works without the admin token for 10 minutes.
async fn link(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    body: Result<Json<serde_json::Value>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let (_, _, keys) = install_parts(&state)?;
    let Json(body) = body.map_err(|_| ApiError::UnreadableBody)?;
    let text = |k: &str| body.get(k).and_then(serde_json::Value::as_str);
    let install = install(&state, Some(&raw), text("subdomain"), text("base_url"))?;
    let expires = (crate::outbox::now_ms() / 1000 + STATE_TTL.as_secs()).to_string();
    let subdomain = text("subdomain").unwrap_or_default();
    let base_url = text("base_url").unwrap_or_default();
    let sig = keys.sign(&signed_part(
        install.id.as_str(),
        subdomain,
        base_url,
        &expires,
    ));
    let mut url =
        url::Url::parse("http://link.invalid/oauth/authorize").map_err(|_| ApiError::Internal)?;
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("connection_id", install.id.as_str());
        if !subdomain.is_empty() {
            q.append_pair("subdomain", subdomain);
        }
        if !base_url.is_empty() {
            q.append_pair("base_url", base_url);
        }
        q.append_pair("expires", &expires).append_pair("sig", &sig);
    }
    let path = format!("/oauth/authorize?{}", url.query().unwrap_or_default());
    Ok(Json(json!({"url": path, "expires_at": expires.parse::<u64>().ok().map(|s| crate::outbox::rfc3339(s * 1000))})).into_response())
}

/// `GET /oauth/callback?code=…&state=…`: stores the connection with its tokens.
async fn callback(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let (oauth, connections, keys) = install_parts(&state)?;
    let Some(state_token) = q.get("state").filter(|s| !s.is_empty() && s.len() <= 256) else {
        return Err(ApiError::OAuthState);
    };
    // Taken before anything else, so a replayed or forged state never reaches Gorgias.
    let Some((id, base_url, subdomain)) =
        connections.take_state(state_token).await.map_err(|e| {
            tracing::error!(error = %e, "could not read an OAuth2 state");
            ApiError::Account(crate::accounts::AccountError::Unavailable)
        })?
    else {
        return Err(ApiError::OAuthState);
    };
    if let Some(error) = q.get("error") {
        tracing::warn!(connection_id = %id, "the OAuth2 install was not approved");
        let shown: String = error.chars().take(64).collect();
        return Err(ApiError::OAuthRefused(format!("Gorgias answered {shown}")));
    }
    let code = q
        .get("code")
        .filter(|c| !c.is_empty())
        .ok_or(ApiError::OAuthState)?;
    let tokens = oauth
        .client
        .exchange_code(&oauth.http, &base_url, code)
        .await
        .map_err(|e| match e {
            gorgias::TokenError::Refused(why) => ApiError::OAuthRefused(why),
            gorgias::TokenError::Failed(why) => {
                tracing::warn!(connection_id = %id, error = %why, "the OAuth2 code exchange failed");
                ApiError::OAuthFailed
            }
        })?;
    let Some(refresh_token) = tokens.refresh_token.clone() else {
        return Err(ApiError::OAuthRefused(
            "no refresh token came back (the app must ask for the offline scope)".into(),
        ));
    };
    let spec = Spec {
        base_url,
        subdomain,
        auth: AuthSpec::OAuth2 {
            access_token: tokens.access_token.clone(),
            refresh_token,
            expires_at: tokens
                .expires_in
                .map(|d| crate::outbox::now_ms().saturating_add(crate::outbox::ms(d))),
        },
        settings: Settings::default(),
    };
    connections.put(&id, &spec, keys).await.map_err(|e| {
        tracing::error!(error = %e, "could not store an installed connection");
        ApiError::Account(crate::accounts::AccountError::Unavailable)
    })?;
    state.accounts.forget(&id).await;
    tracing::info!(connection_id = %id, "OAuth2 install finished; connection stored");
    Ok(Json(json!({"connection_id": id.as_str(), "status": "connected"})).into_response())
}
