//! The [`Route`] extractor: who called and which Gorgias account the request is for, resolved
//! once per request instead of at each handler.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use crate::accounts::{Account, CONNECTION_ID};
use crate::callers::Caller;
use crate::error::ApiError;
use crate::state::AppState;

/// The caller (from its bearer token, or anonymous when inbound auth is off) and the account
/// its `Connection-Id` names (or the default account).
pub(crate) struct Route {
    /// Who called.
    pub caller: Caller,
    /// The account the request is for.
    pub account: Account,
}

impl Route {
    /// The scope of this caller's keys and deliveries on this account.
    pub fn scope(&self) -> String {
        self.account.scope(&self.caller)
    }
}

/// The caller's scope on the connection a request names, without loading the connection: for
/// reading deliveries, which outlive a deleted connection.
pub(crate) struct Scope(pub String);

impl FromRequestParts<AppState> for Scope {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let (caller, connection) = caller_and_connection(parts)?;
        state
            .accounts
            .scope(&caller, connection)
            .map(Self)
            .map_err(ApiError::Account)
    }
}

/// The request's caller and its `Connection-Id` (a value that is not text names no
/// connection).
fn caller_and_connection(parts: &Parts) -> Result<(Caller, Option<&str>), ApiError> {
    let caller = parts
        .extensions
        .get::<Caller>()
        .cloned()
        .unwrap_or_else(Caller::anonymous);
    let connection = match parts.headers.get(CONNECTION_ID) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::Account(crate::accounts::AccountError::Unknown))?,
        ),
    };
    Ok((caller, connection))
}

impl FromRequestParts<AppState> for Route {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let (caller, connection) = caller_and_connection(parts)?;
        let account = state
            .accounts
            .resolve(&caller, connection)
            .await
            .map_err(ApiError::Account)?;
        Ok(Self { caller, account })
    }
}
