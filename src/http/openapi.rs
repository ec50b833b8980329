//! The OpenAPI 3.1 document, generated from the code: the handler's `#[utoipa::path]`, the
//! output types, and the request DTOs of `domain::request`, whose schema is also what every
//! body is validated against. Served at `GET /openapi.json`; a committed
//! copy lives in `openapi.json` and a test fails when they differ.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::domain::request::{
    AttachmentIn, CustomerIn, MessageIn, TicketIn, TicketRequest, component_schemas,
};
use crate::error::Problem;
use crate::output::{Assignee, Attachment, Message, Tag, Ticket, User};

/// The operation. Its documentation is the contract callers read.
#[utoipa::path(
    post,
    path = "/ticket",
    tag = "tickets",
    operation_id = "createTicket",
    summary = "Open a Gorgias ticket for a customer",
    description = "Validates the body, finds or creates the Gorgias customer (by email, then by \
                   phone), and creates the ticket. With an `Idempotency-Key`, retries of the same \
                   request replay the first final answer.",
    request_body(content = TicketRequest, content_type = "application/json"),
    params(
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255,
         pattern = r"^[\x21-\x7e]+$",
         description = "Makes retries safe: the first final answer (201 or 4xx) is replayed for \
                        24 h with `Idempotency-Replayed: true`; another body with the same key \
                        is 422; the same key while the first request runs is 409."),
        ("Prefer" = Option<String>, Header,
         description = "RFC 7240. `respond-async`: the validated request is written to the \
                        durable outbox and answered 202 with `Location: /tickets/{id}` and \
                        `Preference-Applied: respond-async`; it is delivered later, exactly \
                        once. With `wait=N` as well, the answer waits up to N seconds and is \
                        201 with the ticket when it was delivered by then. Validation errors \
                        are the same 400/422 either way."),
        ("X-Request-Id" = Option<String>, Header,
         description = "Kept when it is 1 to 128 visible ASCII characters, else replaced by a \
                        fresh id; echoed on every answer and in error bodies."),
        ("Connection-Id" = Option<String>, Header, min_length = 1, max_length = 64,
         pattern = r"^[A-Za-z0-9._-]+$",
         description = "The stored connection (Gorgias account) this request is for; absent, the \
                        default account from `GORGIAS_*`. Unknown, or not allowed to this \
                        caller: 404 `unknown_connection`. Absent with no default account: 400 \
                        `connection_required`."),
    ),
    responses(
        (status = 201, description = "The ticket Gorgias created", body = Ticket,
         headers(("X-Request-Id" = String), ("Idempotency-Replayed" = String, description = "`true` on a replay"))),
        (status = 202, description = "`Prefer: respond-async`: accepted into the outbox; poll `status_url`",
         body = crate::http::tickets::AcceptedTicket,
         headers(("Location" = String, description = "`/tickets/{id}`"),
                 ("Preference-Applied" = String, description = "`respond-async`"),
                 ("X-Request-Id" = String),
                 ("Idempotency-Replayed" = String, description = "`true` on a replay"))),
        (status = 400, description = "Malformed JSON, wrong types, unknown or missing fields, or a bad header",
         body = Problem, content_type = "application/problem+json", headers(("X-Request-Id" = String))),
        (status = 401, description = "Missing or unknown bearer token",
         body = Problem, content_type = "application/problem+json",
         headers(("WWW-Authenticate" = String), ("X-Request-Id" = String))),
        (status = 404, description = "`Connection-Id` names no connection this caller may use (`unknown_connection`)",
         body = Problem, content_type = "application/problem+json", headers(("X-Request-Id" = String))),
        (status = 409, description = "The same Idempotency-Key is still in progress",
         body = Problem, content_type = "application/problem+json", headers(("X-Request-Id" = String))),
        (status = 413, description = "Body over the size limit",
         body = Problem, content_type = "application/problem+json", headers(("X-Request-Id" = String))),
        (status = 415, description = "Body not sent as application/json",
         body = Problem, content_type = "application/problem+json", headers(("X-Request-Id" = String))),
        (status = 422, description = "Values break the rules, or an Idempotency-Key was reused with another body",
         body = Problem, content_type = "application/problem+json", headers(("X-Request-Id" = String))),
        (status = 502, description = "Gorgias refused the request, failed, or answered something unreadable",
         body = Problem, content_type = "application/problem+json", headers(("X-Request-Id" = String))),
        (status = 503, description = "Gorgias rate-limited us or is unreachable, or this replica is at its limit of concurrent requests; retry after Retry-After",
         body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = String, description = "Seconds to wait"), ("X-Request-Id" = String))),
        (status = 504, description = "Gorgias or the request deadline timed out",
         body = Problem, content_type = "application/problem+json", headers(("X-Request-Id" = String))),
    ),
    security((), ("bearer" = []))
)]
#[allow(dead_code)]
fn create_ticket_doc() {}

