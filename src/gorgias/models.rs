//! Gorgias wire types: tolerant of what Gorgias adds (unknown fields are ignored, nullable or
//! undocumented fields are `Option`), because a ticket Gorgias created must never be lost to a
//! mapping that was too strict. Shapes follow the recorded exchanges in `tests/fixtures/`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A customer as we need it: its id and, when Gorgias knows one, its email.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customer {
    /// Gorgias's customer id.
    pub id: u64,
    /// Primary email, when set.
    #[serde(default)]
    pub email: Option<String>,
}

/// `GET /api/customers` answers with a list envelope; only `data` matters to us.
#[derive(Debug, Deserialize)]
pub(crate) struct CustomerList {
    #[serde(default, deserialize_with = "null_as_empty")]
    pub data: Vec<Customer>,
}

/// `POST /api/search` answers `{data: [...]}` (Gorgias's own web app reads it so); one client is
/// known to accept a bare array too, so both are read.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum SearchAnswer {
    Envelope {
        #[serde(default, deserialize_with = "null_as_empty")]
        data: Vec<Value>,
    },
    Bare(Vec<Value>),
}

impl SearchAnswer {
    pub(crate) fn into_items(self) -> Vec<Value> {
        match self {
            Self::Envelope { data } | Self::Bare(data) => data,
        }
    }
}

/// One hit of a `customer_channel_phone` search: a channel record naming its customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhoneHit {
    /// The channel's address as Gorgias stores it.
    pub address: String,
    /// The customer that owns the channel.
    pub customer_id: u64,
}

impl PhoneHit {
    /// Reads a search item leniently: `{address, customer: {id}}`, or a customer-shaped item
    /// `{id, channels: [...]}` as other search types return. Items we cannot read are skipped.
    pub(crate) fn from_item(item: &Value) -> Vec<PhoneHit> {
        if let (Some(address), Some(customer_id)) = (
            item.get("address").and_then(Value::as_str),
            item.get("customer")
                .and_then(|c| c.get("id"))
                .and_then(Value::as_u64),
        ) {
            return vec![PhoneHit {
                address: address.to_owned(),
                customer_id,
            }];
        }
        let Some(customer_id) = item.get("id").and_then(Value::as_u64) else {
            return Vec::new();
        };
        item.get("channels")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|c| c.get("type").and_then(Value::as_str) == Some("phone"))
            .filter_map(|c| c.get("address").and_then(Value::as_str))
            .map(|address| PhoneHit {
                address: address.to_owned(),
                customer_id,
            })
            .collect()
    }
}

/// `GET /api/account/settings`: a list of typed settings.
#[derive(Debug, Deserialize)]
pub(crate) struct Settings {
    #[serde(default, deserialize_with = "null_as_empty")]
    pub data: Vec<Setting>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Setting {
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub data: Value,
}

impl Settings {
    /// The channels whose tickets Gorgias auto-assigns (`ticket-assignment` setting).
    pub(crate) fn assignment_channels(&self) -> Vec<&str> {
        self.data
            .iter()
            .filter(|s| s.kind.as_deref() == Some("ticket-assignment"))
            .filter_map(|s| s.data.get("assignment_channels"))
            .filter_map(Value::as_array)
            .flatten()
            .filter_map(Value::as_str)
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

/// A channel of a customer to create.
#[derive(Debug, Serialize)]
pub(crate) struct NewChannel<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub address: &'a str,
    pub preferred: bool,
}

/// `POST /api/customers` body.
#[derive(Debug, Serialize)]
pub(crate) struct NewCustomer<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<&'a str>,
    pub channels: Vec<NewChannel<'a>>,
}

/// `POST /api/search` body.
#[derive(Debug, Serialize)]
pub(crate) struct SearchQuery<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub query: &'a str,
    pub size: u32,
}

/// A person reference (`customer`, `sender`): id, and email when known.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct PersonRef<'a> {
    pub id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<&'a str>,
}

/// An attachment as Gorgias takes it.
#[derive(Debug, Serialize)]
pub(crate) struct NewAttachment<'a> {
    pub url: &'a str,
    pub name: &'a str,
    pub size: u64,
    pub content_type: &'a str,
}

/// A message of `POST /api/tickets`: an incoming API message from the customer.
#[derive(Debug, Serialize)]
pub(crate) struct NewTicketMessage<'a> {
    pub channel: &'a str,
    pub via: &'static str,
    pub from_agent: bool,
    pub sender: PersonRef<'a>,
    pub external_id: &'a str,
    pub body_text: &'a str,
    pub body_html: &'a str,
    pub attachments: Vec<NewAttachment<'a>>,
}

