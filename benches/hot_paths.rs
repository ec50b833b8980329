//! Micro-benchmarks of the per-request pure work: `cargo bench`.
//! Validation of the example body, and decoding + mapping of the recorded Gorgias ticket.

use gorgias_proxy::domain::NewTicket;
use gorgias_proxy::output::Ticket;
use serde_json::Value;

fn main() {
    divan::main();
}

const EXAMPLE: &str = include_str!("../tests/fixtures/ticket-request.example.json");
const RECORDED: &str = include_str!("../tests/fixtures/post-tickets.json");

/// Bytes to validated ticket: what every request pays before any Gorgias call.
#[divan::bench]
fn parse_and_validate_example(bencher: divan::Bencher<'_, '_>) {
    bencher.bench(|| {
        let v: Value = serde_json::from_str(divan::black_box(EXAMPLE)).unwrap_or_default();
        NewTicket::parse(&v).is_ok()
    });
}

fn recorded_bytes() -> Vec<u8> {
    serde_json::to_vec(&serde_json::from_str::<Value>(RECORDED).unwrap_or_default()["body"])
        .unwrap_or_default()
}

/// Gorgias's ticket bytes to our answer bytes, as the request path does it: deserialised once
/// into the client's lenient typed model, mapped once, serialised.
#[divan::bench]
fn decode_map_encode_recorded_ticket(bencher: divan::Bencher<'_, '_>) {
    let wire = recorded_bytes();
    bencher.bench(|| {
        let t: Option<gorgias::Ticket> = serde_json::from_slice(divan::black_box(&wire)).ok();
        t.and_then(|t| Ticket::try_from(t).ok())
            .and_then(|t| serde_json::to_vec(&t).ok())
            .map(|b| b.len())
    });
}

/// The floor: the same bytes through a full `Value` and back, no model at all.
#[divan::bench]
fn decode_encode_recorded_ticket_as_value(bencher: divan::Bencher<'_, '_>) {
    let wire = recorded_bytes();
    bencher.bench(|| {
        let v: Value = serde_json::from_slice(divan::black_box(&wire)).unwrap_or_default();
        serde_json::to_vec(&v).ok().map(|b| b.len())
    });
}

/// Decoding alone, into the client's lenient typed model.
#[divan::bench]
fn decode_recorded_ticket(bencher: divan::Bencher<'_, '_>) {
    let wire = recorded_bytes();
    bencher.bench(|| {
        serde_json::from_slice::<gorgias::Ticket>(divan::black_box(&wire))
            .ok()
            .map(|t| t.messages.map(|m| m.len()))
    });
}

/// The worst bodies up to the 2 MiB limit that validation refuses, as bytes: refusing one must
/// cost at most 100 ms of CPU (it cost 1.5 to 1.9 s before validation stopped collecting).
fn flood(kind: &str) -> Vec<u8> {
    let base = |messages: Value| serde_json::json!({"customer": {"phone_number": "+1 555 0100"}, "ticket": {"messages": messages}});
    let body = match kind {
        "empty attachments" => base(serde_json::json!([{"id": "m", "body_text": "x",
            "body_html": "x", "attachments": vec![serde_json::json!({}); 690_000]}])),
        "valid head, bad tail" => {
            let good = serde_json::json!({"url": "https://example.com/a", "name": "a",
                "size": 1, "content_type": "a/b"});
            let mut attachments = vec![good; 2_500];
            attachments.extend(vec![serde_json::json!({}); 600_000]);
            base(
                serde_json::json!([{"id": "m", "body_text": "x", "body_html": "x",
                "attachments": attachments}]),
            )
        }
        _ => base(Value::Array(
            (0..44_000)
                .map(|_| serde_json::json!({"id": "same", "body_text": "x", "body_html": "x"}))
                .collect(),
        )),
    };
    serde_json::to_vec(&body).unwrap_or_default()
}

/// Bytes to refusal (parse and validate) of a flood near the body limit.
#[divan::bench(args = ["empty attachments", "one shared message id", "valid head, bad tail"], sample_count = 10)]
fn refuse_a_flood(bencher: divan::Bencher<'_, '_>, kind: &str) {
    let bytes = flood(kind);
    assert!(
        bytes.len() <= 2 * 1024 * 1024,
        "{kind}: {} bytes",
        bytes.len()
    );
    bencher.bench(|| {
        let v: Value = serde_json::from_slice(divan::black_box(&bytes)).unwrap_or_default();
        NewTicket::parse(&v).is_err()
    });
}
