//! gorgias-proxy: opens Gorgias support tickets for internal services, so they need not learn
//! Gorgias's API, its rate limits, its customer model or its failure modes.
//!
//! # Layout
//! - [`config`]: every setting, parsed and checked once.
//! - [`telemetry`]: log setup and PII masking.
//! - [`app`]: shared state, server build/run, graceful shutdown.
//! - [`server`]: the accept loop (header-read timeout, header size limit, graceful drain).
//! - [`http`]: routes, request context middleware, the `POST /ticket` handler.
//! - [`error`]: `ApiError` and its problem+json answers; the status table.
//! - [`domain`]: validated input types (valid by construction).
//! - [`ticketing`]: the create-ticket use case, customer and settings caches, reconciliation.
//! - [`gorgias`]: the Gorgias client, wire models, pacing, retries, `GorgiasError`.
//! - [`output`]: the seed's output model and its mapping from Gorgias's ticket.
//! - [`idempotency`]: `Idempotency-Key` claims and stored answers (memory or Redis).
//! - [`coordination`]: what replicas share through Redis (rate limit, customer creation).
//! - [`metrics`]: Prometheus metric names and recorders.
//! - [`sim`]: the in-memory Gorgias simulator (tests, sandbox, benchmarks).

#![forbid(unsafe_code)]

pub mod app;
pub mod config;
pub mod coordination;
pub mod domain;
pub mod error;
pub mod gorgias;
pub mod http;
pub mod idempotency;
pub mod metrics;
pub mod output;
pub mod sandbox;
pub mod server;
pub mod sim;
pub mod telemetry;
pub mod ticketing;
