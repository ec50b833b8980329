//! The simulator's HTTP surface: Gorgias's endpoints under `/api`, control under `/_sim`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Path, Query, RawQuery, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::{Map, Value, json};

use super::state::{CustomerRec, NewCustomer, normalize, now_iso};
use super::{CommitFailure, Credentials, Faults, Shared};

type Sim = State<Arc<Shared>>;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let api = Router::new()
        .route("/api/account/settings", get(account_settings))
        .route("/api/customers", get(list_customers).post(create_customer))
        .route("/api/customers/{id}", get(get_customer))
        .route("/api/search", post(search))
        .route("/api/tickets", get(list_tickets).post(create_ticket))
        .route("/api/tickets/{id}", get(get_ticket))
        .fallback(|| async { gorgias_error(StatusCode::NOT_FOUND, "Resource not found.", None) })
        .layer(middleware::from_fn_with_state(shared.clone(), account_gate));
    let control = Router::new()
        .route("/_sim/stats", get(stats))
        .route("/_sim/faults", get(get_faults).post(set_faults))
        .route("/_sim/credentials", post(set_credentials))
        .route("/_sim/tickets", get(all_tickets))
        .route("/_sim/oauth/revoke", post(super::oauth::set_revoked));
    let oauth = Router::new()
        .route("/oauth/authorize", get(super::oauth::authorize))
        .route("/oauth/token", post(super::oauth::token));
    api.merge(control).merge(oauth).with_state(shared)
}

/// `{"error": {"msg": ..., "data": ...}}` with the status.
fn gorgias_error(status: StatusCode, msg: &str, data: Option<Value>) -> Response {
    let mut inner = json!({"msg": msg});
    if let Some(d) = data {
        inner["data"] = d;
    }
    (status, Json(json!({"error": inner}))).into_response()
}

/// What every `/api` call goes through, in Gorgias's order as far as it is known: counted,
/// authenticated, charged to the account's bucket, then subject to the configured faults.
async fn account_gate(State(sim): Sim, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned());
    let key = format!("{} {route}", req.method());
    {
        let mut data = sim.data();
        data.stats.requests_total += 1;
        *data.stats.requests.entry(key.clone()).or_default() += 1;
    }
    let (caller, usage, faults) = {
        let mut control = sim.control();
        let caller = authorize(&control, &req);
        // OAuth2 apps and API keys have budgets of their own (80 and 40 per 20 s).
        let usage = match caller {
            Caller::Key => control.bucket.as_mut().map(super::state::Bucket::take),
            Caller::App => control
                .oauth_bucket
                .as_mut()
                .map(super::state::Bucket::take),
            Caller::Expired | Caller::Nobody => None,
        };
        (caller, usage, control.faults.clone())
    };
    match caller {
        Caller::Key | Caller::App => {}
        Caller::Expired => {
            sim.data().stats.expired_tokens += 1;
            return gorgias_error(StatusCode::UNAUTHORIZED, "Unauthorized.", None);
        }
        Caller::Nobody => return gorgias_error(StatusCode::UNAUTHORIZED, "Unauthorized.", None),
    }
    let usage_header = match usage {
        Some(Err(wait)) => {
            sim.data().stats.rate_limited += 1;
            let mut resp = gorgias_error(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many requests. Please retry after the delay in the Retry-After header.",
                None,
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(wait));
            let used = {
                let control = sim.control();
                let bucket = match caller {
                    Caller::App => control.oauth_bucket.as_ref(),
                    _ => control.bucket.as_ref(),
                };
                bucket.map(super::state::Bucket::usage).unwrap_or_default()
            };
            set_usage(&mut resp, &used);
            return resp;
        }
        Some(Ok(used)) => Some(used),
        None => None,
    };
    let delay = faults.latency_ms
        + if faults.latency_jitter_ms > 0 {
            fastrand::u64(0..=faults.latency_jitter_ms)
        } else {
            0
        };
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let targeted = faults.error_routes.is_empty() || faults.error_routes.contains(&key);
    let mut resp = if targeted && faults.error_rate > 0.0 && fastrand::f64() < faults.error_rate {
        let status = faults
            .error_status
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let mut injected = gorgias_error(status, "Injected fault.", None);
        // Any value at all, as a hostile or broken upstream might send it.
        if let Some(v) = faults
            .error_retry_after
            .as_deref()
            .and_then(|v| HeaderValue::from_str(v).ok())
        {
            injected.headers_mut().insert(header::RETRY_AFTER, v);
        }
        injected
    } else {
        next.run(req).await
    };
    if let Some(used) = usage_header {
        set_usage(&mut resp, &used);
    }
    resp
}

