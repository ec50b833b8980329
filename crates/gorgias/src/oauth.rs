//! Gorgias's OAuth2 token endpoint: exchanging an authorization code and refreshing an
//! access token (`../shared/gorgias-api.md` §12, after Nango's `gorgias` provider).
//!
//! - authorize: `https://{subdomain}.gorgias.com/oauth/authorize`;
//! - token: `https://{subdomain}.gorgias.com/oauth/token`, the client id and secret as HTTP
//!   Basic, `grant_type=authorization_code` or `grant_type=refresh_token`.
//!
//! Access tokens live 24 h; refresh tokens do not expire and come only with the `offline`
//! scope. Whether a refresh returns a new refresh token is unknown: whatever comes back is
//! kept, and the old one is kept when none does.

use std::time::Duration;

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

/// The scopes the service asks for: tickets and customers, the account's settings, and
/// `offline` (without it there is no refresh token, and the connection dies in a day).
pub const SCOPES: &str = "openid offline tickets:write customers:read customers:write account:read";

/// An OAuth2 app's client credentials.
#[derive(Clone)]
pub struct OAuthClient {
    /// The app's client id.
    pub client_id: String,
    /// The app's client secret.
    pub client_secret: SecretString,
    /// Where Gorgias sends the browser back (`OAUTH_REDIRECT_URL`).
    pub redirect_url: Url,
}

impl std::fmt::Debug for OAuthClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthClient")
            .field("client_id", &self.client_id)
            .field("redirect_url", &self.redirect_url.as_str())
            .finish_non_exhaustive()
    }
}

/// Tokens the token endpoint answered.
#[derive(Clone)]
pub struct Tokens {
    /// The access token.
    pub access_token: SecretString,
    /// A refresh token, when one came back.
    pub refresh_token: Option<SecretString>,
    /// How long the access token lives, when said.
    pub expires_in: Option<Duration>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens([redacted])")
    }
}

/// Why the token endpoint gave no tokens.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// `invalid_grant` (or `invalid_client`, `unauthorized_client`): the grant is refused for
    /// good; a person must reconnect.
    #[error("Gorgias refused the grant ({0})")]
    Refused(String),
    /// Anything that may pass: unreachable, timeout, 5xx, 429, an unreadable answer.
    #[error("the token endpoint failed: {0}")]
    Failed(String),
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: Option<String>,
    refresh_token: Option<String>,
    expires_in: Option<serde_json::Value>,
    error: Option<String>,
}

impl OAuthClient {
    /// The authorize URL of the account at `base_url`, for the browser.
    pub fn authorize_url(&self, base_url: &Url, state: &str) -> Option<Url> {
        let mut url = base_url.join("oauth/authorize").ok()?;
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.client_id)
            .append_pair("scope", SCOPES)
            .append_pair("redirect_uri", self.redirect_url.as_str())
            .append_pair("state", state);
        Some(url)
    }

    /// `grant_type=authorization_code`: the tokens of a connection being installed.
    ///
    /// # Errors
    /// [`TokenError`].
    pub async fn exchange_code(
        &self,
        http: &reqwest::Client,
        base_url: &Url,
        code: &str,
    ) -> Result<Tokens, TokenError> {
        self.token(
            http,
            base_url,
            &[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", self.redirect_url.as_str()),
            ],
        )
        .await
    }

    /// `grant_type=refresh_token`.
    ///
    /// # Errors
    /// [`TokenError`].
    pub async fn refresh(
        &self,
        http: &reqwest::Client,
        base_url: &Url,
        refresh_token: &SecretString,
    ) -> Result<Tokens, TokenError> {
        self.token(
            http,
            base_url,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token.expose_secret()),
            ],
        )
        .await
    }

    async fn token(
        &self,
        http: &reqwest::Client,
        base_url: &Url,
        form: &[(&str, &str)],
    ) -> Result<Tokens, TokenError> {
        use base64::Engine as _;
        let url = base_url
            .join("oauth/token")
            .map_err(|e| TokenError::Failed(e.to_string()))?;
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let basic = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            self.client_id,
            self.client_secret.expose_secret()
        ));
        let mut auth = HeaderValue::from_str(&format!("Basic {basic}"))
            .map_err(|_| TokenError::Failed("the client credentials are not a header".into()))?;
        auth.set_sensitive(true);
        let resp = http
            .post(url)
            .header(AUTHORIZATION, auth)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json")
            .timeout(Duration::from_secs(10))
            .body(body)
            .send()
            .await
            // Without the URL: it names the account; the error's kind is enough.
            .map_err(|e| TokenError::Failed(e.without_url().to_string()))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| TokenError::Failed(e.without_url().to_string()))?;
        let answer: Option<TokenAnswer> = serde_json::from_slice(&bytes).ok();
        match (status.as_u16(), answer) {
            (200..=299, Some(a)) if a.access_token.is_some() => Ok(Tokens {
                access_token: SecretString::from(a.access_token.unwrap_or_default()),
                refresh_token: a
                    .refresh_token
                    .filter(|r| !r.is_empty())
                    .map(SecretString::from),
                expires_in: a
                    .expires_in
                    .as_ref()
                    .and_then(seconds)
                    .map(Duration::from_secs),
            }),
            (400 | 401, Some(TokenAnswer { error: Some(e), .. }))
                if matches!(
                    e.as_str(),
                    "invalid_grant" | "invalid_client" | "unauthorized_client"
                ) =>
            {
                Err(TokenError::Refused(e))
            }
            (status, _) => Err(TokenError::Failed(format!(
                "the token endpoint answered {status} without tokens"
            ))),
        }
    }
}

/// `expires_in` as a number or a numeric string (tolerant: providers send both).
fn seconds(v: &serde_json::Value) -> Option<u64> {
    match v {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}
