//! What callers may ask for beyond the seed: subject, tags, priority, customer name, custom
//! fields and meta.

use serde_json::{Value, json};

use crate::helpers::{example, spawn_app, ticket_for};

fn with_every_option() -> Value {
    let mut body = ticket_for("+1 555 0950", Some("options@example.com"));
    body["customer"]["name"] = json!("  Jane Van Doe ");
    body["ticket"]["subject"] = json!("Missed call");
    body["ticket"]["tags"] = json!(["missed-call", "vip", "missed-call"]);
    body["ticket"]["priority"] = json!("high");
    body["ticket"]["custom_fields"] = json!([{"id": 12, "value": "gold"}, {"id": 13, "value": 4.5},
                                             {"id": 14, "value": true}]);
    body["ticket"]["meta"] = json!({"order_id": "A-1042", "source": "ivr"});
    body
}

#[tokio::test]
async fn a_request_with_every_option_answers_201_carrying_them_and_sends_them_to_gorgias() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let resp = app.post_ticket(&with_every_option()).await;

    // Assert: the answer (the seed's output model) carries subject, tags and meta.
    assert_eq!(resp.status(), 201);
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["subject"], "Missed call");
    let tags: Vec<&str> = answer["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        tags,
        ["missed-call", "vip"],
        "duplicates removed, order kept"
    );
    assert_eq!(
        answer["meta"],
        json!({"order_id": "A-1042", "source": "ivr"})
    );
    assert!(crate::model::problems(&answer).is_empty());
    // And Gorgias got them in its shapes.
    let stored = app
        .sim
        .ticket(answer["id"].as_str().unwrap().parse().unwrap())
        .unwrap();
    assert_eq!(stored["priority"], "high");
    assert_eq!(
        stored["custom_fields"],
        json!([{"id": 12, "value": "gold"}, {"id": 13, "value": 4.5}, {"id": 14, "value": true}])
    );
    assert_eq!(stored["customer"]["name"], "Jane Van Doe");
    assert_eq!(stored["customer"]["firstname"], "Jane Van");
    assert_eq!(stored["customer"]["lastname"], "Doe");
}

#[tokio::test]
async fn an_existing_customers_name_is_not_changed_and_not_used_for_lookup() {
    let app = spawn_app().await;
    let id = app
        .sim
        .add_customer(Some("known@example.com"), Some("+1 555 0951"));
    let mut body = ticket_for("+1 555 0951", Some("known@example.com"));
    body["customer"]["name"] = json!("Someone Else");
    let resp = app.post_ticket(&body).await;
    assert_eq!(resp.status(), 201);
    let answer: Value = resp.json().await.unwrap();
    let stored = app
        .sim
        .ticket(answer["id"].as_str().unwrap().parse().unwrap())
        .unwrap();
    assert_eq!(stored["customer"]["id"], id);
    assert!(stored["customer"]["name"].is_null());
    assert_eq!(app.stats().customers_created, 0);
}

#[tokio::test]
async fn each_bad_option_is_refused_naming_its_path() {
    let app = spawn_app().await;
    let cases: Vec<(&str, fn(&mut Value), u16, &str)> = vec![
        (
            "unknown priority",
            |v| v["ticket"]["priority"] = json!("urgent"),
            422,
            "ticket.priority",
        ),
        (
            "priority not a string",
            |v| v["ticket"]["priority"] = json!(1),
            400,
            "ticket.priority",
        ),
        (
            "empty tag",
            |v| v["ticket"]["tags"] = json!(["ok", ""]),
            422,
            "ticket.tags[1]",
        ),
        (
            "long tag",
            |v| v["ticket"]["tags"] = json!(["x".repeat(256)]),
            422,
            "ticket.tags[0]",
        ),
        (
            "tag not a string",
            |v| v["ticket"]["tags"] = json!([{"name": "x"}]),
            400,
            "ticket.tags[0]",
        ),
        (
            "51 tags",
            |v| v["ticket"]["tags"] = json!((0..51).map(|i| format!("t{i}")).collect::<Vec<_>>()),
            422,
            "ticket.tags",
        ),
        (
            "empty subject",
            |v| v["ticket"]["subject"] = json!(""),
            422,
            "ticket.subject",
        ),
        (
            "long subject",
            |v| v["ticket"]["subject"] = json!("s".repeat(999)),
            422,
            "ticket.subject",
        ),
        (
            "custom field id 0",
            |v| v["ticket"]["custom_fields"] = json!([{"id": 0, "value": "a"}]),
            422,
            "ticket.custom_fields[0].id",
        ),
        (
            // Found by schemathesis: `format: int64` alone let 2^63 through.
            "custom field id past 2^53",
            |v| {
                v["ticket"]["custom_fields"] =
                    json!([{"id": 9_223_372_036_854_775_808_u64, "value": false}])
            },
            422,
            "ticket.custom_fields[0].id",
        ),
        (
            "custom field set twice",
            |v| {
                v["ticket"]["custom_fields"] =
                    json!([{"id": 3, "value": "a"}, {"id": 3, "value": "b"}])
            },
            422,
            "ticket.custom_fields[1].id",
        ),
        (
            "custom field value an object",
            |v| v["ticket"]["custom_fields"] = json!([{"id": 3, "value": {}}]),
            400,
            "ticket.custom_fields[0].value",
        ),
        (
            "meta not an object",
            |v| v["ticket"]["meta"] = json!([1]),
            400,
            "ticket.meta",
        ),
        (
            "meta over 4 KiB",
            |v| v["ticket"]["meta"] = json!({"blob": "m".repeat(4100)}),
            422,
            "ticket.meta",
        ),
        (
            "blank name",
            |v| v["customer"]["name"] = json!("   "),
            422,
            "customer.name",
        ),
        (
            "long name",
            |v| v["customer"]["name"] = json!("n".repeat(256)),
            422,
            "customer.name",
        ),
    ];
    for (name, change, status, field) in cases {
        let mut body = example();
        change(&mut body);
        let resp = app.post_ticket(&body).await;
        assert_eq!(resp.status().as_u16(), status, "case `{name}`");
        let problem: Value = resp.json().await.unwrap();
        let fields: Vec<&str> = problem["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert_eq!(fields, [field], "case `{name}`: {problem}");
    }
    assert_eq!(app.stats().tickets_created, 0);
}

#[tokio::test]
async fn the_seed_example_still_answers_201_without_any_option() {
    let app = spawn_app().await;
    let resp = app.post_ticket(&example()).await;
    assert_eq!(resp.status(), 201);
    let stored_id: u64 = resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let stored = app.sim.ticket(stored_id).unwrap();
    assert!(stored["subject"].is_null());
    assert_eq!(stored["tags"], json!([]));
}