fn set_usage(resp: &mut Response, used: &str) {
    if let Ok(v) = HeaderValue::from_str(used) {
        resp.headers_mut()
            .insert("x-gorgias-account-api-call-limit", v);
    }
}

/// Who a call is from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    /// An API key (or the configured static bearer token).
    Key,
    /// An OAuth2 app, with an access token that is still valid.
    App,
    /// An OAuth2 access token that was issued but has expired.
    Expired,
    /// Nobody we know.
    Nobody,
}

fn authorize(control: &super::Control, req: &Request) -> Caller {
    if is_authorized(&control.credentials, req) {
        return Caller::Key;
    }
    let Some(token) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
    else {
        return Caller::Nobody;
    };
    if control.oauth.accepts(token) {
        Caller::App
    } else if control.oauth.issued_ever(token) {
        Caller::Expired
    } else {
        Caller::Nobody
    }
}

fn is_authorized(creds: &Credentials, req: &Request) -> bool {
    let Some(value) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    if let Some(b64) = value.strip_prefix("Basic ") {
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else {
            return false;
        };
        let expected = format!("{}:{}", creds.username, creds.api_key);
        return decoded == expected.as_bytes();
    }
    if let (Some(token), Some(expected)) = (value.strip_prefix("Bearer "), &creds.access_token) {
        return token.trim() == expected;
    }
    false
}

async fn account_settings(State(sim): Sim) -> Response {
    let channels = sim.control().assignment_channels.clone();
    let mut body: Value = serde_json::from_str(include_str!(
        "../../../tests/fixtures/get-account-settings.json"
    ))
    .map(|v: Value| v["body"].clone())
    .unwrap_or_else(|_| json!({"data": []}));
    if let Some(items) = body["data"].as_array_mut() {
        for item in items {
            if item["type"] == "ticket-assignment" {
                item["data"]["assignment_channels"] = json!(channels);
            }
        }
    }
    Json(body).into_response()
}

fn list_envelope(data: Vec<Value>, uri: String, next_cursor: Option<String>) -> Value {
    json!({"data": data, "object": "list", "uri": uri,
           "meta": {"prev_cursor": null, "next_cursor": next_cursor}})
}

/// A list's `uri`: the path with the query as the caller sent it (recorded:
/// `/api/customers?email=nango%40example.com`, `/api/customers?limit=100`).
fn list_uri(path: &str, raw_query: Option<&str>) -> String {
    match raw_query {
        Some(q) if !q.is_empty() => format!("{path}?{q}"),
        _ => path.to_owned(),
    }
}

// Handlers return the refusal as-is; boxing it would only move the allocation.
#[allow(clippy::result_large_err)]
fn parse_limit(q: &HashMap<String, String>) -> Result<usize, Response> {
    match q.get("limit") {
        None => Ok(30),
        Some(s) => match s.parse::<usize>() {
            Ok(n @ 1..=100) => Ok(n),
            _ => Err(gorgias_error(
                StatusCode::BAD_REQUEST,
                "Invalid query parameters.",
                Some(json!({"limit": ["Must be between 1 and 100."]})),
            )),
        },
    }
}

/// `GET /api/customers`, newest first, with the `email` (the customer's primary address,
/// case-insensitively: whether Gorgias ignores case is unknown) and `external_id` filters.
async fn list_customers(
    State(sim): Sim,
    Query(q): Query<HashMap<String, String>>,
    RawQuery(raw): RawQuery,
) -> Response {
    let limit = match parse_limit(&q) {
        Ok(l) => l,
        Err(r) => return r,
    };
    let data = sim.data();
    let email = q.get("email").map(|e| e.to_lowercase());
    let external_id = q.get("external_id");
    // Cursor paging by id (Gorgias's default order is created_datetime:desc).
    let after: Option<u64> = q.get("cursor").and_then(|c| c.parse().ok());
    let mut ids: Vec<u64> = match (&email, external_id) {
        (Some(e), _) => data.by_email.get(e).copied().into_iter().collect(),
        (None, Some(x)) => data
            .customers_by_external_id
            .get(x)
            .cloned()
            .unwrap_or_default(),
        (None, None) => data.customers.keys().copied().collect(),
    };
    ids.retain(|id| {
        data.customers.get(id).is_some_and(|c| {
            email
                .as_ref()
                .is_none_or(|e| c.email.as_ref().is_some_and(|ce| ce.to_lowercase() == *e))
                && external_id.is_none_or(|x| c.external_id.as_ref() == Some(x))
                && after.is_none_or(|a| *id < a)
        })
    });
    ids.sort_unstable_by(|a, b| b.cmp(a));
    let page: Vec<Value> = ids
        .iter()
        .take(limit)
        .filter_map(|id| data.customers.get(id))
        .map(CustomerRec::list_item)
        .collect();
    let next = (ids.len() > limit).then(|| ids[limit - 1].to_string());
    Json(list_envelope(
        page,
        list_uri("/api/customers", raw.as_deref()),
        next,
    ))
    .into_response()
}