/// The status of an asynchronous request.
#[utoipa::path(
    get,
    path = "/tickets/{delivery_id}",
    tag = "tickets",
    operation_id = "getDelivery",
    summary = "The status of a ticket accepted with `Prefer: respond-async`",
    description = "`delivery_id` is the `id` of the 202 answer (also in its `Location`), not the \
                   Gorgias ticket id of a 201.",
    params(("delivery_id" = String, Path, description = "The `id` answered with 202"),
        ("Connection-Id" = Option<String>, Header, min_length = 1, max_length = 64,
         pattern = r"^[A-Za-z0-9._-]+$",
         description = "The stored connection (Gorgias account) this request is for; absent, the \
                        default account from `GORGIAS_*`. Unknown, or not allowed to this \
                        caller: 404 `unknown_connection`. Absent with no default account: 400 \
                        `connection_required`."),
    ),
    responses(
        (status = 200, description = "Where the delivery stands", body = crate::outbox::DeliveryStatus,
         headers(("X-Request-Id" = String))),
        (status = 401, description = "Missing or unknown bearer token",
         body = Problem, content_type = "application/problem+json",
         headers(("WWW-Authenticate" = String), ("X-Request-Id" = String))),
        (status = 404, description = "No such delivery for this caller (on this connection)",
         body = Problem, content_type = "application/problem+json", headers(("X-Request-Id" = String))),
        (status = 503, description = "The outbox cannot be read; retry after Retry-After",
         body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = String), ("X-Request-Id" = String))),
    ),
    security((), ("bearer" = []))
)]
#[allow(dead_code)]
fn get_delivery_doc() {}

/// `PUT /connections/{connection_id}`'s body (documentation; the handler reads it strictly
/// and lists every field error with its path).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct ConnectionBody {
    /// The account's subdomain (`https://{subdomain}.gorgias.com`); or `base_url`.
    #[schema(pattern = r"^[a-z0-9_-]+$", max_length = 63)]
    subdomain: Option<String>,
    /// Only with `ALLOW_CUSTOM_BASE_URLS=true` (simulators, tests); refused (422) otherwise.
    #[schema(format = "uri")]
    base_url: Option<String>,
    /// `{"type": "basic", "username", "api_key"}` or `{"type": "oauth2", "access_token",
    /// "refresh_token", "expires_at"?}` (`expires_at`: Unix seconds or RFC 3339). Sealed at
    /// rest (AES-256-GCM); never answered.
    auth: serde_json::Value,
    /// `40/20s`, `80/20s`, `off`; default 40/20 s (API key) or 80/20 s (OAuth2).
    rate_limit: Option<String>,
    /// A fixed ticket channel (skips the settings lookup).
    ticket_channel: Option<String>,
    /// `phone` or `api`.
    message_channel: Option<String>,
    /// An ISO 3166 region code for phone numbers.
    phone_default_region: Option<String>,
}

/// Creates or replaces a connection.
#[utoipa::path(put, path = "/connections/{connection_id}", tag = "connections",
    operation_id = "putConnection",
    summary = "Create or replace a connection (a Gorgias account and its credentials)",
    params(("connection_id" = String, Path, pattern = r"^[A-Za-z0-9._-]{1,64}$")),
    request_body(content = ConnectionBody, content_type = "application/json"),
    responses(
        (status = 201, description = "Created", body = crate::connections::View),
        (status = 200, description = "Replaced (its state is `unchecked` again)", body = crate::connections::View),
        (status = 400, description = "Malformed JSON, wrong types, unknown or missing fields, a bad id",
         body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not an admin token", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Values break the rules (e.g. a base_url where not allowed)",
         body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_enabled`: this deployment has no database for connections, or no CONNECTIONS_KEY", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The connections' database cannot be read (`connections_unavailable`)", body = Problem, content_type = "application/problem+json")),
    security(("admin" = [])))]
#[allow(dead_code)]
fn put_connection_doc() {}

/// One connection.
#[utoipa::path(get, path = "/connections/{connection_id}", tag = "connections",
    operation_id = "getConnection", summary = "A connection and its state, without any secret",
    params(("connection_id" = String, Path)),
    responses(
        (status = 200, description = "The connection", body = crate::connections::View),
        (status = 401, description = "Not an admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such connection (`unknown_connection`), or `not_enabled` here", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The connections' database cannot be read (`connections_unavailable`)", body = Problem, content_type = "application/problem+json")),
    security(("admin" = [])))]
#[allow(dead_code)]
fn get_connection_doc() {}

/// A page of connections.
#[utoipa::path(get, path = "/connections", tag = "connections",
    operation_id = "listConnections", summary = "Connections in id order, a page at a time",
    params(("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "Default 50"),
           ("cursor" = Option<String>, Query, description = "`next_cursor` of the page before")),
    responses(
        (status = 200, description = "A page", body = crate::http::connections::ConnectionPage),
        (status = 400, description = "A bad limit or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not an admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_enabled`: this deployment has no database for connections, or no CONNECTIONS_KEY", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The connections' database cannot be read (`connections_unavailable`)", body = Problem, content_type = "application/problem+json")),
    security(("admin" = [])))]
