//! Gorgias's shapes, both ways.
//!
//! - **Requests** are plain typed structs that borrow their strings, serialised once.
//! - **Answers** are lenient typed models, deserialised once: unknown fields are ignored, and a
//!   field that is `null`, absent or of the wrong type becomes its empty value (`""`, `0`,
//!   `false`, `[]`, `None`) instead of failing the whole answer. A ticket Gorgias created must
//!   never be lost to a model that was too strict.
//!
//! Shapes follow the recorded exchanges (`tests/fixtures/`, and `gorgias-api.md` §11 for what
//! live answers of 2026 add).

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Number, Value};
use serde_with::serde_as;

use crate::lenient::{Lenient, ObjectList, Present};

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// A person named by a ticket (`customer`) or a message (`sender`): an id, and the email when
/// known. Gorgias has no phone field here: a phone-only caller needs a customer id first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PersonRef<'a> {
    /// The customer's id.
    pub id: u64,
    /// The customer's email, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<&'a str>,
}

/// A channel of a customer to create (`POST /api/customers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct NewChannel<'a> {
    /// `email` or `phone` (or another channel slug).
    #[serde(rename = "type")]
    pub kind: &'a str,
    /// The address, as Gorgias will store it (it does not normalise phone numbers, as far as
    /// the recordings show).
    pub address: &'a str,
    /// Whether it is the preferred channel of its type.
    pub preferred: bool,
}

/// `POST /api/customers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CreateCustomer<'a> {
    /// The primary email.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<&'a str>,
    /// The full name; Gorgias splits it into `firstname`/`lastname` on the last space.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    /// Contact channels.
    pub channels: Vec<NewChannel<'a>>,
}

impl<'a> CreateCustomer<'a> {
    /// A customer known by a phone number and, when given, an email (both preferred).
    pub fn with_phone(phone: &'a str, email: Option<&'a str>) -> Self {
        let mut channels = Vec::with_capacity(2);
        if let Some(address) = email {
            channels.push(NewChannel {
                kind: "email",
                address,
                preferred: true,
            });
        }
        channels.push(NewChannel {
            kind: "phone",
            address: phone,
            preferred: true,
        });
        Self {
            email,
            name: None,
            channels,
        }
    }
}

/// An attachment of a new message: a hosted file Gorgias links to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewAttachment<'a> {
    /// Where the file is.
    pub url: &'a str,
    /// File name shown to agents.
    pub name: &'a str,
    /// Size in bytes.
    pub size: u64,
    /// MIME type.
    pub content_type: &'a str,
}

/// A message of `POST /api/tickets`.
///
/// Its `channel` must not be `email` unless a full `source` envelope is sent too: the live API
/// refuses email-channel messages without one (`gorgias-api.md` §11).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewMessage<'a> {
    /// The message's channel (`phone` is what the live API accepts without a `source`).
    pub channel: &'a str,
    /// How it came in; `api` for messages created through the API.
    pub via: &'a str,
    /// `false`: the customer wrote it.
    pub from_agent: bool,
    /// Who wrote it (required for incoming messages).
    pub sender: PersonRef<'a>,
    /// The caller's message id (at most 255 characters).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<&'a str>,
    /// Plain text body.
    pub body_text: &'a str,
    /// HTML body.
    pub body_html: &'a str,
    /// Hosted files.
    pub attachments: Vec<NewAttachment<'a>>,
}

/// `POST /api/tickets`. No `created_datetime`/`opened_datetime`: Gorgias stamps them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CreateTicket<'a> {
    /// The customer the ticket is about.
    pub customer: PersonRef<'a>,
    /// The ticket channel.
    pub channel: &'a str,
    /// How the first message came in.
    pub via: &'a str,
    /// `false`: opened by the customer.
    pub from_agent: bool,
    /// Our idempotency marker (at most 255 characters): after a create of unknown outcome the
    /// ticket is looked up by it before anything is sent again.
    pub external_id: &'a str,
    /// 1 to 500 messages.
    pub messages: Vec<NewMessage<'a>>,
    /// The subject (at most 998 characters).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<&'a str>,
    /// Tags, by name (Gorgias creates a tag it does not know yet).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<TagRef<'a>>,
    /// `critical`, `high`, `normal` or `low`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<&'a str>,
    /// Values of the account's ticket custom fields.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub custom_fields: Vec<NewCustomField<'a>>,
    /// Free key-value data, returned in the ticket's `meta`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<&'a Map<String, Value>>,
}

