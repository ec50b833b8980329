//! `Prefer: respond-async`: accepted at once into the durable outbox, delivered later exactly
//! once, through Gorgias outages and `kill -9`, with a status resource per caller.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use gorgias_sim::{Faults, SimConfig, Simulator};
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::helpers::{
    closed_port, example, get_json, serve, sim_config, sim_stats, spawn_app_with, start_proxy,
    start_sim, temp_data_dir, test_config, ticket_for, unique,
};

pub(crate) fn post_async(
    http: &reqwest::Client,
    address: &str,
    body: &Value,
    prefer: &str,
) -> reqwest::RequestBuilder {
    http.post(format!("{address}/ticket"))
        .header("prefer", prefer)
        .json(body)
}

/// Polls the status resource until the delivery is final or `within` passes.
/// POSTs `body` with `Prefer: respond-async`, expects 202, and returns its status URL.
pub(crate) async fn accepted(http: &reqwest::Client, address: &str, body: &Value) -> String {
    let resp = post_async(http, address, body, "respond-async")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    resp.json::<Value>().await.unwrap()["status_url"]
        .as_str()
        .unwrap()
        .to_owned()
}

pub(crate) async fn until_final(
    http: &reqwest::Client,
    address: &str,
    url: &str,
    within: Duration,
) -> Value {
    let start = Instant::now();
    loop {
        let doc: Value = get_json(http, &format!("{address}{url}")).await;
        if doc["status"] == "delivered" || doc["status"] == "failed" {
            return doc;
        }
        assert!(
            start.elapsed() < within,
            "not delivered within {within:?}: {doc}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn respond_async_is_202_with_a_status_resource_that_ends_with_the_ticket() {
    let app = spawn_app_with(sim_config(), |_| {}).await;
    let resp = post_async(&app.http, &app.address, &example(), "respond-async")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(resp.headers()["preference-applied"], "respond-async");
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "queued");
    assert_eq!(body["status_url"], location.as_str());
    assert_eq!(
        location,
        format!("/tickets/{}", body["id"].as_str().unwrap())
    );

    let doc = until_final(&app.http, &app.address, &location, Duration::from_secs(10)).await;
    assert_eq!(doc["status"], "delivered", "{doc}");
    assert_eq!(doc["attempts"], 1);
    assert!(doc["accepted_at"].as_str().unwrap().ends_with('Z'));
    assert!(doc["delivered_at"].is_string());
    assert!(doc.get("problem").is_none());
    // The ticket is exactly the synchronous output model.
    let sync: Value = app.post_ticket(&example()).await.json().await.unwrap();
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&doc["ticket"]), keys(&sync));
    assert_eq!(
        doc["ticket"]["messages"][0]["body_text"],
        sync["messages"][0]["body_text"]
    );
    assert_eq!(app.stats().tickets_created, 2);
}

