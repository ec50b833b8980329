//! A read-only preflight of a Gorgias account: the four reads the service depends on, each sent
//! once, with what came back reduced to what a preflight needs to judge (shapes and counts).
//!
//! Why not [`crate::GorgiasClient`]: its calls retry, pace, and read answers leniently (an
//! object without `data` reads as an empty list), which is right for serving and wrong for a
//! check that must see exactly what Gorgias answered, spend a known number of calls, and read
//! the `X-Gorgias-Account-Api-Call-Limit` header. So [`Probe`] builds its own HTTP client from
//! the same [`ClientSettings`].
//!
//! What it never does: write, retry, or keep a customer's data (answers are reduced to counts
//! before they leave this module). The credentials go out only in the `Authorization` header,
//! which reqwest marks sensitive.

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{ACCEPT, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use secrecy::ExposeSecret;
use serde_json::Value;
use url::Url;

use crate::client::{
    Auth, ClientSettings, DEFAULT_HINT_CAP, endpoint_url, parse_retry_after, transport,
};
use crate::error::{BuildError, GorgiasError};
use crate::models::{ErrorBody, SearchItem, SearchQuery};

/// Most calls one [`Probe`] will send; any further call is refused without being sent. Four are
/// planned; the margin is for future checks, the cap is a promise to whoever runs it in CI
/// against an account that also serves traffic (40 calls per 20 s is not much).
pub const PROBE_MAX_CALLS: u32 = 8;

/// The header in which Gorgias reports the account's call budget as `used/limit`.
pub const CALL_LIMIT_HEADER: &str = "x-gorgias-account-api-call-limit";

/// `X-Gorgias-Account-Api-Call-Limit: used/limit`, read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallLimit {
    /// Calls currently in the account's bucket.
    pub used: u32,
    /// The bucket's size: 40 per 20 s for an API key, 80 for OAuth2 (documented window).
    pub limit: u32,
}

impl CallLimit {
    /// Reads `7/80`; `None` for anything else.
    pub fn parse(header: &str) -> Option<Self> {
        let (used, limit) = header.split_once('/')?;
        Some(Self {
            used: used.trim().parse().ok()?,
            limit: limit.trim().parse().ok()?,
        })
    }
}

/// What one answer carried in the call-limit header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitHeader {
    /// No such header.
    Missing,
    /// Present, but not `used/limit` (its text, which is no secret).
    Unreadable(String),
    /// Present and read.
    Read(CallLimit),
}

/// The shape of a list answer, as strictly as the preflight judges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListShape {
    /// `{"data": [...], ...}`: what Gorgias's list endpoints answer.
    Envelope,
    /// `[...]`: a bare array, which the client also reads (one client is known to get it from
    /// `POST /api/search`).
    BareArray,
    /// Anything else (an object without a `data` list, a scalar, not JSON). The client would
    /// read an object without `data` as an empty list, i.e. "no match" whatever the account
    /// holds, so this is worth failing on.
    Unreadable,
}

/// A list answer reduced to counts: no item's content leaves the probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListAnswer {
    /// How the list came.
    pub shape: ListShape,
    /// How many items it held.
    pub items: usize,
    /// How many items match what was asked; what "match" means is said by each probe method.
    pub matching: usize,
}

/// Why a probe call has no answer to judge.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// [`PROBE_MAX_CALLS`] calls were spent already; this one was not sent.
    #[error("the preflight's budget of {PROBE_MAX_CALLS} Gorgias calls is spent")]
    BudgetSpent,
    /// The call was sent once and failed (no retry is made).
    #[error(transparent)]
    Call(#[from] GorgiasError),
}

/// A preflight session against one account: at most [`PROBE_MAX_CALLS`] calls, each sent once,
/// all reads (a `POST /api/search` is a read).
#[derive(Debug)]
pub struct Probe {
    http: reqwest::Client,
    base_url: Url,
    auth: Auth,
    calls: u32,
    headers: Vec<LimitHeader>,
}