#[allow(dead_code)]
fn list_connections_doc() {}

/// Deletes a connection.
#[utoipa::path(delete, path = "/connections/{connection_id}", tag = "connections",
    operation_id = "deleteConnection", summary = "Delete a connection",
    params(("connection_id" = String, Path),
           ("force" = Option<bool>, Query, description = "Delete even with queued deliveries: \
            they become `failed` with the problem `connection_deleted`")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Not an admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such connection (`unknown_connection`), or `not_enabled` here", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Deliveries are queued for it (`connection_has_deliveries`)",
         body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The connections' database cannot be read (`connections_unavailable`)", body = Problem, content_type = "application/problem+json")),
    security(("admin" = [])))]
#[allow(dead_code)]
fn delete_connection_doc() {}

/// The preflight of one connection.
#[utoipa::path(post, path = "/connections/{connection_id}/check", tag = "connections",
    operation_id = "checkConnection",
    summary = "The `check` preflight against that account (read-only, at most 4 calls)",
    params(("connection_id" = String, Path)),
    responses(
        (status = 200, description = "`{ok, target, calls_spent, checks: [{name, status, detail}]}`",
         content_type = "application/json"),
        (status = 401, description = "Not an admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such connection (`unknown_connection`), or `not_enabled` here", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The connections' database cannot be read (`connections_unavailable`)", body = Problem, content_type = "application/problem+json")),
    security(("admin" = [])))]
#[allow(dead_code)]
fn check_connection_doc() {}

/// Starts an OAuth2 install.
#[utoipa::path(get, path = "/oauth/authorize", tag = "connections",
    operation_id = "oauthAuthorize",
    summary = "Send the merchant to Gorgias's consent page (OAuth2 install)",
    description = "With an admin token, or as a link signed by `POST /connections/{id}/oauth-link` \
                   (`expires` and `sig`). Redirects to `https://{subdomain}.gorgias.com/oauth/authorize` \
                   with `response_type=code`, `client_id`, the scopes, `redirect_uri` and a \
                   single-use `state` that expires in 10 minutes.",
    params(("connection_id" = String, Query), ("subdomain" = Option<String>, Query),
           ("base_url" = Option<String>, Query, description = "Only with ALLOW_CUSTOM_BASE_URLS"),
           ("expires" = Option<u64>, Query), ("sig" = Option<String>, Query)),
    responses(
        (status = 302, description = "To Gorgias's consent page"),
        (status = 400, description = "A bad connection id or account", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Neither an admin token nor a valid signed link", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_enabled`: OAUTH_*, CONNECTIONS_KEY or the database not set up", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The connections' database cannot be read (`connections_unavailable`)", body = Problem, content_type = "application/problem+json")),
    security((), ("admin" = [])))]
#[allow(dead_code)]
fn oauth_authorize_doc() {}

