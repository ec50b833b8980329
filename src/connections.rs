//! Stored connections: one Gorgias account each, with its credentials sealed
//! ([`crate::secrets`]) and its state (`ok`, `needs_reconnect`, `unchecked`), in the same
//! database as the outbox.
//!
//! What the admin API takes ([`parse_spec`]: strict, every field error with its path), what
//! the database holds ([`Record`]: secrets only sealed), and what is answered ([`View`]: never
//! a secret) are three types, each converted once.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde_json::Value;
use url::Url;

use crate::accounts::{ConnectionId, Overrides};
use crate::domain::{FieldError, ValidationErrors};
use crate::secrets::{Keyring, SecretError};
use crate::store::{Row, Store, StoreError, V};
use crate::ticketing::MessageChannel;

/// Credentials as the admin API takes them.
#[derive(Clone)]
pub enum AuthSpec {
    /// A private app's API key (HTTP Basic).
    Basic {
        /// The Gorgias user's email.
        username: String,
        /// The key.
        api_key: SecretString,
    },
    /// OAuth2 tokens.
    OAuth2 {
        /// The access token.
        access_token: SecretString,
        /// The refresh token.
        refresh_token: SecretString,
        /// When the access token expires (Unix ms), when known.
        expires_at: Option<u64>,
    },
}

/// A validated `PUT /connections/{id}` body.
#[derive(Clone)]
pub struct Spec {
    /// `https://{subdomain}.gorgias.com/`, or a custom base URL.
    pub base_url: Url,
    /// The subdomain, when given as one.
    pub subdomain: Option<String>,
    /// Credentials.
    pub auth: AuthSpec,
    /// Settings that differ from the deployment's.
    pub settings: Settings,
}

/// A connection's own settings, as given (the text forms of the environment variables).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Settings {
    /// `40/20s`, `80/20s` or `off`; default by auth type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<String>,
    /// A fixed ticket channel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ticket_channel: Option<String>,
    /// `phone` or `api`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_channel: Option<String>,
    /// An ISO 3166 region code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone_default_region: Option<String>,
}

impl Settings {
    /// The overrides these settings make (already checked by [`parse_spec`]; a value that no
    /// longer parses is ignored, leaving the deployment's default).
    pub fn overrides(&self) -> Overrides {
        Overrides {
            rate_limit: self
                .rate_limit
                .as_deref()
                .and_then(|r| crate::config::parse_rate_limit(r).ok()),
            ticket_channel: self.ticket_channel.clone(),
            message_channel: self.message_channel.as_deref().and_then(|c| c.parse().ok()),
            phone_region: self
                .phone_default_region
                .as_deref()
                .and_then(|r| r.to_ascii_uppercase().parse().ok()),
        }
    }
}

/// The fields a body may have.
const FIELDS: [&str; 7] = [
    "subdomain",
    "base_url",
    "auth",
    "rate_limit",
    "ticket_channel",
    "message_channel",
    "phone_default_region",
];

/// Longest accepted text field, in bytes (a token, a username, a URL).
const TEXT_MAX: usize = 4096;

fn rule(errors: &mut ValidationErrors, field: &str, message: &str) {
    errors.errors.push(FieldError {
        field: field.to_owned(),
        message: message.to_owned(),
        problem: crate::domain::Problem::Rule,
    });
}

/// A text member: `None` when absent; a shape error when not a string.
fn text<'a>(
    errors: &mut ValidationErrors,
    obj: &'a serde_json::Map<String, Value>,
    prefix: &str,
    name: &str,
) -> Option<&'a str> {
    let path = format!("{prefix}{name}");
    match obj.get(name) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.len() > TEXT_MAX => {
            rule(errors, &path, "must be at most 4096 bytes");
            None
        }
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => {
            errors.shape(path, "must be a string");
            None
        }
    }
}

fn unknown_fields(
    errors: &mut ValidationErrors,
    obj: &serde_json::Map<String, Value>,
    prefix: &str,
    known: &[&str],
) {
    for name in obj.keys() {
        if !known.contains(&name.as_str()) {
            // The name is the caller's own text: bounded, and never a value.
            let shown: String = name.chars().take(64).collect();
            errors.shape(format!("{prefix}{shown}"), "unknown field");
        }
    }
}