async fn get_customer(State(sim): Sim, Path(id): Path<String>) -> Response {
    let data = sim.data();
    match id
        .parse::<u64>()
        .ok()
        .and_then(|id| data.customers.get(&id))
    {
        Some(c) => Json(c.full()).into_response(),
        None => gorgias_error(StatusCode::NOT_FOUND, "Resource not found.", None),
    }
}

#[allow(clippy::result_large_err)]
fn read_json(body: &Bytes) -> Result<Map<String, Value>, Response> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(gorgias_error(
            StatusCode::BAD_REQUEST,
            "Invalid JSON body.",
            None,
        )),
    }
}

const MISSING: &str = "Missing data for required field.";

/// An optional string field: `Ok(None)` when absent or null; otherwise an error is recorded.
fn optional_string(
    m: &Map<String, Value>,
    key: &str,
    errors: &mut Map<String, Value>,
) -> Option<String> {
    match m.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            errors.insert(key.into(), json!(["Not a valid string."]));
            None
        }
    }
}

async fn create_customer(State(sim): Sim, body: Bytes) -> Response {
    let m = match read_json(&body) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let mut errors = Map::new();
    let mut channels = Vec::new();
    match m.get("channels") {
        Some(Value::Array(list)) => {
            for (i, c) in list.iter().enumerate() {
                let kind = c.get("type").and_then(Value::as_str);
                let address = c.get("address").and_then(Value::as_str);
                match (kind, address) {
                    (Some(k), Some(a)) if !a.is_empty() && a.chars().count() <= 320 => {
                        channels.push((k.to_owned(), a.to_owned()));
                    }
                    _ => {
                        errors.insert(
                            "channels".into(),
                            json!({ i.to_string(): {"address": ["Invalid channel."]} }),
                        );
                    }
                }
            }
        }
        None => {}
        Some(_) => {
            errors.insert("channels".into(), json!(["Not a valid list."]));
        }
    }
    let email = match m.get("email") {
        Some(Value::String(e)) => Some(e.clone()),
        None | Some(Value::Null) => channels
            .iter()
            .find(|(k, _)| k == "email")
            .map(|(_, a)| a.clone()),
        Some(_) => {
            errors.insert("email".into(), json!(["Not a valid string."]));
            None
        }
    };
    let name = optional_string(&m, "name", &mut errors);
    let external_id = optional_string(&m, "external_id", &mut errors);
    if !errors.is_empty() {
        return gorgias_error(
            StatusCode::BAD_REQUEST,
            "Failed to create customer",
            Some(Value::Object(errors)),
        );
    }
    let searchable_at = Instant::now() + sim.control().search_lag;
    let mut data = sim.data();
    let taken = email
        .iter()
        .chain(
            channels
                .iter()
                .filter(|(k, _)| k == "email")
                .map(|(_, a)| a),
        )
        .any(|e| data.by_email.contains_key(&e.to_lowercase()));
    if taken {
        return gorgias_error(StatusCode::CONFLICT, "The resource already exists.", None);
    }
    let id = data.insert_customer(
        NewCustomer {
            email,
            name,
            external_id,
            channels,
        },
        searchable_at,
    );
    data.stats.customers_created += 1;
    let full = data.customers.get(&id).map(CustomerRec::full);
    (StatusCode::CREATED, Json(full)).into_response()
}

const SEARCH_TYPES: &[&str] = &[
    "agent",
    "customer",
    "customer_profile",
    "customer_channel",
    "customer_channel_email",
    "customer_channel_phone",
    "customers_by_phone",
    "integration",
    "team",
    "tag",
];

