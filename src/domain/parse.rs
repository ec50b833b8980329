//! The walk from the caller's JSON to a [`NewTicket`].
//!
//! Why a walk over `serde_json::Value` and not `#[derive(Deserialize)]` with
//! `deny_unknown_fields`: serde stops at the first problem, and callers asked for all of them
//! in one answer, each with its path. The walk is total: any JSON value yields a ticket or a
//! non-empty list of problems, never a panic.

use std::collections::HashSet;

use serde_json::{Map, Value};

use super::ValidationErrors;
use super::limits;
use super::values::{
    Attachment, ContentType, Email, HttpUrl, MessageId, NewMessage, NewTicket, PhoneNumber,
};

impl NewTicket {
    /// Parses and validates a `POST /ticket` body.
    ///
    /// # Errors
    /// Every problem found, in document order; shape problems (types, unknown or missing
    /// fields) are marked so the HTTP layer can answer 400 rather than 422.
    pub fn parse(body: &Value) -> Result<Self, ValidationErrors> {
        let mut errs = ValidationErrors::default();
        let ticket = parse_root(body, &mut errs);
        match ticket {
            Some(t) if errs.errors.is_empty() => Ok(t),
            _ => {
                debug_assert!(!errs.errors.is_empty());
                if errs.errors.is_empty() {
                    // Unreachable by construction; kept so a logic slip answers 400, not 201.
                    errs.shape("", "the body could not be read");
                }
                Err(errs)
            }
        }
    }
}

fn parse_root(body: &Value, errs: &mut ValidationErrors) -> Option<NewTicket> {
    let root = object(body, "", errs)?;
    deny_unknown(root, &["customer", "ticket"], "", errs);
    let customer = required(root, "customer", "", errs).and_then(|v| object(v, "customer", errs));
    let (phone, email) = match customer {
        Some(c) => parse_customer(c, errs),
        None => (None, None),
    };
    let ticket = required(root, "ticket", "", errs).and_then(|v| object(v, "ticket", errs));
    let messages = ticket.and_then(|t| parse_ticket(t, errs));
    Some(NewTicket {
        phone: phone?,
        email: email?,
        messages: messages?,
    })
}

/// Returns the phone and the (optional) email; `None` in either slot means "had a problem".
#[allow(clippy::option_option)]
fn parse_customer(
    c: &Map<String, Value>,
    errs: &mut ValidationErrors,
) -> (Option<PhoneNumber>, Option<Option<Email>>) {
    deny_unknown(c, &["phone_number", "email"], "customer", errs);
    let phone = required_str(c, "phone_number", "customer", errs)
        .and_then(|s| rule(PhoneNumber::parse(s), "customer.phone_number", errs));
    let email = match c.get("email") {
        None | Some(Value::Null) => Some(None),
        Some(Value::String(s)) => rule(Email::parse(s), "customer.email", errs).map(Some),
        Some(other) => {
            wrong_type(other, "string", "customer.email", errs);
            None
        }
    };
    (phone, email)
}

fn parse_ticket(t: &Map<String, Value>, errs: &mut ValidationErrors) -> Option<Vec<NewMessage>> {
    deny_unknown(t, &["messages"], "ticket", errs);
    let list = match required(t, "messages", "ticket", errs)? {
        Value::Array(a) => a,
        other => {
            wrong_type(other, "array", "ticket.messages", errs);
            return None;
        }
    };
    let mut ok = true;
    if list.is_empty() {
        errs.rule("ticket.messages", "must hold at least one message");
        ok = false;
    }
    if list.len() > limits::MESSAGES_MAX {
        errs.rule(
            "ticket.messages",
            format!("must hold at most {} messages", limits::MESSAGES_MAX),
        );
        // Walking thousands of items only to list thousands of errors helps no one.
        return None;
    }
    let mut seen: HashSet<&str> = HashSet::with_capacity(list.len());
    let mut messages = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let path = format!("ticket.messages[{i}]");
        // Duplicates are checked on the raw id so they are reported even if another field fails.
        if let Some(Value::String(id)) = item.get("id")
            && !id.is_empty()
            && !seen.insert(id.as_str())
        {
            errs.rule(
                format!("{path}.id"),
                "must be unique within the ticket; an earlier message has the same id",
            );
            ok = false;
        }
        match parse_message(item, &path, errs) {
            Some(m) => messages.push(m),
            None => ok = false,
        }
    }
    ok.then_some(messages)
}

