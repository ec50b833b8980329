//! Micro-benchmarks of the per-request pure work: `cargo bench`.
//! Validation of the example body, and mapping of the recorded Gorgias ticket to our output.

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

/// Gorgias's ticket (already parsed) to our output model.
#[divan::bench]
fn map_recorded_ticket(bencher: divan::Bencher<'_, '_>) {
    let wire: Value = serde_json::from_str::<Value>(RECORDED).unwrap_or_default()["body"].clone();
    bencher.bench(|| Ticket::from_gorgias(divan::black_box(&wire)).is_ok());
}

/// Gorgias's ticket bytes to our answer bytes: the whole response path.
#[divan::bench]
fn decode_map_encode_recorded_ticket(bencher: divan::Bencher<'_, '_>) {
    let wire =
        serde_json::to_vec(&serde_json::from_str::<Value>(RECORDED).unwrap_or_default()["body"])
            .unwrap_or_default();
    bencher.bench(|| {
        let v: Value = serde_json::from_slice(divan::black_box(&wire)).unwrap_or_default();
        Ticket::from_gorgias(&v)
            .ok()
            .and_then(|t| serde_json::to_vec(&t).ok())
            .map(|b| b.len())
    });
}
