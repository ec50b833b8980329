//! The service's Prometheus metrics, named here once so call sites cannot drift.
//!
//! The `metrics` facade is a no-op until a recorder is installed ([`install`]), so library code
//! and tests that do not care pay nothing.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Latency buckets in seconds: from sub-millisecond proxy overhead to Gorgias's slow tail.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Installs the process-wide Prometheus recorder once and returns its handle; later calls (as
/// in tests that build several apps) return the same handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
                .map(PrometheusBuilder::build_recorder)
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            let recorder_ref: &dyn metrics::Recorder = &recorder;
            // Series that would otherwise appear only after their first event: a dashboard
            // should see zero, not nothing.
            metrics::with_local_recorder(recorder_ref, declare);
            // Another recorder may already be installed (an embedding program's); then ours
            // just renders nothing, which is better than failing to start.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// [`install`], plus a timer that runs the recorder's upkeep (draining histogram buckets)
/// every 5 s. Without it the histograms are only drained when something scrapes `/metrics`, and
/// grow without bound on a replica nobody scrapes. Needs a Tokio runtime; the timer stops with
/// it.
pub fn install_with_upkeep() -> PrometheusHandle {
    let handle = install();
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    handle
}

fn declare() {
    metrics::describe_counter!(
        "gorgias_proxy_http_requests_total",
        "Inbound requests by route and status"
    );
    metrics::describe_histogram!(
        "gorgias_proxy_http_request_duration_seconds",
        metrics::Unit::Seconds,
        "Inbound request latency"
    );
    metrics::describe_gauge!(
        "gorgias_proxy_http_requests_in_flight",
        "Inbound requests being served"
    );
    metrics::describe_counter!(
        "gorgias_proxy_gorgias_calls_total",
        "Gorgias call attempts by endpoint and status"
    );
    metrics::describe_histogram!(
        "gorgias_proxy_gorgias_call_duration_seconds",
        metrics::Unit::Seconds,
        "Gorgias call latency"
    );
    metrics::describe_counter!(
        "gorgias_proxy_gorgias_retries_total",
        "Gorgias calls retried"
    );
    metrics::describe_counter!(
        "gorgias_proxy_rate_limiter_waits_total",
        "Calls that waited for the client-side rate limiter"
    );
    metrics::describe_counter!(
        "gorgias_proxy_idempotency_replays_total",
        "Answers replayed for a repeated Idempotency-Key"
    );
    metrics::describe_counter!(
        "gorgias_proxy_customer_cache_total",
        "Customer lookups by cache result"
    );
    metrics::describe_counter!(
        "gorgias_proxy_tickets_reconciled_total",
        "Ticket creates of unknown outcome found by external_id"
    );
    metrics::describe_counter!(
        "gorgias_proxy_trace_spans_dropped_total",
        "Trace spans dropped: the export queue was full, or the collector did not take them"
    );
    gauge!("gorgias_proxy_http_requests_in_flight").set(0.0);
    for reason in ["queue_full", "export_failed"] {
        counter!("gorgias_proxy_trace_spans_dropped_total", "reason" => reason).absolute(0);
    }
    counter!("gorgias_proxy_gorgias_retries_total").absolute(0);
    counter!("gorgias_proxy_rate_limiter_waits_total").absolute(0);
    counter!("gorgias_proxy_idempotency_replays_total").absolute(0);
    counter!("gorgias_proxy_tickets_reconciled_total").absolute(0);
}

/// One inbound request finished. Labels are static strings: no allocation per request.
pub fn http_request(route: &'static str, status: axum::http::StatusCode, elapsed: Duration) {
    let status = status_label(status);
    counter!("gorgias_proxy_http_requests_total", "route" => route, "status" => status.clone())
        .increment(1);
    histogram!("gorgias_proxy_http_request_duration_seconds", "route" => route, "status" => status)
        .record(elapsed.as_secs_f64());
}

/// The statuses this service answers, as static labels; any other is formatted.
fn status_label(status: axum::http::StatusCode) -> metrics::SharedString {
    let known = match status.as_u16() {
        200 => "200",
        201 => "201",
        202 => "202",
        400 => "400",
        401 => "401",
        404 => "404",
        405 => "405",
        408 => "408",
        409 => "409",
        413 => "413",
        415 => "415",
        422 => "422",
        429 => "429",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        other => return metrics::SharedString::from(other.to_string()),
    };
    metrics::SharedString::const_str(known)
}

/// Counts a request as in flight until dropped, so a handler dropped mid-way (the caller hung
/// up) cannot leak the gauge.
#[derive(Debug)]
pub struct InFlight(());

impl InFlight {
    /// One more request in flight.
    pub fn start() -> Self {
        gauge!("gorgias_proxy_http_requests_in_flight").increment(1.0);
        Self(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        gauge!("gorgias_proxy_http_requests_in_flight").decrement(1.0);
    }
}

/// A customer lookup was served from the cache (`hit`) or resolved with Gorgias.
pub fn customer_cache(hit: bool) {
    let result = if hit { "hit" } else { "miss" };
    counter!("gorgias_proxy_customer_cache_total", "result" => result).increment(1);
}

/// A ticket create with an unknown outcome was found to exist and answered from the lookup.
pub fn reconciled() {
    counter!("gorgias_proxy_tickets_reconciled_total").increment(1);
}

/// An answer was replayed for a repeated `Idempotency-Key`.
pub fn idempotency_replay() {
    counter!("gorgias_proxy_idempotency_replays_total").increment(1);
}

/// The outbox's rows by status, and the age of its oldest pending delivery.
pub fn outbox_depth(depth: &crate::outbox::Depth) {
    for (status, n) in ["queued", "delivering", "delivered", "failed"]
        .into_iter()
        .zip(depth.by_status)
    {
        gauge!("gorgias_proxy_outbox_deliveries", "status" => status).set(n as f64);
    }
    gauge!("gorgias_proxy_outbox_oldest_pending_seconds").set(depth.oldest_pending.as_secs_f64());
}

/// A delivery attempt ended: `delivered`, `failed` or `retry`.
pub fn delivery(outcome: &'static str) {
    counter!("gorgias_proxy_delivery_attempts_total", "outcome" => outcome).increment(1);
}

/// A webhook send ended: `sent`, `retry` or `gave_up`.
pub fn webhook(outcome: &'static str) {
    counter!("gorgias_proxy_webhooks_total", "outcome" => outcome).increment(1);
}

/// `n` trace spans were dropped: `queue_full` (the export queue was full: the collector is slow
/// or hangs) or `export_failed` (the collector refused them or could not be reached).
pub fn trace_spans_dropped(reason: &'static str, n: u64) {
    counter!("gorgias_proxy_trace_spans_dropped_total", "reason" => reason).increment(n);
}

/// An OAuth2 refresh ended: `refreshed`, `refused` (the connection needs reconnecting) or
/// `failed` (tried again later). No connection label: per-connection figures are in
/// `GET /connections/{id}`.
pub fn token_refresh(outcome: &'static str) {
    counter!("gorgias_proxy_token_refreshes_total", "outcome" => outcome).increment(1);
}
