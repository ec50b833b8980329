//! The `POST /ticket` body: **one definition** of its shape, the DTOs below. Their derived schema
//! is both what `openapi.json` publishes and what every body is validated against (with the
//! `jsonschema` crate), so the two cannot drift.
//!
//! The way in, [`NewTicket::parse`]:
//! 1. the raw JSON is validated against the schema; every problem is reported with its path,
//!    shape problems (types, unknown or missing fields) as 400, value problems as 422;
//! 2. the rules a schema cannot state run on the raw JSON too (distinct message ids), so they are
//!    reported together with the rest;
//! 3. only then is the body deserialised into the DTOs (which cannot fail after step 1) and
//!    converted into the domain types.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use jsonschema::error::{TypeKind, ValidationErrorKind};
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ArrayItems, Schema};
use utoipa::{PartialSchema, ToSchema};

use super::values::{
    Attachment, ContentType, CustomField, Email, HttpUrl, MessageId, NewMessage, NewTicket,
    PhoneNumber, TicketOptions,
};
use super::{ValidationErrors, limits};

/// The body of `POST /ticket`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TicketRequest {
    customer: CustomerIn,
    ticket: TicketIn,
}

/// The customer the ticket is about.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomerIn {
    /// 1 to 32 characters, only digits, spaces and `+-().`, at least 5 digits. Surrounding
    /// spaces are dropped before it is stored.
    #[schema(
        min_length = 1,
        max_length = 32,
        pattern = r"^[ +().\-]*([0-9][ +().\-]*){5,}$",
        example = "0719908543"
    )]
    phone_number: String,
    /// Email, when known: one `@`, a non-empty local part, a dotted domain.
    #[schema(
        max_length = 320,
        pattern = r"^[^@\s\x00-\x1f\x7f-\x9f]+@[^@.\s\x00-\x1f\x7f-\x9f]+(\.[^@.\s\x00-\x1f\x7f-\x9f]+)+$",
        example = "nango@example.com"
    )]
    email: Option<String>,
    /// The customer's name, 1 to 255 characters, not blank; surrounding spaces are dropped.
    /// Sent only when the customer is created (Gorgias splits it into first and last name on
    /// the last space); never used for lookup, and an existing customer's name is not changed.
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = r"\S",
        example = "Jane Doe"
    )]
    name: Option<String>,
}

/// The ticket's content.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TicketIn {
    /// 1 to 500 messages, with distinct ids.
    #[schema(min_items = 1, max_items = 500)]
    messages: Vec<MessageIn>,
    /// The ticket's subject, 1 to 998 characters.
    #[schema(
        min_length = 1,
        max_length = 998,
        example = "Missed call from +254719908543"
    )]
    subject: Option<String>,
    /// Up to 50 tag names of 1 to 255 characters; duplicates are dropped. Gorgias routing rules
    /// key on tags.
    #[schema(max_items = 50, example = json!(["missed-call", "vip"]))]
    tags: Option<Vec<TagName>>,
    /// The ticket's priority.
    #[schema(example = "high")]
    priority: Option<Priority>,
    /// Up to 50 values of the account's ticket custom fields, each field id once.
    #[schema(max_items = 50)]
    custom_fields: Option<Vec<CustomFieldIn>>,
    /// The caller's own references (an order id, the system that opened it): a JSON object of
    /// at most 4 KiB serialised. Stored in the ticket's `meta` and returned in the answer.
    #[schema(value_type = Option<Object>, example = json!({"order_id": "A-1042", "source": "ivr"}))]
    meta: Option<serde_json::Map<String, Value>>,
}

/// A tag name, 1 to 255 characters.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(min_length = 1, max_length = 255, example = "missed-call")]
#[serde(transparent)]
pub struct TagName(String);

/// Gorgias's ticket priorities (`gorgias-api.md` §2: the official ticket example shows
/// `normal`; the four values come from third-party clients of the reference, and the 2026
/// recordings show `normal`).
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// `critical`
    Critical,
    /// `high`
    High,
    /// `normal` (Gorgias's default)
    Normal,
    /// `low`
    Low,
}

impl Priority {
    fn as_str(self) -> &'static str {
        match self {
            Self::Critical => "critical",
            Self::High => "high",
            Self::Normal => "normal",
            Self::Low => "low",
        }
    }
}

/// A value for one of the account's ticket custom fields, in Gorgias's create shape.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomFieldIn {
    /// The custom field definition's id (Settings → Ticket fields), at most 2^53 - 1 (the
    /// largest integer every JSON parser reads exactly; `format: int64` alone is not enforced by
    /// validators, and a schemathesis run sent 2^63).
    #[schema(minimum = 1, maximum = 9_007_199_254_740_991_u64, example = 12)]
    #[serde(deserialize_with = "whole_number")]
    id: u64,
    /// A string, number or boolean (the schema admits nothing else, so the value is kept as
    /// JSON and sent as it came).
    #[schema(schema_with = custom_field_value_schema, example = "gold")]
    value: Value,
}

fn custom_field_value_schema() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([
            Type::String,
            Type::Number,
            Type::Boolean,
        ]))
        .build()
}

/// Most bytes `ticket.meta` may take, serialised.
pub const META_MAX_BYTES: usize = 4096;