async fn search(State(sim): Sim, body: Bytes) -> Response {
    let m = match read_json(&body) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let kind = m.get("type").and_then(Value::as_str).unwrap_or_default();
    let query = m.get("query").and_then(Value::as_str).unwrap_or_default();
    let size = m.get("size").map_or(Some(10), Value::as_u64);
    let mut errors = Map::new();
    if !SEARCH_TYPES.contains(&kind) {
        errors.insert("type".into(), json!(["Must be one of the search types."]));
    }
    if !matches!(size, Some(1..=50)) {
        errors.insert("size".into(), json!(["Must be between 1 and 50."]));
    }
    if !errors.is_empty() {
        return gorgias_error(
            StatusCode::BAD_REQUEST,
            "Invalid search.",
            Some(Value::Object(errors)),
        );
    }
    let size = size.unwrap_or(10) as usize;
    let data = sim.data();
    let now = Instant::now();
    let hits: Vec<Value> = match kind {
        // Item shape unrecorded for these types: channel records, as the client reads them.
        "customer_channel_phone" | "customers_by_phone" => {
            let q = normalize(query);
            if q.is_empty() || q == "+" {
                Vec::new()
            } else {
                data.phones
                    .range(q.clone()..)
                    .take_while(|(k, _)| k.starts_with(&q))
                    .flat_map(|(_, owners)| owners.iter())
                    .filter_map(|(cid, idx)| {
                        let c = data.customers.get(cid).filter(|c| c.searchable(now))?;
                        Some(c.channel(c.channels.get(*idx)?))
                    })
                    .take(size)
                    .collect()
            }
        }
        "customer_channel_email" => {
            let q = query.to_lowercase();
            let mut found: Vec<(&CustomerRec, usize)> = data
                .customers
                .values()
                .filter(|c| c.searchable(now))
                .flat_map(|c| (0..c.channels.len()).map(move |i| (c, i)))
                .filter(|(c, i)| {
                    let ch = &c.channels[*i];
                    ch.kind == "email" && ch.address.to_lowercase().starts_with(&q)
                })
                .collect();
            found.sort_unstable_by_key(|(c, i)| (c.id, *i));
            found
                .into_iter()
                .take(size)
                .map(|(c, i)| c.channel(&c.channels[i]))
                .collect()
        }
        // Recorded item shape `{id, name, email}`. What it matches is unknown: here a
        // case-insensitive substring of the name, the email or any channel address.
        "customer" => {
            let q = query.trim().to_lowercase();
            if q.is_empty() {
                Vec::new()
            } else {
                let contains =
                    |s: Option<&String>| s.is_some_and(|s| s.to_lowercase().contains(&q));
                let mut found: Vec<&CustomerRec> = data
                    .customers
                    .values()
                    .filter(|c| c.searchable(now))
                    .filter(|c| {
                        contains(c.name.as_ref())
                            || contains(c.email.as_ref())
                            || c.channels.iter().any(|ch| contains(Some(&ch.address)))
                    })
                    .collect();
                found.sort_unstable_by_key(|c| c.id);
                found
                    .into_iter()
                    .take(size)
                    .map(CustomerRec::search_item)
                    .collect()
            }
        }
        _ => Vec::new(),
    };
    // Recorded envelope: empty `uri`, empty `meta`, and the engine named in a header. 201 as
    // the spec-derived docs say for search (the recording went through a proxy that answers
    // 200 for everything).
    (
        StatusCode::CREATED,
        [("x-gorgias-search-engine", "ES")],
        Json(json!({"data": hits, "object": "list", "uri": "", "meta": {}})),
    )
        .into_response()
}

const VIA: &[&str] = &[
    "aircall",
    "api",
    "chat",
    "contact_form",
    "email",
    "facebook",
    "facebook-mention",
    "facebook-messenger",
    "facebook-recommendations",
    "form",
    "gorgias_chat",
    "help-center",
    "helpdesk",
    "instagram",
    "instagram-ad-comment",
    "instagram-comment",
    "instagram-direct-message",
    "instagram-mention",
    "internal-note",
    "offline_capture",
    "phone",
    "rule",
    "self_service",
    "shopify",
    "sms",
    "twilio",
    "twitter",
    "twitter-direct-message",
    "whatsapp",
    "yotpo",
    "yotpo-review",
    "zendesk",
];

