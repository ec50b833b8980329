//! Test harness: the real router served on 127.0.0.1:0 against a per-test Gorgias simulator
//! (or a wiremock server for one scripted exchange).

use std::net::SocketAddr;
use std::time::Duration;

use gorgias_proxy::app::Application;
use gorgias_proxy::config::Config;
use gorgias_proxy::gorgias::{Auth, RetryPolicy};
use gorgias_proxy::sim::{SimConfig, Simulator, Stats};
use secrecy::SecretString;
use serde_json::Value;
use url::Url;

pub const EXAMPLE: &str = include_str!("../fixtures/ticket-request.example.json");

pub fn example() -> Value {
    serde_json::from_str(EXAMPLE).unwrap()
}

/// A running service and the simulator behind it.
pub struct TestApp {
    pub address: String,
    pub http: reqwest::Client,
    pub sim: Simulator,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Simulator defaults for tests: the sandbox credentials, no rate limit.
pub fn sim_config() -> SimConfig {
    SimConfig {
        rate_limit: None,
        ..SimConfig::default()
    }
}

/// A config for `base_url` with fast retries and short timeouts, so failure tests stay quick.
pub fn test_config(base_url: Url) -> Config {
    let mut c = Config::with_gorgias(
        base_url,
        Auth::Basic {
            username: "sandbox@example.com".into(),
            api_key: SecretString::from("sandbox-key"),
        },
    );
    c.gorgias.attempt_timeout = Duration::from_secs(2);
    c.gorgias.retry = RetryPolicy {
        max_retries: 3,
        base_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
        max_retry_after: Duration::from_secs(5),
    };
    c.gorgias.rate_limit = None;
    c.request_deadline = Duration::from_secs(8);
    c
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(sim_config(), |_| {}).await
}

pub async fn spawn_app_with(sim: SimConfig, tweak: impl FnOnce(&mut Config)) -> TestApp {
    let sim = Simulator::spawn(sim, SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let mut config = test_config(sim.url());
    tweak(&mut config);
    let (address, stop) = serve(config).await;
    TestApp {
        address,
        http: reqwest::Client::new(),
        sim,
        _stop: stop,
    }
}

/// Serves `config` in the background; returns its base address and a stop handle.
pub async fn serve(config: Config) -> (String, tokio::sync::oneshot::Sender<()>) {
    let app = Application::build(config).await.unwrap();
    let address = format!("http://{}", app.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    (address, stop)
}

impl TestApp {
    pub async fn post_ticket(&self, body: &Value) -> reqwest::Response {
        post_ticket(&self.http, &self.address, body).await
    }

    pub async fn post_raw(
        &self,
        body: impl Into<reqwest::Body>,
        content_type: Option<&str>,
    ) -> reqwest::Response {
        let mut req = self
            .http
            .post(format!("{}/ticket", self.address))
            .body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        req.send().await.unwrap()
    }

    pub fn stats(&self) -> Stats {
        self.sim.stats()
    }
}

pub async fn post_ticket(http: &reqwest::Client, address: &str, body: &Value) -> reqwest::Response {
    http.post(format!("{address}/ticket"))
        .json(body)
        .send()
        .await
        .unwrap()
}

/// Gorgias calls made between two stats snapshots.
pub fn calls_between(before: &Stats, after: &Stats) -> u64 {
    after.requests_total - before.requests_total
}

/// A body for `phone` (and `email`), one message with a unique id.
pub fn ticket_for(phone: &str, email: Option<&str>) -> Value {
    let mut customer = serde_json::json!({ "phone_number": phone });
    if let Some(e) = email {
        customer["email"] = e.into();
    }
    serde_json::json!({
        "customer": customer,
        "ticket": {"messages": [{"id": "m1", "body_text": "hello", "body_html": "<p>hello</p>",
                                  "attachments": []}]}
    })
}

/// Waits until the service has fetched the account settings at start-up, so call counts in a
/// test measure the ticket alone. Polls the simulator's counters (no fixed sleep).
pub async fn settings_warmed(sim: &Simulator) {
    for _ in 0..500 {
        if sim
            .stats()
            .requests
            .get("GET /api/account/settings")
            .copied()
            .unwrap_or(0)
            > 0
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the service never fetched the account settings");
}
