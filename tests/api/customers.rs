//! Customer resolution (email, phone search, create, 409) and the ticket channel.

use serde_json::{Value, json};
use wiremock::matchers::{method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{
    calls_between, example, serve, settings_warmed, sim_config, spawn_app, spawn_app_with,
    test_config, ticket_for,
};

async fn stored_ticket(app: &crate::helpers::TestApp, resp: reqwest::Response) -> Value {
    assert_eq!(resp.status(), 201);
    let body: Value = resp.json().await.unwrap();
    app.sim
        .ticket(body["id"].as_str().unwrap().parse().unwrap())
        .unwrap()
}

#[tokio::test]
async fn a_customer_found_by_email_is_used_without_search_or_create() {
    let app = spawn_app().await;
    let id = app.add_known("jane@example.com", "+33 6 00 00 00 01");
    let resp = app
        .post_ticket(&ticket_for("+33600000001", Some("jane@example.com")))
        .await;
    let t = stored_ticket(&app, resp).await;
    assert_eq!(t["customer"]["id"], id);
    let s = app.stats();
    assert_eq!(s.requests.get("POST /api/search"), None);
    assert_eq!(s.customers_created, 0);
}

#[tokio::test]
async fn an_unknown_email_falls_back_to_the_phone_search() {
    let app = spawn_app().await;
    // Stored in another format than the caller's: normalised comparison must still match.
    let id = app.sim.add_customer(None, Some("+33 (6) 12-34-56-78"));
    let resp = app
        .post_ticket(&ticket_for("+33612345678", Some("new@example.com")))
        .await;
    let t = stored_ticket(&app, resp).await;
    assert_eq!(t["customer"]["id"], id);
    let s = app.stats();
    assert_eq!(s.requests.get("GET /api/customers"), Some(&1));
    assert_eq!(s.requests.get("POST /api/search"), Some(&1));
    assert_eq!(s.customers_created, 0);
}

#[tokio::test]
async fn a_phone_only_customer_is_found_by_search() {
    let app = spawn_app().await;
    let id = app.sim.add_customer(None, Some("0719908543"));
    let resp = app.post_ticket(&ticket_for("0719908543", None)).await;
    let t = stored_ticket(&app, resp).await;
    assert_eq!(t["customer"]["id"], id);
    assert_eq!(
        app.stats().requests.get("GET /api/customers"),
        None,
        "no email to look up"
    );
}

#[tokio::test]
async fn a_longer_number_matching_by_prefix_is_not_taken_for_ours() {
    let app = spawn_app().await;
    let other = app.sim.add_customer(None, Some("+336123456789"));
    let resp = app.post_ticket(&ticket_for("+33612345678", None)).await;
    let t = stored_ticket(&app, resp).await;
    assert_ne!(t["customer"]["id"], other);
    assert_eq!(app.stats().customers_created, 1);
}

#[tokio::test]
async fn an_unknown_customer_is_created_with_email_and_phone_channels() {
    let app = spawn_app().await;
    let resp = app
        .post_ticket(&ticket_for("+1 555 0100", Some("fresh@example.com")))
        .await;
    let t = stored_ticket(&app, resp).await;
    assert_eq!(app.stats().customers_created, 1);
    let channels = t["customer"]["channels"].as_array().unwrap();
    let kinds: Vec<(&str, &str)> = channels
        .iter()
        .map(|c| (c["type"].as_str().unwrap(), c["address"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [("email", "fresh@example.com"), ("phone", "+1 555 0100")]
    );
}

#[tokio::test]
async fn concurrent_requests_for_one_new_customer_create_it_once() {
    let app = spawn_app().await;
    let body = ticket_for("+44 20 7946 0000", Some("crowd@example.com"));
    let answers = futures_util_join(&app, &body, 20).await;
    assert!(answers.iter().all(|s| *s == 201), "{answers:?}");
    assert_eq!(app.stats().customers_created, 1);
    assert_eq!(app.stats().tickets_created, 20);
}

async fn futures_util_join(app: &crate::helpers::TestApp, body: &Value, n: usize) -> Vec<u16> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let http = app.http.clone();
        let address = app.address.clone();
        let body = body.clone();
        set.spawn(async move {
            crate::helpers::post_ticket(&http, &address, &body)
                .await
                .status()
                .as_u16()
        });
    }
    set.join_all().await
}

#[tokio::test]
async fn a_409_on_create_is_resolved_by_looking_the_customer_up_again() {
    // Scripted: the customer appears between our lookup and our create (another writer).
    let gorgias = MockServer::start().await;
    let empty = json!({"data": [], "object": "list", "uri": "/api/customers", "meta": {"prev_cursor": null, "next_cursor": null}});
    Mock::given(method("GET"))
        .and(path("/api/customers"))
        .and(query_param("email", "race@example.com"))
        .respond_with(ResponseTemplate::new(200).set_body_json(&empty))
        .up_to_n_times(1)
        .expect(1)
        .mount(&gorgias)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/customers"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"data": [{"id": 4242, "email": "race@example.com"}]})),
        )
        .expect(1)
        .mount(&gorgias)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/search"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"data": []})))
        .expect(1)
        .mount(&gorgias)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/customers"))
        .respond_with(
            ResponseTemplate::new(409)
                .set_body_json(json!({"error": {"msg": "The resource already exists."}})),
        )
        .expect(1)
        .mount(&gorgias)
        .await;
    let recorded: Value =
        serde_json::from_str(include_str!("../fixtures/post-tickets.json")).unwrap();
    Mock::given(method("POST"))
        .and(path("/api/tickets"))
        .and(wiremock::matchers::body_partial_json(
            json!({"customer": {"id": 4242}}),
        ))
        .respond_with(ResponseTemplate::new(201).set_body_json(&recorded["body"]))
        .expect(1)
        .mount(&gorgias)
        .await;
    let mut config = test_config(gorgias.uri().parse().unwrap());
    config.ticketing.channel_override = Some("email".into());
    let (address, _stop) = serve(config).await;
    let resp = crate::helpers::post_ticket(
        &reqwest::Client::new(),
        &address,
        &ticket_for("+1 555 0199", Some("race@example.com")),
    )
    .await;
    assert_eq!(resp.status(), 201);
}