/// Gorgias's ticket validation, as far as it is known: 1..=500 messages, each with `channel`
/// and `from_agent`; `via` optional (the live API accepted messages without it, §11) but from
/// the enum when sent; an email-channel message needs `source.from`; an incoming message names
/// its sender by id or email; `external_id`s at most 255; tags name themselves.
fn validate_ticket(m: &Map<String, Value>) -> Map<String, Value> {
    let mut errors = Map::new();
    for key in ["subject", "priority", "status"] {
        if m.get(key).is_some_and(|v| !v.is_string() && !v.is_null()) {
            errors.insert(key.into(), json!(["Not a valid string."]));
        }
    }
    if m.get("meta")
        .is_some_and(|v| !v.is_object() && !v.is_null())
    {
        errors.insert("meta".into(), json!(["Not a valid mapping type."]));
    }
    match m.get("tags") {
        None | Some(Value::Null) => {}
        Some(Value::Array(tags)) => {
            let mut per_tag = Map::new();
            for (i, t) in tags.iter().enumerate() {
                if !t.get("name").is_some_and(Value::is_string) {
                    per_tag.insert(i.to_string(), json!({"name": [MISSING]}));
                }
            }
            if !per_tag.is_empty() {
                errors.insert("tags".into(), Value::Object(per_tag));
            }
        }
        Some(_) => {
            errors.insert("tags".into(), json!(["Not a valid list."]));
        }
    }
    if let Some(ext) = m.get("external_id").and_then(Value::as_str)
        && ext.chars().count() > 255
    {
        errors.insert(
            "external_id".into(),
            json!(["Longer than maximum length 255."]),
        );
    }
    if let Some(via) = m.get("via")
        && !via.as_str().is_some_and(|v| VIA.contains(&v))
    {
        errors.insert("via".into(), json!(["Must be one of the allowed values."]));
    }
    let Some(messages) = m.get("messages") else {
        errors.insert("messages".into(), json!([MISSING]));
        return errors;
    };
    let Some(list) = messages.as_array() else {
        errors.insert("messages".into(), json!(["Not a valid list."]));
        return errors;
    };
    if list.is_empty() || list.len() > 500 {
        errors.insert(
            "messages".into(),
            json!(["Length must be between 1 and 500."]),
        );
        return errors;
    }
    let mut per_message = Map::new();
    for (i, msg) in list.iter().enumerate() {
        let mut e = Map::new();
        for field in ["channel", "from_agent"] {
            if msg.get(field).is_none_or(Value::is_null) {
                e.insert(field.into(), json!([MISSING]));
            }
        }
        if msg
            .get("via")
            .is_some_and(|v| !v.is_null() && !v.as_str().is_some_and(|v| VIA.contains(&v)))
        {
            e.insert("via".into(), json!(["Must be one of the allowed values."]));
        }
        // The live API refuses an email-channel message without a full source envelope
        // (gorgias-api.md §11: Nango's 2026 rewrite; exact wording unrecorded).
        if msg.get("channel").and_then(Value::as_str) == Some("email")
            && msg
                .get("source")
                .and_then(|s| s.get("from"))
                .and_then(|f| f.get("address"))
                .is_none_or(|a| !a.is_string())
        {
            e.insert(
                "source".into(),
                json!(["An email message needs a source with from and to addresses."]),
            );
        }
        if msg
            .get("from_agent")
            .is_some_and(|v| !v.is_boolean() && !v.is_null())
        {
            e.insert("from_agent".into(), json!(["Not a valid boolean."]));
        }
        let incoming = msg.get("from_agent") == Some(&Value::Bool(false));
        let sender_ok = msg.get("sender").is_some_and(|s| {
            s.get("id").is_some_and(Value::is_u64) || s.get("email").is_some_and(Value::is_string)
        });
        if incoming && !sender_ok {
            e.insert(
                "sender".into(),
                json!(["An incoming message needs a sender with an id or an email."]),
            );
        }
        if msg
            .get("external_id")
            .and_then(Value::as_str)
            .is_some_and(|x| x.chars().count() > 255)
        {
            e.insert(
                "external_id".into(),
                json!(["Longer than maximum length 255."]),
            );
        }
        if !e.is_empty() {
            per_message.insert(i.to_string(), Value::Object(e));
        }
    }
    if !per_message.is_empty() {
        errors.insert("messages".into(), Value::Object(per_message));
    }
    errors
}

