//! Traces: OpenTelemetry spans exported over OTLP (HTTP/protobuf), off unless an OTLP endpoint
//! is set.
//!
//! How the pieces fit:
//! - Spans meant for traces are `tracing` spans and events with the target
//!   [`gorgias::TRACE_TARGET`]. Only the OpenTelemetry layer sees them; the log layer never does,
//!   so they add no log lines, and with traces off they are disabled at their call site (one
//!   atomic load each).
//! - The log layer keeps its own `request` and `delivery` spans; when a trace is active their
//!   `trace_id` and `span_id` fields are recorded, so JSON log lines carry them.
//! - Inbound `traceparent`/`tracestate` (W3C Trace Context) make the request's server span a
//!   child of the caller's. A delivery attempt starts a trace of its own, linked to the span
//!   that accepted it (its `traceparent` is stored with the delivery).
//! - Export never holds a request up: spans go to the SDK's batch processor (its own thread)
//!   through a bounded queue; spans that do not fit, and batches the collector does not take,
//!   are dropped and counted in `gorgias_proxy_trace_spans_dropped_total`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, SpanData, SpanExporter,
    SpanProcessor,
};
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub use gorgias::TRACE_TARGET;

/// Whether traces are exported: set once at start-up, read on every request.
static ON: AtomicBool = AtomicBool::new(false);

/// Whether this process exports traces.
pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// The trace settings read from the standard `OTEL_*` variables. Traces are on when
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` is set, unless
/// `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`. The exporter itself reads the
/// endpoint, `OTEL_EXPORTER_OTLP_(TRACES_)HEADERS` and `_TIMEOUT`; the SDK reads
/// `OTEL_TRACES_SAMPLER(_ARG)`, `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_BSP_*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Spans held for export at most (`OTEL_BSP_MAX_QUEUE_SIZE`, default 2,048); past it they
    /// are dropped and counted.
    pub max_queue: usize,
    /// Whether `service.name` comes from the environment; otherwise it is `gorgias-proxy`.
    pub service_name_set: bool,
}

impl Settings {
    /// `None` when traces are off.
    ///
    /// # Errors
    /// A setting we cannot honour, named: a protocol other than `http/protobuf`, an exporter
    /// other than `otlp`, a queue size that is not a positive number.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, String> {
        let set = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        if set("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        match set("OTEL_TRACES_EXPORTER").map(|v| v.trim().to_ascii_lowercase()) {
            Some(v) if v == "none" => return Ok(None),
            Some(v) if v != "otlp" => {
                return Err(format!(
                    "OTEL_TRACES_EXPORTER={v} is not supported: use otlp (or none)"
                ));
            }
            _ => {}
        }
        if set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| set("OTEL_EXPORTER_OTLP_ENDPOINT"))
            .is_none()
        {
            return Ok(None);
        }
        for name in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Some(p) = set(name)
                && p.trim() != "http/protobuf"
            {
                return Err(format!(
                    "{name}={p} is not supported: this build exports OTLP over HTTP/protobuf \
                     only (point the endpoint at the collector's HTTP port, usually 4318)"
                ));
            }
        }
        let max_queue = match set("OTEL_BSP_MAX_QUEUE_SIZE") {
            None => 2048,
            Some(v) => v
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| {
                    format!("OTEL_BSP_MAX_QUEUE_SIZE={v} is not a positive number of spans")
                })?,
        };
        let service_name_set = set("OTEL_SERVICE_NAME").is_some()
            || set("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|a| {
                a.split(',').any(|kv| {
                    kv.split_once('=')
                        .is_some_and(|(k, _)| k.trim() == "service.name")
                })
            });
        Ok(Some(Self {
            max_queue,
            service_name_set,
        }))
    }
}

/// The pipeline the `OTEL_*` environment asks for: `None` when traces are off.
///
/// # Errors
/// A setting that cannot be honoured, or an exporter that cannot be built.
pub fn from_env() -> Result<Option<Pipeline>, String> {
    Settings::from_env(|name| std::env::var(name).ok())?
        .map(|settings| Pipeline::start(&settings))
        .transpose()
}

