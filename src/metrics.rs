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
    gauge!("gorgias_proxy_http_requests_in_flight").set(0.0);
    counter!("gorgias_proxy_gorgias_retries_total").absolute(0);
    counter!("gorgias_proxy_rate_limiter_waits_total").absolute(0);
    counter!("gorgias_proxy_idempotency_replays_total").absolute(0);
    counter!("gorgias_proxy_tickets_reconciled_total").absolute(0);
}

/// One inbound request finished.
pub fn http_request(route: &str, status: u16, elapsed: Duration) {
    let status = status.to_string();
    counter!("gorgias_proxy_http_requests_total", "route" => route.to_owned(), "status" => status.clone())
        .increment(1);
    histogram!("gorgias_proxy_http_request_duration_seconds", "route" => route.to_owned(), "status" => status)
        .record(elapsed.as_secs_f64());
}

/// Inbound requests being served now.
pub fn in_flight(delta: f64) {
    gauge!("gorgias_proxy_http_requests_in_flight").increment(delta);
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
