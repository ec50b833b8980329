//! Idempotency as leases: a caller that hangs up does not cancel its ticket, a create whose
//! outcome is unknown says so, and a replica killed mid-create leaves neither a stuck key nor
//! a duplicate.

use std::time::{Duration, Instant};

use gorgias_sim::{CommitFailure, Faults};
use serde_json::Value;

use crate::helpers::{
    TestApp, redis_url, sim_config, sim_stats, spawn_app_with, start_proxy, start_sim, ticket_for,
    unique,
};

pub(crate) async fn post_keyed(
    http: &reqwest::Client,
    address: &str,
    key: &str,
    body: &Value,
    timeout: Duration,
) -> reqwest::Result<reqwest::Response> {
    http.post(format!("{address}/ticket"))
        .header("idempotency-key", key)
        .timeout(timeout)
        .json(body)
        .send()
        .await
}

/// Retries with the same key (as a caller would) until a final answer or `within` passes;
/// returns the answer and the statuses seen before it.
async fn retry_until_final(
    http: &reqwest::Client,
    address: &str,
    key: &str,
    body: &Value,
    within: Duration,
) -> (reqwest::Response, Vec<u16>) {
    let start = Instant::now();
    let mut seen = Vec::new();
    loop {
        assert!(
            start.elapsed() < within,
            "no final answer within {within:?}; statuses: {seen:?}"
        );
        match post_keyed(http, address, key, body, Duration::from_secs(2)).await {
            Ok(r) if r.status() == 201 || r.status() == 422 => return (r, seen),
            Ok(r) => seen.push(r.status().as_u16()),
            Err(_) => seen.push(0),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn a_caller_with_a_1s_timeout_gets_its_ticket_on_retry(redis: Option<String>) {
    // Gorgias answers every call in 3 s; a new customer takes three calls.
    let mut sim = sim_config();
    sim.faults = Faults {
        latency_ms: 3000,
        ..Faults::default()
    };
    let app: TestApp = spawn_app_with(sim, |c| {
        c.redis_url = redis;
        c.request_deadline = Duration::from_secs(30);
        c.shutdown_drain = Duration::from_secs(30);
        c.gorgias.attempt_timeout = Duration::from_secs(10);
        c.ticketing.channel_override = Some("phone".into());
    })
    .await;
    let key = unique("impatient");
    let body = ticket_for("+1 555 0101010", None);
    let first = post_keyed(&app.http, &app.address, &key, &body, Duration::from_secs(1)).await;
    assert!(first.is_err(), "the caller gave up after 1 s");

    let (answer, seen) = retry_until_final(
        &app.http,
        &app.address,
        &key,
        &body,
        Duration::from_secs(40),
    )
    .await;
    assert_eq!(answer.status(), 201, "statuses before: {seen:?}");
    assert!(
        seen.iter().all(|s| *s == 409),
        "while the work ran, the key was in progress: {seen:?}"
    );
    assert_eq!(answer.headers()["idempotency-replayed"], "true");
    assert_eq!(app.stats().tickets_created, 1, "one ticket");
}

#[tokio::test]
async fn a_caller_with_a_1s_timeout_against_a_3s_gorgias_gets_201_on_retry() {
    a_caller_with_a_1s_timeout_gets_its_ticket_on_retry(None).await;
}

#[tokio::test]
async fn a_caller_with_a_1s_timeout_gets_its_ticket_on_retry_with_redis() {
    let Some(redis) = redis_url() else { return };
    a_caller_with_a_1s_timeout_gets_its_ticket_on_retry(Some(redis)).await;
}

#[tokio::test]
async fn an_unknown_create_outcome_is_a_503_naming_the_external_id_and_the_retry_gets_it() {
    // The create is stored but answered 500, and every lookup fails: nobody can tell yet.
    let mut sim = sim_config();
    sim.faults = Faults {
        fail_after_commit_rate: 1.0,
        fail_after_commit: CommitFailure::Status500,
        error_rate: 1.0,
        error_status: Some(503),
        error_routes: vec!["GET /api/tickets".into()],
        ..Faults::default()
    };
    let app = spawn_app_with(sim, |c| c.ticketing.channel_override = Some("phone".into())).await;
    let key = unique("unknown");
    let body = ticket_for("+1 555 0202020", None);
    let first = post_keyed(
        &app.http,
        &app.address,
        &key,
        &body,
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    assert_eq!(first.status(), 503);
    assert!(first.headers().contains_key("retry-after"));
    let problem: Value = first.json().await.unwrap();
    assert_eq!(problem["code"], "ticket_outcome_unknown", "{problem}");
    let external_id = problem["external_id"].as_str().unwrap().to_owned();
    assert_eq!(
        app.sim.ticket_external_ids(),
        [Some(external_id.clone())],
        "the ticket the caller was not told about exists, with that external_id"
    );

    // Gorgias recovers; the keyed retry finds that ticket rather than making a second.
    app.sim.set_faults(Faults::default());
    let retry = post_keyed(
        &app.http,
        &app.address,
        &key,
        &body,
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    assert_eq!(retry.status(), 201);
    let ticket: Value = retry.json().await.unwrap();
    assert_eq!(ticket["external_id"], external_id.as_str());
    assert_eq!(app.stats().tickets_created, 1);
}

#[tokio::test]
async fn a_replica_killed_after_gorgias_saved_the_ticket_leaves_one_ticket_and_no_stuck_key() {
    let Some(redis) = redis_url() else { return };
    // Gorgias stores the ticket, then takes 20 s to answer: the window to kill the replica in.
    let (_sim, sim_url) = start_sim(&["--rate-limit", "off", "--commit-latency-ms", "20000"]);
    let env = [
        ("REDIS_URL", redis.as_str()),
        ("TICKET_CHANNEL", "phone"),
        ("GORGIAS_TIMEOUT_MS", "30000"),
    ];
    let (mut first, first_url) = start_proxy(&sim_url, &env);
    let (_second, second_url) = start_proxy(&sim_url, &env);
    let http = reqwest::Client::new();
    let key = unique("killed");
    let body = ticket_for("+1 555 0303030", None);

    let pending = {
        let (http, url, key, body) = (http.clone(), first_url.clone(), key.clone(), body.clone());
        tokio::spawn(
            async move { post_keyed(&http, &url, &key, &body, Duration::from_secs(60)).await },
        )
    };
    let saved = Instant::now();
    while sim_stats(&http, &sim_url).await.tickets_created == 0 {
        assert!(
            saved.elapsed() < Duration::from_secs(10),
            "the ticket was never saved"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.0.kill().unwrap(); // SIGKILL: no drain, no release, no renewal
    first.0.wait().unwrap();
    let _ = pending.await;

    let killed = Instant::now();
    let (answer, seen) =
        retry_until_final(&http, &second_url, &key, &body, Duration::from_secs(45)).await;
    let lapse = killed.elapsed();
    assert_eq!(answer.status(), 201, "statuses before: {seen:?}");
    assert!(
        !seen.is_empty() && seen.iter().all(|s| *s == 409),
        "{seen:?}"
    );
    assert!(
        lapse < Duration::from_secs(20),
        "the lease lapsed in {lapse:?}"
    );
    let ticket: Value = answer.json().await.unwrap();
    assert!(ticket["external_id"].as_str().unwrap().starts_with("idem-"));
    assert_eq!(
        sim_stats(&http, &sim_url).await.tickets_created,
        1,
        "the second replica found the first's ticket instead of making another"
    );
}
