//! Traces: the real binary exports OTLP/HTTP to a receiver in the test, which decodes what
//! arrives with `opentelemetry-proto`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::Value;

use crate::helpers::{Captured, start_proxy_capturing, start_sim, ticket_for, unique};

/// What a receiver got: each export's raw body, and the spans decoded from it.
#[derive(Clone, Default)]
struct Received {
    raw: Arc<Mutex<Vec<Vec<u8>>>>,
    spans: Arc<Mutex<Vec<Span>>>,
}

impl Received {
    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits (up to 20 s) until `cond` holds over the spans received.
    async fn until(&self, what: &str, cond: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            let spans = self.spans();
            if cond(&spans) {
                return spans;
            }
            assert!(Instant::now() < until, "{what}: got {spans:#?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// An OTLP/HTTP receiver on 127.0.0.1:0; returns its base URL (the exporter adds
/// `/v1/traces`).
async fn receiver() -> (String, Received) {
    let received = Received::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let sink = sink.clone();
            async move {
                let request = ExportTraceServiceRequest::decode(body.as_ref()).unwrap();
                sink.raw.lock().unwrap().push(body.to_vec());
                let mut spans = sink.spans.lock().unwrap();
                for resource in request.resource_spans {
                    for scope in resource.scope_spans {
                        spans.extend(scope.spans);
                    }
                }
                (
                    [("content-type", "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), received)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The value of `key` among a span's (or an event's) attributes.
fn value<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Any> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a Any> {
    value(&span.attributes, key)
}

fn attr_str<'a>(span: &'a Span, key: &str) -> Option<&'a str> {
    match attr(span, key) {
        Some(Any::StringValue(s)) => Some(s),
        _ => None,
    }
}

fn attr_int(span: &Span, key: &str) -> Option<i64> {
    match attr(span, key) {
        Some(Any::IntValue(i)) => Some(*i),
        _ => None,
    }
}

fn attr_bool(span: &Span, key: &str) -> Option<bool> {
    match attr(span, key) {
        Some(Any::BoolValue(b)) => Some(*b),
        _ => None,
    }
}

/// Traces exported every 100 ms to `collector`.
fn traced(collector: &str) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.to_owned()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
        ("OTEL_SERVICE_NAME", "gorgias-proxy-test".to_owned()),
    ]
}

fn start(
    sim_url: &str,
    env: &[(&'static str, String)],
) -> (crate::helpers::Running, String, Captured) {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    start_proxy_capturing(sim_url, &env)
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// `POST /ticket` as a call from the caller's span (`traceparent`), with `headers` besides.
async fn post_in_callers_trace(
    address: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .post(format!("{address}/ticket"))
        .header("traceparent", format!("00-{TRACE_ID}-{CALLER_SPAN}-01"));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.json(body).send().await.unwrap()
}

#[tokio::test]
async fn a_ticket_joins_the_callers_trace_with_a_child_span_per_gorgias_call_and_no_pii() {
    let (collector, received) = receiver().await;
    let (_sim, sim_url) = start_sim(&[]);
    let (_proxy, address, logs) = start(&sim_url, &traced(&collector));
    let phone = "+33612345671";
    let email = format!("{}@example.com", unique("trace"));
    let body_text = unique("a-private-message");
    let mut body = ticket_for(phone, Some(&email));
    body["ticket"]["messages"][0]["body_text"] = body_text.clone().into();
    let resp = post_in_callers_trace(&address, &body, &[("tracestate", "vendor=opaque")]).await;
    assert_eq!(resp.status(), 201);

    let spans = received
        .until("the server span and the ticket create", |spans| {
            spans.iter().any(|s| s.name == "POST /ticket")
                && spans.iter().any(|s| s.name == "POST /api/tickets")
        })
        .await;
    let server = spans.iter().find(|s| s.name == "POST /ticket").unwrap();
    assert_eq!(hex(&server.trace_id), TRACE_ID, "the caller's trace");
    assert_eq!(
        hex(&server.parent_span_id),
        CALLER_SPAN,
        "a child of the caller's span"
    );
    assert_eq!(server.kind, 2, "SPAN_KIND_SERVER");
    assert_eq!(server.trace_state, "vendor=opaque");
    assert_eq!(attr_int(server, "http.response.status_code"), Some(201));
    assert_eq!(attr_str(server, "http.route"), Some("/ticket"));

    // Every Gorgias call of this request: a client span, child of the server span, named by
    // its route template.
    // Outside the caller's trace there is only the start-up's settings read, a trace of its
    // own: every call this request made is in it.
    let elsewhere: Vec<&str> = spans
        .iter()
        .filter(|s| s.name.contains(" /api/") && hex(&s.trace_id) != TRACE_ID)
        .map(|s| s.name.as_str())
        .collect();
    assert!(
        elsewhere.iter().all(|n| *n == "GET /api/account/settings"),
        "{elsewhere:?}"
    );
    let calls: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name.contains(" /api/") && hex(&s.trace_id) == TRACE_ID)
        .collect();
    let names: Vec<&str> = calls.iter().map(|s| s.name.as_str()).collect();
    for expected in ["POST /api/customers", "POST /api/tickets"] {
        assert!(names.contains(&expected), "{names:?}");
    }
    for call in &calls {
        assert_eq!(hex(&call.trace_id), TRACE_ID, "{}", call.name);
        assert_eq!(call.parent_span_id, server.span_id, "{}", call.name);
        assert_eq!(call.kind, 3, "SPAN_KIND_CLIENT: {}", call.name);
        let (verb, template) = call.name.split_once(' ').unwrap();
        assert_eq!(attr_str(call, "http.request.method"), Some(verb));
        assert_eq!(attr_str(call, "url.template"), Some(template));
        assert_eq!(attr_int(call, "gorgias.attempt"), Some(1), "{}", call.name);
        assert_eq!(
            attr_bool(call, "gorgias.reconcile"),
            Some(false),
            "{}",
            call.name
        );
        let status = attr_int(call, "http.response.status_code").unwrap();
        assert!((200..300).contains(&status), "{}: {status}", call.name);
    }
    // The customer was new: looked up, then created, as events on the server span.
    let events: Vec<&str> = server.events.iter().map(|e| e.name.as_str()).collect();
    for expected in ["customer search", "customer create"] {
        assert!(events.contains(&expected), "{events:?}");
    }

    // Nothing personal, nor the key, anywhere in what was exported.
    let exported: Vec<u8> = received.raw.lock().unwrap().concat();
    let exported = String::from_utf8_lossy(&exported);
    for secret in [
        phone,
        "612345671",
        email.as_str(),
        &body_text,
        "sandbox-key",
        "sandbox@example.com",
    ] {
        assert!(!exported.contains(secret), "the export carries {secret}");
    }

    // The request's log lines carry the trace.
    let finished: Value = logs
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["fields"]["message"] == "request finished")
        .unwrap();
    assert_eq!(finished["span"]["trace_id"], TRACE_ID, "{finished}");
    assert_eq!(
        finished["span"]["span_id"],
        hex(&server.span_id),
        "{finished}"
    );
}

#[tokio::test]
async fn an_async_delivery_is_its_own_trace_linked_to_the_accepting_span_and_its_webhook_carries_it()
 {
    let (collector, received) = receiver().await;
    let (_sim, sim_url) = start_sim(&[]);
    // A webhook receiver that keeps each request's traceparent.
    let seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let sink = seen.clone();
    let hook = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(
                    headers
                        .get("traceparent")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned),
                );
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, hook).await.unwrap() });
    let mut env = traced(&collector);
    env.push(("WEBHOOK_URL", hook_url));
    env.push((
        "WEBHOOK_SECRET",
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned(),
    ));
    let (_proxy, address, _logs) = start(&sim_url, &env);

    let key = unique("trace-async");
    let resp = post_in_callers_trace(
        &address,
        &ticket_for("+33612345672", None),
        &[("prefer", "respond-async"), ("idempotency-key", &key)],
    )
    .await;
    assert_eq!(resp.status(), 202);

    let spans = received
        .until(
            "the accepting span and a delivery attempt with its create",
            |spans| {
                spans.iter().any(|s| s.name == "POST /ticket")
                    && spans.iter().any(|s| s.name == "delivery attempt")
                    && spans.iter().any(|s| s.name == "POST /api/tickets")
            },
        )
        .await;
    let accepting = spans.iter().find(|s| s.name == "POST /ticket").unwrap();
    assert_eq!(hex(&accepting.trace_id), TRACE_ID);
    assert_eq!(attr_int(accepting, "http.response.status_code"), Some(202));
    let events: Vec<&str> = accepting.events.iter().map(|e| e.name.as_str()).collect();
    assert!(events.contains(&"idempotency claim"), "{events:?}");
    let delivery = spans.iter().find(|s| s.name == "delivery attempt").unwrap();
    assert_ne!(delivery.trace_id, accepting.trace_id, "a trace of its own");
    assert!(delivery.parent_span_id.is_empty(), "a root span");
    assert_eq!(delivery.links.len(), 1, "{:?}", delivery.links);
    assert_eq!(delivery.links[0].trace_id, accepting.trace_id);
    assert_eq!(delivery.links[0].span_id, accepting.span_id);
    let create = spans
        .iter()
        .find(|s| s.name == "POST /api/tickets" && s.trace_id == delivery.trace_id)
        .unwrap();
    assert_eq!(create.trace_id, delivery.trace_id);
    assert_eq!(create.parent_span_id, delivery.span_id);

    // The webhook carries the delivering attempt's context.
    let until = Instant::now() + Duration::from_secs(20);
    while seen.lock().unwrap().is_empty() {
        assert!(Instant::now() < until, "no webhook arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let traceparent = seen.lock().unwrap()[0].clone().unwrap();
    assert_eq!(
        traceparent,
        format!(
            "00-{}-{}-01",
            hex(&delivery.trace_id),
            hex(&delivery.span_id)
        )
    );
}

/// Posts `n` tickets one after the other; returns the slowest answer's time.
async fn slowest_of(address: &str, n: usize) -> Duration {
    let http = reqwest::Client::new();
    let mut slowest = Duration::ZERO;
    for i in 0..n {
        let started = Instant::now();
        let resp = http
            .post(format!("{address}/ticket"))
            .json(&ticket_for(&format!("+336123457{i:02}"), None))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        slowest = slowest.max(started.elapsed());
    }
    slowest
}

async fn dropped(address: &str, reason: &str) -> f64 {
    let metrics = reqwest::get(format!("{address}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = format!("gorgias_proxy_trace_spans_dropped_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn a_collector_that_is_down_or_hangs_never_slows_a_request_and_drops_are_counted() {
    let (_sim, sim_url) = start_sim(&[]);
    // Down: a port nothing listens on.
    let (_closed, closed_addr) = crate::helpers::closed_port();
    // Hanging: accepts connections, never answers.
    let hanging = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hanging_addr = hanging.local_addr().unwrap();
    let _held = std::thread::spawn(move || {
        let mut open = Vec::new();
        for conn in hanging.incoming().map_while(Result::ok) {
            open.push(conn);
        }
    });
    for (collector, reason) in [
        (format!("http://{closed_addr}"), "export_failed"),
        (format!("http://{hanging_addr}"), "queue_full"),
    ] {
        let mut env = traced(&collector);
        // A queue of 8 spans, and exports that give up after 30 s: a hanging collector fills
        // the queue within a few requests.
        env.push(("OTEL_BSP_MAX_QUEUE_SIZE", "8".to_owned()));
        env.push(("OTEL_EXPORTER_OTLP_TIMEOUT", "30000".to_owned()));
        let (_proxy, address, _logs) = start(&sim_url, &env);
        let slowest = slowest_of(&address, 12).await;
        // The simulator answers in milliseconds; a request that waited on the exporter would
        // take its timeout (30 s), or at least the batch delay.
        assert!(slowest < Duration::from_secs(2), "{collector}: {slowest:?}");
        let until = Instant::now() + Duration::from_secs(20);
        while dropped(&address, reason).await == 0.0 {
            assert!(
                Instant::now() < until,
                "{collector}: no {reason} drop counted"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test]
async fn a_create_of_unknown_outcome_is_reconciled_in_the_trace_and_limiter_waits_are_events() {
    let (collector, received) = receiver().await;
    // Every ticket create is stored, then its answer lost: the service settles, then finds the
    // ticket by `external_id`.
    let (_sim, sim_url) = start_sim(&[
        "--rate-limit",
        "off",
        "--fail-after-commit",
        "1.0",
        "--fail-after-commit-mode",
        "drop",
    ]);
    let mut env = traced(&collector);
    env.push(("GORGIAS_SETTLE_SECS", "1".to_owned()));
    // 3 calls at once, then one every 2/3 s: this request's later calls wait their turn.
    env.push(("GORGIAS_RATE_LIMIT", "4/2s".to_owned()));
    let (_proxy, address, _logs) = start(&sim_url, &env);
    let resp = post_in_callers_trace(&address, &ticket_for("+33612345673", None), &[]).await;
    assert_eq!(resp.status(), 201);
    let spans = received
        .until("the failed create and the reconcile lookup", |spans| {
            spans.iter().any(|s| s.name == "POST /ticket")
                && spans.iter().any(|s| s.name == "GET /api/tickets")
        })
        .await;
    let in_trace = |name: &str| -> Vec<&Span> {
        spans
            .iter()
            .filter(|s| s.name == name && hex(&s.trace_id) == TRACE_ID)
            .collect()
    };
    let create = in_trace("POST /api/tickets");
    assert_eq!(create.len(), 1, "sent once: {create:?}");
    let status = create[0].status.as_ref().unwrap();
    assert_eq!(status.code, 2, "STATUS_CODE_ERROR: the answer was lost");
    assert_eq!(attr_str(create[0], "error.type"), Some("connection_lost"));
    assert_eq!(attr_bool(create[0], "gorgias.reconcile"), Some(false));
    let lookup = in_trace("GET /api/tickets");
    assert_eq!(lookup.len(), 1, "{lookup:?}");
    assert_eq!(attr_bool(lookup[0], "gorgias.reconcile"), Some(true));
    assert_eq!(attr_int(lookup[0], "http.response.status_code"), Some(200));
    // Some call of this request waited for the limiter, and says for how long.
    let waits: Vec<i64> = spans
        .iter()
        .filter(|s| hex(&s.trace_id) == TRACE_ID)
        .flat_map(|s| &s.events)
        .filter(|e| e.name == "limiter wait")
        .filter_map(|e| match value(&e.attributes, "wait_ms") {
            Some(Any::IntValue(i)) => Some(*i),
            _ => None,
        })
        .collect();
    assert!(waits.iter().any(|ms| *ms > 0), "{waits:?}");
}