/// Reads a `PUT /connections/{id}` body, strictly: unknown fields, wrong types and bad values
/// are all listed with their paths. A `base_url` is taken only when `allow_base_url`
/// (`ALLOW_CUSTOM_BASE_URLS`), so an admin token cannot aim the service at an internal host.
///
/// # Errors
/// Every problem found.
pub fn parse_spec(body: &Value, allow_base_url: bool) -> Result<Spec, ValidationErrors> {
    let mut errors = ValidationErrors::default();
    let Some(obj) = body.as_object() else {
        errors.shape("", "must be a JSON object");
        return Err(errors);
    };
    unknown_fields(&mut errors, obj, "", &FIELDS);
    let subdomain = text(&mut errors, obj, "", "subdomain");
    let base_url = text(&mut errors, obj, "", "base_url");
    let target = parse_target(&mut errors, subdomain, base_url, allow_base_url);
    let auth = parse_auth(&mut errors, obj.get("auth"));
    let settings = Settings {
        rate_limit: text(&mut errors, obj, "", "rate_limit").map(str::to_owned),
        ticket_channel: text(&mut errors, obj, "", "ticket_channel").map(|c| c.trim().to_owned()),
        message_channel: text(&mut errors, obj, "", "message_channel").map(str::to_owned),
        phone_default_region: text(&mut errors, obj, "", "phone_default_region").map(str::to_owned),
    };
    if let Some(r) = &settings.rate_limit
        && crate::config::parse_rate_limit(r).is_err()
    {
        rule(&mut errors, "rate_limit", "must be like 40/20s, or off");
    }
    if settings.ticket_channel.as_deref() == Some("") {
        rule(&mut errors, "ticket_channel", "must not be empty");
    }
    if let Some(c) = &settings.message_channel
        && c.parse::<MessageChannel>().is_err()
    {
        rule(&mut errors, "message_channel", "must be phone or api");
    }
    if let Some(r) = &settings.phone_default_region
        && r.to_ascii_uppercase()
            .parse::<phonenumber::country::Id>()
            .is_err()
    {
        rule(
            &mut errors,
            "phone_default_region",
            "must be an ISO 3166 region code such as KE or US",
        );
    }
    match (target, auth, errors.errors.is_empty()) {
        (Some((base_url, subdomain)), Some(auth), true) => Ok(Spec {
            base_url,
            subdomain,
            auth,
            settings,
        }),
        _ => Err(errors),
    }
}

/// Where a connection's account is: `https://{subdomain}.gorgias.com/`, or a `base_url` when
/// the deployment allows custom ones. The one rule for `PUT /connections` and the OAuth2
/// install alike.
pub fn parse_target(
    errors: &mut ValidationErrors,
    subdomain: Option<&str>,
    base_url: Option<&str>,
    allow_base_url: bool,
) -> Option<(Url, Option<String>)> {
    match (subdomain, base_url) {
        (Some(_), Some(_)) => {
            rule(errors, "base_url", "give subdomain or base_url, not both");
            None
        }
        (Some(s), None) => {
            let ok = !s.is_empty()
                && s.len() <= 63
                && s.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                });
            if ok {
                Url::parse(&format!("https://{s}.gorgias.com/"))
                    .ok()
                    .map(|u| (u, Some(s.to_owned())))
            } else {
                rule(
                    errors,
                    "subdomain",
                    "must match ^[a-z0-9_-]+$ (the account's name in https://{subdomain}.gorgias.com)",
                );
                None
            }
        }
        (None, Some(_)) if !allow_base_url => {
            rule(
                errors,
                "base_url",
                "custom base URLs are not allowed in this deployment (ALLOW_CUSTOM_BASE_URLS); \
                 give the subdomain",
            );
            None
        }
        (None, Some(u)) => match Url::parse(u) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
                Some((url, None))
            }
            _ => {
                rule(errors, "base_url", "must be an http(s) URL");
                None
            }
        },
        (None, None) => {
            errors.shape("subdomain", "is required (or base_url where allowed)");
            None
        }
    }
}