/// One message from the customer; `body_text` and `body_html` must not both be blank.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageIn {
    /// The caller's id for the message, unique within the ticket (Gorgias's message
    /// `external_id`).
    #[schema(min_length = 1, max_length = 255, example = "message123")]
    id: String,
    /// Plain-text body.
    body_text: String,
    /// HTML body.
    body_html: String,
    /// Hosted files; absent or null means none.
    attachments: Option<Vec<AttachmentIn>>,
}

/// A file hosted elsewhere.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachmentIn {
    /// Absolute http(s) URL: a host of letters, digits, dots and hyphens, an optional port.
    #[schema(
        max_length = 2048,
        pattern = r"^[Hh][Tt][Tt][Pp][Ss]?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?([/?#]\S*)?$",
        example = "https://example.com/file1.png"
    )]
    url: String,
    /// File name, 1 to 255 characters.
    #[schema(min_length = 1, max_length = 255, example = "file1.png")]
    name: String,
    /// Size in bytes.
    #[schema(minimum = 0, maximum = 9_007_199_254_740_991_u64, example = 1024)]
    #[serde(deserialize_with = "whole_number")]
    size: u64,
    /// Media type, `type/subtype`, optionally with parameters.
    #[schema(
        max_length = 255,
        pattern = r"^[!#$%&'*+.^_`|~0-9A-Za-z\-]+/[!#$%&'*+.^_`|~0-9A-Za-z\-]+(;[\s\S]*)?$",
        example = "image/png"
    )]
    content_type: String,
}

/// JSON Schema's `integer` includes `1024.0`: a whole float is a whole number. (Schemathesis
/// found both the attachment size and the custom field id refused as `1.0` when read as `u64`.)
fn whole_number<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let n = serde_json::Number::deserialize(d)?;
    as_whole(&n).ok_or_else(|| serde::de::Error::custom("not a whole number"))
}

/// `n` as a whole number from 0 to 2^53 - 1, whether written `12` or `12.0`.
fn as_whole(n: &serde_json::Number) -> Option<u64> {
    n.as_u64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= limits::ATTACHMENT_SIZE_MAX as f64)
            .map(|f| f as u64)
    })
}

/// The DTO schemas as the components of a document, with the one rule across two fields that
/// the derive cannot say (not both bodies blank). The OpenAPI document and the validator both
/// start from here.
pub fn component_schemas() -> serde_json::Map<String, Value> {
    let mut named = Vec::new();
    TicketRequest::schemas(&mut named);
    let mut out = serde_json::Map::new();
    out.insert(
        TicketRequest::name().into_owned(),
        serde_json::to_value(TicketRequest::schema()).unwrap_or_default(),
    );
    for (name, schema) in named {
        out.insert(name, serde_json::to_value(schema).unwrap_or_default());
    }
    if let Some(message) = out.get_mut("MessageIn") {
        message["anyOf"] = json!([
            {"properties": {"body_text": {"pattern": "\\S"}}},
            {"properties": {"body_html": {"pattern": "\\S"}}}
        ]);
    }
    out
}

/// The compiled validators and what is needed to word their findings.
struct Contract {
    validator: jsonschema::Validator,
    /// One attachment alone, for the tails of attachment lists (see [`Found::attachments_past`]).
    attachment: jsonschema::Validator,
    shapes: Shapes,
}

/// The validator of the component `name`, with every component reachable.
fn compile(name: &str) -> Result<jsonschema::Validator, String> {
    let schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$ref": format!("#/components/schemas/{name}"),
        "components": {"schemas": component_schemas()},
    });
    // The `regex` engine, not the default `fancy-regex`: our patterns need no look-around or
    // back-references, and `regex` matches in linear time, so no caller's string can make a
    // pattern backtrack for long. (No speed difference could be measured on the example.)
    jsonschema::draft202012::options()
        .with_pattern_options(jsonschema::PatternOptions::regex())
        .build(&schema)
        .map_err(|e| e.to_string())
}

static CONTRACT: LazyLock<Result<Contract, String>> = LazyLock::new(|| {
    Ok(Contract {
        validator: compile("TicketRequest")?,
        attachment: compile("AttachmentIn")?,
        shapes: Shapes::derive(),
    })
});

/// At most this many problems are listed; a body with more says so in its last entry.
pub const PROBLEMS_SHOWN: usize = 50;

/// Value rules that depend on the deployment, not on the contract.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rules {
    /// `PHONE_DEFAULT_REGION`: numbers are parsed for this region and normalised to E.164, so
    /// `0719 908 543` and `+254719908543` are one customer; a number impossible there is 422.
    pub phone_region: Option<phonenumber::country::Id>,
}

impl NewTicket {
    /// [`NewTicket::parse_with`] without deployment rules.
    ///
    /// # Errors
    /// As [`NewTicket::parse_with`].
    pub fn parse(body: &Value) -> Result<Self, ValidationErrors> {
        Self::parse_with(body, &Rules::default())
    }

