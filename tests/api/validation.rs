//! Bad input: every case answers 4xx problem+json naming the right fields, and never reaches
//! Gorgias.

use serde_json::{Value, json};

use crate::helpers::{example, sim_config, spawn_app_with};

/// The example body with `f` applied.
fn with(f: impl FnOnce(&mut Value)) -> Value {
    let mut v = example();
    f(&mut v);
    v
}

fn msg0(v: &mut Value) -> &mut Value {
    &mut v["ticket"]["messages"][0]
}

#[tokio::test]
async fn bad_bodies_are_refused_with_the_field_paths_at_fault() {
    let app = spawn_app_with(sim_config(), |c| c.body_limit = 64 * 1024).await;
    let long = |n: usize| "a".repeat(n);
    let cases: Vec<(&str, Value, u16, Vec<&str>)> = vec![
        ("not an object", json!([1]), 400, vec!["$"]),
        ("empty object", json!({}), 400, vec!["customer", "ticket"]),
        (
            "unknown top-level field",
            with(|v| v["extra"] = json!(1)),
            400,
            vec!["extra"],
        ),
        (
            "customer not an object",
            with(|v| v["customer"] = json!("x")),
            400,
            vec!["customer"],
        ),
        (
            "phone missing",
            with(|v| {
                v["customer"]
                    .as_object_mut()
                    .unwrap()
                    .remove("phone_number");
            }),
            400,
            vec!["customer.phone_number"],
        ),
        (
            "phone a number",
            with(|v| v["customer"]["phone_number"] = json!(612345678)),
            400,
            vec!["customer.phone_number"],
        ),
        (
            "phone blank",
            with(|v| v["customer"]["phone_number"] = json!("   ")),
            422,
            vec!["customer.phone_number"],
        ),
        (
            "phone with letters",
            with(|v| v["customer"]["phone_number"] = json!("06 CALL ME")),
            422,
            vec!["customer.phone_number"],
        ),
        (
            "phone too few digits",
            with(|v| v["customer"]["phone_number"] = json!("+1 23")),
            422,
            vec!["customer.phone_number"],
        ),
        (
            "phone too long",
            with(|v| v["customer"]["phone_number"] = json!("1".repeat(33))),
            422,
            vec!["customer.phone_number"],
        ),
        (
            "email without @",
            with(|v| v["customer"]["email"] = json!("nango.example.com")),
            422,
            vec!["customer.email"],
        ),
        (
            "email without a dotted domain",
            with(|v| v["customer"]["email"] = json!("a@localhost")),
            422,
            vec!["customer.email"],
        ),
        (
            "email empty local part",
            with(|v| v["customer"]["email"] = json!("@example.com")),
            422,
            vec!["customer.email"],
        ),
        (
            "email too long",
            with(|v| v["customer"]["email"] = json!(format!("{}@example.com", long(320)))),
            422,
            vec!["customer.email"],
        ),
        (
            "email not a string",
            with(|v| v["customer"]["email"] = json!(true)),
            400,
            vec!["customer.email"],
        ),
        (
            "unknown customer field",
            // `name` became a known field (optional); any other stays unknown.
            with(|v| v["customer"]["nickname"] = json!("Jane")),
            400,
            vec!["customer.nickname"],
        ),
        (
            "ticket missing",
            with(|v| {
                v.as_object_mut().unwrap().remove("ticket");
            }),
            400,
            vec!["ticket"],
        ),
        (
            "messages missing",
            with(|v| v["ticket"] = json!({})),
            400,
            vec!["ticket.messages"],
        ),
        (
            "messages not a list",
            with(|v| v["ticket"]["messages"] = json!({})),
            400,
            vec!["ticket.messages"],
        ),
        (
            "no messages",
            with(|v| v["ticket"]["messages"] = json!([])),
            422,
            vec!["ticket.messages"],
        ),
        (
            "too many messages",
            with(|v| {
                let m = v["ticket"]["messages"][1].clone();
                v["ticket"]["messages"] = Value::Array(
                    (0..501)
                        .map(|i| {
                            let mut m = m.clone();
                            m["id"] = json!(format!("m{i}"));
                            m
                        })
                        .collect(),
                );
            }),
            422,
            vec!["ticket.messages"],
        ),
        (
            "message not an object",
            with(|v| v["ticket"]["messages"][1] = json!("hi")),
            400,
            vec!["ticket.messages[1]"],
        ),
        (
            "message id empty",
            with(|v| msg0(v)["id"] = json!("")),
            422,
            vec!["ticket.messages[0].id"],
        ),
        (
            "message id too long",
            with(|v| msg0(v)["id"] = json!(long(256))),
            422,
            vec!["ticket.messages[0].id"],
        ),
        (
            "message id a number",
            with(|v| msg0(v)["id"] = json!(7)),
            400,
            vec!["ticket.messages[0].id"],
        ),
        (
            "duplicate message ids",
            with(|v| v["ticket"]["messages"][1]["id"] = json!("message123")),
            422,
            vec!["ticket.messages[1].id"],
        ),
        (
            "both bodies blank",
            with(|v| {
                msg0(v)["body_text"] = json!(" ");
                msg0(v)["body_html"] = json!("");
            }),
            422,
            vec!["ticket.messages[0].body_text"],
        ),
        (
            "body_html missing",
            with(|v| {
                msg0(v).as_object_mut().unwrap().remove("body_html");
            }),
            400,
            vec!["ticket.messages[0].body_html"],
        ),
        (
            "body_text null",
            with(|v| msg0(v)["body_text"] = Value::Null),
            400,
            vec!["ticket.messages[0].body_text"],
        ),
        (
            "unknown message field",
            with(|v| msg0(v)["subject"] = json!("hi")),
            400,
            vec!["ticket.messages[0].subject"],
        ),
        (
            "attachments not a list",
            with(|v| msg0(v)["attachments"] = json!("x")),
            400,
            vec!["ticket.messages[0].attachments"],
        ),
        (
            "attachment url relative",
            with(|v| msg0(v)["attachments"][0]["url"] = json!("/file1.png")),
            422,
            vec!["ticket.messages[0].attachments[0].url"],
        ),
        (
            "attachment url not http",
            with(|v| msg0(v)["attachments"][1]["url"] = json!("ftp://example.com/f")),
            422,
            vec!["ticket.messages[0].attachments[1].url"],
        ),
        (
            "attachment name empty",
            with(|v| msg0(v)["attachments"][0]["name"] = json!("")),
            422,
            vec!["ticket.messages[0].attachments[0].name"],
        ),
        (
            "attachment name too long",
            with(|v| msg0(v)["attachments"][0]["name"] = json!(long(256))),
            422,
            vec!["ticket.messages[0].attachments[0].name"],
        ),
        (
            "attachment size negative",
            with(|v| msg0(v)["attachments"][0]["size"] = json!(-1)),
            422,
            vec!["ticket.messages[0].attachments[0].size"],
        ),
        (
            "attachment size fractional",
            with(|v| msg0(v)["attachments"][0]["size"] = json!(1.5)),
            422,
            vec!["ticket.messages[0].attachments[0].size"],
        ),
        (
            "attachment size a string",
            with(|v| msg0(v)["attachments"][0]["size"] = json!("1024")),
            400,
            vec!["ticket.messages[0].attachments[0].size"],
        ),
        (
            "attachment content type bare",
            with(|v| msg0(v)["attachments"][0]["content_type"] = json!("png")),
            422,
            vec!["ticket.messages[0].attachments[0].content_type"],
        ),
        (
            "attachment field missing",
            with(|v| {
                msg0(v)["attachments"][0]
                    .as_object_mut()
                    .unwrap()
                    .remove("name");
            }),
            400,
            vec!["ticket.messages[0].attachments[0].name"],
        ),
        (
            "unknown attachment field",
            with(|v| msg0(v)["attachments"][0]["public"] = json!(true)),
            400,
            vec!["ticket.messages[0].attachments[0].public"],
        ),
        (
            "several problems at once",
            with(|v| {
                v["customer"]["phone_number"] = json!("12");
                v["customer"]["email"] = json!("x");
                v["ticket"]["messages"][1]["attachments"] =
                    json!([{"url": "nope", "name": "a", "size": 1, "content_type": "a/b"}]);
            }),
            422,
            vec![
                "customer.phone_number",
                "customer.email",
                "ticket.messages[1].attachments[0].url",
            ],
        ),
    ];
    assert!(cases.len() >= 25);
    let before = app.stats().requests_total;
    for (name, body, status, fields) in cases {
        let resp = app.post_ticket(&body).await;
        assert_eq!(resp.status().as_u16(), status, "case `{name}`");
        assert_eq!(
            resp.headers()["content-type"],
            "application/problem+json",
            "case `{name}`"
        );
        let problem: Value = resp.json().await.unwrap();
        let got: Vec<&str> = problem["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("case `{name}`: no errors list in {problem}"))
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert_eq!(got, fields, "case `{name}`");
        assert_eq!(problem["status"], status, "case `{name}`");
        let code = if status == 400 {
            "invalid_body"
        } else {
            "validation_failed"
        };
        assert_eq!(problem["code"], code, "case `{name}`");
        for e in problem["errors"].as_array().unwrap() {
            assert!(!e["message"].as_str().unwrap().is_empty(), "case `{name}`");
        }
    }
    // Only the start-up settings read may have reached Gorgias: no bad body did.
    assert!(app.stats().requests_total - before <= 1);
    assert_eq!(app.stats().tickets_created, 0);
}

#[tokio::test]
async fn transport_level_mistakes_get_their_own_statuses() {
    let app = spawn_app_with(sim_config(), |c| c.body_limit = 4096).await;
    let cases: Vec<(&str, Vec<u8>, Option<&str>, u16, &str)> = vec![
        (
            "truncated JSON",
            b"{\"customer\":".to_vec(),
            Some("application/json"),
            400,
            "malformed_json",
        ),
        (
            "not JSON at all",
            b"hello".to_vec(),
            Some("application/json"),
            400,
            "malformed_json",
        ),
        (
            "invalid UTF-8",
            vec![b'{', b'"', 0xff, 0xfe, b'"', b':', b'1', b'}'],
            Some("application/json"),
            400,
            "malformed_json",
        ),
        (
            "empty body",
            Vec::new(),
            Some("application/json"),
            400,
            "malformed_json",
        ),
        (
            "deep nesting",
            format!("{}{}", "[".repeat(10_00), "]".repeat(10_00)).into_bytes(),
            Some("application/json"),
            400,
            "malformed_json",
        ),
        (
            "text/plain",
            crate::helpers::EXAMPLE.as_bytes().to_vec(),
            Some("text/plain"),
            415,
            "unsupported_media_type",
        ),
        (
            "no content type",
            crate::helpers::EXAMPLE.as_bytes().to_vec(),
            None,
            415,
            "unsupported_media_type",
        ),
        (
            "form encoded",
            b"a=b".to_vec(),
            Some("application/x-www-form-urlencoded"),
            415,
            "unsupported_media_type",
        ),
        (
            "over the limit",
            vec![b' '; 4097],
            Some("application/json"),
            413,
            "payload_too_large",
        ),
    ];
    for (name, body, ct, status, code) in cases {
        let resp = app.post_raw(body, ct).await;
        assert_eq!(resp.status().as_u16(), status, "case `{name}`");
        assert_eq!(
            resp.headers()["content-type"],
            "application/problem+json",
            "case `{name}`"
        );
        let p: Value = resp.json().await.unwrap();
        assert_eq!(p["code"], code, "case `{name}`");
        assert!(
            p["request_id"].as_str().is_some_and(|s| !s.is_empty()),
            "case `{name}`"
        );
        assert!(
            p["type"].as_str().unwrap().starts_with("urn:"),
            "case `{name}`"
        );
    }
    // Exactly at the limit is accepted as far as size goes (it then fails as JSON).
    let at_limit = app
        .post_raw(vec![b' '; 4096], Some("application/json"))
        .await;
    assert_eq!(at_limit.status(), 400);
}

/// Bodies near the 2 MiB limit, each breaking one rule as many times as it fits.
fn floods() -> Vec<(&'static str, Value)> {
    let base = |messages: Value| json!({"customer": {"phone_number": "+1 555 0100"}, "ticket": {"messages": messages}});
    let message = |id: String| json!({"id": id, "body_text": "x", "body_html": "x"});
    let mut unknown = serde_json::Map::new();
    for i in 0..20_000 {
        unknown.insert(format!("{}{i}", "k".repeat(90)), json!(1));
    }
    vec![
        (
            "2 MiB of empty attachments",
            base(json!([{"id": "m", "body_text": "x", "body_html": "x",
                         "attachments": vec![json!({}); 600_000]}])),
        ),
        (
            "messages that all share one id",
            base(Value::Array((0..40_000).map(|_| message("same".into())).collect())),
        ),
        (
            "500 valid attachments, then bad ones",
            base(json!([{"id": "m", "body_text": "x", "body_html": "x", "attachments":
                (0..3_000).map(|i| if i < 2_500 {
                    json!({"url": "https://example.com/a", "name": "a", "size": 1, "content_type": "a/b"})
                } else {
                    json!({"url": "ftp://nope", "name": "", "size": -1, "content_type": "?"})
                }).collect::<Vec<_>>()}])),
        ),
        ("long unknown keys", {
            let mut b = base(json!([message("m".into())]));
            b["customer"] = Value::Object(unknown);
            b
        }),
        (
            "blank bodies, bad ids",
            base(Value::Array(
                (0..8_000)
                    .map(|i| json!({"id": format!("{i}{}", "\u{1}".repeat(20)), "body_text": " ", "body_html": ""}))
                    .collect(),
            )),
        ),
        ("custom fields and tags", {
            let mut b = base(json!([message("m".into())]));
            b["ticket"]["custom_fields"] =
                Value::Array((0..50_000).map(|_| json!({"id": 1, "value": "v"})).collect());
            b["ticket"]["tags"] = Value::Array((0..20_000).map(|_| json!("")).collect());
            b
        }),
    ]
}

#[tokio::test]
async fn a_flood_of_violations_of_every_rule_gets_a_bounded_answer() {
    let app = spawn_app_with(sim_config(), |c| c.body_limit = 4 * 1024 * 1024).await;
    crate::helpers::settings_warmed(&app.sim).await;
    let before = app.stats().requests_total;
    for (what, body) in floods() {
        let bytes = serde_json::to_vec(&body).unwrap();
        assert!(
            bytes.len() < 4 * 1024 * 1024,
            "{what}: {} bytes",
            bytes.len()
        );
        let resp = app
            .http
            .post(format!("{}/ticket", app.address))
            .header("content-type", "application/json")
            .header("idempotency-key", crate::helpers::unique("flood"))
            .body(bytes)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        assert!(status == 400 || status == 422, "{what}: {status}");
        let text = resp.bytes().await.unwrap();
        assert!(
            text.len() <= 64 * 1024,
            "{what}: a {} byte answer",
            text.len()
        );
        let problem: Value = serde_json::from_slice(&text).unwrap();
        let errors = problem["errors"].as_array().unwrap();
        assert!(
            !errors.is_empty() && errors.len() <= 51,
            "{what}: {} errors",
            errors.len()
        );
    }
    assert_eq!(
        app.stats().requests_total,
        before,
        "nothing reached Gorgias"
    );
}