/// The exporting pipeline; [`Pipeline::shutdown`] sends what is queued before the process ends.
pub struct Pipeline {
    provider: SdkTracerProvider,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pipeline")
    }
}

impl Pipeline {
    /// Builds the exporter and the provider, and turns traces on.
    ///
    /// # Errors
    /// When the exporter cannot be built (an endpoint that is not a URL, say).
    pub fn start(settings: &Settings) -> Result<Self, String> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .map_err(|e| format!("the OTLP exporter cannot be built: {e}"))?;
        let pending = Arc::new(AtomicUsize::new(0));
        let exporter = Counted {
            inner: exporter,
            pending: pending.clone(),
        };
        // The SDK's queue is as long as ours, and ours counts spans until their export ends,
        // so the SDK never drops one we did not count.
        let batch = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_max_queue_size(settings.max_queue)
                    .build(),
            )
            .build();
        let mut resource = opentelemetry_sdk::Resource::builder().with_attribute(
            opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        );
        if !settings.service_name_set {
            resource = resource.with_service_name("gorgias-proxy");
        }
        let provider = SdkTracerProvider::builder()
            .with_span_processor(Bounded {
                inner: batch,
                pending,
                cap: settings.max_queue,
            })
            .with_resource(resource.build())
            .build();
        ON.store(true, Ordering::Relaxed);
        Ok(Self { provider })
    }

    /// The tracer the `tracing` layer writes through.
    pub fn tracer(&self) -> opentelemetry_sdk::trace::Tracer {
        self.provider.tracer("gorgias-proxy")
    }

    /// Sends what is queued, waiting at most `timeout` (a collector that hangs must not hold
    /// the shutdown).
    pub fn shutdown(&self, timeout: Duration) {
        if let Err(e) = self.provider.shutdown_with_timeout(timeout) {
            tracing::warn!(error = %e, "traces queued at shutdown were not all exported");
        }
    }
}

/// In front of the SDK's batch processor: refuses a span when `cap` are already waiting or
/// being exported, and counts it. The SDK's own processor drops silently (its count is
/// private), and an operator needs to see that a collector is down or too slow.
#[derive(Debug)]
struct Bounded {
    inner: BatchSpanProcessor,
    pending: Arc<AtomicUsize>,
    cap: usize,
}