    /// Validates a `POST /ticket` body and converts it into a ticket.
    ///
    /// # Errors
    /// Every problem found (at most [`PROBLEMS_SHOWN`], then a count), in document order; shape
    /// problems (types, unknown or missing fields) are marked so the HTTP layer answers 400
    /// rather than 422.
    pub fn parse_with(body: &Value, rules: &Rules) -> Result<Self, ValidationErrors> {
        let mut errs = ValidationErrors::default();
        let contract = match &*CONTRACT {
            Ok(c) => c,
            Err(e) => {
                // The schema is ours and fixed: a unit test compiles it. Refuse rather than panic.
                tracing::error!(error = %e, "the request schema does not compile");
                errs.shape("$", "the request could not be validated");
                return Err(errs);
            }
        };
        let mut found = Found::default();
        // The fast path answers yes or no; errors are only collected for a body that fails.
        if !contract.validator.is_valid(body) {
            // The validator collects every item's errors of an array before yielding the
            // first, so a body of 700,000 bad attachments cost seconds to refuse. Its errors
            // are collected on the body's first items (the first listed are there anyway),
            // and on the whole body only when those hold none.
            let (pruned, cut) = prune(body);
            found.schema(contract, &pruned, body);
            if cut && found.is_empty() {
                // The first items hold nothing wrong: the problem is in the tail of an
                // attachment list (the only list with no length bound), checked item by item.
                found.attachments_past(contract, &pruned, body);
            }
            if cut && found.is_empty() {
                found.schema(contract, body, body);
            }
        }
        distinct_message_ids(body, &contract.shapes, &mut found);
        distinct_custom_fields(body, &contract.shapes, &mut found);
        if let Some(problem) = meta_within_bound(body, &contract.shapes) {
            found.push(problem);
        }
        let Found {
            list: mut found,
            more,
        } = found;
        // The region rule runs on a number the schema accepted, so one field gets one problem.
        let mut e164 = None;
        if let Some(region) = rules.phone_region
            && let Some(Value::String(raw)) = body.pointer("/customer/phone_number")
            && !found
                .iter()
                .any(|(_, e)| e.field == "customer.phone_number")
        {
            match phone_in_region(raw, region) {
                Some(n) => e164 = Some(n),
                None => found.push(contract.shapes.problem(
                    "/customer/phone_number",
                    super::Problem::Rule,
                    format!(
                        "is not a possible phone number for region {}",
                        region.as_ref()
                    ),
                )),
            }
        }
        if found.is_empty() {
            return TicketRequest::deserialize(body)
                .map(|r| {
                    let mut t = NewTicket::from(r);
                    if let Some(n) = e164 {
                        t.phone = PhoneNumber::new(&n);
                    }
                    t
                })
                .map_err(|e| {
                    // Unreachable after the schema accepted the body; kept so a slip answers
                    // 400, not 500.
                    errs.shape("$", format!("the body could not be read: {e}"));
                    errs
                });
        }
        found.sort_by(|a, b| a.0.cmp(&b.0));
        // One problem per field: the first found (a wrong type before the rules it also breaks).
        found.dedup_by(|later, first| later.1.field == first.1.field);
        errs.errors = found.into_iter().map(|(_, e)| e).collect();
        if more > 0 {
            errs.shape(
                "$",
                format!(
                    "{more}{} more problems not listed",
                    if more > 10 * PROBLEMS_SHOWN { "+" } else { "" }
                ),
            );
        }
        Err(errs)
    }
}

/// The number in E.164 (`+254719908543`) when it is valid for `region` (or carries its own
/// country code and is valid there), else `None`.
fn phone_in_region(raw: &str, region: phonenumber::country::Id) -> Option<String> {
    let n = phonenumber::parse(Some(region), raw.trim()).ok()?;
    n.is_valid()
        .then(|| n.format().mode(phonenumber::Mode::E164).to_string())
}

/// The problems found so far: the first [`PROBLEMS_SHOWN`], and how many more (counted up to
/// a bound: counting further costs time for nothing a caller can use).
#[derive(Default)]
struct Found {
    list: Vec<(Vec<usize>, super::FieldError)>,
    more: usize,
}

impl Found {
    fn push(&mut self, problem: (Vec<usize>, super::FieldError)) {
        if self.list.len() < PROBLEMS_SHOWN {
            self.list.push(problem);
        } else {
            self.more += 1;
        }
    }

    fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Enough found: the list is full and the count past it is as far as it goes.
    fn full(&self) -> bool {
        self.more > 10 * PROBLEMS_SHOWN
    }

    /// The schema's problems with `instance` (the body, or its first items), worded against
    /// the whole `body` (the paths are the same: only tails of arrays are left out).
    fn schema(&mut self, contract: &Contract, instance: &Value, body: &Value) {
        for e in contract.validator.iter_errors(instance) {
            for problem in contract
                .shapes
                .word(e.instance_path().as_str(), e.kind(), body)
            {
                self.push(problem);
            }
            if self.full() {
                break;
            }
        }
    }
}

