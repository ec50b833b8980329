//! gorgias-proxy: opens Gorgias support tickets for internal services, so they need not learn
//! Gorgias's API, its rate limits, its customer model or its failure modes.
//!
//! # Layout
//! The workspace's crates are the architecture:
//! - `crates/gorgias`: the typed Gorgias client (auth, typed requests, lenient typed answers,
//!   errors, retries within a deadline, pacing with a pluggable shared budget). No axum.
//! - `crates/gorgias-sim`: the simulator (library + `gorgias-sim` binary). Shares no types with
//!   the client.
//! - this crate, the service. The simulator comes in only with the `sandbox` feature (default).
//!
//! Its modules, from the edge inwards (a module imports only those below it):
//! - [`config`]: every setting, parsed and checked once.
//! - [`telemetry`]: log setup and PII masking.
//! - [`traces`]: OpenTelemetry traces (OTLP export, `traceparent` in and out), off by default.
//! - [`app`]: server build/run around the state, graceful shutdown.
//! - [`state`]: what every handler reaches (accounts, stores, callers, readiness).
//! - [`accounts`]: the Gorgias accounts (the default one and stored connections), each a
//!   cheap handle on its client, use case and rules; shared HTTP pools, a budget per account.
//! - [`callers`]: accepted bearer tokens (as digests) and the caller identity.
//! - [`request_id`]: the current request's id, for answers built far from the handler.
//! - [`server`]: the accept loop, one thread and runtime per core (header-read timeout, header
//!   size limit, graceful drain).
//! - [`http`]: routes, request context middleware, the `POST /ticket` handler.
//! - [`error`]: `ApiError` and its problem+json answers; the status table.
//! - [`domain`]: validated input types (valid by construction).
//! - [`ticketing`]: the create-ticket use case, customer and settings caches, reconciliation.
//! - [`output`]: the seed's output model and its one mapping from `gorgias::Ticket`.
//! - [`delivery`]: the workers that deliver the outbox (retries, backoff, background budget).
//! - [`idempotency`]: `Idempotency-Key` claims and stored answers (memory or Redis).
//! - [`webhooks`]: signed `ticket.delivered` / `ticket.failed` events (Standard Webhooks).
//! - [`outbox`]: the durable outbox behind `Prefer: respond-async` (SQLite), and the status
//!   resource's rows.
//! - [`store`]: the durable database behind the outbox and the idempotency records (SQLite
//!   or PostgreSQL), one set of queries behind one trait.
//! - [`connections`]: stored connections (admin API input, sealed records, answers).
//! - [`secrets`]: AES-256-GCM sealing of connection secrets under `CONNECTIONS_KEY`.
//! - [`coordination`]: what replicas share through Redis (the client's `SharedBudget`, customer
//!   creation).
//! - [`metrics`]: Prometheus metric names and recorders.
//! - [`sandbox`]: `--sandbox`, the simulator inside the process (feature `sandbox`).
//! - [`commands`]: one-shot subcommands (`healthcheck`, the `check` preflight).

#![forbid(unsafe_code)]

pub mod accounts;
pub mod app;
pub mod callers;
pub mod commands;
pub mod config;
pub mod connections;
pub mod coordination;
pub mod delivery;
pub mod domain;
pub mod error;
pub mod http;
pub mod idempotency;
pub mod metrics;
pub mod outbox;
pub mod output;
pub mod request_id;
pub mod sandbox;
pub mod secrets;
pub mod server;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod ticketing;
pub mod traces;
pub mod webhooks;
