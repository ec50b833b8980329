//! One newtype per constrained input. Their constructors are `pub(crate)` and called only by
//! the conversion from the request DTOs (`request.rs`), after the request schema has accepted
//! the body: values of these types are valid by construction.
//!
//! They also (de)serialise, as the *stored form* of an accepted asynchronous request (see
//! [`StoredTicket`]): the outbox keeps the validated, normalised ticket and its delivery sends
//! exactly that, whatever the rules are by then. Deserialising does not validate, so only rows
//! this service wrote are read that way.

use serde::{Deserialize, Serialize};

/// A customer's phone number as the caller gave it (trimmed), plus its comparison form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub struct PhoneNumber {
    raw: String,
    normalized: String,
}

impl PhoneNumber {
    /// Keeps the number as sent, less surrounding spaces, and its normalised form. The schema
    /// has checked its alphabet, length and digit count.
    pub(crate) fn new(input: &str) -> Self {
        let raw = input.trim_matches(' ');
        Self {
            raw: raw.to_owned(),
            normalized: normalize_phone(raw),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Digits only, a leading `+` kept: what two numbers are compared by.
    pub fn normalized(&self) -> &str {
        &self.normalized
    }
}

impl From<String> for PhoneNumber {
    fn from(raw: String) -> Self {
        Self::new(&raw)
    }
}

impl From<PhoneNumber> for String {
    fn from(p: PhoneNumber) -> Self {
        p.raw
    }
}

/// Digits only, with a leading `+` kept, so `+33 6 12-34` and `+336 1234` compare equal while
/// `+336…` and `0336…` (different numbers for Gorgias) do not.
pub fn normalize_phone(input: &str) -> String {
    let trimmed = input.trim_start();
    let mut out = String::with_capacity(trimmed.len());
    if trimmed.starts_with('+') {
        out.push('+');
    }
    out.extend(trimmed.chars().filter(char::is_ascii_digit));
    out
}

/// A plausible email address: one `@`, a non-empty local part, a domain with a dot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    /// Wraps a value the request schema has accepted.
    pub(crate) fn new(input: String) -> Self {
        Self(input)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A caller's message id: non-empty, at most 255 characters, unique within its ticket.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageId(String);

impl MessageId {
    /// Wraps a value the request schema has accepted.
    pub(crate) fn new(input: String) -> Self {
        Self(input)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An absolute `http` or `https` URL with a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct HttpUrl(String);

impl HttpUrl {
    /// Wraps a value the request schema has accepted.
    pub(crate) fn new(input: String) -> Self {
        Self(input)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A media type of the form `type/subtype`, optionally with parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ContentType(String);

impl ContentType {
    /// Wraps a value the request schema has accepted.
    pub(crate) fn new(input: String) -> Self {
        Self(input)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A file hosted elsewhere that the message refers to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// Where Gorgias (and agents) fetch it.
    pub url: HttpUrl,
    /// File name shown to agents, 1..=255 characters.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Its media type.
    pub content_type: ContentType,
}

/// One message of the new ticket, from the customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewMessage {
    /// The caller's id, sent to Gorgias as the message `external_id`.
    pub id: MessageId,
    /// Plain-text body (may be blank when `body_html` is not).
    pub body_text: String,
    /// HTML body (may be blank when `body_text` is not).
    pub body_html: String,
    /// Hosted files.
    pub attachments: Vec<Attachment>,
}

/// A ticket to open, valid by construction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewTicket {
    /// The customer's phone number.
    pub phone: PhoneNumber,
    /// The customer's email, when the caller knows it.
    pub email: Option<Email>,
    /// The customer's name, sent only when the customer is created (not used for lookup).
    pub name: Option<String>,
    /// 1..=500 messages with distinct ids.
    pub messages: Vec<NewMessage>,
    /// Optional ticket fields the caller asked for.
    pub options: TicketOptions,
}

/// What callers may set beyond the seed's contract; every field optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketOptions {
    /// The ticket's subject.
    pub subject: Option<String>,
    /// Tag names, duplicates removed, in the caller's order.
    pub tags: Vec<String>,
    /// One of Gorgias's priority values.
    pub priority: Option<String>,
    /// Custom field values, each field id once.
    pub custom_fields: Vec<CustomField>,
    /// The caller's own references (at most 4 KiB serialised), returned in the answer's `meta`.
    pub meta: Option<serde_json::Map<String, serde_json::Value>>,
}

/// A value for one of the account's ticket custom fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomField {
    /// The custom field definition's id.
    pub id: u64,
    /// A string, number or boolean.
    pub value: serde_json::Value,
}

/// The stored form of an accepted ticket: the validated, normalised [`NewTicket`] in a
/// versioned envelope, so a later change of the rules or of this type's shape can still read
/// what was accepted under the old ones.
#[derive(Debug, Serialize, Deserialize)]
pub struct StoredTicket {
    /// The envelope's version (1).
    pub v: u32,
    /// The ticket as validated at acceptance.
    pub ticket: NewTicket,
}

impl StoredTicket {
    /// The envelope's current version.
    pub const VERSION: u32 = 1;

    /// The stored bytes of `ticket`.
    ///
    /// # Errors
    /// Never in practice (plain data); kept typed rather than unwrapped.
    pub fn encode(ticket: &NewTicket) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(&StoredTicketRef {
            v: Self::VERSION,
            ticket,
        })
    }

    /// The ticket stored in `bytes`, when they are this envelope (rows written before it
    /// existed hold the caller's raw body instead: `None`).
    pub fn decode(bytes: &[u8]) -> Option<NewTicket> {
        serde_json::from_slice::<Self>(bytes)
            .ok()
            .filter(|s| s.v == Self::VERSION)
            .map(|s| s.ticket)
    }
}

#[derive(Serialize)]
struct StoredTicketRef<'a> {
    v: u32,
    ticket: &'a NewTicket,
}
