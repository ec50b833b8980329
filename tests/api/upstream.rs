//! Each way Gorgias can fail us, mapped to the documented status, and Gorgias's oddities
//! (unknown enum values, nulls) passing through.

use std::time::Duration;

use gorgias_sim::{Credentials, Faults};
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{
    example, serve, sim_config, spawn_app, spawn_app_with, test_config, ticket_for,
};

async fn problem(resp: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(resp.status().as_u16(), status);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let p: Value = resp.json().await.unwrap();
    assert_eq!(p["code"], code, "{p}");
    p
}

#[tokio::test]
async fn rejected_credentials_answer_502_without_our_key() {
    let app = spawn_app().await;
    app.sim.set_credentials(Credentials {
        username: "someone@example.com".into(),
        api_key: "another-key".into(),
        access_token: None,
    });
    let resp = app.post_ticket(&example()).await;
    let p = problem(resp, 502, "upstream_auth").await;
    let text = p.to_string();
    assert!(
        text.contains("Unauthorized."),
        "Gorgias's message passes through: {text}"
    );
    assert!(
        !text.contains("sandbox-key") && !text.contains("c2FuZGJveA"),
        "{text}"
    );
}

/// A wiremock Gorgias that knows the example's customer, so scripted ticket answers are reached.
async fn scripted_gorgias(
    ticket_answer: ResponseTemplate,
) -> (MockServer, String, tokio::sync::oneshot::Sender<()>) {
    let gorgias = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/customers"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"data": [{"id": 488071553, "email": "nango@example.com"}]})),
        )
        .mount(&gorgias)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/tickets"))
        .respond_with(ticket_answer)
        .mount(&gorgias)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/tickets"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"data": []})))
        .mount(&gorgias)
        .await;
    let mut config = test_config(gorgias.uri().parse().unwrap());
    config.ticketing.channel_override = Some("phone".into());
    let (address, stop) = serve(config).await;
    (gorgias, address, stop)
}

async fn post_example(address: &str) -> reqwest::Response {
    crate::helpers::post_ticket(&reqwest::Client::new(), address, &example()).await
}

#[tokio::test]
async fn a_quota_refusal_passes_gorgias_message_through_as_502() {
    let recorded: Value =
        serde_json::from_str(include_str!("../fixtures/post-tickets-403-quota.json")).unwrap();
    let (_g, address, _stop) =
        scripted_gorgias(ResponseTemplate::new(403).set_body_json(&recorded["body"])).await;
    let p = problem(post_example(&address).await, 502, "upstream_auth").await;
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("Messaging quota exceeded.")
    );
}

#[tokio::test]
async fn gorgias_validation_errors_name_their_fields_in_the_detail() {
    let body = json!({"error": {"msg": "Failed to create ticket",
                                "data": {"messages": {"0": {"channel": ["Missing data for required field."]}}}}});
    let (_g, address, _stop) =
        scripted_gorgias(ResponseTemplate::new(400).set_body_json(body)).await;
    let p = problem(post_example(&address).await, 502, "upstream_rejected").await;
    let detail = p["detail"].as_str().unwrap();
    assert!(detail.contains("Failed to create ticket"), "{detail}");
    assert!(
        detail.contains("messages.0.channel: Missing data for required field."),
        "{detail}"
    );
}

#[tokio::test]
async fn an_undecodable_create_answer_is_an_unknown_outcome_naming_the_external_id() {
    // A 2xx to a create means the ticket exists: an answer we cannot read (or that is no
    // ticket) is not Gorgias refusing, so it is never a 502 that reads as "failed" (#19).
    for answer in [
        ResponseTemplate::new(201).set_body_string("<html>oops</html>"),
        ResponseTemplate::new(201).set_body_json(json!({"no": "id"})),
    ] {
        let (_g, address, _stop) = scripted_gorgias(answer).await;
        let p = problem(post_example(&address).await, 503, "ticket_outcome_unknown").await;
        assert!(p["external_id"].is_string(), "{p}");
    }
}

#[tokio::test]
async fn unknown_enum_values_and_nulls_from_gorgias_pass_through() {
    let mut t: Value = serde_json::from_str::<Value>(include_str!("../fixtures/post-tickets.json"))
        .unwrap()["body"]
        .clone();
    t["via"] = json!("carrier-pigeon");
    t["channel"] = json!("telepathy");
    t["status"] = json!("snoozed");
    t["tags"] = Value::Null;
    t["brand_new_field"] = json!({"x": 1});
    t["messages"][0]["via"] = json!("hologram");
    t["messages"][0]["sender"]["firstname"] = Value::Null;
    t["messages"][0]["attachments"] = Value::Null;
    let (_g, address, _stop) = scripted_gorgias(ResponseTemplate::new(201).set_body_json(&t)).await;
    let resp = post_example(&address).await;
    assert_eq!(resp.status(), 201);
    let out: Value = resp.json().await.unwrap();
    assert_eq!(out["via"], "carrier-pigeon");
    assert_eq!(out["channel"], "telepathy");
    assert_eq!(out["status"], "snoozed");
    assert_eq!(out["tags"], json!([]));
    assert_eq!(out["messages"][0]["via"], "hologram");
    assert_eq!(out["messages"][0]["sender"]["firstname"], "");
    assert_eq!(out["messages"][0]["attachments"], json!([]));
    assert!(out.get("brand_new_field").is_none());
    assert!(
        crate::model::problems(&out).is_empty(),
        "{:?}",
        crate::model::problems(&out)
    );
}

#[tokio::test]
async fn a_persistent_rate_limit_answers_503_with_retry_after() {
    let mut sim = sim_config();
    sim.rate_limit = Some((1, Duration::from_secs(60)));
    let app = spawn_app_with(sim, |c| c.ticketing.channel_override = Some("phone".into())).await;
    // The first call spends the bucket; everything after is refused with a long Retry-After.
    let resp = app
        .post_ticket(&ticket_for("+1 555 0150", Some("rl@example.com")))
        .await;
    let retry_after: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    problem(resp, 503, "upstream_rate_limited").await;
    assert!(app.stats().rate_limited >= 1);
}

#[tokio::test]
async fn gorgias_server_errors_after_retries_answer_502() {
    let mut sim = sim_config();
    sim.faults = Faults {
        error_rate: 1.0,
        error_status: Some(500),
        ..Faults::default()
    };
    let app = spawn_app_with(sim, |_| {}).await;
    problem(app.post_ticket(&example()).await, 502, "upstream_failed").await;
    // A 500 is not retried (only 502/503/504 are); nothing was created.
    assert_eq!(app.stats().tickets_created, 0);
}

#[tokio::test]
async fn a_slow_gorgias_answers_504() {
    let mut sim = sim_config();
    sim.faults = Faults {
        latency_ms: 2_000,
        ..Faults::default()
    };
    let app = spawn_app_with(sim, |c| {
        c.gorgias.attempt_timeout = Duration::from_millis(100);
        c.request_deadline = Duration::from_millis(600);
    })
    .await;
    problem(app.post_ticket(&example()).await, 504, "upstream_timeout").await;
}

#[tokio::test]
async fn an_unreachable_gorgias_answers_503() {
    let (_down, addr) = crate::helpers::closed_port();
    let config = test_config(format!("http://{addr}/").parse().unwrap());
    let (address, _stop) = serve(config).await;
    let resp = post_example(&address).await;
    assert!(resp.headers().contains_key("retry-after"));
    problem(resp, 503, "upstream_unreachable").await;
}