#[tokio::test]
async fn an_account_that_auto_assigns_sms_gets_phone_tickets() {
    let app = spawn_app().await;
    let resp = app.post_ticket(&ticket_for("+1 555 0101", None)).await;
    let t = stored_ticket(&app, resp).await;
    assert_eq!(t["channel"], "phone");
    assert_eq!(t["messages"][0]["channel"], "phone");
}

#[tokio::test]
async fn an_account_without_sms_gets_email_tickets() {
    let mut sim = sim_config();
    sim.assignment_channels = vec!["chat".into(), "email".into()];
    let app = spawn_app_with(sim, |_| {}).await;
    let resp = app.post_ticket(&ticket_for("+1 555 0102", None)).await;
    let t = stored_ticket(&app, resp).await;
    assert_eq!(t["channel"], "email");
    // The live API refuses email-channel messages without a source envelope: messages go as
    // `phone` whatever the ticket channel (gorgias-api.md §11).
    assert_eq!(t["messages"][0]["channel"], "phone");
    assert_eq!(t["messages"][0]["source"]["type"], "phone");
}

#[tokio::test]
async fn the_example_request_answers_201_with_channel_email_on_an_email_account() {
    let mut sim = sim_config();
    sim.assignment_channels = vec!["chat".into(), "email".into()];
    let app = spawn_app_with(sim, |_| {}).await;
    let resp = app.post_ticket(&example()).await;
    assert_eq!(resp.status(), 201);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["channel"], "email");
    assert_eq!(body["messages"][0]["channel"], "phone");
}

