//! Graceful shutdown: SIGTERM lets in-flight requests finish, then the process exits 0.

use std::time::Duration;

use crate::helpers::{get_json, sigterm, sim_stats, start_proxy, start_sim, ticket_for};

#[tokio::test]
async fn sigterm_during_fifty_slow_requests_answers_them_all_then_exits_zero() {
    let (_sim, sim_url) = start_sim(&[
        "--rate-limit",
        "off",
        "--latency-ms",
        "700",
        "--seed-customers",
        "50",
    ]);
    let (mut proxy, url) = start_proxy(
        &sim_url,
        &[
            ("TICKET_CHANNEL", "phone"),
            ("SHUTDOWN_DRAIN_SECS", "20"),
            // The drain must cover a request's whole deadline (the service refuses otherwise).
            ("REQUEST_DEADLINE_MS", "15000"),
            ("GORGIAS_RATE_LIMIT", "off"),
        ],
    );
    let http = reqwest::Client::new();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..50 {
        let body = ticket_for(
            &format!("+1555{i:07}"),
            Some(&format!("customer{i}@example.com")),
        );
        let req = http.post(format!("{url}/ticket")).json(&body).send();
        set.spawn(async move { req.await.map(|r| r.status().as_u16()) });
    }
    // All 50 are inside the service once each has made its customer lookup.
    for _ in 0..2_000 {
        let s = sim_stats(&http, &sim_url).await;
        if s.requests.get("GET /api/customers").copied().unwrap_or(0) >= 50 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sigterm(&proxy.0);
    let statuses = set.join_all().await;
    assert!(
        statuses.iter().all(|s| matches!(s, Ok(201))),
        "every in-flight request was answered: {statuses:?}"
    );
    let status = tokio::task::spawn_blocking(move || proxy.0.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0), "exited cleanly");
    assert_eq!(sim_stats(&http, &sim_url).await.tickets_created, 50);
}

#[tokio::test]
async fn sigterm_stops_claiming_deliveries_and_finishes_the_one_in_hand() {
    // Gorgias stores each ticket, then takes 3 s to answer.
    let (_sim, sim_url) = start_sim(&["--rate-limit", "off", "--commit-latency-ms", "3000"]);
    let data = crate::helpers::temp_data_dir();
    let env = [
        ("DATA_DIR", data.to_str().unwrap()),
        ("TICKET_CHANNEL", "phone"),
        ("DELIVERY_CONCURRENCY", "1"),
    ];
    let (mut proxy, url) = start_proxy(&sim_url, &env);
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for i in 0..3 {
        let body = ticket_for(&format!("+1 555 05{i:05}"), None);
        let resp: serde_json::Value = http
            .post(format!("{url}/ticket"))
            .header("prefer", "respond-async")
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.push(resp["id"].as_str().unwrap().to_owned());
    }
    // The first delivery is in hand: Gorgias has stored its ticket and not answered yet.
    for _ in 0..2_000 {
        if sim_stats(&http, &sim_url).await.tickets_created == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sigterm(&proxy.0);
    let status = tokio::task::spawn_blocking(move || proxy.0.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0), "exited cleanly within the drain");
    assert_eq!(
        sim_stats(&http, &sim_url).await.tickets_created,
        1,
        "nothing more was claimed after SIGTERM"
    );
    // Restarted on the same data: the one in hand was recorded as delivered (attempt 1, not
    // requeued), and the other two are delivered now.
    let (_again, url) = start_proxy(&sim_url, &env);
    let first: serde_json::Value = get_json(&http, &format!("{url}/tickets/{}", ids[0])).await;
    assert_eq!(first["status"], "delivered", "{first}");
    assert_eq!(first["attempts"], 1);
    for _ in 0..1_000 {
        if sim_stats(&http, &sim_url).await.tickets_created == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(sim_stats(&http, &sim_url).await.tickets_created, 3);
}