async fn create_ticket(State(sim): Sim, body: Bytes) -> Response {
    let m = match read_json(&body) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let errors = validate_ticket(&m);
    if !errors.is_empty() {
        return gorgias_error(
            StatusCode::BAD_REQUEST,
            "Failed to create ticket",
            Some(Value::Object(errors)),
        );
    }
    let (commit_rate, commit_mode, commit_latency, late_commit, search_lag, list_lag) = {
        let c = sim.control();
        (
            c.faults.fail_after_commit_rate,
            c.faults.fail_after_commit,
            c.faults.commit_latency_ms,
            c.faults.late_commit_ms,
            c.search_lag,
            c.ticket_list_lag,
        )
    };
    let ticket = if late_commit > 0 {
        // Stored `late_commit` ms after the call was made, whether or not the caller is still
        // there to hear about it (a task of its own, not this handler's future); the answer
        // comes once it is stored.
        let sim = Arc::clone(&sim);
        let stored = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(late_commit)).await;
            store_new_ticket(&sim, &m, search_lag, list_lag)
        })
        .await;
        match stored {
            Ok(Ok(ticket)) => ticket,
            Ok(Err(refused)) => return *refused,
            Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        }
    } else {
        match store_new_ticket(&sim, &m, search_lag, list_lag) {
            Ok(ticket) => ticket,
            Err(refused) => return *refused,
        }
    };
    if commit_latency > 0 {
        // Stored, not yet answered: the window in which a caller's process can die.
        tokio::time::sleep(Duration::from_millis(commit_latency)).await;
    }
    if commit_rate > 0.0 && fastrand::f64() < commit_rate {
        return match commit_mode {
            CommitFailure::Status500 => gorgias_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal server error.",
                None,
            ),
            CommitFailure::Drop => dropped_connection(),
        };
    }
    (StatusCode::CREATED, Json(ticket)).into_response()
}