#[tokio::test]
async fn message_channel_api_overrides_phone() {
    let app = spawn_app_with(sim_config(), |c| {
        c.ticketing.message_channel = gorgias_proxy::ticketing::MessageChannel::Api;
    })
    .await;
    let resp = app.post_ticket(&ticket_for("+1 555 0105", None)).await;
    let t = stored_ticket(&app, resp).await;
    assert_eq!(t["channel"], "phone");
    assert_eq!(t["messages"][0]["channel"], "api");
}

#[tokio::test]
async fn the_simulator_refuses_an_email_message_without_a_source_as_gorgias_does() {
    let app = spawn_app().await;
    let body = serde_json::json!({
        "channel": "email", "from_agent": false,
        "messages": [{"channel": "email", "via": "api", "from_agent": false,
                      "sender": {"email": "a@example.com"}, "body_text": "hi"}]
    });
    let resp = reqwest::Client::new()
        .post(app.sim.url().join("api/tickets").unwrap())
        .basic_auth("sandbox@example.com", Some("sandbox-key"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.unwrap();
    assert!(
        err["error"]["data"]["messages"]["0"]["source"].is_array(),
        "{err}"
    );
    assert_eq!(app.stats().tickets_created, 0);
}

#[tokio::test]
async fn ticket_channel_overrides_the_settings_and_skips_their_lookup() {
    let app = spawn_app_with(sim_config(), |c| {
        c.ticketing.channel_override = Some("api".into());
    })
    .await;
    let resp = app.post_ticket(&ticket_for("+1 555 0103", None)).await;
    let t = stored_ticket(&app, resp).await;
    assert_eq!(t["channel"], "api");
    assert_eq!(app.stats().requests.get("GET /api/account/settings"), None);
}

#[tokio::test]
async fn a_returning_customer_costs_one_call_and_a_new_one_at_most_four() {
    let app = spawn_app().await;
    settings_warmed(&app.sim).await;
    let body = ticket_for("+1 555 0104", Some("budget@example.com"));
    let s0 = app.stats();
    assert_eq!(app.post_ticket(&body).await.status(), 201);
    let s1 = app.stats();
    assert!(
        calls_between(&s0, &s1) <= 4,
        "new customer: {:?}",
        s1.requests
    );
    assert_eq!(app.post_ticket(&body).await.status(), 201);
    let s2 = app.stats();
    assert_eq!(
        calls_between(&s1, &s2),
        1,
        "returning customer: only the ticket"
    );
    assert_eq!(s2.requests.get("POST /api/tickets"), Some(&2));
}

impl crate::helpers::TestApp {
    fn add_known(&self, email: &str, phone: &str) -> u64 {
        self.sim.add_customer(Some(email), Some(phone))
    }
}

#[tokio::test]
async fn with_a_default_region_two_spellings_of_one_number_make_one_customer() {
    let app = spawn_app_with(sim_config(), |c| {
        c.rules.phone_region = Some("KE".parse().unwrap());
    })
    .await;
    let first = app.post_ticket(&ticket_for("0719 908 543", None)).await;
    let first = stored_ticket(&app, first).await;
    let second = app.post_ticket(&ticket_for("+254719908543", None)).await;
    let second = stored_ticket(&app, second).await;
    assert_eq!(app.stats().customers_created, 1);
    assert_eq!(first["customer"]["id"], second["customer"]["id"]);
    let phones: Vec<&Value> = first["customer"]["channels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["type"] == "phone")
        .map(|c| &c["address"])
        .collect();
    assert_eq!(phones, [&json!("+254719908543")], "stored in E.164");
    let impossible = app.post_ticket(&ticket_for("12345", None)).await;
    assert_eq!(impossible.status(), 422);
    let problem: Value = impossible.json().await.unwrap();
    assert_eq!(problem["errors"][0]["field"], "customer.phone_number");
}