/// A tag named on a new ticket: `{"name": ...}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TagRef<'a> {
    /// The tag's name (case sensitive).
    pub name: &'a str,
}

/// A ticket custom field value on creation: `{"id": <field definition id>, "value": ...}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct NewCustomField<'a> {
    /// The custom field definition's id.
    pub id: u64,
    /// Its value (a string, number or boolean).
    pub value: &'a Value,
}

/// `POST /api/search` body.
#[derive(Debug, Serialize)]
pub(crate) struct SearchQuery<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub query: &'a str,
    pub size: u32,
}

// ---------------------------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------------------------

/// A customer as the client reports it: its id and, when Gorgias knows one, its email.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customer {
    /// Gorgias's customer id.
    pub id: u64,
    /// Primary email, when set.
    #[serde(default)]
    #[serde_as(deserialize_as = "Lenient")]
    pub email: Option<String>,
}

/// A list envelope `{data: [...], object: "list", uri, meta}`; only `data` matters to us.
/// Items that cannot be read are skipped, not fatal.
#[derive(Debug)]
pub(crate) struct List<T>(pub Vec<T>);

impl<'de, T: serde::de::DeserializeOwned> Deserialize<'de> for List<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// `POST /api/search` answers `{data: [...]}` live; one client is known to read a bare
        /// array too, so both are accepted.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Shape {
            Envelope {
                #[serde(default)]
                data: Option<Vec<Value>>,
            },
            Bare(Vec<Value>),
        }
        let items = match Shape::deserialize(d)? {
            Shape::Envelope { data } => data.unwrap_or_default(),
            Shape::Bare(items) => items,
        };
        Ok(List(
            items
                .into_iter()
                .filter_map(|v| T::deserialize(v).ok())
                .collect(),
        ))
    }
}

/// One hit of a `customer_channel_phone` search: a phone address and the customer owning it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhoneHit {
    /// The channel's address as Gorgias stores it.
    pub address: String,
    /// The customer that owns the channel.
    pub customer_id: u64,
}

/// A search item: a channel record `{address, customer: {id}}`, or a customer-shaped item
/// `{id, channels: [...]}` as other search types return. The item shape of
/// `customer_channel_phone` is not recorded live, so both are read.
#[serde_as]
#[derive(Debug, Deserialize)]
pub(crate) struct SearchItem {
    #[serde(default)]
    #[serde_as(as = "Lenient")]
    address: Option<String>,
    #[serde(default)]
    #[serde_as(as = "Lenient")]
    customer: Option<IdOnly>,
    #[serde(default)]
    #[serde_as(as = "Lenient")]
    id: Option<Id>,
    #[serde(default)]
    #[serde_as(as = "ObjectList")]
    channels: Vec<ChannelItem>,
}

#[serde_as]
#[derive(Debug, Deserialize)]
struct IdOnly {
    #[serde(default)]
    #[serde_as(as = "Lenient")]
    id: Option<Id>,
}

#[serde_as]
#[derive(Debug, Deserialize)]
struct ChannelItem {
    #[serde(rename = "type", default)]
    #[serde_as(as = "Lenient")]
    kind: String,
    #[serde(default)]
    #[serde_as(as = "Lenient")]
    address: Option<String>,
}

impl SearchItem {
    /// The phone hits this item names (none when it names nothing we can read).
    pub(crate) fn into_hits(self) -> Vec<PhoneHit> {
        if let (Some(address), Some(IdOnly { id: Some(id) })) = (self.address, self.customer) {
            return vec![PhoneHit {
                address,
                customer_id: id.0,
            }];
        }
        let Some(Id(customer_id)) = self.id else {
            return Vec::new();
        };
        self.channels
            .into_iter()
            .filter(|c| c.kind == "phone")
            .filter_map(|c| c.address)
            .map(|address| PhoneHit {
                address,
                customer_id,
            })
            .collect()
    }
}

/// `GET /api/account/settings`: a list of typed settings; only `ticket-assignment` is read.
/// New setting types appear (`auto-split`, `default-integration`), so unknown ones are skipped.
#[serde_as]
#[derive(Debug, Deserialize)]
pub(crate) struct Settings {
    #[serde(default)]
    #[serde_as(as = "ObjectList")]
    data: Vec<Setting>,
}

