//! End-to-end tests: the real router on 127.0.0.1:0 against the project's Gorgias simulator
//! (wiremock only where one exact upstream exchange must be scripted). One test binary.

// Test code: a failed unwrap is a failed test, which is what we want.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::type_complexity)]

mod asynchronous;
mod binaries;
mod budget;
mod check;
mod connections;
mod customers;
mod exactly_once;
mod fidelity;
mod helpers;
mod hostile;
mod idempotency;
mod leases;
mod model;
mod operations;
mod options;
mod properties;
mod replicas;
mod resilience;
mod schema_generated;
mod shared_budget;
mod shutdown;
mod ticket;
mod traces;
mod upstream;
mod validation;