/// Finishes an OAuth2 install.
#[utoipa::path(get, path = "/oauth/callback", tag = "connections",
    operation_id = "oauthCallback",
    summary = "Where Gorgias sends the merchant back: stores the connection",
    description = "Checks `state` (single-use, expiring), exchanges `code` at the account's \
                   `/oauth/token` (HTTP Basic client auth) and stores the connection with its \
                   tokens, sealed.",
    params(("code" = String, Query), ("state" = String, Query)),
    responses(
        (status = 200, description = "`{connection_id, status: connected}`", content_type = "application/json"),
        (status = 400, description = "`invalid_oauth_state` (unknown, replayed, expired) or `oauth_refused`",
         body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_enabled`: OAUTH_*, CONNECTIONS_KEY or the database not set up", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "Gorgias's token endpoint failed", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The connections' database cannot be read (`connections_unavailable`)", body = Problem, content_type = "application/problem+json")),
    security(()))]
#[allow(dead_code)]
fn oauth_callback_doc() {}

/// A signed install link.
#[utoipa::path(post, path = "/connections/{connection_id}/oauth-link", tag = "connections",
    operation_id = "oauthLink",
    summary = "A link to /oauth/authorize that works without the admin token for 10 minutes",
    params(("connection_id" = String, Path)),
    request_body(content = serde_json::Value, description = "`{\"subdomain\": …}` or `{\"base_url\": …}`",
                 content_type = "application/json"),
    responses(
        (status = 200, description = "`{url, expires_at}`", content_type = "application/json"),
        (status = 400, description = "A bad connection id or account", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not an admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_enabled`: CONNECTIONS_KEY not set", body = Problem, content_type = "application/problem+json")),
    security(("admin" = [])))]
#[allow(dead_code)]
fn oauth_link_doc() {}

/// Health endpoints (no token).
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process is up", content_type = "application/json")))]
#[allow(dead_code)]
fn healthz_doc() {}

/// Readiness (no token).
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Gorgias accepts our credentials", content_type = "application/json"),
        (status = 503, description = "Not ready; `detail` says why", body = Problem,
         content_type = "application/problem+json",
         headers(("Retry-After" = String), ("X-Request-Id" = String)))))]
#[allow(dead_code)]
fn readyz_doc() {}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        // A bearer token from ADMIN_TOKENS: never a caller's.
        components.add_security_scheme(
            "admin",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "gorgias-proxy",
        description = "Opens Gorgias support tickets for internal services.",
        license(name = "MIT", identifier = "MIT")
    ),
    paths(
        create_ticket_doc, get_delivery_doc, healthz_doc, readyz_doc, put_connection_doc,
        get_connection_doc, list_connections_doc, delete_connection_doc, check_connection_doc,
        oauth_authorize_doc, oauth_callback_doc, oauth_link_doc
    ),
    components(schemas(
        TicketRequest, CustomerIn, TicketIn, MessageIn, AttachmentIn,
        Ticket, Message, User, Assignee, Attachment, Tag, Problem,
        crate::http::tickets::AcceptedTicket, crate::outbox::DeliveryStatus,
        crate::outbox::Status, ConnectionBody, crate::connections::View,
        crate::connections::AuthView, crate::connections::LastError,
        crate::connections::Status, crate::connections::Settings,
        crate::http::connections::ConnectionPage
    )),
    modifiers(&BearerAuth),
    tags((name = "tickets"), (name = "operations"), (name = "connections"))
)]
pub struct ApiDoc;

/// The document as pretty JSON, built once.
pub fn document() -> &'static str {
    static DOC: LazyLock<String> = LazyLock::new(|| {
        let mut doc = ApiDoc::openapi();
        // The version comes from Cargo.toml so a release bump is visible in the spec.
        doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
        let mut value = serde_json::to_value(&doc).unwrap_or_default();
        // utoipa renders an optional header as nullable; a header is absent, never null.
        for path in [
            "/paths/~1ticket/post/parameters",
            "/paths/~1tickets~1{delivery_id}/get/parameters",
        ] {
            if let Some(params) = value
                .pointer_mut(path)
                .and_then(serde_json::Value::as_array_mut)
            {
                for p in params.iter_mut().filter(|p| p["in"] == "header") {
                    p["schema"]["type"] = serde_json::json!("string");
                }
            }
        }
        // The request schemas exactly as the validator uses them (with the rule across two
        // fields that the derive cannot say).
        if let Some(schemas) = value
            .pointer_mut("/components/schemas")
            .and_then(serde_json::Value::as_object_mut)
        {
            schemas.extend(component_schemas());
        }
        serde_json::to_string_pretty(&value).unwrap_or_else(|_| "{}".to_owned()) + "\n"
    });
    &DOC
}

/// `GET /openapi.json`.
pub(crate) async fn serve() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], document())
}

/// The limits the schema above repeats as literals (attributes need literals); a unit test
/// keeps them equal.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::limits;

    #[test]
    fn the_schema_bounds_equal_the_validation_limits() {
        let doc: serde_json::Value = serde_json::from_str(document()).unwrap();
        let s = &doc["components"]["schemas"];
        assert_eq!(
            s["CustomerIn"]["properties"]["phone_number"]["maxLength"],
            limits::PHONE_MAX_CHARS
        );
        assert_eq!(
            s["CustomerIn"]["properties"]["email"]["maxLength"],
            limits::EMAIL_MAX_CHARS
        );
        assert_eq!(
            s["TicketIn"]["properties"]["messages"]["maxItems"],
            limits::MESSAGES_MAX
        );
        assert_eq!(
            s["MessageIn"]["properties"]["id"]["maxLength"],
            limits::MESSAGE_ID_MAX_CHARS
        );
        assert_eq!(
            s["AttachmentIn"]["properties"]["name"]["maxLength"],
            limits::ATTACHMENT_NAME_MAX_CHARS
        );
        assert_eq!(
            s["AttachmentIn"]["properties"]["url"]["maxLength"],
            limits::URL_MAX_CHARS
        );
        assert_eq!(
            s["AttachmentIn"]["properties"]["content_type"]["maxLength"],
            limits::CONTENT_TYPE_MAX_CHARS
        );
        assert_eq!(
            s["AttachmentIn"]["properties"]["size"]["maximum"],
            limits::ATTACHMENT_SIZE_MAX
        );
        assert_eq!(doc["openapi"], "3.1.0");
    }
}