impl Found {
    /// The problems of the attachments `pruned` left out, item by item with the attachment's
    /// own schema, until the list is full.
    fn attachments_past(&mut self, contract: &Contract, pruned: &Value, body: &Value) {
        let Some(Value::Array(messages)) = body.pointer("/ticket/messages") else {
            return;
        };
        for (i, message) in messages.iter().enumerate() {
            let Some(Value::Array(attachments)) = message.get("attachments") else {
                continue;
            };
            let checked = pruned
                .pointer(&format!("/ticket/messages/{i}/attachments"))
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            for (j, a) in attachments.iter().enumerate().skip(checked) {
                for e in contract.attachment.iter_errors(a) {
                    let pointer = format!(
                        "/ticket/messages/{i}/attachments/{j}{}",
                        e.instance_path().as_str()
                    );
                    for problem in contract.shapes.word(&pointer, e.kind(), body) {
                        self.push(problem);
                    }
                }
                if self.full() {
                    return;
                }
            }
        }
    }
}

/// Items of the body's arrays validated for their errors, in document order, before the rest
/// of every array is left out.
const ITEMS_CHECKED: usize = 2_000;
/// Each array of `ticket` keeps at least this many items (one more than the largest
/// `maxItems`), so a length bound is still seen broken.
const TOP_ITEMS_KEPT: usize = limits::MESSAGES_MAX + 1;