/// `POST /api/tickets` body. No `created_datetime`/`opened_datetime`: Gorgias stamps them.
#[derive(Debug, Serialize)]
pub(crate) struct NewTicketBody<'a> {
    pub customer: PersonRef<'a>,
    pub channel: &'a str,
    pub via: &'static str,
    pub from_agent: bool,
    pub external_id: &'a str,
    pub messages: Vec<NewTicketMessage<'a>>,
}

/// A ticket as Gorgias returns it, kept as raw JSON: the output mapping reads it field by field
/// and tolerates anything, while this type only promises it is a JSON object with an id.
#[derive(Debug, Clone)]
pub struct WireTicket(pub Value);

impl WireTicket {
    /// The ticket's `external_id`, when set.
    pub fn external_id(&self) -> Option<&str> {
        self.0.get("external_id").and_then(Value::as_str)
    }
}

/// The ticket fields the output model has: all that is read from Gorgias's answer to a create.
/// The rest (`customer`, `requester`, `events`, `reply_options`...) is skipped while parsing,
/// never built, which saves most of the allocations of the request path.
pub const TICKET_FIELDS: &[&str] = &[
    "id",
    "assignee_user",
    "channel",
    "closed_datetime",
    "created_datetime",
    "excerpt",
    "external_id",
    "from_agent",
    "integrations",
    "is_unread",
    "language",
    "last_message_datetime",
    "last_received_message_datetime",
    "messages_count",
    "messages",
    "meta",
    "opened_datetime",
    "snooze_datetime",
    "status",
    "subject",
    "tags",
    "spam",
    "trashed_datetime",
    "updated_datetime",
    "via",
    "uri",
];

/// A ticket answer parsed with only [`TICKET_FIELDS`] kept (any JSON object is accepted).
pub struct PrunedTicket(pub Value);

impl<'de> Deserialize<'de> for PrunedTicket {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = PrunedTicket;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a ticket object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut access: A,
            ) -> Result<PrunedTicket, A::Error> {
                let mut kept = serde_json::Map::new();
                while let Some(key) = access.next_key::<std::borrow::Cow<'de, str>>()? {
                    if TICKET_FIELDS.contains(&key.as_ref()) {
                        let value: Value = access.next_value()?;
                        kept.insert(key.into_owned(), value);
                    } else {
                        access.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(PrunedTicket(Value::Object(kept)))
            }
        }
        d.deserialize_map(Fields)
    }
}

/// `GET /api/tickets` list envelope.
#[derive(Debug, Deserialize)]
pub(crate) struct TicketList {
    #[serde(default, deserialize_with = "null_as_empty")]
    pub data: Vec<Value>,
}

/// Gorgias sometimes sends `null` where a list is expected; read it as empty.
fn null_as_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fixture(name: &str) -> Value {
        let text = std::fs::read_to_string(format!(
            "{}/tests/fixtures/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        serde_json::from_str::<Value>(&text).unwrap()["body"].clone()
    }

    #[test]
    fn recorded_settings_name_sms_among_assignment_channels() {
        let s: Settings = serde_json::from_value(fixture("get-account-settings.json")).unwrap();
        assert!(s.assignment_channels().contains(&"sms"));
    }

    #[test]
    fn recorded_customer_lists_read_with_and_without_hits() {
        let none: CustomerList =
            serde_json::from_value(fixture("get-customers-by-email-none.json")).unwrap();
        assert!(none.data.is_empty());
        let page: CustomerList =
            serde_json::from_value(fixture("get-customers-page.json")).unwrap();
        assert_eq!(page.data[0].id, 488069077);
        assert_eq!(page.data[0].email.as_deref(), Some("support@gorgias.com"));
    }

    #[test]
    fn a_pruned_ticket_keeps_exactly_the_model_fields() {
        let full = fixture("post-tickets.json");
        let pruned: PrunedTicket = serde_json::from_value(full.clone()).unwrap();
        let kept = pruned.0.as_object().unwrap();
        assert!(kept.contains_key("messages") && kept.contains_key("id"));
        assert!(!kept.contains_key("customer") && !kept.contains_key("requester"));
        assert_eq!(
            crate::output::Ticket::from_gorgias(&pruned.0),
            crate::output::Ticket::from_gorgias(&full),
            "pruning never changes the answer"
        );
        assert!(serde_json::from_str::<PrunedTicket>("[1]").is_err());
    }

    #[test]
    fn search_items_read_as_channel_records_or_customers() {
        let chan = json!({"id": 9, "address": "0719908543", "customer": {"id": 7, "name": null}});
        assert_eq!(
            PhoneHit::from_item(&chan),
            vec![PhoneHit {
                address: "0719908543".into(),
                customer_id: 7
            }]
        );
        let cust = fixture("get-customer-486721622.json");
        let hits = PhoneHit::from_item(&cust);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].customer_id, 486721622);
        assert!(PhoneHit::from_item(&json!({"weird": true})).is_empty());
    }
}
