//! Graceful shutdown: SIGTERM lets in-flight requests finish, then the process exits 0.

use std::time::Duration;

use crate::helpers::{sim_stats, start_proxy, start_sim, ticket_for};

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
    let pid = proxy.0.id().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
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