fn parse_auth(errors: &mut ValidationErrors, auth: Option<&Value>) -> Option<AuthSpec> {
    let obj = match auth {
        None | Some(Value::Null) => {
            errors.shape("auth", "is required");
            return None;
        }
        Some(Value::Object(obj)) => obj,
        Some(_) => {
            errors.shape("auth", "must be an object");
            return None;
        }
    };
    let required = |errors: &mut ValidationErrors, name: &str| {
        let v = text(errors, obj, "auth.", name);
        match v {
            Some(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
            Some(_) => {
                rule(errors, &format!("auth.{name}"), "must not be empty");
                None
            }
            None if obj.get(name).is_none_or(Value::is_null) => {
                errors.shape(format!("auth.{name}"), "is required");
                None
            }
            None => None,
        }
    };
    match text(errors, obj, "auth.", "type") {
        Some("basic") => {
            unknown_fields(errors, obj, "auth.", &["type", "username", "api_key"]);
            let username = required(errors, "username");
            let api_key = required(errors, "api_key");
            Some(AuthSpec::Basic {
                username: username?,
                api_key: SecretString::from(api_key?),
            })
        }
        Some("oauth2") => {
            unknown_fields(
                errors,
                obj,
                "auth.",
                &["type", "access_token", "refresh_token", "expires_at"],
            );
            let access = required(errors, "access_token");
            let refresh = required(errors, "refresh_token");
            let expires_at = match obj.get("expires_at") {
                None | Some(Value::Null) => None,
                Some(Value::Number(n)) => match n.as_u64() {
                    Some(secs) => Some(secs.saturating_mul(1000)),
                    None => {
                        rule(
                            errors,
                            "auth.expires_at",
                            "must be Unix seconds or RFC 3339",
                        );
                        None
                    }
                },
                Some(Value::String(s)) => match humantime::parse_rfc3339_weak(s) {
                    Ok(at) => at
                        .duration_since(std::time::UNIX_EPOCH)
                        .ok()
                        .map(crate::outbox::ms),
                    Err(_) => {
                        rule(
                            errors,
                            "auth.expires_at",
                            "must be Unix seconds or RFC 3339",
                        );
                        None
                    }
                },
                Some(_) => {
                    errors.shape("auth.expires_at", "must be Unix seconds or RFC 3339");
                    None
                }
            };
            Some(AuthSpec::OAuth2 {
                access_token: SecretString::from(access?),
                refresh_token: SecretString::from(refresh?),
                expires_at,
            })
        }
        Some(_) => {
            rule(errors, "auth.type", "must be basic or oauth2");
            None
        }
        None => {
            if obj.get("type").is_none_or(Value::is_null) {
                errors.shape("auth.type", "is required (basic or oauth2)");
            }
            None
        }
    }
}

/// A connection's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Its last Gorgias call succeeded.
    Ok,
    /// Gorgias refused its credentials (or its refresh token): a new `PUT` is needed.
    NeedsReconnect,
    /// Not called since it was stored.
    Unchecked,
}

impl Status {
    fn parse(s: &str) -> Self {
        match s {
            "ok" => Self::Ok,
            "needs_reconnect" => Self::NeedsReconnect,
            _ => Self::Unchecked,
        }
    }
}

/// A connection as stored: its secrets still sealed.
#[derive(Clone)]
pub struct Record {
    /// Its id.
    pub id: ConnectionId,
    /// Where its account is.
    pub base_url: String,
    /// The subdomain, when given as one.
    pub subdomain: Option<String>,
    /// `basic` or `oauth2`.
    pub auth_type: String,
    /// The API key's user (basic).
    pub username: Option<String>,
    /// The sealed API key or access token.
    pub secret: String,
    /// The sealed refresh token (oauth2).
    pub refresh_secret: Option<String>,
    /// When the access token expires (Unix ms).
    pub expires_at: Option<u64>,
    /// Its own settings.
    pub settings: Settings,
    /// Its state.
    pub status: Status,
    /// The last successful Gorgias call (Unix ms).
    pub last_ok_at: Option<u64>,
    /// The last error, as `code: detail` (never a secret).
    pub last_error: Option<String>,
    /// When the last error happened (Unix ms).
    pub last_error_at: Option<u64>,
    /// Bumped by every change of its credentials or settings.
    pub version: i64,
    /// Created (Unix ms).
    pub created_at: u64,
    /// Last replaced (Unix ms).
    pub updated_at: u64,
}

/// The columns every read selects, in [`Record`]'s order.
macro_rules! record_columns {
    ($before:literal, $after:literal) => {
        concat!(
            $before,
            "id, base_url, subdomain, auth_type, username, secret, refresh_secret, expires_at, \
             settings, status, last_ok_at, last_error, last_error_at, version, created_at, \
             updated_at",
            $after
        )
    };
}

