//! What the client reports through the [`metrics`] facade: a no-op until the program installs a
//! recorder. The names keep the `gorgias_proxy_` prefix of the service this crate came from, so
//! dashboards built on them keep working.

use std::time::Duration;

use metrics::{counter, histogram};

/// One attempt of a Gorgias call ended with `status` (an HTTP status or an error label).
pub(crate) fn gorgias_call(endpoint: &'static str, status: &str, elapsed: Duration) {
    counter!("gorgias_proxy_gorgias_calls_total", "endpoint" => endpoint, "status" => status.to_owned())
        .increment(1);
    histogram!("gorgias_proxy_gorgias_call_duration_seconds", "endpoint" => endpoint)
        .record(elapsed.as_secs_f64());
}

/// A Gorgias call is being retried.
pub(crate) fn gorgias_retry(endpoint: &'static str) {
    counter!("gorgias_proxy_gorgias_retries_total", "endpoint" => endpoint).increment(1);
}

/// A call waited for the client-side rate limiter.
pub(crate) fn limiter_wait(endpoint: &'static str) {
    counter!("gorgias_proxy_rate_limiter_waits_total", "endpoint" => endpoint).increment(1);
}

/// A call was refused by the client-side rate limiter: no call could come before the caller's
/// deadline, or the queue was full.
pub(crate) fn limiter_refusal(endpoint: &'static str) {
    counter!("gorgias_proxy_rate_limiter_refusals_total", "endpoint" => endpoint).increment(1);
}
