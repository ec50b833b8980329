//! Validated input: values of these types are valid by construction.
//!
//! The only way in is [`NewTicket::parse`], which validates the caller's JSON against the
//! request schema derived from the DTOs in [`request`] (the same schema `openapi.json`
//! publishes), reports every problem it finds with the JSON path of the field at fault, then
//! converts. The use case accepts only these types, so nothing downstream re-checks.

mod error;
pub mod request;
mod values;

pub use error::{FieldError, Problem, ValidationErrors};
pub use values::{
    Attachment, ContentType, CustomField, Email, HttpUrl, MessageId, NewMessage, NewTicket,
    PhoneNumber, StoredTicket, TicketOptions, normalize_phone,
};

/// Bounds of the inbound contract, shared by validation and the OpenAPI document so the two
/// cannot drift.
pub mod limits {
    /// Most characters in a phone number, after trimming.
    pub const PHONE_MAX_CHARS: usize = 32;
    /// Fewest digits a phone number must carry.
    pub const PHONE_MIN_DIGITS: usize = 5;
    /// Most characters in an email address (RFC 5321 path limit, Gorgias's channel limit).
    pub const EMAIL_MAX_CHARS: usize = 320;
    /// Most messages in one ticket (Gorgias's own bound on ticket creation).
    pub const MESSAGES_MAX: usize = 500;
    /// Most characters in a message id (it becomes Gorgias's message `external_id`).
    pub const MESSAGE_ID_MAX_CHARS: usize = 255;
    /// Most characters in an attachment name.
    pub const ATTACHMENT_NAME_MAX_CHARS: usize = 255;
    /// Most characters in an attachment URL (a sane bound; Gorgias stores it verbatim).
    pub const URL_MAX_CHARS: usize = 2048;
    /// Largest attachment size accepted: 2^53 - 1, the largest integer every JSON parser
    /// reads exactly.
    pub const ATTACHMENT_SIZE_MAX: u64 = 9_007_199_254_740_991;
    /// Most characters in a content type.
    pub const CONTENT_TYPE_MAX_CHARS: usize = 255;
    /// The characters a phone number may hold besides digits.
    pub const PHONE_PUNCTUATION: &str = " +-().";
}