#[tokio::test]
async fn wait_answers_201_with_the_ticket_when_it_is_delivered_in_time() {
    let app = spawn_app_with(sim_config(), |_| {}).await;
    let resp = post_async(
        &app.http,
        &app.address,
        &example(),
        "respond-async, wait=10",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 201);
    let ticket: Value = resp.json().await.unwrap();
    assert!(ticket["id"].is_string(), "the output model: {ticket}");
    assert!(ticket["messages"].is_array(), "{ticket}");

    // Gorgias is slower than the wait: 202.
    app.sim.set_faults(Faults {
        latency_ms: 3000,
        ..Faults::default()
    });
    let resp = post_async(&app.http, &app.address, &example(), "respond-async, wait=1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
}

#[tokio::test]
async fn validation_errors_are_the_same_with_and_without_respond_async() {
    let app = spawn_app_with(sim_config(), |_| {}).await;
    let mut bad = example();
    bad["customer"]["phone_number"] = json!("not a phone");
    bad["ticket"]["messages"][0]["attachments"][0]["size"] = json!(-1);
    let sync = app.post_ticket(&bad).await;
    let (sync_status, sync_body): (u16, Value) =
        (sync.status().as_u16(), sync.json().await.unwrap());
    let asy = post_async(&app.http, &app.address, &bad, "respond-async")
        .send()
        .await
        .unwrap();
    assert_eq!(asy.status().as_u16(), sync_status);
    let asy_body: Value = asy.json().await.unwrap();
    assert_eq!(asy_body["errors"], sync_body["errors"]);
    assert_eq!(asy_body["code"], sync_body["code"]);
    assert_eq!(app.stats().tickets_created, 0);
}

#[tokio::test]
async fn a_key_names_one_delivery_and_its_replay_is_the_202_or_the_final_201() {
    let app = spawn_app_with(sim_config(), |_| {}).await;
    let key = unique("async-key");
    let send = |body: Value| {
        post_async(&app.http, &app.address, &body, "respond-async")
            .header("idempotency-key", &key)
            .send()
    };
    let first = send(example()).await.unwrap();
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    let url = first["status_url"].as_str().unwrap().to_owned();
    until_final(&app.http, &app.address, &url, Duration::from_secs(10)).await;

    let again = send(example()).await.unwrap();
    assert_eq!(again.status(), 201, "delivered: the replay is the ticket");
    assert_eq!(again.headers()["idempotency-replayed"], "true");
    let mut other = example();
    other["ticket"]["messages"][0]["body_text"] = json!("something else");
    assert_eq!(send(other).await.unwrap().status(), 422);
    assert_eq!(app.stats().tickets_created, 1);
}

#[tokio::test]
async fn a_caller_sees_only_its_own_deliveries() {
    let app = spawn_app_with(sim_config(), |c| {
        c.api_tokens = vec![SecretString::from("tok-one"), SecretString::from("tok-two")];
        c.allow_unauthenticated = false;
    })
    .await;
    let resp = post_async(&app.http, &app.address, &example(), "respond-async")
        .bearer_auth("tok-one")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let url = resp.json::<Value>().await.unwrap()["status_url"]
        .as_str()
        .unwrap()
        .to_owned();
    let get = |token: Option<&'static str>| {
        let mut r = app.http.get(format!("{}{url}", app.address));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    assert_eq!(get(Some("tok-one")).await.unwrap().status(), 200);
    assert_eq!(get(Some("tok-two")).await.unwrap().status(), 404);
    assert_eq!(get(None).await.unwrap().status(), 401);
    let unknown = app
        .http
        .get(format!("{}/tickets/nope", app.address))
        .bearer_auth("tok-one")
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
}

#[tokio::test]
async fn refused_credentials_make_deliveries_wait_then_fail_at_max_age_with_the_synchronous_problem()
 {
    // #20: a key refused (401) is not the ticket's fault. The delivery waits for new
    // credentials, retrying, and fails only once DELIVERY_MAX_AGE has passed. (Before, the
    // first refusal failed it at once, so a key rotated a minute early lost the backlog.)
    let app = spawn_app_with(sim_config(), |c| {
        c.ticketing.channel_override = Some("phone".into());
        c.delivery.base_backoff = Duration::from_millis(100);
        c.delivery.max_backoff = Duration::from_millis(300);
        c.delivery.max_age = Duration::from_secs(3);
    })
    .await;
    app.sim.set_credentials(gorgias_sim::Credentials {
        username: "someone-else@example.com".into(),
        api_key: "rotated".into(),
        access_token: None,
    });
    let sync = app.post_ticket(&example()).await;
    assert_eq!(sync.status(), 502);
    let sync_problem: Value = sync.json().await.unwrap();
    let resp = post_async(&app.http, &app.address, &example(), "respond-async")
        .send()
        .await
        .unwrap();
    let url = resp.json::<Value>().await.unwrap()["status_url"]
        .as_str()
        .unwrap()
        .to_owned();
    // Still waiting after several refusals.
    let start = Instant::now();
    loop {
        let doc: Value = get_json(&app.http, &format!("{}{url}", app.address)).await;
        assert_ne!(
            doc["status"], "failed",
            "failed before DELIVERY_MAX_AGE: {doc}"
        );
        if doc["attempts"].as_u64().unwrap() >= 3 && doc["status"] != "delivering" {
            assert_eq!(doc["status"], "queued", "{doc}");
            assert_eq!(doc["problem"]["code"], "upstream_auth", "{doc}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "not retried: {doc}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let doc = until_final(&app.http, &app.address, &url, Duration::from_secs(10)).await;
    assert_eq!(doc["status"], "failed", "{doc}");
    assert_eq!(doc["problem"]["code"], "upstream_auth");
    assert_eq!(doc["problem"]["code"], sync_problem["code"]);
    assert_eq!(doc["problem"]["status"], 502);
    // A background attempt has no caller's request id: its problem names the delivery.
    assert_eq!(doc["problem"]["request_id"], doc["id"], "{doc}");
}

/// A simulator on its own thread at a fixed address, so it can be stopped and started again.
fn sim_at(addr: SocketAddr, config: SimConfig) -> tokio::sync::oneshot::Sender<()> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let _sim = Simulator::spawn(config, addr).await.unwrap();
            ready_tx.send(()).unwrap();
            let _ = stopped.await;
        });
    });
    ready_rx.recv().unwrap();
    stop
}