impl Probe {
    /// A probe for the account `settings` name (base URL, credentials, per-call timeout; its
    /// retry and pacing settings are deliberately not used).
    ///
    /// # Errors
    /// When the TLS stack cannot start.
    pub fn new(settings: &ClientSettings) -> Result<Self, BuildError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!(
                "gorgias-rs/",
                env!("CARGO_PKG_VERSION"),
                " (preflight)"
            ))
            .connect_timeout(settings.attempt_timeout.min(Duration::from_secs(5)))
            .timeout(settings.attempt_timeout)
            // A followed redirect would be a call we did not count (and credentials sent to
            // wherever it points): a 3xx is reported instead.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(BuildError::Http)?;
        let mut base_url = settings.base_url.clone();
        if !base_url.path().ends_with('/') {
            let path = format!("{}/", base_url.path());
            base_url.set_path(&path);
        }
        Ok(Self {
            http,
            base_url,
            auth: settings.auth.clone(),
            calls: 0,
            headers: Vec::new(),
        })
    }

    /// Calls sent so far (refused ones are not counted; failed ones are).
    pub fn calls_spent(&self) -> u32 {
        self.calls
    }

    /// The call-limit header of every answer received, in order (calls that got no answer at
    /// all are absent).
    pub fn limit_headers(&self) -> &[LimitHeader] {
        &self.headers
    }

    /// `GET /api/account/settings`: the channels of the `ticket-assignment` setting. Proves
    /// the credentials are accepted, and is what the service's ticket channel rule reads.
    ///
    /// # Errors
    /// [`ProbeError`]; a refused key arrives as `Rejected { status: 401 }`.
    pub async fn assignment_channels(&mut self) -> Result<Vec<String>, ProbeError> {
        let endpoint = "GET /api/account/settings";
        let bytes = self
            .send(endpoint, Method::GET, "api/account/settings", &[], None)
            .await?;
        let settings: crate::models::Settings =
            serde_json::from_slice(&bytes).map_err(|e| decode(endpoint, e))?;
        Ok(settings.assignment_channels())
    }

    /// `GET /api/customers?email=&limit=2`, as the client sends it. `matching` counts items
    /// whose `email` equals `email` (case aside).
    ///
    /// # Errors
    /// [`ProbeError`].
    pub async fn customers_by_email(&mut self, email: &str) -> Result<ListAnswer, ProbeError> {
        let endpoint = "GET /api/customers";
        let bytes = self
            .send(
                endpoint,
                Method::GET,
                "api/customers",
                &[("email", email), ("limit", "2")],
                None,
            )
            .await?;
        Ok(list_answer(&bytes, |item| {
            item.get("email")
                .and_then(Value::as_str)
                .is_some_and(|e| e.eq_ignore_ascii_case(email))
        }))
    }

    /// `POST /api/search` with `{"type": "customer_channel_phone", "query", "size": 1}`.
    /// `matching` counts items the client reads as phone hits.
    ///
    /// # Errors
    /// [`ProbeError`].
    pub async fn search_phone(&mut self, query: &str) -> Result<ListAnswer, ProbeError> {
        let endpoint = "POST /api/search";
        let body = serde_json::to_vec(&SearchQuery {
            kind: "customer_channel_phone",
            query,
            size: 1,
        })
        .map_err(|e| decode("encode", e))?;
        let bytes = self
            .send(
                endpoint,
                Method::POST,
                "api/search",
                &[],
                Some(Bytes::from(body)),
            )
            .await?;
        Ok(list_answer(&bytes, |item| {
            serde_json::from_value::<SearchItem>(item.clone())
                .is_ok_and(|s| !s.into_hits().is_empty())
        }))
    }

    /// `GET /api/tickets?external_id=&limit=1`, as reconciliation sends it. `matching` counts
    /// items whose `external_id` equals `external_id`; any other item means Gorgias ignored the
    /// filter.
    ///
    /// # Errors
    /// [`ProbeError`].
    pub async fn tickets_by_external_id(
        &mut self,
        external_id: &str,
    ) -> Result<ListAnswer, ProbeError> {
        let endpoint = "GET /api/tickets";
        let bytes = self
            .send(
                endpoint,
                Method::GET,
                "api/tickets",
                &[("external_id", external_id), ("limit", "1")],
                None,
            )
            .await?;
        Ok(list_answer(&bytes, |item| {
            item.get("external_id").and_then(Value::as_str) == Some(external_id)
        }))
    }

    /// Sends one call, once: no retry, whatever the failure, so the call count is exact.
    async fn send(
        &mut self,
        endpoint: &'static str,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<Bytes>,
    ) -> Result<Bytes, ProbeError> {
        if self.calls >= PROBE_MAX_CALLS {
            return Err(ProbeError::BudgetSpent);
        }
        let url = endpoint_url(&self.base_url, path, endpoint)?;
        let mut req = self
            .http
            .request(method, url)
            .header(ACCEPT, "application/json");
        req = match &self.auth {
            Auth::Basic { username, api_key } => {
                req.basic_auth(username, Some(api_key.expose_secret()))
            }
            Auth::Bearer(token) => req.bearer_auth(token.expose_secret()),
        };
        if !query.is_empty() {
            req = req.query(query);
        }
        if let Some(body) = body {
            req = req.header(CONTENT_TYPE, "application/json").body(body);
        }
        self.calls += 1;
        let resp = req.send().await.map_err(|e| transport(endpoint, e))?;
        let status = resp.status();
        let header = match resp.headers().get(CALL_LIMIT_HEADER) {
            None => LimitHeader::Missing,
            Some(v) => {
                let text = String::from_utf8_lossy(v.as_bytes()).into_owned();
                CallLimit::parse(&text).map_or(LimitHeader::Unreadable(text), LimitHeader::Read)
            }
        };
        self.headers.push(header);
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, DEFAULT_HINT_CAP));
        let bytes = resp.bytes().await.map_err(|e| transport(endpoint, e))?;
        if status.is_success() {
            return Ok(bytes);
        }
        Err(classify(endpoint, status, retry_after, &bytes).into())
    }
}

