//! Properties: no input breaks the service, validation is total and points at real fields, and
//! the Gorgias mapping accepts anything shaped like a ticket.

use gorgias_proxy::domain::NewTicket;
use gorgias_proxy::output::Ticket;
use proptest::prelude::*;
use serde_json::{Map, Value, json};

use crate::helpers::{TestApp, example, spawn_app};

/// Any JSON value, biased towards the shapes the contract uses.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::String),
        prop_oneof![
            Just("customer"),
            Just("ticket"),
            Just("messages"),
            Just("phone_number"),
            Just("email"),
            Just("id"),
            Just("body_text"),
            Just("body_html"),
            Just("attachments"),
            Just("url"),
            Just("name"),
            Just("size"),
            Just("content_type"),
            Just("+33612345678"),
            Just("a@b.co"),
            Just("https://x.io/f"),
            Just("image/png"),
        ]
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(5, 64, 8, |inner| {
        let key = prop_oneof![
            Just("customer".to_owned()),
            Just("ticket".to_owned()),
            Just("messages".to_owned()),
            Just("phone_number".to_owned()),
            Just("email".to_owned()),
            Just("id".to_owned()),
            Just("body_text".to_owned()),
            Just("body_html".to_owned()),
            Just("attachments".to_owned()),
            Just("url".to_owned()),
            Just("size".to_owned()),
            "[a-z_]{1,10}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key, inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// The example with one field replaced by any value: near-valid bodies, where bugs hide.
fn mutated_example() -> impl Strategy<Value = Value> {
    let paths: Vec<&'static str> = vec![
        "/customer/phone_number",
        "/customer/email",
        "/customer",
        "/ticket",
        "/ticket/messages",
        "/ticket/messages/0",
        "/ticket/messages/0/id",
        "/ticket/messages/0/body_text",
        "/ticket/messages/0/body_html",
        "/ticket/messages/0/attachments",
        "/ticket/messages/0/attachments/0",
        "/ticket/messages/0/attachments/0/url",
        "/ticket/messages/0/attachments/0/name",
        "/ticket/messages/0/attachments/0/size",
        "/ticket/messages/0/attachments/0/content_type",
        "/ticket/messages/1/id",
    ];
    (prop::sample::select(paths), any_json()).prop_map(|(path, v)| {
        let mut body = example();
        if let Some(slot) = body.pointer_mut(path) {
            *slot = v;
        }
        body
    })
}

/// True when `field` (as reported) names a place in `body`: every parent exists, and the field
/// itself exists unless it is reported missing.
fn points_at_a_real_field(body: &Value, field: &str, message: &str) -> bool {
    if field == "$" {
        return true;
    }
    let mut segments = Vec::new();
    for part in field.split('.') {
        let (name, rest) = part.split_once('[').unwrap_or((part, ""));
        segments.push(name.to_owned());
        for idx in rest.split('[').filter(|s| !s.is_empty()) {
            segments.push(idx.trim_end_matches(']').to_owned());
        }
    }
    let mut cur = body;
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        let next = match cur {
            Value::Object(m) => m.get(seg),
            Value::Array(a) => seg.parse::<usize>().ok().and_then(|n| a.get(n)),
            _ => None,
        };
        match next {
            Some(v) => cur = v,
            None => return last && message == "is required",
        }
    }
    true
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn validation_is_total_and_its_paths_point_at_real_fields(body in prop_oneof![any_json(), mutated_example()]) {
        match NewTicket::parse(&body) {
            Ok(t) => prop_assert!(!t.messages.is_empty()),
            Err(e) => {
                prop_assert!(!e.errors.is_empty());
                for err in &e.errors {
                    prop_assert!(points_at_a_real_field(&body, &err.field, &err.message),
                        "`{}` ({}) is not a field of {}", err.field, err.message, body);
                }
            }
        }
    }

    #[test]
    fn the_mapping_accepts_any_object_with_an_id_and_a_messages_list(
        id in prop_oneof![any::<u64>().prop_map(|n| json!(n)), "[0-9a-z]{1,12}".prop_map(Value::String)],
        messages in prop::collection::vec(any_json(), 0..4),
        extra in prop::collection::btree_map("[a-z_]{1,12}", any_json(), 0..12),
    ) {
        let mut o: Map<String, Value> = extra.into_iter().collect();
        o.insert("id".into(), id);
        o.insert("messages".into(), Value::Array(messages));
        let wire: gorgias::Ticket = serde_json::from_value(Value::Object(o)).unwrap();
        let t = Ticket::try_from(wire);
        prop_assert!(t.is_ok(), "{t:?}");
        let out = serde_json::to_value(t.unwrap()).unwrap();
        prop_assert!(out["id"].is_string());
        prop_assert!(crate::model::problems(&out).is_empty(), "{:?}", crate::model::problems(&out));
    }
}

fn runtime_and_app() -> (tokio::runtime::Runtime, TestApp) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let app = rt.block_on(spawn_app());
    (rt, app)
}

#[test]
fn any_json_or_bytes_posted_yields_4xx_or_201_never_5xx() {
    let (rt, app) = runtime_and_app();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 300,
        ..ProptestConfig::default()
    });
    let post = |bytes: Vec<u8>| {
        let status = rt
            .block_on(app.post_raw(bytes, Some("application/json")))
            .status();
        assert!(
            status.as_u16() == 201 || status.is_client_error(),
            "answered {status}"
        );
    };
    runner
        .run(&prop_oneof![any_json(), mutated_example()], |v| {
            post(serde_json::to_vec(&v).unwrap());
            Ok(())
        })
        .unwrap();
    runner
        .run(&prop::collection::vec(any::<u8>(), 0..512), |bytes| {
            post(bytes);
            Ok(())
        })
        .unwrap();
    drop(app);
}