#[serde_as]
#[derive(Debug, Deserialize)]
struct Setting {
    #[serde(rename = "type", default)]
    #[serde_as(as = "Lenient")]
    kind: String,
    #[serde(default)]
    data: Value,
}

impl Settings {
    /// The channels whose tickets Gorgias auto-assigns (`ticket-assignment` setting).
    pub(crate) fn assignment_channels(self) -> Vec<String> {
        self.data
            .into_iter()
            .filter(|s| s.kind == "ticket-assignment")
            .filter_map(|s| match s.data {
                Value::Object(mut m) => m.remove("assignment_channels"),
                _ => None,
            })
            .filter_map(|v| match v {
                Value::Array(a) => Some(a),
                _ => None,
            })
            .flatten()
            .filter_map(|v| match v {
                Value::String(s) => Some(s),
                _ => None,
            })
            .collect()
    }
}

/// Gorgias's error body `{"error": {"msg": ..., "data": {...}}}`, read leniently.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ErrorBody {
    #[serde(default)]
    pub error: Option<ErrorInner>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ErrorInner {
    #[serde(default)]
    pub msg: Option<Value>,
    #[serde(default)]
    pub data: Option<Value>,
}

/// A Gorgias id: a number, or a numeric string (an id sent as a string is still an id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Id(pub u64);

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Id;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an id")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Id, E> {
                Ok(Id(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Id, E> {
                u64::try_from(v)
                    .map(Id)
                    .map_err(|_| E::custom("negative id"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Id, E> {
                v.trim()
                    .parse()
                    .map(Id)
                    .map_err(|_| E::custom("not a numeric id"))
            }
        }
        d.deserialize_any(V)
    }
}

/// A ticket's id as Gorgias sent it: always a number in the recordings; a non-empty string is
/// kept as it is rather than losing a ticket that exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketId(String);

impl TicketId {
    /// The id as text (what our callers get).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id as a number, for `GET /api/tickets/{id}`.
    pub fn as_u64(&self) -> Option<u64> {
        self.0.parse().ok()
    }
}

impl From<TicketId> for String {
    fn from(id: TicketId) -> Self {
        id.0
    }
}

impl<'de> Deserialize<'de> for TicketId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = TicketId;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a ticket id")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<TicketId, E> {
                Ok(TicketId(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<TicketId, E> {
                Ok(TicketId(v.to_string()))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<TicketId, E> {
                if v.is_empty() {
                    return Err(E::custom("empty id"));
                }
                Ok(TicketId(v.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A ticket as Gorgias returns it (create, get, or an abridged list item).
///
/// Every field is lenient (see the module docs). `messages` is `None` when Gorgias did not send
/// a list: list items of `GET /api/tickets` are abridged (no `messages`, but `messages_count`
/// and `excerpt`), so the full ticket must then be fetched.
#[serde_as]
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Ticket {
    /// Gorgias's id; `None` only when the answer had no readable id.
    #[serde_as(as = "Lenient")]
    pub id: Option<TicketId>,
    /// The assigned agent.
    #[serde_as(as = "Lenient")]
    pub assignee_user: Option<Assignee>,
    /// The ticket channel (any string: unknown slugs pass through).
    #[serde_as(as = "Lenient")]
    pub channel: String,
    /// When it was closed.
    #[serde_as(as = "Lenient")]
    pub closed_datetime: Option<String>,
    /// When it was created.
    #[serde_as(as = "Lenient")]
    pub created_datetime: Option<String>,
    /// A short excerpt (list items); `None` when absent.
    #[serde_as(as = "Lenient")]
    pub excerpt: Option<String>,
    /// Our idempotency marker, when set.
    #[serde_as(as = "Lenient")]
    pub external_id: Option<String>,
    /// Opened by an agent.
    #[serde_as(as = "Lenient")]
    pub from_agent: bool,
    /// Integrations (list items): absent → `None`; present but not a list → `Some(None)`.
    #[serde_as(as = "Present")]
    pub integrations: Option<Option<Vec<Value>>>,
    /// Unread by agents.
    #[serde_as(as = "Lenient")]
    pub is_unread: bool,
    /// Detected language.
    #[serde_as(as = "Lenient")]
    pub language: Option<String>,
    /// Last message time.
    #[serde_as(as = "Lenient")]
    pub last_message_datetime: Option<String>,
    /// Last message received from the customer.
    #[serde_as(as = "Lenient")]
    pub last_received_message_datetime: Option<String>,
    /// How many messages (list items).
    #[serde_as(as = "Lenient")]
    pub messages_count: Option<Number>,
    /// The messages; `None` when Gorgias sent no list (an abridged list item). An item that is
    /// not a message object reads as an empty message rather than losing the ticket.
    #[serde_as(as = "Lenient<Option<Vec<Lenient>>>")]
    pub messages: Option<Vec<Message>>,
    /// Free key-value data.
    #[serde_as(as = "Lenient")]
    pub meta: Option<Map<String, Value>>,
    /// When an agent opened it (`null` on create, live).
    #[serde_as(as = "Lenient")]
    pub opened_datetime: Option<String>,
    /// Snoozed until.
    #[serde_as(as = "Lenient")]
    pub snooze_datetime: Option<String>,
    /// `open`, `closed`, or any new value.
    #[serde_as(as = "Lenient")]
    pub status: String,
    /// `normal` and others.
    #[serde_as(as = "Lenient")]
    pub priority: Option<String>,
    /// The subject.
    #[serde_as(as = "Lenient")]
    pub subject: Option<String>,
    /// Tags; items that are not objects are skipped.
    #[serde_as(as = "ObjectList")]
    pub tags: Vec<Tag>,
    /// Spam flag.
    #[serde_as(as = "Lenient")]
    pub spam: Option<bool>,
    /// When it was trashed.
    #[serde_as(as = "Lenient")]
    pub trashed_datetime: Option<String>,
    /// Last update.
    #[serde_as(as = "Lenient")]
    pub updated_datetime: Option<String>,
    /// How it came in.
    #[serde_as(as = "Lenient")]
    pub via: String,
    /// Its API path.
    #[serde_as(as = "Lenient")]
    pub uri: String,
}

/// A message of a ticket.
#[serde_as]
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Message {
    /// Gorgias's id (0 when unreadable).
    #[serde_as(as = "Lenient")]
    pub id: Id,
    /// Its API path.
    #[serde_as(as = "Lenient")]
    pub uri: String,
    /// Email `Message-ID`, when any.
    #[serde_as(as = "Lenient")]
    pub message_id: Option<String>,
    /// The integration it came through.
    #[serde_as(as = "Lenient")]
    pub integration_id: Option<Id>,
    /// The rule that wrote it.
    #[serde_as(as = "Lenient")]
    pub rule_id: Option<Id>,
    /// The caller's message id, when sent.
    #[serde_as(as = "Lenient")]
    pub external_id: Option<String>,
    /// Its ticket.
    #[serde_as(as = "Lenient")]
    pub ticket_id: Id,
    /// Its channel.
    #[serde_as(as = "Lenient")]
    pub channel: String,
    /// How it came in (`api` when not sent).
    #[serde_as(as = "Lenient")]
    pub via: String,
    /// Subject.
    #[serde_as(as = "Lenient")]
    pub subject: Option<String>,
    /// Plain text body.
    #[serde_as(as = "Lenient")]
    pub body_text: Option<String>,
    /// HTML body (`null` when not sent, live).
    #[serde_as(as = "Lenient")]
    pub body_html: Option<String>,
    /// Text without quotes.
    #[serde_as(as = "Lenient")]
    pub stripped_text: Option<String>,
    /// HTML without quotes.
    #[serde_as(as = "Lenient")]
    pub stripped_html: Option<String>,
    /// The signature Gorgias detected.
    #[serde_as(as = "Lenient")]
    pub stripped_signature: Option<String>,
    /// Visible to the customer.
    #[serde_as(as = "Lenient")]
    pub public: bool,
    /// Written by an agent.
    #[serde_as(as = "Lenient")]
    pub from_agent: bool,
    /// Who wrote it.
    #[serde_as(as = "Lenient")]
    pub sender: Option<Person>,
    /// Who receives it.
    #[serde_as(as = "Lenient")]
    pub receiver: Option<Person>,
    /// Files (`null` when none were sent, live); unreadable items are skipped.
    #[serde_as(as = "ObjectList")]
    pub attachments: Vec<Attachment>,
    /// Free key-value data.
    #[serde_as(as = "Lenient")]
    pub meta: Option<Map<String, Value>>,
    /// Email headers.
    #[serde_as(as = "Lenient")]
    pub headers: Option<Map<String, Value>>,
    /// Actions run.
    #[serde_as(as = "Lenient")]
    pub actions: Option<Vec<Value>>,
    /// Macros applied.
    #[serde_as(as = "Lenient")]
    pub macros: Option<Vec<Value>>,
    /// Created.
    #[serde_as(as = "Lenient")]
    pub created_datetime: Option<String>,
    /// Opened by the recipient.
    #[serde_as(as = "Lenient")]
    pub opened_datetime: Option<String>,
    /// Failed to send.
    #[serde_as(as = "Lenient")]
    pub failed_datetime: Option<String>,
    /// Why sending failed.
    #[serde_as(as = "Lenient")]
    pub last_sending_error: Option<Map<String, Value>>,
    /// Deleted.
    #[serde_as(as = "Lenient")]
    pub deleted_datetime: Option<String>,
    /// Absent → `None`; present → `Some(value or None)`.
    #[serde_as(as = "Present")]
    pub replied_by: Option<Option<String>>,
    /// Absent → `None`; present → `Some(value or None)`.
    #[serde_as(as = "Present")]
    pub replied_to: Option<Option<String>>,
}

/// A sender, receiver or customer as tickets embed them.
#[serde_as]
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Person {
    /// Gorgias's id.
    #[serde_as(as = "Lenient")]
    pub id: Id,
    /// First name (`""` when unset).
    #[serde_as(as = "Lenient")]
    pub firstname: String,
    /// Last name.
    #[serde_as(as = "Lenient")]
    pub lastname: String,
    /// Free key-value data.
    #[serde_as(as = "Lenient")]
    pub meta: Option<Map<String, Value>>,
    /// Email.
    #[serde_as(as = "Lenient")]
    pub email: Option<String>,
    /// Full name.
    #[serde_as(as = "Lenient")]
    pub name: Option<String>,
}

/// The assigned agent.
#[serde_as]
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Assignee {
    /// Gorgias's id.
    #[serde_as(as = "Lenient")]
    pub id: Id,
    /// First name.
    #[serde_as(as = "Lenient")]
    pub firstname: String,
    /// Last name.
    #[serde_as(as = "Lenient")]
    pub lastname: String,
    /// Free key-value data.
    #[serde_as(as = "Lenient")]
    pub meta: Option<Map<String, Value>>,
    /// Email.
    #[serde_as(as = "Lenient")]
    pub email: String,
    /// Full name.
    #[serde_as(as = "Lenient")]
    pub name: String,
    /// Bio.
    #[serde_as(as = "Lenient")]
    pub bio: Option<String>,
}

/// A file attached to a message.
#[serde_as]
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Attachment {
    /// Where it is.
    #[serde_as(as = "Lenient")]
    pub url: String,
    /// File name.
    #[serde_as(as = "Lenient")]
    pub name: String,
    /// Size in bytes, as Gorgias wrote it.
    #[serde_as(as = "Lenient")]
    pub size: Option<Number>,
    /// MIME type.
    #[serde_as(as = "Lenient")]
    pub content_type: String,
    /// Public link; Gorgias echoes `true` for hosted URLs, and absent means that default.
    #[serde_as(as = "Lenient")]
    pub public: Option<bool>,
    /// Extra data.
    #[serde_as(as = "Lenient")]
    pub extra: Option<String>,
}

/// A tag on a ticket.
#[serde_as]
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Tag {
    /// Gorgias's id.
    #[serde_as(as = "Lenient")]
    pub id: Id,
    /// The tag's name.
    #[serde_as(as = "Lenient")]
    pub name: String,
    /// Its API path.
    #[serde_as(as = "Lenient")]
    pub uri: Option<String>,
    /// Colour and such.
    #[serde_as(as = "Lenient")]
    pub decoration: Option<Map<String, Value>>,
    /// Created.
    #[serde_as(as = "Lenient")]
    pub created_datetime: Option<String>,
    /// Absent → `None`; present → `Some(value or None)`.
    #[serde_as(as = "Present")]
    pub deleted_datetime: Option<Option<String>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fixture(name: &str) -> Value {
        let text = std::fs::read_to_string(format!(
            "{}/../../tests/fixtures/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        serde_json::from_str::<Value>(&text).unwrap()["body"].clone()
    }

    #[test]
    fn odd_settings_items_are_skipped_not_fatal() {
        let s: Settings = serde_json::from_str(
            r#"{"data": ["x", null, {"type": "ticket-assignment", "type": "dup"},
                         {"type": "ticket-assignment", "data": {"assignment_channels": ["sms"]}}]}"#,
        )
        .unwrap();
        assert_eq!(s.assignment_channels(), vec!["sms".to_owned()]);
    }

    #[test]
    fn a_search_item_with_an_odd_customer_or_channel_keeps_what_it_can() {
        let item: SearchItem = serde_json::from_str(
            r#"{"id": 7, "address": "1", "customer": {"id": "abc"},
                "channels": ["x", {"type": "phone", "address": "0719908543"}]}"#,
        )
        .unwrap();
        assert_eq!(
            item.into_hits(),
            vec![PhoneHit {
                address: "0719908543".into(),
                customer_id: 7
            }]
        );
    }

    #[test]
    fn recorded_settings_name_sms_among_assignment_channels() {
        let s: Settings = serde_json::from_value(fixture("get-account-settings.json")).unwrap();
        assert!(s.assignment_channels().contains(&"sms".to_owned()));
    }

    #[test]
    fn recorded_customer_lists_read_with_and_without_hits() {
        let none: List<Customer> =
            serde_json::from_value(fixture("get-customers-by-email-none.json")).unwrap();
        assert!(none.0.is_empty());
        let page: List<Customer> =
            serde_json::from_value(fixture("get-customers-page.json")).unwrap();
        assert_eq!(page.0[0].id, 488069077);
        assert_eq!(page.0[0].email.as_deref(), Some("support@gorgias.com"));
    }

    #[test]
    fn the_recorded_ticket_reads_with_its_messages_and_sender() {
        let t: Ticket = serde_json::from_value(fixture("post-tickets.json")).unwrap();
        assert_eq!(t.id.unwrap().as_u64(), Some(173596132));
        assert_eq!(t.priority.as_deref(), Some("normal"));
        let messages = t.messages.unwrap();
        assert_eq!(messages[0].channel, "phone");
        assert_eq!(messages[0].sender.as_ref().unwrap().id, Id(488071553));
        assert_eq!(messages[0].attachments.len(), 2);
    }

    #[test]
    fn wrong_types_and_nulls_become_empty_values_not_errors() {
        let t: Ticket = serde_json::from_value(json!({
            "id": "17", "via": 5, "channel": null, "tags": null, "spam": "no",
            "messages": [{"id": 2, "attachments": {"x": 1}, "sender": "nobody", "public": null},
                         {"id": "x", "attachments": [1, {"url": "u"}]}],
            "meta": [1], "unknown": {"deep": true}
        }))
        .unwrap();
        assert_eq!(t.id.unwrap().as_str(), "17");
        assert_eq!((t.via.as_str(), t.channel.as_str()), ("", ""));
        assert!(t.tags.is_empty() && t.spam.is_none() && t.meta.is_none());
        let m = t.messages.unwrap();
        assert!(m[0].attachments.is_empty() && m[0].sender.is_none() && !m[0].public);
        assert_eq!(m[1].id, Id(0));
        assert_eq!(m[1].attachments.len(), 1);
        assert!(t.integrations.is_none());
    }

    #[test]
    fn an_abridged_list_item_has_no_messages() {
        let t: Ticket =
            serde_json::from_value(json!({"id": 3, "messages_count": 1, "excerpt": "hi"})).unwrap();
        assert!(t.messages.is_none());
        assert_eq!(t.excerpt.as_deref(), Some("hi"));
    }

    #[test]
    fn search_items_read_as_channel_records_or_customers() {
        let chan: SearchItem = serde_json::from_value(
            json!({"id": 9, "address": "0719908543", "customer": {"id": 7, "name": null}}),
        )
        .unwrap();
        assert_eq!(
            chan.into_hits(),
            vec![PhoneHit {
                address: "0719908543".into(),
                customer_id: 7
            }]
        );
        let cust: SearchItem =
            serde_json::from_value(fixture("get-customer-486721622.json")).unwrap();
        let hits = cust.into_hits();
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].customer_id, 486721622);
        let weird: SearchItem = serde_json::from_value(json!({"weird": true})).unwrap();
        assert!(weird.into_hits().is_empty());
    }

    #[test]
    fn a_new_customer_sends_email_then_phone_channels() {
        let c = CreateCustomer::with_phone("0719908543", Some("a@example.com"));
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            json!({"email": "a@example.com", "channels": [
                {"type": "email", "address": "a@example.com", "preferred": true},
                {"type": "phone", "address": "0719908543", "preferred": true}]})
        );
    }
}