/// Reduces a list answer to its shape and counts.
fn list_answer(bytes: &[u8], matches: impl Fn(&Value) -> bool) -> ListAnswer {
    let (shape, items) = match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Array(items)) => (ListShape::BareArray, items),
        Ok(Value::Object(mut m)) => match m.remove("data") {
            Some(Value::Array(items)) => (ListShape::Envelope, items),
            _ => (ListShape::Unreadable, Vec::new()),
        },
        _ => (ListShape::Unreadable, Vec::new()),
    };
    ListAnswer {
        shape,
        items: items.len(),
        matching: items.iter().filter(|i| matches(i)).count(),
    }
}

fn decode(endpoint: &'static str, e: serde_json::Error) -> GorgiasError {
    GorgiasError::Decode {
        endpoint,
        source: e.into(),
    }
}

/// A non-2xx answer as the client classifies it (429, 5xx, other 4xx with Gorgias's message).
fn classify(
    endpoint: &'static str,
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
) -> GorgiasError {
    if status == StatusCode::TOO_MANY_REQUESTS {
        return GorgiasError::RateLimited {
            endpoint,
            retry_after,
        };
    }
    if status.is_server_error() {
        return GorgiasError::ServerError {
            endpoint,
            status: status.as_u16(),
        };
    }
    let parsed: ErrorBody = serde_json::from_slice(body).unwrap_or_default();
    let msg = parsed.error.and_then(|e| e.msg).map(|m| match m {
        Value::String(s) => s,
        other => other.to_string(),
    });
    GorgiasError::Rejected {
        endpoint,
        status: status.as_u16(),
        msg,
        data: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_limits_read_used_over_limit() {
        assert_eq!(
            CallLimit::parse("7/80"),
            Some(CallLimit { used: 7, limit: 80 })
        );
        assert_eq!(
            CallLimit::parse(" 1 / 40 "),
            Some(CallLimit { used: 1, limit: 40 })
        );
        assert_eq!(CallLimit::parse("40"), None);
        assert_eq!(CallLimit::parse("a/b"), None);
    }

    #[test]
    fn list_shapes_are_judged_strictly() {
        let any = |_: &Value| true;
        assert_eq!(
            list_answer(br#"{"data": [1, 2], "object": "list"}"#, any),
            ListAnswer {
                shape: ListShape::Envelope,
                items: 2,
                matching: 2
            }
        );
        assert_eq!(list_answer(b"[]", any).shape, ListShape::BareArray);
        assert_eq!(
            list_answer(br#"{"error": {}}"#, any).shape,
            ListShape::Unreadable
        );
        assert_eq!(list_answer(b"<html>", any).shape, ListShape::Unreadable);
    }
}
