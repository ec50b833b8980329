//! Three service processes sharing one Redis and one simulator.

use serde_json::Value;

use crate::helpers::{redis_url, sim_stats, start_proxy, start_sim, ticket_for, unique};

#[tokio::test]
async fn three_replicas_share_keys_budget_and_customer_creation() {
    let Some(redis) = redis_url() else { return };
    let (_sim, sim_url) = start_sim(&["--rate-limit", "20/2s", "--seed-customers", "10"]);
    let env = [
        ("REDIS_URL", redis.as_str()),
        ("GORGIAS_RATE_LIMIT", "20/2s"),
        ("TICKET_CHANNEL", "phone"),
        ("REQUEST_DEADLINE_MS", "4000"),
    ];
    let replicas: Vec<_> = (0..3).map(|_| start_proxy(&sim_url, &env)).collect();
    let urls: Vec<String> = replicas.iter().map(|(_, u)| u.clone()).collect();
    let http = reqwest::Client::new();

    // 1. A key used on one replica replays on the others.
    let key = unique("replica-key");
    let body = ticket_for("+1 555 0000001", Some("customer1@example.com"));
    let post = |url: &str, key: Option<&str>, body: &Value| {
        let mut req = http.post(format!("{url}/ticket")).json(body);
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        req.send()
    };
    let first = post(&urls[0], Some(&key), &body).await.unwrap();
    assert_eq!(first.status(), 201);
    let first_body = first.text().await.unwrap();
    for url in &urls[1..] {
        let again = post(url, Some(&key), &body).await.unwrap();
        assert_eq!(again.status(), 201);
        assert_eq!(again.headers()["idempotency-replayed"], "true");
        assert_eq!(again.text().await.unwrap(), first_body);
    }
    assert_eq!(sim_stats(&http, &sim_url).await.tickets_created, 1);

    // 2. One new customer, raced by all three replicas (phone only: no 409 to save us).
    let before = sim_stats(&http, &sim_url).await.customers_created;
    let racer = ticket_for("+44 7700 900123", None);
    let mut set = tokio::task::JoinSet::new();
    for i in 0..9 {
        let req = post(&urls[i % 3], None, &racer);
        set.spawn(async move { req.await.unwrap().status().as_u16() });
    }
    let statuses = set.join_all().await;
    assert!(statuses.iter().all(|s| *s == 201), "{statuses:?}");
    assert_eq!(
        sim_stats(&http, &sim_url).await.customers_created - before,
        1
    );

    // 3. A burst across replicas stays under the account's limit.
    let mut set = tokio::task::JoinSet::new();
    for i in 0..90 {
        let req = post(&urls[i % 3], None, &body);
        set.spawn(async move { req.await.unwrap().status().as_u16() });
    }
    let statuses = set.join_all().await;
    assert!(
        statuses.iter().all(|s| *s == 201 || *s == 503),
        "{statuses:?}"
    );
    assert!(statuses.contains(&201));
    let stats = sim_stats(&http, &sim_url).await;
    assert_eq!(
        stats.rate_limited, 0,
        "the simulator never had to refuse: {stats:?}"
    );
}

#[tokio::test]
async fn the_customer_creation_lock_outlives_a_section_longer_than_its_lease() {
    let Some(redis) = redis_url() else { return };
    // Every Gorgias call takes 11 s: the section under the lock (one create) outlasts both the
    // lease (6 s) and the old fixed lock (10 s). Without renewal the waiting replica would take
    // the lock over, find nothing, and create the same phone-only customer again.
    let (_sim, sim_url) = start_sim(&["--rate-limit", "off", "--latency-ms", "11000"]);
    let env = [
        ("REDIS_URL", redis.as_str()),
        ("TICKET_CHANNEL", "phone"),
        ("GORGIAS_TIMEOUT_MS", "15000"),
        ("REQUEST_DEADLINE_MS", "50000"),
        ("SHUTDOWN_DRAIN_SECS", "50"),
    ];
    let (_a, a) = start_proxy(&sim_url, &env);
    let (_b, b) = start_proxy(&sim_url, &env);
    let http = reqwest::Client::new();
    let phone = format!("+1 555 {:07}", fastrand_u32() % 10_000_000);
    let body = ticket_for(&phone, None);
    let (ra, rb) = tokio::join!(
        http.post(format!("{a}/ticket")).json(&body).send(),
        http.post(format!("{b}/ticket")).json(&body).send()
    );
    assert_eq!(ra.unwrap().status(), 201);
    assert_eq!(rb.unwrap().status(), 201);
    assert_eq!(sim_stats(&http, &sim_url).await.customers_created, 1);
}

/// A number from the clock, so reruns against one Redis use fresh phone numbers.
fn fastrand_u32() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
}
