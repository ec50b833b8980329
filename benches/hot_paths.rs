//! Micro-benchmarks of the per-request pure work: `cargo bench`.
//! Validation of the example body, and mapping of the recorded Gorgias ticket to our output.

use gorgias_proxy::domain::NewTicket;
use gorgias_proxy::gorgias::PrunedTicket;
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

/// Gorgias's ticket (already parsed) to our output model.
#[divan::bench]
fn map_recorded_ticket(bencher: divan::Bencher<'_, '_>) {
    let wire: Value = serde_json::from_str::<Value>(RECORDED).unwrap_or_default()["body"].clone();
    bencher.bench(|| Ticket::from_gorgias(divan::black_box(&wire)).is_ok());
}

fn recorded_bytes() -> Vec<u8> {
    serde_json::to_vec(&serde_json::from_str::<Value>(RECORDED).unwrap_or_default()["body"])
        .unwrap_or_default()
}

/// Gorgias's ticket bytes to our answer bytes, as the request path does it (only the model's
/// fields parsed, strings moved).
#[divan::bench]
fn decode_map_encode_recorded_ticket(bencher: divan::Bencher<'_, '_>) {
    let wire = recorded_bytes();
    bencher.bench(|| {
        let pruned: Option<PrunedTicket> = serde_json::from_slice(divan::black_box(&wire)).ok();
        pruned
            .and_then(|p| Ticket::from_gorgias_owned(p.0).ok())
            .and_then(|t| serde_json::to_vec(&t).ok())
            .map(|b| b.len())
    });
}

/// The same through a full `Value` and copied strings (the request path before tuning).
#[divan::bench]
fn decode_map_encode_recorded_ticket_full_value(bencher: divan::Bencher<'_, '_>) {
    let wire = recorded_bytes();
    bencher.bench(|| {
        let v: Value = serde_json::from_slice(divan::black_box(&wire)).unwrap_or_default();
        Ticket::from_gorgias(&v)
            .ok()
            .and_then(|t| serde_json::to_vec(&t).ok())
            .map(|b| b.len())
    });
}