/// Builds the ticket `m` asks for and stores it: the customer (by id, or found or created by
/// email), the messages in the recorded shape. The list filtered by its `external_id` shows it
/// only `list_lag` after it was stored.
fn store_new_ticket(
    sim: &Shared,
    m: &serde_json::Map<String, Value>,
    search_lag: Duration,
    list_lag: Duration,
) -> Result<Value, Box<Response>> {
    let mut data = sim.data();
    // The customer: by id (must exist) or by email (found or created, as Gorgias matches
    // tickets to customer profiles by email; whether it creates one is not confirmed).
    let customer_ref = m.get("customer").cloned().unwrap_or(Value::Null);
    let customer_id = match (
        customer_ref.get("id").and_then(Value::as_u64),
        customer_ref.get("email").and_then(Value::as_str),
    ) {
        (Some(id), _) if data.customers.contains_key(&id) => Some(id),
        (Some(_), _) => {
            return Err(Box::new(gorgias_error(
                StatusCode::BAD_REQUEST,
                "Failed to create ticket",
                Some(json!({"customer": {"id": ["Customer does not exist."]}})),
            )));
        }
        (None, Some(email)) => Some(match data.by_email.get(&email.to_lowercase()) {
            Some(id) => *id,
            None => data.insert_customer(
                NewCustomer {
                    email: Some(email.to_owned()),
                    name: customer_ref
                        .get("name")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                    external_id: None,
                    channels: vec![("email".into(), email.to_owned())],
                },
                Instant::now() + search_lag,
            ),
        }),
        (None, None) => None,
    };
    let ticket_id = data.next_ticket_id();
    let now = now_iso();
    let customer = customer_id.and_then(|id| data.customers.get(&id).cloned());
    let person = customer.as_ref().map_or(Value::Null, CustomerRec::person);
    let customer_full = customer
        .as_ref()
        .map_or(Value::Null, CustomerRec::on_ticket);
    let channel = m.get("channel").cloned().unwrap_or(json!("api"));
    let mut messages = Vec::new();
    let mut any_incoming = false;
    for msg in m
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let mid = data.next_message_id();
        // Sent as [] or not at all, the recording answers null.
        let attachments = match msg.get("attachments").and_then(Value::as_array) {
            Some(list) if !list.is_empty() => Value::Array(
                list.iter()
                    .map(|a| {
                        json!({"url": a.get("url"), "name": a.get("name"), "size": a.get("size"),
                               "content_type": a.get("content_type"), "public": true})
                    })
                    .collect(),
            ),
            _ => Value::Null,
        };
        let msg_channel = msg.get("channel").cloned().unwrap_or(channel.clone());
        // Gorgias fills `source: {type: <channel>}` when none is sent (recorded); a sent
        // source (an email's from/to) is kept, its `type` filled in when missing.
        let source = match msg.get("source") {
            Some(Value::Object(src)) => {
                let mut src = src.clone();
                src.entry("type").or_insert_with(|| msg_channel.clone());
                Value::Object(src)
            }
            _ => json!({"type": msg_channel}),
        };
        let via = match msg.get("via") {
            Some(v) if !v.is_null() => v.clone(),
            _ => json!("api"),
        };
        let sender_ref = msg.get("sender");
        let sender = if let Some(id) = sender_ref.and_then(|s| s.get("id")).and_then(Value::as_u64)
        {
            data.customers
                .get(&id)
                .map_or(Value::Null, CustomerRec::person)
        } else if let Some(found) = sender_ref
            .and_then(|s| s.get("email"))
            .and_then(Value::as_str)
            .and_then(|e| data.by_email.get(&e.to_lowercase()))
            .and_then(|id| data.customers.get(id))
        {
            found.person()
        } else {
            person.clone()
        };
        if msg.get("from_agent") == Some(&Value::Bool(false)) {
            any_incoming = true;
        }
        messages.push(json!({
            "id": mid,
            "uri": format!("/api/tickets/{ticket_id}/messages/{mid}/"),
            "message_id": null, "ticket_id": ticket_id,
            "external_id": msg.get("external_id"),
            "public": true, "channel": msg_channel, "via": via,
            "source": source,
            "sender": sender,
            "integration_id": null, "intents": [], "rule_id": null,
            "from_agent": msg.get("from_agent"), "receiver": null,
            "subject": msg.get("subject"),
            "body_text": msg.get("body_text"), "body_html": msg.get("body_html"),
            "stripped_text": null, "stripped_html": null, "stripped_signature": null,
            "attachments": attachments, "macros": [], "actions": null, "meta": null,
            "created_datetime": now, "sent_datetime": now, "failed_datetime": null,
            "opened_datetime": null, "last_sending_error": null, "is_retriable": true,
            "imported": false, "processed_datetime": now, "auth_customer_identity": null
        }));
    }
    let mut tags = Vec::new();
    for t in m
        .get("tags")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(name) = t.get("name").and_then(Value::as_str) {
            tags.push(data.tag(name));
        }
    }
    let mut ticket = json!({
        "id": ticket_id,
        "uri": format!("/api/tickets/{ticket_id}/"),
        "external_id": m.get("external_id"),
        "events": [], "status": m.get("status").cloned().unwrap_or(json!("open")),
        "priority": m.get("priority").filter(|p| !p.is_null()).cloned()
            .unwrap_or(json!("normal")),
        "channel": channel, "via": m.get("via").cloned().unwrap_or(json!("api")),
        "from_agent": m.get("from_agent").cloned().unwrap_or(json!(false)),
        "spam": false,
        "customer": customer_full.clone(),
        "assignee_user": null, "assignee_user_id": null,
        "assignee_team": null, "assignee_team_id": null,
        "language": null, "subject": m.get("subject"), "summary": null,
        "meta": m.get("meta"), "tags": tags,
        "messages": messages,
        // Not set to now: the 2026 recording answers null (the 2025 one had a time).
        "created_datetime": now, "opened_datetime": null,
        "last_received_message_datetime": if any_incoming { json!(now) } else { Value::Null },
        "last_message_datetime": now,
        "updated_datetime": now, "closed_datetime": null, "trashed_datetime": null,
        "snooze_datetime": null, "satisfaction_survey": null,
        // Recorded in 2026: only these two keys, even for a phone ticket.
        "reply_options": {"email": {"answerable": true}, "internal-note": {"answerable": true}},
        "requester": customer_full,
        "is_unread": true, "imported": false, "processed_datetime": now
    });
    // Not in the recorded answer (none was sent); returned as sent when sent.
    if let (Some(cf), Some(obj)) = (m.get("custom_fields"), ticket.as_object_mut()) {
        obj.insert("custom_fields".into(), cf.clone());
    }
    data.store_ticket(ticket_id, ticket.clone(), Instant::now() + list_lag);
    Ok(ticket)
}

