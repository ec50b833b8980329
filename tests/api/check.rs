//! `gorgias-proxy check`, the read-only preflight: against the simulator (all pass, nothing
//! written, few calls), and against broken accounts (a refused key, an API that ignores the
//! `external_id` filter, an API without the rate-limit header).

use std::net::SocketAddr;
use std::time::Duration;

use gorgias_proxy::commands::{self, CheckReport, CheckStatus};
use gorgias_proxy::config::Config;
use gorgias_sim::{Credentials, SimConfig, Simulator};
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{start_sim, test_config};

/// A simulator with Gorgias's API-key budget (40 per 20 s), so the rate-limit header is sent.
async fn sim() -> Simulator {
    Simulator::spawn(
        SimConfig {
            rate_limit: Some((40, Duration::from_secs(20))),
            ..Default::default()
        },
        SocketAddr::from(([127, 0, 0, 1], 0)),
    )
    .await
    .unwrap()
}

/// The test config with the service's default pacing for an API key (tests turn it off).
fn config_for(url: url::Url) -> Config {
    let mut c = test_config(url);
    c.gorgias.rate_limit = Some((40, Duration::from_secs(20)));
    c
}

fn status_of(report: &CheckReport, name: &str) -> CheckStatus {
    report
        .get(name)
        .unwrap_or_else(|| panic!("no {name} line in {report:?}"))
        .status
}

fn detail_of<'a>(report: &'a CheckReport, name: &str) -> &'a str {
    &report.get(name).unwrap().detail
}

#[tokio::test]
async fn against_the_simulator_everything_passes_and_nothing_is_written() {
    let sim = sim().await;
    let config = config_for(sim.url());
    let report = commands::check_report(&config).await;
    println!("{}", report.render_text());

    let names: Vec<_> = report.checks.iter().map(|c| c.name).collect();
    assert_eq!(names, commands::CHECKS, "one line per check, in order");
    for c in &report.checks {
        assert_eq!(c.status, CheckStatus::Pass, "{c:?}");
    }
    assert_eq!(report.exit_code(), 0);
    assert!(
        detail_of(&report, "ticket-channel").starts_with("phone:"),
        "the recorded settings auto-assign sms"
    );
    assert!(detail_of(&report, "message-channel").starts_with("phone"));
    assert!(detail_of(&report, "rate-limit").contains("40 calls per 20 s"));

    let stats = sim.stats();
    assert!(report.calls_spent <= 8);
    assert_eq!(u64::from(report.calls_spent), stats.requests_total);
    assert_eq!(stats.tickets_created, 0);
    assert_eq!(stats.customers_created, 0);
    assert!(
        !stats.requests.contains_key("POST /api/tickets")
            && !stats.requests.contains_key("POST /api/customers"),
        "{stats:?}"
    );
    let text = report.render_text() + &report.render_json();
    assert!(!text.contains("sandbox-key"), "{text}");
}

#[tokio::test]
async fn the_email_ticket_channel_is_named_when_the_account_has_no_sms_assignment() {
    let sim = sim().await;
    sim.set_assignment_channels(vec!["chat".into()]);
    let report = commands::check_report(&config_for(sim.url())).await;
    assert_eq!(status_of(&report, "ticket-channel"), CheckStatus::Pass);
    assert!(detail_of(&report, "ticket-channel").starts_with("email:"));
}

#[tokio::test]
async fn pacing_above_the_accounts_limit_is_a_warning() {
    let sim = sim().await;
    let mut config = config_for(sim.url());
    config.gorgias.rate_limit = Some((80, Duration::from_secs(20)));
    let report = commands::check_report(&config).await;
    assert_eq!(status_of(&report, "rate-limit"), CheckStatus::Warn);
    assert!(
        detail_of(&report, "rate-limit").contains("GORGIAS_RATE_LIMIT 80/20s is above the 40"),
        "{report:?}"
    );
    assert_eq!(report.exit_code(), 0, "a warning does not fail the check");
}

#[tokio::test]
async fn a_refused_key_fails_on_credentials_and_spends_one_call() {
    let sim = sim().await;
    sim.set_credentials(Credentials {
        username: "someone@example.com".into(),
        api_key: "another-key".into(),
        access_token: None,
    });
    let report = commands::check_report(&config_for(sim.url())).await;
    assert_eq!(status_of(&report, "credentials"), CheckStatus::Fail);
    let detail = detail_of(&report, "credentials");
    assert!(
        detail.contains("401") && detail.contains("GORGIAS_API_KEY"),
        "{detail}"
    );
    assert_ne!(report.exit_code(), 0);
    assert!(detail_of(&report, "rate-limit").starts_with("not checked"));
    // The other lookups would be refused the same way: not spent.
    assert_eq!(report.calls_spent, 1);
    assert_eq!(sim.stats().requests_total, 1);
    let text = report.render_text() + &report.render_json();
    assert!(
        !text.contains("sandbox-key") && !text.contains("c2FuZGJveA"),
        "{text}"
    );
}

/// A wiremock Gorgias whose every endpoint answers in the recorded shapes; `tickets` is the
/// answer to `GET /api/tickets`, `limit_header` whether answers carry the call-limit header.
async fn scripted(tickets: Value, limit_header: bool) -> MockServer {
    scripted_with(json!({"data": [], "object": "list"}), tickets, limit_header).await
}

