//! Any bytes as a `POST /ticket` body: JSON parsing then validation must never panic, and
//! must end in a ticket or a non-empty list of problems.
#![no_main]

use gorgias_proxy::domain::NewTicket;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        match NewTicket::parse(&value) {
            Ok(ticket) => assert!(!ticket.messages.is_empty()),
            Err(problems) => assert!(!problems.errors.is_empty()),
        }
    }
});