fn parse_message(item: &Value, path: &str, errs: &mut ValidationErrors) -> Option<NewMessage> {
    let m = object(item, path, errs)?;
    deny_unknown(
        m,
        &["id", "body_text", "body_html", "attachments"],
        path,
        errs,
    );
    let id = required_str(m, "id", path, errs)
        .and_then(|s| rule(MessageId::parse(s), &format!("{path}.id"), errs));
    let text = required_str(m, "body_text", path, errs);
    let html = required_str(m, "body_html", path, errs);
    let mut bodies_ok = text.is_some() && html.is_some();
    if let (Some(t), Some(h)) = (text, html)
        && t.chars().all(super::values::is_pattern_space)
        && h.chars().all(super::values::is_pattern_space)
    {
        errs.rule(
            format!("{path}.body_text"),
            "body_text and body_html must not both be blank",
        );
        bodies_ok = false;
    }
    let attachments = match m.get("attachments") {
        None | Some(Value::Null) => Some(Vec::new()),
        Some(Value::Array(list)) => {
            let mut out = Vec::with_capacity(list.len());
            let mut all = true;
            for (j, a) in list.iter().enumerate() {
                match parse_attachment(a, &format!("{path}.attachments[{j}]"), errs) {
                    Some(a) => out.push(a),
                    None => all = false,
                }
            }
            all.then_some(out)
        }
        Some(other) => {
            wrong_type(other, "array", &format!("{path}.attachments"), errs);
            None
        }
    };
    if !bodies_ok {
        return None;
    }
    Some(NewMessage {
        id: id?,
        body_text: text?.to_owned(),
        body_html: html?.to_owned(),
        attachments: attachments?,
    })
}

fn parse_attachment(a: &Value, path: &str, errs: &mut ValidationErrors) -> Option<Attachment> {
    let m = object(a, path, errs)?;
    deny_unknown(m, &["url", "name", "size", "content_type"], path, errs);
    let url = required_str(m, "url", path, errs)
        .and_then(|s| rule(HttpUrl::parse(s), &format!("{path}.url"), errs));
    let name = required_str(m, "name", path, errs).and_then(|s| {
        let n = s.chars().count();
        if n == 0 || n > limits::ATTACHMENT_NAME_MAX_CHARS {
            errs.rule(
                format!("{path}.name"),
                format!(
                    "must be 1 to {} characters",
                    limits::ATTACHMENT_NAME_MAX_CHARS
                ),
            );
            None
        } else {
            Some(s.to_owned())
        }
    });
    let size = match required(m, "size", path, errs) {
        // JSON Schema's `integer` includes `1024.0`; a whole float is a whole number.
        Some(Value::Number(n)) => match n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < u64::MAX as f64)
                .map(|f| f as u64)
        }) {
            Some(v) if v <= limits::ATTACHMENT_SIZE_MAX => Some(v),
            _ => {
                errs.rule(
                    format!("{path}.size"),
                    format!(
                        "must be a whole number of bytes from 0 to {}",
                        limits::ATTACHMENT_SIZE_MAX
                    ),
                );
                None
            }
        },
        Some(other) => {
            wrong_type(other, "number", &format!("{path}.size"), errs);
            None
        }
        None => None,
    };
    let content_type = required_str(m, "content_type", path, errs)
        .and_then(|s| rule(ContentType::parse(s), &format!("{path}.content_type"), errs));
    Some(Attachment {
        url: url?,
        name: name?,
        size: size?,
        content_type: content_type?,
    })
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn object<'a>(
    v: &'a Value,
    path: &str,
    errs: &mut ValidationErrors,
) -> Option<&'a Map<String, Value>> {
    match v {
        Value::Object(m) => Some(m),
        other => {
            wrong_type(other, "object", path, errs);
            None
        }
    }
}

fn deny_unknown(m: &Map<String, Value>, allowed: &[&str], path: &str, errs: &mut ValidationErrors) {
    for key in m.keys().filter(|k| !allowed.contains(&k.as_str())) {
        // The key is the caller's own text; cap it so an error body cannot be inflated by it.
        let shown: String = key.chars().take(64).collect();
        errs.shape(
            join(path, &shown),
            format!("unknown field; expected one of: {}", allowed.join(", ")),
        );
    }
}

fn required<'a>(
    m: &'a Map<String, Value>,
    key: &str,
    path: &str,
    errs: &mut ValidationErrors,
) -> Option<&'a Value> {
    let v = m.get(key);
    if v.is_none() {
        errs.shape(join(path, key), "is required");
    }
    v
}

fn required_str<'a>(
    m: &'a Map<String, Value>,
    key: &str,
    path: &str,
    errs: &mut ValidationErrors,
) -> Option<&'a str> {
    match required(m, key, path, errs)? {
        Value::String(s) => Some(s),
        other => {
            wrong_type(other, "string", &join(path, key), errs);
            None
        }
    }
}

fn wrong_type(v: &Value, expected: &str, path: &str, errs: &mut ValidationErrors) {
    let found = match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    let field = if path.is_empty() { "$" } else { path };
    errs.shape(
        field,
        format!("must be {} {expected}, found {found}", article(expected)),
    );
}

fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

fn rule<T>(r: Result<T, String>, path: &str, errs: &mut ValidationErrors) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(message) => {
            errs.rule(path, message);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Problem;

    fn kinds(e: &ValidationErrors) -> Vec<Problem> {
        e.errors.iter().map(|e| e.problem).collect()
    }
    use serde_json::json;

    fn example() -> Value {
        serde_json::from_str(include_str!(
            "../../tests/fixtures/ticket-request.example.json"
        ))
        .unwrap()
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
    fn every_problem_is_reported_at_once() {
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
        assert_eq!(kinds(&e)[0], Problem::Shape);
    }

    #[test]
    fn a_non_object_body_is_a_shape_problem_at_the_root() {
        let e = NewTicket::parse(&json!([1, 2])).unwrap_err();
        assert_eq!(e.errors[0].field, "$");
        assert!(e.is_shape());
    }
}
