//! OAuth2 as Gorgias offers it to apps (`gorgias-api.md` §12): `/oauth/authorize` approves at
//! once and sends the browser back with a code; `/oauth/token` exchanges a code
//! (`authorization_code`) or a refresh token (`refresh_token`), the app's client id and secret
//! as HTTP Basic. Access tokens expire (`--access-token-ttl-secs`, 24 h like Gorgias); refresh
//! tokens never do, and are replaced on each refresh only with `--rotate-refresh-tokens`
//! (whether Gorgias rotates them is unknown). `--revoke` (or `POST /_sim/oauth/revoke`) makes
//! every refresh fail with `invalid_grant`, as a merchant uninstalling the app would.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::json;

use super::Shared;

/// The OAuth2 app the simulator knows, and how its tokens behave.
#[derive(Debug, Clone)]
pub struct OAuthConfig {
    /// The app's client id.
    pub client_id: String,
    /// The app's client secret.
    pub client_secret: String,
    /// How long an access token lives.
    pub access_token_ttl: Duration,
    /// Whether each refresh replaces the refresh token.
    pub rotate_refresh_tokens: bool,
    /// Whether refreshes are refused (`invalid_grant`).
    pub revoked: bool,
}

impl Default for OAuthConfig {
    fn default() -> Self {
        Self {
            client_id: DEFAULT_CLIENT_ID.into(),
            client_secret: DEFAULT_CLIENT_SECRET.into(),
            access_token_ttl: Duration::from_secs(24 * 3600),
            rotate_refresh_tokens: false,
            revoked: false,
        }
    }
}

/// The sandbox app's client id.
pub const DEFAULT_CLIENT_ID: &str = "sandbox-oauth-client";
/// The sandbox app's client secret.
pub const DEFAULT_CLIENT_SECRET: &str = "sandbox-oauth-secret";

/// Tokens and codes issued so far.
#[derive(Debug, Default)]
pub(crate) struct Issued {
    /// Codes not yet exchanged, with their redirect URI and when they lapse.
    codes: HashMap<String, (String, Instant)>,
    /// Access tokens and when they expire.
    access: HashMap<String, Instant>,
    /// Refresh tokens that are valid.
    refresh: HashSet<String>,
}

/// The OAuth state of a running simulator.
#[derive(Debug)]
pub(crate) struct OAuth {
    pub config: OAuthConfig,
    pub issued: Issued,
}

impl OAuth {
    pub(crate) fn new(config: OAuthConfig) -> Self {
        Self {
            config,
            issued: Issued::default(),
        }
    }

    /// Whether `token` is an access token it issued that has not expired.
    pub(crate) fn accepts(&self, token: &str) -> bool {
        self.issued
            .access
            .get(token)
            .is_some_and(|expiry| *expiry > Instant::now())
    }

    /// Whether `token` is an access token it ever issued.
    pub(crate) fn issued_ever(&self, token: &str) -> bool {
        self.issued.access.contains_key(token)
    }

    /// A new access token (and refresh token): `(access, refresh, ttl)`.
    pub(crate) fn issue(&mut self, refresh: Option<String>) -> (String, String, Duration) {
        let access = format!("sim-at-{}", random());
        let ttl = self.config.access_token_ttl;
        self.issued
            .access
            .insert(access.clone(), Instant::now() + ttl);
        let refresh = refresh.unwrap_or_else(|| format!("sim-rt-{}", random()));
        self.issued.refresh.insert(refresh.clone());
        (access, refresh, ttl)
    }
}

fn random() -> String {
    (0..24).map(|_| fastrand::alphanumeric()).collect()
}

