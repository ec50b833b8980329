//! `Idempotency-Key`: replay, different body, concurrent use; memory and Redis stores.

use gorgias_sim::Faults;
use serde_json::Value;

use crate::helpers::{
    TestApp, redis_url, sim_config, spawn_app_with, ticket_for, unique, until_stats,
};

async fn post_with_key(app: &TestApp, key: &str, body: &Value) -> reqwest::Response {
    app.http
        .post(format!("{}/ticket", app.address))
        .header("idempotency-key", key)
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn app_with_store(redis: Option<String>, latency_ms: u64) -> TestApp {
    let mut sim = sim_config();
    sim.faults = Faults {
        latency_ms,
        ..Faults::default()
    };
    spawn_app_with(sim, |c| c.redis_url = redis).await
}

async fn replays_the_first_answer_without_calling_gorgias(redis: Option<String>) {
    let app = app_with_store(redis, 0).await;
    let key = unique("replay");
    let body = ticket_for("+1 555 0400", Some(&format!("{}@example.com", unique("r"))));
    let first = post_with_key(&app, &key, &body).await;
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotency-replayed").is_none());
    let first_body = first.text().await.unwrap();
    let calls = app.stats().requests_total;

    let again = post_with_key(&app, &key, &body).await;
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotency-replayed"], "true");
    assert_eq!(again.headers()["content-type"], "application/json");
    assert_eq!(again.text().await.unwrap(), first_body);
    assert_eq!(
        app.stats().requests_total,
        calls,
        "a replay costs no Gorgias call"
    );
    assert_eq!(app.stats().tickets_created, 1);

    // The same request re-serialised (other key order, whitespace) is still the same request.
    let reordered = serde_json::to_string_pretty(&body).unwrap();
    let replay = app
        .http
        .post(format!("{}/ticket", app.address))
        .header("idempotency-key", &key)
        .header("content-type", "application/json")
        .body(reordered)
        .send()
        .await
        .unwrap();
    assert_eq!(replay.headers()["idempotency-replayed"], "true");
}

async fn refuses_the_key_with_another_body(redis: Option<String>) {
    let app = app_with_store(redis, 0).await;
    let key = unique("mismatch");
    let body = ticket_for("+1 555 0401", None);
    assert_eq!(post_with_key(&app, &key, &body).await.status(), 201);
    let other = ticket_for("+1 555 0402", None);
    let resp = post_with_key(&app, &key, &other).await;
    assert_eq!(resp.status(), 422);
    let p: Value = resp.json().await.unwrap();
    assert_eq!(p["code"], "idempotency_key_reused");
    assert_eq!(app.stats().tickets_created, 1);
}

async fn answers_409_while_the_first_is_running(redis: Option<String>) {
    let app = app_with_store(redis, 300).await;
    let key = unique("busy");
    let body = ticket_for("+1 555 0403", None);
    let first = {
        let (http, address, key, body) = (
            app.http.clone(),
            app.address.clone(),
            key.clone(),
            body.clone(),
        );
        tokio::spawn(async move {
            http.post(format!("{address}/ticket"))
                .header("idempotency-key", key)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    // The first request holds the key once it has reached Gorgias.
    until_stats(&app.sim, "the first request reached Gorgias", |s| {
        s.requests.contains_key("POST /api/search")
    })
    .await;
    let second = post_with_key(&app, &key, &body).await;
    assert_eq!(second.status(), 409);
    let p: Value = second.json().await.unwrap();
    assert_eq!(p["code"], "idempotency_in_progress");
    assert_eq!(first.await.unwrap(), 201);
    let third = post_with_key(&app, &key, &body).await;
    assert_eq!(third.headers()["idempotency-replayed"], "true");
    assert_eq!(app.stats().tickets_created, 1);
}

async fn a_failed_attempt_leaves_the_key_free(redis: Option<String>) {
    let app = app_with_store(redis, 0).await;
    let key = unique("retry");
    let body = ticket_for("+1 555 0404", None);
    app.sim.set_faults(Faults {
        error_rate: 1.0,
        error_status: Some(503),
        ..Faults::default()
    });
    let failed = post_with_key(&app, &key, &body).await;
    assert!(failed.status().is_server_error());
    app.sim.set_faults(Faults::default());
    let retried = post_with_key(&app, &key, &body).await;
    assert_eq!(retried.status(), 201);
    assert!(retried.headers().get("idempotency-replayed").is_none());
}

#[tokio::test]
async fn memory_store_replays() {
    replays_the_first_answer_without_calling_gorgias(None).await;
}

#[tokio::test]
async fn memory_store_refuses_another_body() {
    refuses_the_key_with_another_body(None).await;
}

#[tokio::test]
async fn memory_store_answers_409_while_running() {
    answers_409_while_the_first_is_running(None).await;
}

#[tokio::test]
async fn memory_store_frees_the_key_after_a_failure() {
    a_failed_attempt_leaves_the_key_free(None).await;
}

#[tokio::test]
async fn redis_store_replays() {
    if let Some(url) = redis_url() {
        replays_the_first_answer_without_calling_gorgias(Some(url)).await;
    }
}

#[tokio::test]
async fn redis_store_refuses_another_body() {
    if let Some(url) = redis_url() {
        refuses_the_key_with_another_body(Some(url)).await;
    }
}

#[tokio::test]
async fn redis_store_answers_409_while_running() {
    if let Some(url) = redis_url() {
        answers_409_while_the_first_is_running(Some(url)).await;
    }
}

#[tokio::test]
async fn redis_store_frees_the_key_after_a_failure() {
    if let Some(url) = redis_url() {
        a_failed_attempt_leaves_the_key_free(Some(url)).await;
    }
}

#[tokio::test]
async fn a_malformed_key_is_refused() {
    let app = app_with_store(None, 0).await;
    let resp = post_with_key(&app, "has space", &ticket_for("+1 555 0405", None)).await;
    assert_eq!(resp.status(), 400);
    let p: Value = resp.json().await.unwrap();
    assert_eq!(p["code"], "invalid_header");
}

/// The soak found this: a create that landed in Gorgias, whose answer was lost, and whose
/// reconciling lookup failed too, answered 5xx; the caller's retry with the same key then
/// created a second ticket. The key now remembers the failure, and the retry looks first.
#[tokio::test]
async fn a_retry_after_an_unreconciled_failure_finds_the_ticket_instead_of_creating_another() {
    use gorgias_proxy::idempotency::{external_id, fingerprint};
    use wiremock::matchers::{method, path, query_param};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    let body = ticket_for("+1 555 0410", Some("twice@example.com"));
    let key = unique("lost-answer");
    // Keys are scoped by caller; with inbound auth off every caller is `anonymous`.
    let marker = external_id(
        &format!("anonymous:{key}"),
        &fingerprint(&serde_json::to_vec(&body).unwrap()),
    );
    let mut ticket: Value = serde_json::from_str::<Value>(include_str!(
        "../fixtures/post-tickets.json"
    ))
    .unwrap()["body"]
        .clone();
    ticket["external_id"] = Value::String(marker.clone());

    let gorgias = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/customers"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            serde_json::json!({"data": [{"id": 488071553, "email": "twice@example.com"}]}),
        ))
        .mount(&gorgias)
        .await;
    // The create lands but its answer is a 500, every time it is sent.
    Mock::given(method("POST"))
        .and(path("/api/tickets"))
        .respond_with(ResponseTemplate::new(500))
        .expect(1)
        .mount(&gorgias)
        .await;
    // During the first attempt the lookup fails (1 + 3 retries), afterwards it finds it.
    Mock::given(method("GET"))
        .and(path("/api/tickets"))
        .and(query_param("external_id", marker.as_str()))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(4)
        .mount(&gorgias)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/tickets"))
        .and(query_param("external_id", marker.as_str()))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(serde_json::json!({"data": [ticket]})),
        )
        .mount(&gorgias)
        .await;
    let mut config = crate::helpers::test_config(gorgias.uri().parse().unwrap());
    config.ticketing.channel_override = Some("phone".into());
    let (address, _stop) = crate::helpers::serve(config).await;
    let http = reqwest::Client::new();
    let send = || {
        http.post(format!("{address}/ticket"))
            .header("idempotency-key", &key)
            .json(&body)
            .send()
    };
    let first = send().await.unwrap();
    assert!(first.status().is_server_error(), "{}", first.status());
    let second = send().await.unwrap();
    assert_eq!(second.status(), 201);
    let out: Value = second.json().await.unwrap();
    assert_eq!(out["external_id"], marker);
    // `expect(1)` on the POST is checked when the mock server drops: one create, not two.
}

#[tokio::test]
async fn one_key_from_two_callers_makes_two_tickets() {
    let app = spawn_app_with(sim_config(), |c| {
        c.api_tokens = vec!["token-of-a".into(), "token-of-b".into()];
        c.allow_unauthenticated = false;
    })
    .await;
    let body = ticket_for("+1 555 0420", None);
    let key = unique("shared-key");
    let mut ids = Vec::new();
    for token in ["token-of-a", "token-of-b", "token-of-a"] {
        let resp = app
            .http
            .post(format!("{}/ticket", app.address))
            .bearer_auth(token)
            .header("idempotency-key", &key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201, "{token}");
        let t: Value = resp.json().await.unwrap();
        ids.push(t["id"].as_str().unwrap().to_owned());
    }
    assert_ne!(ids[0], ids[1], "two callers, two tickets");
    assert_eq!(
        ids[0], ids[2],
        "the same caller's retry replays its own ticket"
    );
    assert_eq!(app.stats().tickets_created, 2);
}