impl Record {
    fn from_row(row: &Row) -> Option<Self> {
        let opt_ms = |i| row.opt_int(i).and_then(|v| u64::try_from(v).ok());
        Some(Self {
            id: ConnectionId::parse(&row.text(0))?,
            base_url: row.text(1),
            subdomain: row.opt_text(2),
            auth_type: row.text(3),
            username: row.opt_text(4),
            secret: row.text(5),
            refresh_secret: row.opt_text(6),
            expires_at: opt_ms(7),
            settings: serde_json::from_str(&row.text(8)).unwrap_or_default(),
            status: Status::parse(&row.text(9)),
            last_ok_at: opt_ms(10),
            last_error: row.opt_text(11),
            last_error_at: opt_ms(12),
            version: row.int(13),
            created_at: row.uint(14),
            updated_at: row.uint(15),
        })
    }

    /// The refresh token, opened (OAuth2 connections).
    ///
    /// # Errors
    /// When there is none, or it does not open.
    pub fn refresh_token(&self, keys: &Keyring) -> Result<SecretString, SecretError> {
        let sealed = self.refresh_secret.as_deref().ok_or(SecretError::Corrupt)?;
        keys.open(self.id.as_str(), REFRESH_FIELD, sealed)
    }

    /// When its access token should be refreshed (Unix ms): before it expires, by a margin of
    /// a third of its lifetime, at most 15 minutes (Nango refreshes 15 minutes ahead; a token
    /// living seconds, as in tests, gets a margin to match).
    pub fn refresh_at(&self) -> Option<u64> {
        if self.auth_type != "oauth2" {
            return None;
        }
        let expires = self.expires_at?;
        let lifetime = expires.saturating_sub(self.updated_at);
        let margin = (lifetime / 3).min(15 * 60 * 1000);
        Some(expires.saturating_sub(margin))
    }

    /// The credentials, opened.
    ///
    /// # Errors
    /// When a secret does not open under the keyring.
    pub fn auth(&self, keys: &Keyring) -> Result<gorgias::Auth, SecretError> {
        let secret = keys.open(self.id.as_str(), SECRET_FIELD, &self.secret)?;
        Ok(if self.auth_type == "oauth2" {
            gorgias::Auth::Bearer(secret)
        } else {
            gorgias::Auth::Basic {
                username: self.username.clone().unwrap_or_default(),
                api_key: secret,
            }
        })
    }

    /// Where its account is and the credentials to call it, opened: what a client is built
    /// from.
    ///
    /// # Errors
    /// [`crate::accounts::AccountError::Unavailable`] when a secret does not open (logged,
    /// without it) or the stored URL is unreadable.
    pub fn target(
        &self,
        keys: &Keyring,
    ) -> Result<(Url, gorgias::Auth), crate::accounts::AccountError> {
        let auth = self.auth(keys).map_err(|e| {
            tracing::error!(connection_id = %self.id, error = %e, "a connection's secret cannot be opened");
            crate::accounts::AccountError::Unavailable
        })?;
        let base_url =
            Url::parse(&self.base_url).map_err(|_| crate::accounts::AccountError::Unavailable)?;
        Ok((base_url, auth))
    }

    /// The answer of the admin API: no secret.
    pub fn view(&self, queued: u64) -> View {
        View {
            connection_id: self.id.to_string(),
            base_url: self.base_url.clone(),
            subdomain: self.subdomain.clone(),
            auth: AuthView {
                kind: if self.auth_type == "oauth2" {
                    "oauth2"
                } else {
                    "basic"
                },
                username: self.username.clone(),
            },
            settings: self.settings.clone(),
            status: self.status,
            last_success_at: self.last_ok_at.map(crate::outbox::rfc3339),
            last_error: self.last_error.as_ref().map(|e| LastError {
                at: self.last_error_at.map(crate::outbox::rfc3339),
                error: e.clone(),
            }),
            access_token_expires_at: self.expires_at.map(crate::outbox::rfc3339),
            queued_deliveries: queued,
            created_at: crate::outbox::rfc3339(self.created_at),
            updated_at: crate::outbox::rfc3339(self.updated_at),
        }
    }
}

/// The associated-data name of the API key or access token.
const SECRET_FIELD: &str = "secret";
/// The associated-data name of the refresh token.
const REFRESH_FIELD: &str = "refresh_token";