/// `GET /oauth/authorize`: approves at once (the merchant clicked "Allow") and redirects to
/// `redirect_uri` with a code and the caller's `state`.
pub(crate) async fn authorize(
    State(sim): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let mut control = sim.control();
    let oauth = &mut control.oauth;
    if q.get("client_id") != Some(&oauth.config.client_id)
        || q.get("response_type").map(String::as_str) != Some("code")
    {
        return (StatusCode::BAD_REQUEST, "unknown client or response_type").into_response();
    }
    let Some(redirect) = q.get("redirect_uri").and_then(|r| url::Url::parse(r).ok()) else {
        return (StatusCode::BAD_REQUEST, "redirect_uri is required").into_response();
    };
    let code = format!("sim-code-{}", random());
    oauth.issued.codes.insert(
        code.clone(),
        (
            redirect.to_string(),
            Instant::now() + Duration::from_secs(600),
        ),
    );
    let mut back = redirect;
    back.query_pairs_mut().append_pair("code", &code);
    if let Some(state) = q.get("state") {
        back.query_pairs_mut().append_pair("state", state);
    }
    (StatusCode::FOUND, [(header::LOCATION, back.to_string())]).into_response()
}

fn token_error(status: StatusCode, error: &str) -> Response {
    (status, Json(json!({"error": error}))).into_response()
}

fn client_ok(headers: &HeaderMap, config: &OAuthConfig) -> bool {
    let Some(b64) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
    else {
        return false;
    };
    base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .is_ok_and(|d| d == format!("{}:{}", config.client_id, config.client_secret).as_bytes())
}

/// `POST /oauth/token` (form): `authorization_code` or `refresh_token`.
pub(crate) async fn token(State(sim): State<Arc<Shared>>, req: Request) -> Response {
    let headers = req.headers().clone();
    let Ok(body) = axum::body::to_bytes(req.into_body(), 64 * 1024).await else {
        return token_error(StatusCode::BAD_REQUEST, "invalid_request");
    };
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let answer = {
        let mut control = sim.control();
        let oauth = &mut control.oauth;
        if !client_ok(&headers, &oauth.config) {
            return token_error(StatusCode::UNAUTHORIZED, "invalid_client");
        }
        match form.get("grant_type").map(String::as_str) {
            Some("authorization_code") => {
                let code = form.get("code").cloned().unwrap_or_default();
                match oauth.issued.codes.remove(&code) {
                    Some((redirect, until))
                        if until > Instant::now()
                            && form.get("redirect_uri") == Some(&redirect) =>
                    {
                        Ok(oauth.issue(None))
                    }
                    _ => Err("invalid_grant"),
                }
            }
            Some("refresh_token") => {
                let refresh = form.get("refresh_token").cloned().unwrap_or_default();
                if oauth.config.revoked || !oauth.issued.refresh.contains(&refresh) {
                    Err("invalid_grant")
                } else if oauth.config.rotate_refresh_tokens {
                    oauth.issued.refresh.remove(&refresh);
                    Ok(oauth.issue(None))
                } else {
                    Ok(oauth.issue(Some(refresh)))
                }
            }
            _ => Err("unsupported_grant_type"),
        }
    };
    match answer {
        Ok((access, refresh, ttl)) => {
            {
                let mut data = sim.data();
                if form.get("grant_type").map(String::as_str) == Some("refresh_token") {
                    data.stats.token_refreshes += 1;
                } else {
                    data.stats.codes_exchanged += 1;
                }
            }
            Json(json!({
                "access_token": access,
                "refresh_token": refresh,
                "token_type": "Bearer",
                "expires_in": ttl.as_secs(),
                "scope": form.get("scope").cloned().unwrap_or_default(),
            }))
            .into_response()
        }
        Err(error) => {
            if error == "invalid_grant" {
                sim.data().stats.refused_grants += 1;
            }
            token_error(StatusCode::BAD_REQUEST, error)
        }
    }
}

/// `POST /_sim/oauth/revoke` (`{"revoked": bool}`, default true).
pub(crate) async fn set_revoked(State(sim): State<Arc<Shared>>, body: Bytes) -> Response {
    let revoked = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["revoked"].as_bool())
        .unwrap_or(true);
    sim.control().oauth.config.revoked = revoked;
    StatusCode::NO_CONTENT.into_response()
}