/// An answer whose body fails at once, so hyper cuts the connection before a complete
/// response reaches the client: the "connection lost after sending" case.
fn dropped_connection() -> Response {
    let stream = futures_util::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::other("simulated connection drop"))
    });
    Response::builder()
        .status(StatusCode::CREATED)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// A `GET /api/tickets` item: abridged as live (§11): no `messages`, but `messages_count`,
/// `excerpt`, `summary`, `integrations`, `custom_fields`, `last_sent_message_not_delivered`.
/// Whether live items also drop other keys of the full ticket (`requester`, `reply_options`,
/// the customer's channels...) is unrecorded: they are kept here.
fn abridged(ticket: &Value) -> Value {
    let mut item = ticket.clone();
    let Some(obj) = item.as_object_mut() else {
        return item;
    };
    let messages = obj.remove("messages");
    let list = messages.as_ref().and_then(Value::as_array);
    // "~100 characters" of the first message; Gorgias's exact cut (and whether it strips or
    // falls back to HTML) is unknown.
    let excerpt: String = list
        .and_then(|l| l.first())
        .and_then(|m| m.get("body_text"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .chars()
        .take(100)
        .collect();
    obj.insert("messages_count".into(), json!(list.map_or(0, Vec::len)));
    obj.insert("excerpt".into(), json!(excerpt));
    obj.entry("summary").or_insert(Value::Null);
    obj.insert("integrations".into(), json!([]));
    // Unrecorded value when none was sent; `{}` as customer list items carry.
    obj.entry("custom_fields").or_insert_with(|| json!({}));
    obj.insert("last_sent_message_not_delivered".into(), json!(false));
    item
}

async fn list_tickets(
    State(sim): Sim,
    Query(q): Query<HashMap<String, String>>,
    RawQuery(raw): RawQuery,
) -> Response {
    let limit = match parse_limit(&q) {
        Ok(l) => l,
        Err(r) => return r,
    };
    let data = sim.data();
    let ids: Vec<u64> = match q.get("external_id") {
        // The filter is served by something that trails writes (as search does): a ticket
        // shows only once its list lag has passed.
        Some(ext) => {
            let now = Instant::now();
            data.by_external_id
                .get(ext)
                .into_iter()
                .flatten()
                .filter(|(_, listed_at)| *listed_at <= now)
                .map(|(id, _)| *id)
                .collect()
        }
        None => data.ticket_order.clone(),
    };
    // Newest first, as Gorgias's default order.
    let page: Vec<Value> = ids
        .iter()
        .rev()
        .take(limit)
        .filter_map(|id| data.tickets.get(id))
        .map(abridged)
        .collect();
    let mut body = list_envelope(page, list_uri("/api/tickets", raw.as_deref()), None);
    if let Some(meta) = body.get_mut("meta").and_then(Value::as_object_mut) {
        meta.insert("total_resources".into(), Value::Null);
    }
    Json(body).into_response()
}

async fn get_ticket(State(sim): Sim, Path(id): Path<String>) -> Response {
    let data = sim.data();
    match id.parse::<u64>().ok().and_then(|id| data.tickets.get(&id)) {
        Some(t) => Json(t.clone()).into_response(),
        None => gorgias_error(StatusCode::NOT_FOUND, "Resource not found.", None),
    }
}

async fn stats(State(sim): Sim) -> Json<super::Stats> {
    Json(sim.data().stats.clone())
}

async fn get_faults(State(sim): Sim) -> Json<Faults> {
    Json(sim.control().faults.clone())
}

async fn set_faults(State(sim): Sim, body: Bytes) -> Response {
    match serde_json::from_slice::<Faults>(&body) {
        Ok(f) => {
            sim.control().faults = f.clone();
            Json(f).into_response()
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {"msg": e.to_string()}})),
        )
            .into_response(),
    }
}

async fn set_credentials(State(sim): Sim, body: Bytes) -> Response {
    match serde_json::from_slice::<Credentials>(&body) {
        Ok(c) => {
            sim.control().credentials = c;
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {"msg": e.to_string()}})),
        )
            .into_response(),
    }
}

/// Every ticket as `{id, external_id}`, for duplicate checks by scripts.
async fn all_tickets(State(sim): Sim) -> Json<Value> {
    let data = sim.data();
    let list: Vec<Value> = data
        .ticket_order
        .iter()
        .filter_map(|id| data.tickets.get(id))
        .map(|t| json!({"id": t.get("id"), "external_id": t.get("external_id")}))
        .collect();
    Json(json!({"data": list}))
}
