//! Never lose a ticket, never create one twice: fail-after-commit, 429s, pacing.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use gorgias_sim::{CommitFailure, Faults};
use serde_json::Value;

use crate::helpers::{example, sim_config, spawn_app_with, ticket_for};

async fn burst(app: &crate::helpers::TestApp, bodies: Vec<Value>, concurrency: usize) -> Vec<u16> {
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut set = tokio::task::JoinSet::new();
    for body in bodies {
        let (http, address, sem) = (app.http.clone(), app.address.clone(), sem.clone());
        set.spawn(async move {
            let _permit = sem.acquire_owned().await.unwrap();
            crate::helpers::post_ticket(&http, &address, &body)
                .await
                .status()
                .as_u16()
        });
    }
    set.join_all().await
}

fn assert_no_duplicates(app: &crate::helpers::TestApp) {
    let ids = app.sim.ticket_external_ids();
    let unique: HashSet<_> = ids.iter().collect();
    assert_eq!(
        unique.len(),
        ids.len(),
        "duplicate external_id in the simulator"
    );
    assert!(
        ids.iter().all(Option::is_some),
        "every ticket carries our marker"
    );
}

#[tokio::test]
async fn thirty_percent_fail_after_commit_still_makes_exactly_one_ticket_each() {
    let mut sim = sim_config();
    sim.faults = Faults {
        fail_after_commit_rate: 0.3,
        fail_after_commit: CommitFailure::Status500,
        ..Faults::default()
    };
    let app = spawn_app_with(sim, |_| {}).await;
    let statuses = burst(&app, vec![example(); 300], 16).await;
    assert!(statuses.iter().all(|s| *s == 201), "{statuses:?}");
    let stats = app.stats();
    assert_eq!(stats.tickets_created, 300);
    assert!(
        stats.requests.get("GET /api/tickets").copied().unwrap_or(0) >= 50,
        "the faults fired and were reconciled: {:?}",
        stats.requests
    );
    assert_no_duplicates(&app);
}

#[tokio::test]
async fn dropped_connections_after_commit_are_reconciled_too() {
    let mut sim = sim_config();
    sim.faults = Faults {
        fail_after_commit_rate: 0.3,
        fail_after_commit: CommitFailure::Drop,
        ..Faults::default()
    };
    let app = spawn_app_with(sim, |_| {}).await;
    let statuses = burst(&app, vec![example(); 100], 8).await;
    assert!(statuses.iter().all(|s| *s == 201), "{statuses:?}");
    assert_eq!(app.stats().tickets_created, 100);
    assert_no_duplicates(&app);
}

#[tokio::test]
async fn a_429_with_retry_after_one_second_is_waited_out() {
    let mut sim = sim_config();
    // One call per second: the lookup spends it, the ticket create meets a 429.
    sim.rate_limit = Some((1, Duration::from_secs(1)));
    let app = spawn_app_with(sim, |c| {
        c.ticketing.channel_override = Some("phone".into());
        c.gorgias.rate_limit = None; // our own pacing off, so Gorgias's 429 is met
    })
    .await;
    app.sim
        .add_customer(Some("patient@example.com"), Some("+1 555 0300"));
    let started = Instant::now();
    let resp = app
        .post_ticket(&ticket_for("+1 555 0300", Some("patient@example.com")))
        .await;
    assert_eq!(resp.status(), 201);
    assert!(
        app.stats().rate_limited >= 1,
        "the simulator did answer 429"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "Retry-After was honoured"
    );
}

#[tokio::test]
async fn a_persistent_429_gives_up_inside_the_deadline() {
    let mut sim = sim_config();
    sim.rate_limit = Some((1, Duration::from_secs(4)));
    let deadline = Duration::from_secs(3);
    let app = spawn_app_with(sim, |c| {
        c.ticketing.channel_override = Some("phone".into());
        c.gorgias.rate_limit = None;
        c.request_deadline = deadline;
    })
    .await;
    let started = Instant::now();
    let resp = app
        .post_ticket(&ticket_for("+1 555 0301", Some("stuck@example.com")))
        .await;
    assert!(started.elapsed() < deadline, "answered within the deadline");
    assert_eq!(resp.status(), 503);
    let ra: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(ra >= 1);
}

#[tokio::test]
async fn the_limiter_keeps_two_hundred_concurrent_requests_under_the_account_limit() {
    let mut sim = sim_config();
    sim.rate_limit = Some((20, Duration::from_secs(2)));
    let app = spawn_app_with(sim, |c| {
        c.gorgias.rate_limit = Some((20, Duration::from_secs(2)));
        c.ticketing.channel_override = Some("phone".into());
        c.request_deadline = Duration::from_secs(3);
    })
    .await;
    app.sim
        .add_customer(Some("crowd@example.com"), Some("+1 555 0302"));
    let body = ticket_for("+1 555 0302", Some("crowd@example.com"));
    let statuses = burst(&app, vec![body; 200], 200).await;
    assert!(
        statuses.iter().all(|s| *s == 201 || *s == 503),
        "{statuses:?}"
    );
    assert!(statuses.contains(&201));
    let stats = app.stats();
    assert_eq!(stats.rate_limited, 0, "Gorgias never had to refuse us");
    assert_eq!(
        stats.tickets_created as usize,
        statuses.iter().filter(|s| **s == 201).count()
    );
}
