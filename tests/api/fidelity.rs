//! The whole flow against a simulator that answers as the live API of 2026 does
//! (`gorgias-api.md` §11): abridged ticket lists, a search index that trails writes,
//! `opened_datetime: null`, messages sent as `phone` on SMS and email accounts.

use std::time::Duration;

use gorgias_sim::{CommitFailure, Faults, SimConfig};
use serde_json::Value;

use crate::helpers::{example, settings_warmed, sim_config, spawn_app_with, ticket_for};

fn calls(app: &crate::helpers::TestApp, route: &str) -> u64 {
    app.stats().requests.get(route).copied().unwrap_or(0)
}

#[tokio::test]
async fn an_sms_account_gets_phone_tickets_in_the_live_shape() {
    let app = spawn_app_with(sim_config(), |_| {}).await;
    let resp = app.post_ticket(&example()).await;
    assert_eq!(resp.status(), 201);
    let out: Value = resp.json().await.unwrap();
    assert_eq!(out["channel"], "phone", "the account auto-assigns sms");
    assert_eq!(out["opened_datetime"], Value::Null, "live answers null");
    assert_eq!(out["messages"].as_array().unwrap().len(), 2);

    let stored = app
        .sim
        .ticket(out["id"].as_str().unwrap().parse().unwrap())
        .unwrap();
    assert_eq!(stored["channel"], "phone");
    for m in stored["messages"].as_array().unwrap() {
        assert_eq!(m["channel"], "phone");
        assert_eq!(m["via"], "api");
        assert_eq!(m["source"]["type"], "phone");
    }
    assert_eq!(stored["customer"]["email"], "nango@example.com");
    let s = app.stats();
    assert_eq!(s.customers_created, 1);
    assert_eq!(s.tickets_created, 1);
}

#[tokio::test]
async fn an_email_account_gets_email_tickets_with_phone_messages() {
    let sim = SimConfig {
        assignment_channels: vec!["chat".into(), "email".into()],
        ..sim_config()
    };
    let app = spawn_app_with(sim, |_| {}).await;
    let resp = app.post_ticket(&example()).await;
    let status = resp.status();
    let out: Value = resp.json().await.unwrap();
    assert_eq!(status, 201, "{out}");
    assert_eq!(out["channel"], "email");

    let stored = app
        .sim
        .ticket(out["id"].as_str().unwrap().parse().unwrap())
        .unwrap();
    assert_eq!(stored["channel"], "email");
    for m in stored["messages"].as_array().unwrap() {
        assert_eq!(
            m["channel"], "phone",
            "an email message would need a source"
        );
    }
}

#[tokio::test]
async fn a_customer_missing_from_the_lagging_search_is_not_created_twice() {
    let sim = SimConfig {
        search_lag: Duration::from_secs(5),
        ..sim_config()
    };
    let app = spawn_app_with(sim, |_| {}).await;
    settings_warmed(&app.sim).await;
    let body = ticket_for("+33699887766", None);

    let first = app.post_ticket(&body).await;
    let first_status = first.status();
    let first: Value = first.json().await.unwrap();
    assert_eq!(first_status, 201, "{first}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let second = app.post_ticket(&body).await;
    let second_status = second.status();
    let second: Value = second.json().await.unwrap();
    assert_eq!(second_status, 201, "{second}");

    assert_eq!(
        app.stats().customers_created,
        1,
        "the second ticket must not create the customer again: search cannot see it yet"
    );
    let customer = |out: &Value| {
        app.sim
            .ticket(out["id"].as_str().unwrap().parse().unwrap())
            .unwrap()["customer"]["id"]
            .clone()
    };
    assert!(customer(&first).is_u64());
    assert_eq!(customer(&first), customer(&second));
}

#[tokio::test]
async fn a_lost_create_is_reconciled_through_the_abridged_list_and_the_full_ticket() {
    let sim = SimConfig {
        faults: Faults {
            fail_after_commit_rate: 1.0,
            fail_after_commit: CommitFailure::Drop,
            ..Faults::default()
        },
        ..sim_config()
    };
    let app = spawn_app_with(sim, |_| {}).await;
    let resp = app.post_ticket(&example()).await;
    let status = resp.status();
    let out: Value = resp.json().await.unwrap();
    assert_eq!(status, 201, "{out}");
    assert_eq!(
        out["messages"].as_array().unwrap().len(),
        2,
        "the full ticket"
    );

    assert!(
        calls(&app, "GET /api/tickets") >= 1,
        "looked up by external_id"
    );
    assert!(
        calls(&app, "GET /api/tickets/{id}") >= 1,
        "list items are abridged: the full ticket is fetched by id"
    );
    assert_eq!(app.stats().tickets_created, 1, "exactly one ticket");
    assert_eq!(app.sim.ticket_external_ids().len(), 1);
}
