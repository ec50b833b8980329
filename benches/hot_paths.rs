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