/// The body with every array cut once [`ITEMS_CHECKED`] items have been kept, in document
/// order (an array keeps its first item at least, and `ticket`'s arrays [`TOP_ITEMS_KEPT`]),
/// and whether anything was cut. The items kept keep their indices, so an error's path is the
/// same in both.
fn prune(body: &Value) -> (Value, bool) {
    fn walk(v: &Value, depth: usize, budget: &mut usize, cut: &mut bool) -> Value {
        match v {
            Value::Array(items) => {
                let floor = if depth == 2 { TOP_ITEMS_KEPT } else { 1 };
                let keep = items.len().min((*budget).max(floor));
                *budget = budget.saturating_sub(keep);
                *cut |= keep < items.len();
                Value::Array(
                    items[..keep]
                        .iter()
                        .map(|i| walk(i, depth + 1, budget, cut))
                        .collect(),
                )
            }
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), walk(v, depth + 1, budget, cut)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
    let mut budget = ITEMS_CHECKED;
    let mut cut = false;
    let pruned = walk(body, 0, &mut budget, &mut cut);
    (pruned, cut)
}

/// A custom field is set once per ticket: two values for one field would leave Gorgias to
/// pick one.
fn distinct_custom_fields(body: &Value, shapes: &Shapes, found: &mut Found) {
    let Some(Value::Array(fields)) = body.pointer("/ticket/custom_fields") else {
        return;
    };
    let mut seen = HashSet::with_capacity(fields.len().min(1024));
    for (i, f) in fields.iter().enumerate() {
        let Some(Value::Number(n)) = f.get("id") else {
            continue;
        };
        let Some(id) = as_whole(n) else { continue };
        if !seen.insert(id) {
            found.push(shapes.problem(
                &format!("/ticket/custom_fields/{i}/id"),
                super::Problem::Rule,
                "must be unique within the ticket; an earlier item sets the same field".into(),
            ));
            if found.full() {
                return;
            }
        }
    }
}

/// `ticket.meta` is the caller's references, not a payload: at most [`META_MAX_BYTES`].
fn meta_within_bound(body: &Value, shapes: &Shapes) -> Option<(Vec<usize>, super::FieldError)> {
    let meta = body.pointer("/ticket/meta").filter(|m| m.is_object())?;
    let size = serde_json::to_vec(meta).map_or(usize::MAX, |b| b.len());
    (size > META_MAX_BYTES).then(|| {
        shapes.problem(
            "/ticket/meta",
            super::Problem::Rule,
            format!("must be at most {META_MAX_BYTES} bytes serialised, found {size}"),
        )
    })
}

/// Message ids must be distinct within a ticket (they become Gorgias's message `external_id`),
/// a rule JSON Schema cannot state. Checked on the raw JSON so it is reported with the rest.
fn distinct_message_ids(body: &Value, shapes: &Shapes, found: &mut Found) {
    let Some(Value::Array(messages)) = body.pointer("/ticket/messages") else {
        return;
    };
    let mut seen: HashSet<&str> = HashSet::with_capacity(messages.len().min(1024));
    for (i, m) in messages.iter().enumerate() {
        if let Some(Value::String(id)) = m.get("id")
            && !id.is_empty()
            && !seen.insert(id.as_str())
        {
            let pointer = format!("/ticket/messages/{i}/id");
            found.push(shapes.problem(
                &pointer,
                super::Problem::Rule,
                "must be unique within the ticket; an earlier message has the same id".into(),
            ));
            if found.full() {
                return;
            }
        }
    }
}

/// Whitespace as the schema's patterns read it (ECMA-262 `\s`: it includes U+FEFF, not U+0085,
/// unlike Rust's `char::is_whitespace`), so trimming never empties a value the schema accepted
/// as not blank.
fn is_schema_whitespace(c: char) -> bool {
    (c.is_whitespace() && c != '\u{85}') || c == '\u{feff}'
}

impl From<TicketRequest> for NewTicket {
    /// Valid by construction: the schema has accepted the body this DTO came from.
    fn from(r: TicketRequest) -> Self {
        let mut seen = HashSet::new();
        let options = TicketOptions {
            subject: r.ticket.subject,
            tags: r
                .ticket
                .tags
                .unwrap_or_default()
                .into_iter()
                .map(|t| t.0)
                .filter(|t| seen.insert(t.clone()))
                .collect(),
            priority: r.ticket.priority.map(|p| p.as_str().to_owned()),
            custom_fields: r
                .ticket
                .custom_fields
                .unwrap_or_default()
                .into_iter()
                .map(|f| CustomField {
                    id: f.id,
                    value: f.value,
                })
                .collect(),
            meta: r.ticket.meta,
        };
        NewTicket {
            phone: PhoneNumber::new(&r.customer.phone_number),
            email: r.customer.email.map(Email::new),
            name: r
                .customer
                .name
                .map(|n| n.trim_matches(is_schema_whitespace).to_owned()),
            options,
            messages: r
                .ticket
                .messages
                .into_iter()
                .map(|m| NewMessage {
                    id: MessageId::new(m.id),
                    body_text: m.body_text,
                    body_html: m.body_html,
                    attachments: m
                        .attachments
                        .unwrap_or_default()
                        .into_iter()
                        .map(|a| Attachment {
                            url: HttpUrl::new(a.url),
                            name: a.name,
                            size: a.size,
                            content_type: ContentType::new(a.content_type),
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

/// What the schema says of each object: its properties in declaration order (document order
/// for errors), and which properties are lists. Read from the same derived schemas, so it
/// cannot drift either.
struct Shapes {
    objects: HashMap<String, ObjectShape>,
    root: String,
}

#[derive(Default)]
struct ObjectShape {
    /// Property → (position, what it holds).
    properties: Vec<(String, Holds)>,
}

#[derive(Clone)]
enum Holds {
    /// A named object schema.
    Object(String),
    /// A list of named object schemas.
    ListOf(String),
    /// A list of anything else.
    List,
    /// Anything else (a leaf).
    Leaf,
}

impl Shapes {
    fn derive() -> Self {
        let mut named = Vec::new();
        TicketRequest::schemas(&mut named);
        let mut objects = HashMap::new();
        let root = TicketRequest::name().into_owned();
        objects.insert(root.clone(), ObjectShape::of(&TicketRequest::schema()));
        for (name, schema) in &named {
            objects.insert(name.clone(), ObjectShape::of(schema));
        }
        Self { objects, root }
    }

    /// Turns one validator finding into problems with caller-facing paths and words.
    fn word(
        &self,
        pointer: &str,
        kind: &ValidationErrorKind,
        body: &Value,
    ) -> Vec<(Vec<usize>, super::FieldError)> {
        use super::Problem::{Rule, Shape};
        let leaf = pointer.rsplit('/').next().unwrap_or_default();
        let one = |problem, message: String| vec![self.problem(pointer, problem, message)];
        match kind {
            ValidationErrorKind::Required { property } => {
                let name = property.as_str().unwrap_or_default();
                let child = format!("{pointer}/{}", escape(name));
                vec![self.problem(&child, Shape, "is required".into())]
            }
            ValidationErrorKind::AdditionalProperties { unexpected } => {
                let allowed = self.allowed(pointer);
                unexpected
                    .iter()
                    .map(|name| {
                        // The key is the caller's own text; cap it so an error body cannot be
                        // inflated by it.
                        let shown: String = name.chars().take(64).collect();
                        let child = format!("{pointer}/{}", escape(&shown));
                        self.problem(
                            &child,
                            Shape,
                            format!("unknown field; expected one of: {allowed}"),
                        )
                    })
                    .collect()
            }
            ValidationErrorKind::Type { kind } => {
                let expected = match kind {
                    TypeKind::Single(t) => t.to_string(),
                    TypeKind::Multiple(set) => set
                        .iter()
                        .map(|t| t.to_string())
                        .filter(|t| t != "null")
                        .collect::<Vec<_>>()
                        .join(" or "),
                };
                let instance = body.pointer(pointer).unwrap_or(&Value::Null);
                // A fraction or a negative where a whole number belongs is a value problem.
                if expected == "integer" && instance.is_number() {
                    return one(Rule, size_rule());
                }
                one(
                    Shape,
                    format!(
                        "must be {} {expected}, found {}",
                        article(&expected),
                        found(instance)
                    ),
                )
            }
            ValidationErrorKind::MinLength { limit: 1 } => one(Rule, "must not be empty".into()),
            ValidationErrorKind::MinLength { limit } => {
                one(Rule, format!("must be at least {limit} characters"))
            }
            ValidationErrorKind::MaxLength { limit } => {
                one(Rule, format!("must be at most {limit} characters"))
            }
            ValidationErrorKind::MinItems { limit } => {
                one(Rule, format!("must hold at least {limit} item(s)"))
            }
            ValidationErrorKind::MaxItems { limit } => {
                one(Rule, format!("must hold at most {limit} items"))
            }
            ValidationErrorKind::Minimum { .. } | ValidationErrorKind::Maximum { .. } => {
                one(Rule, size_rule())
            }
            ValidationErrorKind::Pattern { .. } => one(Rule, pattern_words(leaf).into()),
            // The schema's only `anyOf` is the message rule "not both bodies blank".
            ValidationErrorKind::AnyOf { .. } => vec![self.problem(
                &format!("{pointer}/body_text"),
                Rule,
                "body_text and body_html must not both be blank".into(),
            )],
            // A value of the wrong JSON type is a shape problem, whatever keyword caught it.
            ValidationErrorKind::Enum { options } => one(
                if body.pointer(pointer).is_some_and(Value::is_string) {
                    Rule
                } else {
                    Shape
                },
                format!(
                    "must be one of: {}",
                    options
                        .as_array()
                        .map(|o| o
                            .iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(", "))
                        .unwrap_or_default()
                ),
            ),
            // `Option<T>` derives as `oneOf: [T, null]`: word what the non-null branch found.
            ValidationErrorKind::OneOfNotValid { context } => {
                let only_null = |errs: &Vec<jsonschema::ValidationError<'static>>| {
                    errs.iter().all(|e| {
                        matches!(
                            e.kind(),
                            ValidationErrorKind::Type {
                                kind: TypeKind::Single(jsonschema::JsonType::Null)
                            }
                        )
                    })
                };
                match context.iter().find(|errs| !only_null(errs)) {
                    Some(errs) => errs
                        .iter()
                        .flat_map(|e| self.word(e.instance_path().as_str(), e.kind(), body))
                        .collect(),
                    None => one(Rule, "is not acceptable".into()),
                }
            }
            _ => one(Rule, "is not acceptable".into()),
        }
    }

    /// A problem at `pointer`, with its caller-facing path and its document-order sort key.
    fn problem(
        &self,
        pointer: &str,
        problem: super::Problem,
        message: String,
    ) -> (Vec<usize>, super::FieldError) {
        let (field, key) = self.locate(pointer);
        (
            key,
            super::FieldError {
                field,
                message,
                problem,
            },
        )
    }

    /// `/ticket/messages/0/id` → (`ticket.messages[0].id`, sort key). Unknown properties sort
    /// before the known ones of their object, as they are reported first.
    fn locate(&self, pointer: &str) -> (String, Vec<usize>) {
        let mut field = String::new();
        let mut key = Vec::new();
        let mut at = Holds::Object(self.root.clone());
        for raw in pointer.split('/').skip(1) {
            let segment = unescape(raw);
            match at {
                Holds::ListOf(name) => {
                    let index: usize = segment.parse().unwrap_or(usize::MAX);
                    field.push_str(&format!("[{segment}]"));
                    key.push(index);
                    at = Holds::Object(name);
                }
                Holds::List => {
                    let index: usize = segment.parse().unwrap_or(usize::MAX);
                    field.push_str(&format!("[{segment}]"));
                    key.push(index);
                    at = Holds::Leaf;
                }
                Holds::Object(name) => {
                    if !field.is_empty() {
                        field.push('.');
                    }
                    field.push_str(&segment);
                    let props = self.objects.get(&name).map(|o| &o.properties);
                    match props.and_then(|p| p.iter().position(|(n, _)| *n == segment)) {
                        Some(i) => {
                            key.push(i + 1);
                            at = props.map_or(Holds::Leaf, |p| p[i].1.clone());
                        }
                        None => {
                            key.push(0);
                            at = Holds::Leaf;
                        }
                    }
                }
                Holds::Leaf => {
                    field.push_str(&format!(".{segment}"));
                    key.push(0);
                }
            }
        }
        if field.is_empty() {
            field.push('$');
        }
        (field, key)
    }

    /// The properties allowed at `pointer`, for the unknown-field message.
    fn allowed(&self, pointer: &str) -> String {
        let mut at = Holds::Object(self.root.clone());
        for raw in pointer.split('/').skip(1) {
            let segment = unescape(raw);
            at = match at {
                Holds::ListOf(name) => Holds::Object(name),
                Holds::List => Holds::Leaf,
                Holds::Object(name) => self
                    .objects
                    .get(&name)
                    .and_then(|o| o.properties.iter().find(|(n, _)| *n == segment))
                    .map_or(Holds::Leaf, |(_, h)| h.clone()),
                Holds::Leaf => Holds::Leaf,
            };
        }
        match at {
            Holds::Object(name) => self
                .objects
                .get(&name)
                .map(|o| {
                    o.properties
                        .iter()
                        .map(|(n, _)| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default(),
            _ => String::new(),
        }
    }
}

impl ObjectShape {
    fn of(schema: &RefOr<Schema>) -> Self {
        let RefOr::T(Schema::Object(object)) = schema else {
            return Self::default();
        };
        let properties = object
            .properties
            .iter()
            .map(|(name, s)| (name.clone(), holds(s)))
            .collect();
        Self { properties }
    }
}

fn holds(schema: &RefOr<Schema>) -> Holds {
    match schema {
        RefOr::Ref(r) => Holds::Object(ref_name(&r.ref_location)),
        RefOr::T(Schema::Array(a)) => match &a.items {
            ArrayItems::RefOrSchema(item) => match item.as_ref() {
                RefOr::Ref(r) => Holds::ListOf(ref_name(&r.ref_location)),
                _ => Holds::List,
            },
            ArrayItems::False => Holds::Leaf,
        },
        // `Option<Vec<T>>` derives as a one-of of the array and null.
        RefOr::T(Schema::OneOf(one)) => one
            .items
            .iter()
            .map(holds)
            .find(|h| !matches!(h, Holds::Leaf))
            .unwrap_or(Holds::Leaf),
        _ => Holds::Leaf,
    }
}

fn ref_name(location: &str) -> String {
    location.rsplit('/').next().unwrap_or_default().to_owned()
}

fn escape(s: &str) -> Cow<'_, str> {
    if s.contains(['~', '/']) {
        Cow::Owned(s.replace('~', "~0").replace('/', "~1"))
    } else {
        Cow::Borrowed(s)
    }
}

fn unescape(s: &str) -> String {
    s.replace("~1", "/").replace("~0", "~")
}

fn size_rule() -> String {
    format!(
        "must be a whole number of bytes from 0 to {}",
        limits::ATTACHMENT_SIZE_MAX
    )
}

/// Words for the pattern each field must match (the pattern itself is in the DTO).
fn pattern_words(field: &str) -> &'static str {
    match field {
        "phone_number" => "may hold only digits, spaces and + - ( ) ., with at least 5 digits",
        "email" => "must be an email address such as name@example.com",
        "url" => "must be an absolute http or https URL",
        "content_type" => "must be a media type of the form type/subtype",
        _ => "is not in the expected form",
    }
}

fn found(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Problem;

    fn example() -> Value {
        serde_json::from_str(include_str!(
            "../../tests/fixtures/ticket-request.example.json"
        ))
        .unwrap()
    }

    /// The example with `value` at `pointer`: `Ok` or the fields at fault.
    fn with(pointer: &str, value: Value) -> Result<NewTicket, Vec<String>> {
        let mut body = example();
        *body.pointer_mut(pointer).unwrap() = value;
        NewTicket::parse(&body).map_err(|e| e.errors.into_iter().map(|e| e.field).collect())
    }

    #[test]
    fn a_name_the_schema_calls_not_blank_is_never_trimmed_to_nothing() {
        // U+0085 is not whitespace to the schema's `\S` (found by the schema-generated test).
        let name = |raw: &str| {
            let mut body = example();
            body["customer"]["name"] = Value::String(raw.into());
            NewTicket::parse(&body).map(|t| t.name)
        };
        assert_eq!(name("\u{85}").unwrap().as_deref(), Some("\u{85}"));
        assert_eq!(
            name(" Ann Lee\u{feff} ").unwrap().as_deref(),
            Some("Ann Lee")
        );
        assert!(name(" \u{feff} ").is_err(), "blank to the schema");
    }

    #[test]
    fn the_schema_compiles() {
        assert!(CONTRACT.is_ok(), "{:?}", CONTRACT.as_ref().err());
    }

    #[test]
    fn the_example_body_parses() {
        let t = NewTicket::parse(&example()).unwrap();
        assert_eq!(t.phone.as_str(), "0719908543");
        assert_eq!(t.email.unwrap().as_str(), "nango@example.com");
        assert_eq!(t.messages.len(), 2);
        assert_eq!(t.messages[0].attachments.len(), 2);
        assert_eq!(t.messages[0].attachments[1].size, 2048);
    }

    #[test]
    fn every_problem_is_reported_at_once_in_document_order() {
        let body = json!({
            "customer": {"phone_number": "12", "email": "nope", "x": 1},
            "ticket": {"messages": [
                {"id": "", "body_text": " ", "body_html": "", "attachments": [
                    {"url": "ftp://x", "name": "", "size": -1, "content_type": "png"}]},
            ]}
        });
        let e = NewTicket::parse(&body).unwrap_err();
        let fields: Vec<&str> = e.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "customer.x",
                "customer.phone_number",
                "customer.email",
                "ticket.messages[0].id",
                "ticket.messages[0].body_text",
                "ticket.messages[0].attachments[0].url",
                "ticket.messages[0].attachments[0].name",
                "ticket.messages[0].attachments[0].size",
                "ticket.messages[0].attachments[0].content_type",
            ]
        );
        assert!(e.is_shape(), "the unknown field makes it a shape problem");
        assert_eq!(e.errors[0].problem, Problem::Shape);
        assert!(e.errors[1..].iter().all(|e| e.problem == Problem::Rule));
    }

    #[test]
    fn a_non_object_body_is_a_shape_problem_at_the_root() {
        let e = NewTicket::parse(&json!([1, 2])).unwrap_err();
        assert_eq!(e.errors[0].field, "$");
        assert!(e.is_shape());
    }

    #[test]
    fn phone_numbers_keep_their_form_less_padding_and_normalise() {
        let t = with("/customer/phone_number", json!("  +33 (6) 12-34.56 78 ")).unwrap();
        assert_eq!(t.phone.as_str(), "+33 (6) 12-34.56 78");
        assert_eq!(t.phone.normalized(), "+33612345678");
        let field = || vec!["customer.phone_number".to_owned()];
        assert_eq!(
            with("/customer/phone_number", json!("\t0612345678")).err(),
            Some(field()),
            "only spaces pad a number"
        );
    }

    #[test]
    fn phone_numbers_need_five_digits_and_a_clean_alphabet() {
        let bad = |v: &str| with("/customer/phone_number", json!(v)).is_err();
        assert!(bad("1234"));
        assert!(!bad("12345"));
        assert!(bad("12345x"));
        assert!(bad("   "));
        assert!(bad(&"1".repeat(33)));
        assert!(!bad(&"1".repeat(32)));
    }

    #[test]
    fn emails_must_be_plausible() {
        let ok = |v: &str| with("/customer/email", json!(v)).is_ok();
        for good in ["a@b.co", "first.last+tag@sub.example.com"] {
            assert!(ok(good), "{good}");
        }
        for bad in [
            "", "a", "@b.co", "a@b", "a@@b.co", "a@b@c.co", "a@.b.co", "a@b.co.", "a b@c.co",
        ] {
            assert!(!ok(bad), "{bad}");
        }
        assert!(!ok(&format!("{}@example.com", "a".repeat(320))));
        assert!(
            with("/customer/email", Value::Null)
                .unwrap()
                .email
                .is_none()
        );
    }

    #[test]
    fn urls_must_be_absolute_http() {
        let ok = |v: &str| with("/ticket/messages/0/attachments/0/url", json!(v)).is_ok();
        assert!(ok("https://example.com/f.png"));
        assert!(ok("http://127.0.0.1:8080/x"));
        assert!(ok("HTTPS://example.com?q=1#f"));
        for bad in [
            "ftp://example.com/x",
            "/relative",
            "example.com/x",
            "https://",
            "",
            "http://exa mple.com",
            "http://host:/x",
            "http://host:123456",
            "http://host/a b",
            "http://[::1]/",
        ] {
            assert!(!ok(bad), "{bad}");
        }
    }

    #[test]
    fn content_types_are_type_slash_subtype() {
        let ok = |v: &str| with("/ticket/messages/0/attachments/0/content_type", json!(v)).is_ok();
        for good in [
            "image/png",
            "application/vnd.ms-excel",
            "text/plain; charset=utf-8",
        ] {
            assert!(ok(good), "{good}");
        }
        for bad in ["image", "image/", "/png", "image/png/x", "ima ge/png", ""] {
            assert!(!ok(bad), "{bad}");
        }
    }

    #[test]
    fn a_whole_float_size_is_a_whole_number() {
        let t = with("/ticket/messages/0/attachments/0/size", json!(1024.0)).unwrap();
        assert_eq!(t.messages[0].attachments[0].size, 1024);
        let max = limits::ATTACHMENT_SIZE_MAX;
        assert!(with("/ticket/messages/0/attachments/0/size", json!(max)).is_ok());
        assert!(with("/ticket/messages/0/attachments/0/size", json!(max + 1)).is_err());
    }

    #[test]
    fn a_whole_float_custom_field_id_is_an_id_and_counts_for_uniqueness() {
        let mut body = example();
        body["ticket"]["custom_fields"] = json!([{"id": 12.0, "value": "a"}]);
        let t = NewTicket::parse(&body).unwrap();
        assert_eq!(t.options.custom_fields[0].id, 12);
        body["ticket"]["custom_fields"] =
            json!([{"id": 12, "value": "a"}, {"id": 12.0, "value": "b"}]);
        let e = NewTicket::parse(&body).unwrap_err();
        assert_eq!(e.errors[0].field, "ticket.custom_fields[1].id");
    }

    #[test]
    fn repeated_message_ids_are_refused_with_the_other_problems() {
        let mut body = example();
        body["ticket"]["messages"][1]["id"] = body["ticket"]["messages"][0]["id"].clone();
        body["customer"]["email"] = json!("x");
        let e = NewTicket::parse(&body).unwrap_err();
        let fields: Vec<&str> = e.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["customer.email", "ticket.messages[1].id"]);
    }

    #[test]
    fn with_a_default_region_both_spellings_become_one_e164_number() {
        let rules = Rules {
            phone_region: Some("KE".parse().unwrap()),
        };
        let mut body = example();
        for spelling in ["0719 908 543", "+254719908543", " 0719908543 "] {
            body["customer"]["phone_number"] = json!(spelling);
            let t = NewTicket::parse_with(&body, &rules).unwrap();
            assert_eq!(t.phone.as_str(), "+254719908543", "{spelling}");
            assert_eq!(t.phone.normalized(), "+254719908543", "{spelling}");
        }
        body["customer"]["phone_number"] = json!("12345");
        let e = NewTicket::parse_with(&body, &rules).unwrap_err();
        assert_eq!(e.errors.len(), 1);
        assert_eq!(e.errors[0].field, "customer.phone_number");
        assert_eq!(e.errors[0].problem, Problem::Rule);
        assert!(
            e.errors[0].message.contains("KE"),
            "{}",
            e.errors[0].message
        );
        // Without a region the number is kept as sent.
        body["customer"]["phone_number"] = json!("0719 908 543");
        assert_eq!(
            NewTicket::parse(&body).unwrap().phone.as_str(),
            "0719 908 543"
        );
    }

    #[test]
    fn a_flood_of_problems_is_listed_up_to_the_bound_then_counted() {
        let mut body = example();
        body["ticket"]["messages"][0]["attachments"] = json!(vec![json!({}); 1000]);
        let e = NewTicket::parse(&body).unwrap_err();
        assert_eq!(e.errors.len(), PROBLEMS_SHOWN + 1);
        let last = e.errors.last().unwrap();
        assert_eq!(last.field, "$");
        assert!(
            last.message.contains("more problems not listed"),
            "{}",
            last.message
        );
    }
}