/// A connection as the admin API answers it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct View {
    /// Its id.
    pub connection_id: String,
    /// The account's base URL.
    pub base_url: String,
    /// The account's subdomain, when given as one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subdomain: Option<String>,
    /// How it authenticates (never the secret).
    pub auth: AuthView,
    /// Its own settings.
    #[serde(flatten)]
    pub settings: Settings,
    /// `ok`, `needs_reconnect` or `unchecked`.
    pub status: Status,
    /// The last successful Gorgias call (RFC 3339).
    pub last_success_at: Option<String>,
    /// The last error.
    pub last_error: Option<LastError>,
    /// When the OAuth2 access token expires (RFC 3339).
    pub access_token_expires_at: Option<String>,
    /// Deliveries queued (or in flight) for it.
    pub queued_deliveries: u64,
    /// Created (RFC 3339).
    pub created_at: String,
    /// Last replaced (RFC 3339).
    pub updated_at: String,
}

/// How a connection authenticates.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuthView {
    /// `basic` or `oauth2`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The API key's user (basic).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
}

/// A connection's last error.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LastError {
    /// When (RFC 3339).
    pub at: Option<String>,
    /// Its code and what happened (never a secret).
    pub error: String,
}

/// Why the connections cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionsError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A secret cannot be sealed or opened.
    #[error(transparent)]
    Secret(#[from] SecretError),
}

/// The stored connections; cheap to clone.
#[derive(Clone)]
pub struct Connections {
    store: Store,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Connections({:?})", self.store)
    }
}

/// How often a connection's `last_success_at` is written at most: a write per ticket would
/// double the database's load for a timestamp nobody reads that finely.
pub const SUCCESS_WRITE_EVERY: Duration = Duration::from_secs(30);

impl Connections {
    /// The connections in `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// Creates or replaces a connection, sealing its secrets. `Ok(true)` when it is new.
    /// Replacing resets its state to `unchecked` (new credentials are not yet refused).
    ///
    /// # Errors
    /// When the database cannot be written.
    pub async fn put(
        &self,
        id: &ConnectionId,
        spec: &Spec,
        keys: &Keyring,
    ) -> Result<bool, ConnectionsError> {
        let (auth_type, username, secret, refresh, expires_at) = match &spec.auth {
            AuthSpec::Basic { username, api_key } => (
                "basic",
                Some(username.clone()),
                keys.seal(id.as_str(), SECRET_FIELD, api_key.expose_secret())?,
                None,
                None,
            ),
            AuthSpec::OAuth2 {
                access_token,
                refresh_token,
                expires_at,
            } => (
                "oauth2",
                None,
                keys.seal(id.as_str(), SECRET_FIELD, access_token.expose_secret())?,
                Some(keys.seal(id.as_str(), REFRESH_FIELD, refresh_token.expose_secret())?),
                *expires_at,
            ),
        };
        let settings = serde_json::to_string(&spec.settings).unwrap_or_else(|_| "{}".into());
        let row = self
            .store
            .query_opt(
                "INSERT INTO connections (id, base_url, subdomain, auth_type, username, secret, \
                 refresh_secret, expires_at, settings, status, version, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'unchecked', 1, {now}, {now}) \
                 ON CONFLICT (id) DO UPDATE SET base_url = excluded.base_url, \
                 subdomain = excluded.subdomain, auth_type = excluded.auth_type, \
                 username = excluded.username, secret = excluded.secret, \
                 refresh_secret = excluded.refresh_secret, expires_at = excluded.expires_at, \
                 settings = excluded.settings, status = 'unchecked', last_error = NULL, \
                 last_error_at = NULL, version = connections.version + 1, \
                 updated_at = excluded.updated_at \
                 RETURNING version",
                vec![
                    id.as_str().into(),
                    spec.base_url.as_str().into(),
                    spec.subdomain.clone().into(),
                    auth_type.into(),
                    username.into(),
                    secret.into(),
                    refresh.into(),
                    expires_at.into(),
                    settings.into(),
                ],
            )
            .await?;
        Ok(row.is_some_and(|r| r.int(0) == 1))
    }