/// Like [`scripted`], with `search` as the answer to `POST /api/search`.
async fn scripted_with(search: Value, tickets: Value, limit_header: bool) -> MockServer {
    let server = MockServer::start().await;
    let answer = |status: u16, body: Value| {
        let t = ResponseTemplate::new(status).set_body_json(body);
        if limit_header {
            t.insert_header("X-Gorgias-Account-Api-Call-Limit", "3/40")
        } else {
            t
        }
    };
    let settings = json!({"data": [{"id": 1, "type": "ticket-assignment",
        "data": {"assignment_channels": ["sms"], "max_user_chat_ticket": 5}}]});
    let routes = [
        ("GET", "/api/account/settings", 200, settings),
        (
            "GET",
            "/api/customers",
            200,
            json!({"data": [], "object": "list"}),
        ),
        ("POST", "/api/search", 201, search),
        ("GET", "/api/tickets", 200, tickets),
    ];
    for (m, p, status, body) in routes {
        Mock::given(method(m))
            .and(path(p))
            .respond_with(answer(status, body))
            .mount(&server)
            .await;
    }
    server
}

fn server_url(server: &MockServer) -> url::Url {
    url::Url::parse(&server.uri()).unwrap()
}

#[tokio::test]
async fn an_api_that_ignores_the_external_id_filter_fails_loudly() {
    let server = scripted(
        json!({"data": [{"id": 17, "external_id": "somebody-elses-key", "messages_count": 1}],
               "object": "list", "meta": {"next_cursor": null}}),
        true,
    )
    .await;
    let report = commands::check_report(&config_for(server_url(&server))).await;
    assert_eq!(
        status_of(&report, "ticket-external-id-filter"),
        CheckStatus::Fail
    );
    let detail = detail_of(&report, "ticket-external-id-filter");
    assert!(
        detail.contains("external_id FILTER IS IGNORED") && detail.contains("Reconciliation"),
        "{detail}"
    );
    assert_ne!(report.exit_code(), 0);
    // Everything else about this account is fine.
    for c in report
        .checks
        .iter()
        .filter(|c| c.name != "ticket-external-id-filter")
    {
        assert_eq!(c.status, CheckStatus::Pass, "{c:?}");
    }
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len() as u32, report.calls_spent);
    assert!(
        requests
            .iter()
            .all(|r| r.method.as_str() == "GET" || r.url.path() == "/api/search")
    );
}

#[tokio::test]
async fn an_api_without_the_rate_limit_header_is_a_warning_naming_it() {
    let server = scripted(json!({"data": [], "object": "list"}), false).await;
    let report = commands::check_report(&config_for(server_url(&server))).await;
    assert_eq!(status_of(&report, "rate-limit"), CheckStatus::Warn);
    assert!(
        detail_of(&report, "rate-limit").contains("X-Gorgias-Account-Api-Call-Limit"),
        "{report:?}"
    );
    // Tickets would still be created and paced: the check passes with a warning.
    assert_eq!(report.exit_code(), 0);
}

#[tokio::test]
async fn a_search_answer_the_client_cannot_read_fails() {
    let server = scripted_with(json!({"results": []}), json!({"data": []}), true).await;
    let report = commands::check_report(&config_for(server_url(&server))).await;
    assert_eq!(status_of(&report, "phone-search"), CheckStatus::Fail);
    assert!(
        detail_of(&report, "phone-search").contains("neither {data:[...]} nor an array"),
        "{report:?}"
    );
}

#[tokio::test]
async fn a_bare_array_search_answer_passes() {
    let server = scripted_with(json!([]), json!({"data": []}), true).await;
    let report = commands::check_report(&config_for(server_url(&server))).await;
    assert_eq!(status_of(&report, "phone-search"), CheckStatus::Pass);
    assert!(detail_of(&report, "phone-search").contains("a bare array"));
}

#[test]
fn the_binary_prints_one_json_document_and_exits_0_against_the_simulator() {
    let (_sim, sim_url) = start_sim(&[]);
    let dir = std::env::temp_dir().join(format!("gorgias-proxy-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gorgias-proxy"))
        .args(["check", "--json"])
        // No inherited settings (RUST_LOG, API_TOKENS, REDIS_URL, a developer's TICKET_CHANNEL),
        // and a directory without a `.env`.
        .env_clear()
        .env("GORGIAS_BASE_URL", &sim_url)
        .env("GORGIAS_USERNAME", "sandbox@example.com")
        .env("GORGIAS_API_KEY", "sandbox-key")
        .current_dir(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_str(&stdout).expect("stdout is one JSON document");
    assert_eq!(doc["ok"], true, "{doc}");
    assert!(doc["calls_spent"].as_u64().unwrap() <= 8);
    assert_eq!(
        doc["checks"].as_array().unwrap().len(),
        commands::CHECKS.len()
    );
    assert!(!stdout.contains("sandbox-key"));
}

#[test]
fn the_binary_exits_2_on_unusable_settings_without_needing_api_tokens() {
    let dir = std::env::temp_dir().join(format!("gorgias-proxy-check2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gorgias-proxy"))
        .args(["check"])
        .env_clear()
        .env("GORGIAS_DOMAIN", "acme")
        .current_dir(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("GORGIAS_USERNAME") && !stderr.contains("API_TOKENS"),
        "{stderr}"
    );
}