impl SpanProcessor for Bounded {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &opentelemetry::Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        // Taken only while there is room: a failed increment never shows, so spans ending
        // together near the cap are not refused for room that was there.
        let cap = self.cap;
        if self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .is_err()
        {
            crate::metrics::trace_spans_dropped("queue_full", 1);
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// Around the OTLP exporter: each batch's spans stop being pending when its export ends, and a
/// batch the collector did not take (down, refusing, timing out) is counted as dropped.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    pending: Arc<AtomicUsize>,
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        let result = self.inner.export(batch).await;
        self.pending.fetch_sub(n, Ordering::AcqRel);
        if result.is_err() {
            crate::metrics::trace_spans_dropped("export_failed", n as u64);
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

tokio::task_local! {
    /// The trace span of the request or delivery this task serves (the log layer's span is a
    /// different one: see the module docs).
    static CURRENT: tracing::Span;
}

/// The trace span of the request or delivery this task serves; disabled outside one, or when
/// traces are off.
pub fn current() -> tracing::Span {
    CURRENT
        .try_with(Clone::clone)
        .unwrap_or_else(|_| tracing::Span::none())
}

/// Runs `work` in `span`: entered on every poll, and readable by [`current`] (for the
/// `traceparent` stored with a delivery, and for work moved to a task of its own).
pub fn scope<F: Future>(span: tracing::Span, work: F) -> impl Future<Output = F::Output> {
    CURRENT.scope(span.clone(), tracing::Instrument::instrument(work, span))
}

/// The server span of one inbound request, a child of the caller's span when its headers
/// carry a valid `traceparent`. Disabled when traces are off, and for probes and scrapes
/// (`/healthz`, `/readyz`, `/metrics`): a trace every few seconds per replica that says
/// nothing would crowd out the ones that do.
pub fn server_span(
    headers: &axum::http::HeaderMap,
    method: &axum::http::Method,
    route: &'static str,
) -> tracing::Span {
    if !enabled() || matches!(route, "/healthz" | "/readyz" | "/metrics") {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        target: TRACE_TARGET,
        "http.server",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = route,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
    );
    let parent =
        TraceContextPropagator::new().extract(&opentelemetry_http::HeaderExtractor(headers));
    let _ = span.set_parent(parent);
    span
}

/// A delivery attempt's span: a new trace, linked to the span that accepted the delivery
/// (`accepted`, its stored `traceparent`). Disabled when traces are off.
pub fn delivery_span(attempt: u32, accepted: Option<&str>) -> tracing::Span {
    if !enabled() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        target: TRACE_TARGET,
        "delivery.attempt",
        otel.name = "delivery attempt",
        otel.kind = "consumer",
        delivery.attempt = i64::from(attempt),
        otel.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
    );
    // A root: whatever the worker's context, each attempt is its own trace.
    let _ = span.set_parent(opentelemetry::Context::new());
    if let Some(linked) = accepted.and_then(span_context) {
        span.add_link(linked);
    }
    span
}

/// Records an answer on a server span: its status, and for a problem its `code`; a 5xx marks
/// the span failed (a 4xx is the caller's, per OpenTelemetry's HTTP conventions).
pub fn record_answer(span: &tracing::Span, status: u16, problem: Option<&'static str>) {
    if span.is_disabled() {
        return;
    }
    // As i64: tracing-opentelemetry writes unsigned values as strings.
    span.record("http.response.status_code", i64::from(status));
    if let Some(code) = problem {
        span.record("error.type", code);
    }
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
}

/// Records a failure on a span (a delivery attempt's): status error and the problem `code`.
pub fn record_failure(span: &tracing::Span, code: &str) {
    if span.is_disabled() {
        return;
    }
    span.record("error.type", code);
    span.record("otel.status_code", "ERROR");
}

/// The span's W3C `traceparent`, when it is part of a valid trace.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    if span.is_disabled() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.remove("traceparent")
}

/// The span's trace and span ids, in hex, when it is part of a valid trace (for log lines).
pub fn ids(span: &tracing::Span) -> Option<(String, String)> {
    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid()
        .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}

/// Records `trace_id` and `span_id` of `trace` on the log layer's `log` span (declared with
/// both fields empty), so every log line in it carries them.
pub fn stamp(log: &tracing::Span, trace: &tracing::Span) {
    if let Some((trace_id, span_id)) = ids(trace) {
        log.record("trace_id", trace_id.as_str());
        log.record("span_id", span_id.as_str());
    }
}

/// A stored `traceparent` as a span context (for a link); `None` when it does not parse.
fn span_context(traceparent: &str) -> Option<opentelemetry::trace::SpanContext> {
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn traces_are_on_only_with_an_endpoint_and_refuse_what_they_cannot_honour() {
        assert_eq!(Settings::from_env(env(&[])), Ok(None));
        assert_eq!(
            Settings::from_env(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])),
            Ok(None)
        );
        let on = Settings::from_env(env(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://127.0.0.1:4318",
        )]))
        .unwrap()
        .unwrap();
        assert_eq!(on.max_queue, 2048);
        assert!(!on.service_name_set);
        let named = Settings::from_env(env(&[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c/v1/traces"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=prod,service.name=x",
            ),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "16"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!((named.max_queue, named.service_name_set), (16, true));
        for off in [
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ] {
            assert_eq!(
                Settings::from_env(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"), off])),
                Ok(None)
            );
        }
        for bad in [
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
            ("OTEL_TRACES_EXPORTER", "zipkin"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "0"),
        ] {
            let err = Settings::from_env(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"), bad]))
                .unwrap_err();
            assert!(err.contains(bad.0), "{err}");
        }
    }

    #[test]
    fn a_stored_traceparent_becomes_a_link_and_garbage_does_not() {
        let sc = span_context("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(span_context("00-zz-00f067aa0ba902b7-01").is_none());
        assert!(span_context("").is_none());
    }
}
