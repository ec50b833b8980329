//! Everything about talking to Gorgias: the client, its wire models, pacing and errors.
//!
//! Upstream reference: <https://developers.gorgias.com/reference>.

mod client;
mod error;
pub(crate) mod models;
mod pacing;

pub use client::{Auth, ClientSettings, GorgiasClient, RetryPolicy, parse_retry_after};
pub use error::GorgiasError;
pub use models::{Customer, PhoneHit, PrunedTicket, WireTicket};
pub use pacing::Pacer;
