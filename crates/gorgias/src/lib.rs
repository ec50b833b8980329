//! `gorgias`: a typed async client for the [Gorgias](https://www.gorgias.com) helpdesk REST API.
//!
//! It does what every caller of Gorgias has to get right, once:
//! - auth: HTTP Basic with an API key, or an OAuth2 bearer token ([`Auth`]);
//! - typed requests ([`CreateTicket`], [`CreateCustomer`]) and lenient typed answers
//!   ([`Ticket`]): unknown fields ignored, `null` or wrong types read as empty values;
//! - errors classified by what the caller should do ([`GorgiasError`]: retry, reconcile, give up);
//! - retries of safe calls within the caller's deadline, honouring `Retry-After`; creates are
//!   never resent blindly ([`GorgiasError::is_ambiguous`] says when to look before resending);
//! - pacing under the account's call budget ([`Pacer`]), optionally shared between processes
//!   through any store that implements [`SharedBudget`].
//!
//! It knows nothing of any web framework. Upstream reference:
//! <https://developers.gorgias.com/reference>.
//!
//! # Layout
//! - `client`: [`GorgiasClient`], one method per endpoint; [`Auth`], [`RetryPolicy`].
//! - `models`: request and answer shapes.
//! - `lenient`: the serde adapters that read answers leniently without buffering them.
//! - `error`: [`GorgiasError`], [`BuildError`].
//! - `oauth`: the OAuth2 token endpoint ([`OAuthClient`]): code exchange and refresh.
//! - `pacing`: [`Pacer`] and the [`SharedBudget`] trait.
//! - `metrics`: the counters and histograms reported through the `metrics` facade.

#![warn(missing_docs)]

mod client;
mod error;
mod lenient;
mod metrics;
mod models;
mod oauth;
mod pacing;
mod probe;

/// The `tracing` target of the spans and events meant for traces, not logs (a Gorgias call's
/// span, a limiter wait): the service's OpenTelemetry layer takes exactly these, and its log
/// layer none of them.
pub const TRACE_TARGET: &str = "otel";

pub use client::{
    Auth, ClientSettings, GorgiasClient, HttpPools, RetryPolicy, in_background, parse_retry_after,
    reconciling,
};
pub use error::{BuildError, GorgiasError};
pub use models::{
    Assignee, Attachment, CreateCustomer, CreateTicket, Customer, Id, Message, NewAttachment,
    NewChannel, NewCustomField, NewMessage, Person, PersonRef, PhoneHit, Tag, TagRef, Ticket,
    TicketId,
};
pub use oauth::{OAuthClient, SCOPES, TokenError, Tokens};
pub use pacing::{BoxFuture, Budget, BudgetError, Grant, MAX_QUEUE, Pacer, Priority, SharedBudget};
pub use probe::{
    CALL_LIMIT_HEADER, CallLimit, LimitHeader, ListAnswer, ListShape, PROBE_MAX_CALLS, Probe,
    ProbeError,
};