    /// One connection.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub async fn get(&self, id: &ConnectionId) -> Result<Option<Record>, ConnectionsError> {
        Ok(self
            .store
            .query_opt(
                record_columns!("SELECT ", " FROM connections WHERE id = $1"),
                vec![id.as_str().into()],
            )
            .await?
            .as_ref()
            .and_then(Record::from_row))
    }

    /// Its version and state, the cheap read that tells a cached handle whether it is stale.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub async fn version(
        &self,
        id: &ConnectionId,
    ) -> Result<Option<(i64, Status)>, ConnectionsError> {
        Ok(self
            .store
            .query_opt(
                "SELECT version, status FROM connections WHERE id = $1",
                vec![id.as_str().into()],
            )
            .await?
            .map(|r| (r.int(0), Status::parse(&r.text(1)))))
    }

    /// Up to `limit` connections after `cursor`, in id order.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub async fn list(
        &self,
        cursor: Option<&ConnectionId>,
        limit: u32,
    ) -> Result<Vec<Record>, ConnectionsError> {
        Ok(self
            .store
            .query(
                record_columns!(
                    "SELECT ",
                    " FROM connections WHERE id > $1 ORDER BY id LIMIT $2"
                ),
                vec![
                    cursor.map_or("", ConnectionId::as_str).into(),
                    i64::from(limit).into(),
                ],
            )
            .await?
            .iter()
            .filter_map(Record::from_row)
            .collect())
    }

    /// Deliveries queued or in flight for a connection.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub async fn queued(&self, id: &ConnectionId) -> Result<u64, ConnectionsError> {
        Ok(self
            .store
            .query_opt(
                "SELECT COUNT(*) FROM deliveries WHERE connection = $1 \
                 AND status IN ('queued', 'delivering')",
                vec![id.as_str().into()],
            )
            .await?
            .map_or(0, |r| r.uint(0)))
    }

    /// Deletes a connection. Its queued deliveries become `failed` with `problem` (the caller
    /// checked there were none unless forced). `Ok(false)`: there was no such connection.
    ///
    /// # Errors
    /// When the database cannot be written.
    pub async fn delete(
        &self,
        id: &ConnectionId,
        problem: String,
        webhook: bool,
    ) -> Result<bool, ConnectionsError> {
        let deleted = self
            .store
            .execute(
                "DELETE FROM connections WHERE id = $1",
                vec![id.as_str().into()],
            )
            .await?;
        // After the row is gone: a delivery accepted in between is refused at its claim
        // (`connection_deleted`) rather than left queued forever.
        self.store
            .execute(
                "UPDATE deliveries SET status = 'failed', problem = $2, request = NULL, \
                 lease_until = NULL, owner = NULL, finished_at = {now}, webhook = $3, \
                 webhook_next_at = {now} \
                 WHERE connection = $1 AND status IN ('queued', 'delivering')",
                vec![
                    id.as_str().into(),
                    problem.into(),
                    webhook.then_some("pending").into(),
                ],
            )
            .await?;
        Ok(deleted == 1)
    }

    /// Records a successful call (at most every [`SUCCESS_WRITE_EVERY`], or at once when the
    /// state changes).
    ///
    /// # Errors
    /// When the database cannot be written.
    pub async fn record_ok(&self, id: &ConnectionId) -> Result<(), ConnectionsError> {
        self.store
            .execute(
                "UPDATE connections SET status = 'ok', last_ok_at = {now} WHERE id = $1",
                vec![id.as_str().into()],
            )
            .await?;
        Ok(())
    }

    /// Records that Gorgias refused the connection's credentials, when `version` is still
    /// the one that was refused (a `PUT` in between replaced them: its state stands).
    ///
    /// # Errors
    /// When the database cannot be written.
    pub async fn record_refusal(
        &self,
        id: &ConnectionId,
        version: i64,
        error: &str,
    ) -> Result<(), ConnectionsError> {
        self.store
            .execute(
                "UPDATE connections SET status = 'needs_reconnect', last_error = $3, \
                 last_error_at = {now} WHERE id = $1 AND version = $2",
                vec![id.as_str().into(), version.into(), error.into()],
            )
            .await?;
        Ok(())
    }

    /// Records an error that does not put the credentials in doubt.
    ///
    /// # Errors
    /// When the database cannot be written.
    pub async fn record_error(
        &self,
        id: &ConnectionId,
        error: &str,
    ) -> Result<(), ConnectionsError> {
        self.store
            .execute(
                "UPDATE connections SET last_error = $2, last_error_at = {now} WHERE id = $1",
                vec![id.as_str().into(), error.into()],
            )
            .await?;
        Ok(())
    }

    /// Takes the right to refresh a connection's tokens, across replicas, for 15 s: only
    /// while its row is still at `version` and nobody else holds it. `Ok(false)`: another
    /// worker holds it (or refreshed already).
    ///
    /// # Errors
    /// When the database cannot be written.
    pub async fn lock_refresh(
        &self,
        id: &ConnectionId,
        version: i64,
        owner: &str,
    ) -> Result<bool, ConnectionsError> {
        Ok(self
            .store
            .execute(
                "UPDATE connections SET refresh_lock_until = {now} + 15000, refresh_owner = $3 \
                 WHERE id = $1 AND version = $2 \
                 AND (refresh_lock_until IS NULL OR refresh_lock_until < {now})",
                vec![id.as_str().into(), version.into(), owner.into()],
            )
            .await?
            == 1)
    }

    /// Stores refreshed tokens (sealed) and releases the refresh lock `owner` holds; keeps the
    /// old refresh token when Gorgias returned none. `Ok(false)`: the lock was lost.
    ///
    /// # Errors
    /// When the database cannot be written or a secret cannot be sealed.
    pub async fn store_refreshed(
        &self,
        id: &ConnectionId,
        owner: &str,
        tokens: &gorgias::Tokens,
        keys: &Keyring,
    ) -> Result<bool, ConnectionsError> {
        let access = keys.seal(
            id.as_str(),
            SECRET_FIELD,
            tokens.access_token.expose_secret(),
        )?;
        let refresh = match &tokens.refresh_token {
            Some(r) => Some(keys.seal(id.as_str(), REFRESH_FIELD, r.expose_secret())?),
            None => None,
        };
        let expires_at = tokens
            .expires_in
            .map(|d| crate::outbox::now_ms().saturating_add(crate::outbox::ms(d)));
        Ok(self
            .store
            .execute(
                "UPDATE connections SET secret = $3, \
                 refresh_secret = COALESCE($4, refresh_secret), expires_at = $5, \
                 status = 'ok', last_error = NULL, last_error_at = NULL, \
                 version = version + 1, updated_at = {now}, \
                 refresh_lock_until = NULL, refresh_owner = NULL \
                 WHERE id = $1 AND refresh_owner = $2",
                vec![
                    id.as_str().into(),
                    owner.into(),
                    access.into(),
                    refresh.into(),
                    expires_at.into(),
                ],
            )
            .await?
            == 1)
    }

    /// Releases a refresh lock without new tokens.
    ///
    /// # Errors
    /// When the database cannot be written.
    pub async fn unlock_refresh(
        &self,
        id: &ConnectionId,
        owner: &str,
    ) -> Result<(), ConnectionsError> {
        self.store
            .execute(
                "UPDATE connections SET refresh_lock_until = NULL, refresh_owner = NULL \
                 WHERE id = $1 AND refresh_owner = $2",
                vec![id.as_str().into(), owner.into()],
            )
            .await?;
        Ok(())
    }

    /// Remembers an OAuth2 install's `state` until `ttl` passes.
    ///
    /// # Errors
    /// When the database cannot be written.
    pub async fn put_state(
        &self,
        state: &str,
        id: &ConnectionId,
        base_url: &Url,
        subdomain: Option<&str>,
        ttl: Duration,
    ) -> Result<(), ConnectionsError> {
        // Lapsed states go as new ones come: the table holds only installs in progress.
        self.store
            .execute("DELETE FROM oauth_states WHERE expires_at < {now}", vec![])
            .await?;
        self.store
            .execute(
                "INSERT INTO oauth_states (state, connection_id, base_url, subdomain, expires_at) \
                 VALUES ($1, $2, $3, $4, {now} + $5)",
                vec![
                    state.into(),
                    id.as_str().into(),
                    base_url.as_str().into(),
                    subdomain.map(str::to_owned).into(),
                    crate::outbox::ms(ttl).into(),
                ],
            )
            .await?;
        Ok(())
    }

    /// Takes an install's `state`, once: the connection and account it was for, when it is
    /// known and has not lapsed. A second call with the same state finds nothing.
    ///
    /// # Errors
    /// When the database cannot be written.
    pub async fn take_state(
        &self,
        state: &str,
    ) -> Result<Option<(ConnectionId, Url, Option<String>)>, ConnectionsError> {
        let row = self
            .store
            .query_opt(
                "DELETE FROM oauth_states WHERE state = $1 \
                 RETURNING connection_id, base_url, subdomain, expires_at, {now}",
                vec![state.into()],
            )
            .await?;
        Ok(row.and_then(|r| {
            let live = r.int(3) > r.int(4);
            let id = ConnectionId::parse(&r.text(0))?;
            let url = Url::parse(&r.text(1)).ok()?;
            live.then_some((id, url, r.opt_text(2)))
        }))
    }

    /// How many connections are stored, and how many of their secrets no key in `keys` (or,
    /// without keys, any key) opens: what start-up checks before serving.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub async fn census(
        &self,
        keys: Option<&Keyring>,
    ) -> Result<(u64, Vec<String>), ConnectionsError> {
        let rows = self
            .store
            .query("SELECT id, secret, refresh_secret FROM connections", vec![])
            .await?;
        let mut unknown: Vec<String> = Vec::new();
        if let Some(keys) = keys {
            for row in &rows {
                let id = row.text(0);
                let sealed = [
                    (SECRET_FIELD, row.opt_text(1)),
                    (REFRESH_FIELD, row.opt_text(2)),
                ];
                for (field, value) in sealed {
                    if let Some(value) = value
                        && let Err(SecretError::UnknownKey(key)) = keys.open(&id, field, &value)
                        && !unknown.contains(&key)
                    {
                        unknown.push(key);
                    }
                }
            }
        }
        Ok((rows.len() as u64, unknown))
    }

    /// Rewrites every secret not sealed under the current key: `(rewritten, already current)`.
    /// Each row is rewritten only if it did not change meanwhile (a `PUT` in between already
    /// sealed it under the current key).
    ///
    /// # Errors
    /// When the database fails, or a secret does not open under `keys` (nothing of that row
    /// is written).
    pub async fn rekey(&self, keys: &Keyring) -> Result<(u64, u64), ConnectionsError> {
        let rows = self
            .store
            .query(
                "SELECT id, secret, refresh_secret, version FROM connections ORDER BY id",
                vec![],
            )
            .await?;
        let (mut rewritten, mut current) = (0, 0);
        for row in rows {
            let id = row.text(0);
            let secret = row.text(1);
            let refresh = row.opt_text(2);
            let needs = !keys.is_current(&secret)
                || refresh.as_deref().is_some_and(|r| !keys.is_current(r));
            if !needs {
                current += 1;
                continue;
            }
            let secret = keys.seal(
                &id,
                SECRET_FIELD,
                keys.open(&id, SECRET_FIELD, &secret)?.expose_secret(),
            )?;
            let refresh = match refresh {
                Some(r) => Some(keys.seal(
                    &id,
                    REFRESH_FIELD,
                    keys.open(&id, REFRESH_FIELD, &r)?.expose_secret(),
                )?),
                None => None,
            };
            rewritten += self
                .store
                .execute(
                    "UPDATE connections SET secret = $2, refresh_secret = $3 \
                     WHERE id = $1 AND version = $4",
                    vec![id.into(), secret.into(), refresh.into(), V::Int(row.int(3))],
                )
                .await?;
        }
        Ok((rewritten, current))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(e: &ValidationErrors) -> Vec<&str> {
        e.errors.iter().map(|e| e.field.as_str()).collect()
    }

    #[test]
    fn a_body_is_read_strictly_and_every_problem_listed() {
        let ok = parse_spec(
            &json!({"subdomain": "acme", "auth": {"type": "basic", "username": "a@b.c",
                    "api_key": "k"}, "rate_limit": "40/20s"}),
            false,
        )
        .unwrap();
        assert_eq!(ok.base_url.as_str(), "https://acme.gorgias.com/");
        let err = parse_spec(
            &json!({"subdomain": "Acme!", "extra": 1, "auth": {"type": "oauth2",
                    "access_token": 5, "nope": true}, "message_channel": "email"}),
            false,
        )
        .err()
        .unwrap();
        let f = fields(&err);
        for expected in [
            "subdomain",
            "extra",
            "auth.nope",
            "auth.access_token",
            "auth.refresh_token",
            "message_channel",
        ] {
            assert!(f.contains(&expected), "{expected} missing from {f:?}");
        }
        assert!(err.is_shape());
    }

    #[test]
    fn a_base_url_needs_the_deployment_to_allow_it() {
        let body = json!({"base_url": "http://10.0.0.1:8080",
                          "auth": {"type": "basic", "username": "u", "api_key": "k"}});
        let err = parse_spec(&body, false).err().unwrap();
        assert_eq!(fields(&err), ["base_url"]);
        assert!(!err.is_shape(), "a rule, answered 422");
        assert!(parse_spec(&body, true).is_ok());
        assert!(
            parse_spec(
                &json!({"base_url": "file:///etc/passwd",
                        "auth": {"type": "basic", "username": "u", "api_key": "k"}}),
                true
            )
            .is_err()
        );
    }
}
