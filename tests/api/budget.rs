//! Gorgias calls per ticket in an account with many customers: the phone search must not scale
//! with the account (the reference flow paged through every customer).

use crate::helpers::{sim_config, spawn_app_with, ticket_for};

#[tokio::test]
async fn ten_thousand_customers_cost_three_calls_then_one() {
    let mut sim = sim_config();
    sim.seed_customers = 10_000;
    let app = spawn_app_with(sim, |_| {}).await;
    // A seeded customer, phone only, written the way a caller might.
    let body = ticket_for("+1 555 000 4242", None);

    assert_eq!(app.post_ticket(&body).await.status(), 201);
    let first = app.stats();
    // Everything Gorgias saw since start-up: settings (warm-up), phone search, ticket.
    assert!(first.requests_total <= 3, "{:?}", first.requests);
    assert_eq!(first.customers_created, 0, "the seeded customer was found");
    assert_eq!(
        first.requests.get("GET /api/customers"),
        None,
        "no list paging"
    );

    assert_eq!(app.post_ticket(&body).await.status(), 201);
    let second = app.stats();
    assert_eq!(second.requests_total - first.requests_total, 1);
}