/// The delivery's status once no attempt is in flight (within 30 s): `delivering` only says
/// an attempt is running at that instant.
async fn between_attempts(http: &reqwest::Client, url: &str) -> Value {
    let start = Instant::now();
    loop {
        let doc: Value = get_json(http, url).await;
        if doc["status"] != "delivering" || start.elapsed() > Duration::from_secs(30) {
            return doc;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn twenty_requests_during_a_two_minute_outage_are_all_delivered_once_after_it() {
    let (down, addr) = closed_port();
    let mut config = test_config(format!("http://{addr}").parse().unwrap());
    config.ticketing.channel_override = Some("phone".into());
    config.delivery.max_backoff = Duration::from_secs(10);
    let (address, _stop) = serve(config).await;
    let http = reqwest::Client::new();
    // Gorgias is down (nothing listens) while 20 requests arrive.
    let mut urls = Vec::new();
    for i in 0..20 {
        let body = ticket_for(&format!("+1 555 07{i:05}"), None);
        let resp = post_async(&http, &address, &body, "respond-async")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202, "accepted while Gorgias is down");
        urls.push(
            resp.json::<Value>().await.unwrap()["status_url"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let ready = http.get(format!("{address}/readyz")).send().await.unwrap();
    assert_eq!(
        ready.status(),
        200,
        "an outage of Gorgias alone is not unready"
    );
    tokio::time::sleep(Duration::from_secs(120)).await;
    // Between two attempts (an attempt in flight reads `delivering`): still queued, not failed.
    let doc = between_attempts(&http, &format!("{address}{}", urls[0])).await;
    assert_eq!(doc["status"], "queued", "{doc}");
    assert!(
        doc["attempts"].as_u64().unwrap() > 1,
        "retried meanwhile: {doc}"
    );
    assert_eq!(doc["problem"]["code"], "upstream_unreachable", "{doc}");

    drop(down);
    let _sim = sim_at(addr, sim_config());
    for url in &urls {
        let doc = until_final(&http, &address, url, Duration::from_secs(60)).await;
        assert_eq!(doc["status"], "delivered", "{doc}");
    }
    let stats = sim_stats(&http, &format!("http://{addr}")).await;
    assert_eq!(stats.tickets_created, 20, "each delivered once");
}

/// The service's future dropped while its runtime lives on (an aborted task, an embedding
/// program) stops its delivery workers too: they must not keep calling Gorgias for a service
/// that no longer runs.
#[tokio::test]
async fn an_aborted_run_stops_its_delivery_workers() {
    let (free, addr) = closed_port();
    drop(free);
    // Gorgias refuses every ticket with a 503: each attempt ends at once and is retried.
    let mut sim = sim_config();
    sim.faults = Faults {
        error_rate: 1.0,
        error_routes: vec!["POST /api/tickets".into()],
        ..Faults::default()
    };
    let _sim = sim_at(addr, sim);
    let sim_url = format!("http://{addr}");
    let mut config = test_config(sim_url.parse().unwrap());
    config.ticketing.channel_override = Some("phone".into());
    config.delivery.base_backoff = Duration::from_millis(100);
    config.delivery.max_backoff = Duration::from_millis(200);
    let app = gorgias_proxy::app::Application::build(config)
        .await
        .unwrap();
    let address = format!("http://{}", app.local_addr().unwrap());
    let run = tokio::spawn(app.run_until_stopped(std::future::pending()));
    let http = reqwest::Client::new();
    let resp = post_async(&http, &address, &example(), "respond-async")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let creates = || async {
        let stats = sim_stats(&http, &sim_url).await;
        stats
            .requests
            .get("POST /api/tickets")
            .copied()
            .unwrap_or(0)
    };
    let start = Instant::now();
    while creates().await < 3 {
        assert!(start.elapsed() < Duration::from_secs(15), "not retried");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    run.abort();
    assert!(run.await.unwrap_err().is_cancelled());
    // An attempt in hand may still finish (a single refused call); then nothing more.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_abort = creates().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        creates().await,
        after_abort,
        "delivery attempts went on after the service was dropped"
    );
}

#[tokio::test]
async fn kill_9_with_deliveries_queued_then_a_restart_delivers_each_exactly_once() {
    // Gorgias stores each ticket, then takes 2 s to answer: the replica dies mid-delivery.
    let (_sim, sim_url) = start_sim(&["--rate-limit", "off", "--commit-latency-ms", "2000"]);
    let data = temp_data_dir();
    let env = [
        ("DATA_DIR", data.to_str().unwrap()),
        ("TICKET_CHANNEL", "phone"),
        ("DELIVERY_CONCURRENCY", "2"),
    ];
    let (mut first, first_url) = start_proxy(&sim_url, &env);
    let http = reqwest::Client::new();
    for i in 0..10 {
        let body = ticket_for(&format!("+1 555 08{i:05}"), None);
        let resp = post_async(&http, &first_url, &body, "respond-async")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
    }
    let start = Instant::now();
    while sim_stats(&http, &sim_url).await.tickets_created == 0 {
        assert!(start.elapsed() < Duration::from_secs(15));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.0.kill().unwrap(); // SIGKILL, with tickets saved by Gorgias but not recorded by us
    first.0.wait().unwrap();
    let saved_before_restart = sim_stats(&http, &sim_url).await.tickets_created;
    assert!(saved_before_restart < 10, "deliveries were still queued");

    let (_second, _) = start_proxy(&sim_url, &env);
    let start = Instant::now();
    while sim_stats(&http, &sim_url).await.tickets_created < 10 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not all delivered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let any duplicate show up before counting.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(sim_stats(&http, &sim_url).await.tickets_created, 10);
}

/// A webhook receiver: refuses its first request with 500 (so the sender must retry), then
/// keeps every (headers, body) it gets.
pub(crate) async fn receiver() -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<(axum::http::HeaderMap, bytes::Bytes)>>>,
) {
    let got: std::sync::Arc<std::sync::Mutex<Vec<(axum::http::HeaderMap, bytes::Bytes)>>> =
        Default::default();
    let refused = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let app = {
        let got = got.clone();
        axum::Router::new().route(
            "/hook",
            axum::routing::post(
                move |headers: axum::http::HeaderMap, body: bytes::Bytes| async move {
                    if !refused.swap(true, std::sync::atomic::Ordering::SeqCst) {
                        return axum::http::StatusCode::INTERNAL_SERVER_ERROR;
                    }
                    got.lock().unwrap().push((headers, body));
                    axum::http::StatusCode::NO_CONTENT
                },
            ),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), got)
}

#[tokio::test]
async fn webhooks_are_signed_retried_and_verifiable_by_the_receiver() {
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let (hook, got) = receiver().await;
    let app = spawn_app_with(sim_config(), |c| {
        c.webhook = Some((hook.parse().unwrap(), SecretString::from(SECRET)));
        c.delivery.base_backoff = Duration::from_millis(200);
        // Refused credentials make a delivery wait (#20) until this age, then fail.
        c.delivery.max_age = Duration::from_secs(3);
    })
    .await;
    let ok = post_async(&app.http, &app.address, &example(), "respond-async")
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    // The second one is refused by Gorgias (credentials) until its max age: ticket.failed.
    until_final(
        &app.http,
        &app.address,
        ok["status_url"].as_str().unwrap(),
        Duration::from_secs(10),
    )
    .await;
    app.sim.set_credentials(gorgias_sim::Credentials {
        username: "someone-else@example.com".into(),
        api_key: "rotated".into(),
        access_token: None,
    });
    let bad = post_async(&app.http, &app.address, &example(), "respond-async")
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();

    let start = Instant::now();
    while got.lock().unwrap().len() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "events did not arrive"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let verifier = standardwebhooks::Webhook::new(SECRET).unwrap();
    let events = got.lock().unwrap().clone();
    let mut seen = Vec::new();
    for (headers, body) in &events {
        verifier
            .verify(body, headers)
            .expect("every event verifies with the shared secret");
        let event: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(
            headers["webhook-id"].to_str().unwrap(),
            format!("msg_{}", event["data"]["id"].as_str().unwrap())
        );
        seen.push((
            event["type"].as_str().unwrap().to_owned(),
            event["data"]["id"].clone(),
        ));
        // A tampered body does not verify.
        let mut tampered = body.to_vec();
        tampered[1] ^= 1;
        assert!(verifier.verify(&tampered, headers).is_err());
    }
    // The first event was refused once by the receiver and sent again, so it may come second.
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        seen,
        [
            ("ticket.delivered".to_owned(), ok["id"].clone()),
            ("ticket.failed".to_owned(), bad["id"].clone())
        ],
    );
    for (_, body) in &events {
        let event: Value = serde_json::from_slice(body).unwrap();
        match event["type"].as_str() {
            Some("ticket.delivered") => assert!(event["data"]["ticket"]["id"].is_string()),
            _ => assert_eq!(event["data"]["problem"]["code"], "upstream_auth"),
        }
    }
}

#[tokio::test]
async fn two_replicas_on_one_postgresql_drain_one_queue_each_ticket_once() {
    let Some(outbox) = crate::helpers::postgres_outbox_url().await else {
        return;
    };
    let (_sim, sim_url) = start_sim(&["--rate-limit", "off", "--latency-ms", "20"]);
    let env = [
        ("OUTBOX_URL", outbox.as_str()),
        ("TICKET_CHANNEL", "phone"),
        ("DELIVERY_CONCURRENCY", "2"),
    ];
    let (_a, a) = start_proxy(&sim_url, &env);
    let (_b, b) = start_proxy(&sim_url, &env);
    let http = reqwest::Client::new();
    let mut urls = Vec::new();
    for i in 0..30 {
        let replica = if i % 2 == 0 { &a } else { &b };
        let body = ticket_for(&format!("+1 555 09{:05}", i % 10), None);
        let resp = post_async(&http, replica, &body, "respond-async")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        urls.push(
            resp.json::<Value>().await.unwrap()["status_url"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    // Either replica answers for any delivery: one queue.
    for url in &urls {
        let doc = until_final(&http, &b, url, Duration::from_secs(60)).await;
        assert_eq!(doc["status"], "delivered", "{doc}");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stats = sim_stats(&http, &sim_url).await;
    assert_eq!(stats.tickets_created, 30, "each ticket once");
    let delivered_by = |metrics: String| {
        metrics
            .lines()
            .find(|l| l.starts_with("gorgias_proxy_delivery_attempts_total{outcome=\"delivered\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let mut total = 0.0;
    for replica in [&a, &b] {
        let m = http
            .get(format!("{replica}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let n = delivered_by(m);
        assert!(n > 0.0, "both replicas drained the queue");
        total += n;
    }
    assert_eq!(total, 30.0);
}

#[tokio::test]
async fn a_crashed_replicas_deliveries_are_taken_over_after_the_lease_each_once() {
    let Some(outbox) = crate::helpers::postgres_outbox_url().await else {
        return;
    };
    // Gorgias stores each ticket, then takes 2 s to answer.
    let (_sim, sim_url) = start_sim(&["--rate-limit", "off", "--commit-latency-ms", "2000"]);
    let env = [
        ("OUTBOX_URL", outbox.as_str()),
        ("TICKET_CHANNEL", "phone"),
        ("DELIVERY_CONCURRENCY", "2"),
        ("DELIVERY_LEASE_SECS", "3"),
    ];
    let (mut a, a_url) = start_proxy(&sim_url, &env);
    let http = reqwest::Client::new();
    let mut urls = Vec::new();
    for i in 0..6 {
        let body = ticket_for(&format!("+1 555 06{i:05}"), None);
        urls.push(accepted(&http, &a_url, &body).await);
    }
    let created = || async { sim_stats(&http, &sim_url).await.tickets_created };
    let start = Instant::now();
    while created().await == 0 {
        assert!(start.elapsed() < Duration::from_secs(15));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.0.kill().unwrap(); // mid-delivery: tickets saved by Gorgias, not recorded by A
    a.0.wait().unwrap();
    let (_b, b_url) = start_proxy(&sim_url, &env);
    let start = Instant::now();
    while created().await < 6 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not all delivered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every delivery ends delivered on the survivor, those A held included (after its lease).
    for url in &urls {
        let doc = until_final(&http, &b_url, url, Duration::from_secs(30)).await;
        assert_eq!(doc["status"], "delivered", "{doc}");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        created().await,
        6,
        "the taken-over deliveries found their tickets"
    );
}

#[tokio::test]
async fn an_outbox_that_cannot_be_written_makes_the_replica_unready_and_async_requests_503() {
    let Some(outbox) = crate::helpers::postgres_outbox_url().await else {
        return;
    };
    let schema = outbox.rsplit("search_path%3D").next().unwrap().to_owned();
    let app = spawn_app_with(sim_config(), |c| {
        c.outbox = Some(gorgias_proxy::outbox::OutboxTarget::Postgres(
            outbox.clone(),
        ));
    })
    .await;
    let readyz = || app.http.get(format!("{}/readyz", app.address)).send();
    assert_eq!(readyz().await.unwrap().status(), 200);

    // The outbox's tables disappear (a dropped schema, a revoked grant): nothing can be queued.
    let base = std::env::var("POSTGRES_URL").unwrap();
    let (client, conn) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();

    let ready = readyz().await.unwrap();
    assert_eq!(ready.status(), 503);
    let problem: Value = ready.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("outbox"),
        "{problem}"
    );
    let resp = post_async(&app.http, &app.address, &example(), "respond-async")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let problem: Value = resp.json().await.unwrap();
    assert_eq!(problem["code"], "outbox_unavailable");
    // Synchronous requests do not need the outbox.
    assert_eq!(app.post_ticket(&example()).await.status(), 201);
}
