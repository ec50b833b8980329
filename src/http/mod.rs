//! Our HTTP surface: routes, the request-context middleware, and the fallbacks, so every answer
//! (even a 404) carries an `X-Request-Id` and errors share one problem+json shape.

pub mod auth;
pub mod connections;
mod health;
mod oauth;
pub mod openapi;
mod route;
mod ticket;
pub mod tickets;

use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::Response;
use tracing::Instrument;

use crate::error::ApiError;
use crate::request_id::REQUEST_ID;
use crate::state::AppState;

/// The request-id header, read from callers and set on every answer.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The whole router with its middleware; what tests drive with `oneshot` and what we serve.
pub fn router(state: AppState) -> Router {
    let body_limit = state.body_limit;
    let body_read_timeout = state.body_read_timeout;
    let max_in_flight = state.max_in_flight;
    Router::new()
        .merge(ticket::router().merge(tickets::router()).route_layer(
            middleware::from_fn_with_state(state.clone(), auth::require_token),
        ))
        .merge(
            connections::router()
                .merge(oauth::admin_router())
                .route_layer(middleware::from_fn_with_state(
                    state.clone(),
                    connections::require_admin,
                )),
        )
        .merge(oauth::router())
        .merge(health::router())
        .route("/openapi.json", axum::routing::get(openapi::serve))
        .merge(metrics_router(&state))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        // Our own limit replaces axum's 2 MiB default; the handler turns the rejection into 413.
        .layer(DefaultBodyLimit::max(body_limit))
        // A body trickled in slower than this is cut off (the read fails: 400), so a slow
        // client cannot hold a request open.
        .layer(tower_http::timeout::RequestBodyDeadlineLayer::new(
            body_read_timeout,
        ))
        // Past the cap a request is refused at once (503 + Retry-After) rather than queued:
        // queued requests hold their bodies and tasks, and memory grows with the queue.
        .layer(
            tower::ServiceBuilder::new()
                .layer(axum::error_handling::HandleErrorLayer::new(
                    |_: tower::BoxError| async { ApiError::Overloaded },
                ))
                .layer(tower::load_shed::LoadShedLayer::new())
                .layer(tower::limit::ConcurrencyLimitLayer::new(max_in_flight)),
        )
        .layer(middleware::from_fn(request_context))
        .with_state(state)
}

/// `GET /metrics` on the main listener, unless `METRICS_LISTEN` moved it to its own.
fn metrics_router(state: &AppState) -> Router<AppState> {
    match (&state.metrics, state.metrics_on_main) {
        (Some(handle), true) => metrics_route(handle.clone()),
        _ => Router::new(),
    }
}

/// The `/metrics` route alone, for whichever listener serves it.
pub fn metrics_route<S: Clone + Send + Sync + 'static>(
    handle: metrics_exporter_prometheus::PrometheusHandle,
) -> Router<S> {
    Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = handle.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    handle.render(),
                )
            }
        }),
    )
}

/// A caller's request id is kept when it is short printable ASCII, so it can be logged and
/// echoed safely; anything else is replaced by a fresh UUID.
fn usable_request_id(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    (1..=128).contains(&s.len()).then_some(())?;
    s.bytes()
        .all(|b| b.is_ascii_graphic())
        .then(|| s.to_owned())
}

/// Outermost middleware: assigns the request id, opens the span every log line of the request
/// is written in, counts the request, and stamps `X-Request-Id` on the answer.
async fn request_context(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(usable_request_id)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let route = route_label(req.extensions().get::<MatchedPath>());
    let method = req.method().clone();
    // Only the request id is a span field: every log line of the request carries it, while
    // span fields cost a JSON formatting per request. Method and route go on the one
    // "request finished" line. Only the route template is logged: a raw URI could carry a
    // customer's data.
    //
    // `trace_id` and `span_id` are recorded only when a trace is active (traces on): an empty
    // field is not written.
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty
    );
    // The trace's server span (disabled when traces are off), a child of the caller's span.
    let server = crate::traces::server_span(req.headers(), &method, route);
    crate::traces::stamp(&span, &server);
    let in_flight = crate::metrics::InFlight::start();
    let mut resp = crate::traces::scope(
        server.clone(),
        REQUEST_ID
            .scope(id.clone(), next.run(req))
            .instrument(span.clone()),
    )
    .await;
    drop(in_flight);
    let elapsed = started.elapsed();
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(X_REQUEST_ID.clone(), v);
    }
    let status = resp.status();
    crate::traces::record_answer(
        &server,
        status.as_u16(),
        resp.extensions()
            .get::<crate::error::ProblemCode>()
            .map(|c| c.0),
    );
    crate::metrics::http_request(route, status, elapsed);
    span.in_scope(|| {
        tracing::info!(
            method = %method,
            route,
            status = status.as_u16(),
            latency_ms = elapsed.as_secs_f64() * 1e3,
            "request finished"
        );
    });
    resp
}

/// The route template as a static label (no allocation per request, and a bounded set of
/// metric series whatever callers send).
fn route_label(matched: Option<&MatchedPath>) -> &'static str {
    match matched.map(MatchedPath::as_str) {
        Some("/ticket") => "/ticket",
        Some("/healthz") => "/healthz",
        Some("/readyz") => "/readyz",
        Some("/metrics") => "/metrics",
        Some("/openapi.json") => "/openapi.json",
        Some("/tickets/{id}") => "/tickets/{id}",
        Some("/connections") => "/connections",
        Some("/connections/{connection_id}") => "/connections/{connection_id}",
        Some("/connections/{connection_id}/check") => "/connections/{connection_id}/check",
        Some("/connections/{connection_id}/oauth-link") => {
            "/connections/{connection_id}/oauth-link"
        }
        Some("/oauth/authorize") => "/oauth/authorize",
        Some("/oauth/callback") => "/oauth/callback",
        Some(_) => "other",
        None => "unmatched",
    }
}

/// The deadline of a request that starts now.
pub(crate) fn deadline_after(d: Duration) -> tokio::time::Instant {
    tokio::time::Instant::now() + d
}
