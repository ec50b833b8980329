//! What operators rely on: inbound auth, readiness, metrics, logs without secrets or PII, and
//! the OpenAPI document.

use std::time::Duration;

use gorgias_proxy::app::Application;
use gorgias_sim::{Credentials, Faults};
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::helpers::{
    example, sim_config, sim_stats, spawn_app_with, start_proxy_capturing, start_sim, test_config,
    ticket_for,
};

#[tokio::test]
async fn post_ticket_needs_a_known_bearer_token_but_probes_do_not() {
    let app = spawn_app_with(sim_config(), |c| {
        c.api_tokens = vec![SecretString::from("tok-one"), SecretString::from("tok-two")];
        c.allow_unauthenticated = false;
    })
    .await;
    let url = format!("{}/ticket", app.address);
    let cases: [(&str, Option<&str>); 5] = [
        ("missing", None),
        ("wrong", Some("Bearer tok-three")),
        ("well-formed but unknown", Some("Bearer dG9rLW9uZQ")),
        ("another scheme", Some("Basic dG9rLW9uZQ==")),
        ("a prefix of a real one", Some("Bearer tok-on")),
    ];
    for (name, header) in cases {
        let mut req = app.http.post(&url).json(&example());
        if let Some(h) = header {
            req = req.header("authorization", h);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401, "case `{name}`");
        assert_eq!(
            resp.headers()["www-authenticate"],
            "Bearer",
            "case `{name}`"
        );
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        let p: Value = resp.json().await.unwrap();
        assert_eq!(p["code"], "unauthorized", "case `{name}`");
    }
    assert_eq!(app.stats().tickets_created, 0);
    let ok = app
        .http
        .post(&url)
        .bearer_auth("tok-two")
        .json(&example())
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 201);
    for open in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        let r = app
            .http
            .get(format!("{}{open}", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{open} needs no token");
    }
}

#[tokio::test]
async fn without_tokens_the_service_refuses_to_start_unless_allowed() {
    let mut config = test_config("http://127.0.0.1:9/".parse().unwrap());
    config.allow_unauthenticated = false;
    let err = Application::build(config).await.err().expect("must refuse");
    assert!(err.to_string().contains("API_TOKENS"), "{err}");

    // The binary says the same, in one line, and exits non-zero.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gorgias-proxy"))
        .env_clear()
        .env("GORGIAS_BASE_URL", "http://127.0.0.1:9/")
        .env("GORGIAS_USERNAME", "u@example.com")
        .env("GORGIAS_API_KEY", "k")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("API_TOKENS") && stderr.contains("ALLOW_UNAUTHENTICATED"),
        "{stderr}"
    );
}

#[tokio::test]
async fn readyz_follows_whether_gorgias_accepts_our_credentials() {
    let app = spawn_app_with(sim_config(), |c| c.readiness_ttl = Duration::ZERO).await;
    let readyz = || app.http.get(format!("{}/readyz", app.address)).send();
    assert_eq!(readyz().await.unwrap().status(), 200);

    app.sim.set_credentials(Credentials {
        username: "someone-else@example.com".into(),
        api_key: "rotated".into(),
        access_token: None,
    });
    let down = readyz().await.unwrap();
    assert_eq!(down.status(), 503);
    let p: Value = down.json().await.unwrap();
    assert_eq!(p["code"], "not_ready");
    assert!(p["detail"].as_str().unwrap().contains("401"), "{p}");

    app.sim.set_credentials(Credentials {
        username: "sandbox@example.com".into(),
        api_key: "sandbox-key".into(),
        access_token: None,
    });
    assert_eq!(readyz().await.unwrap().status(), 200);
}

#[tokio::test]
async fn readyz_spends_nothing_from_the_budget_while_the_service_is_busy() {
    // One call per minute: the warm-up takes it, then a ticket waits in the limiter.
    let app = spawn_app_with(sim_config(), |c| {
        c.readiness_ttl = Duration::ZERO;
        c.gorgias.rate_limit = Some((2, Duration::from_secs(60)));
        c.request_deadline = Duration::from_secs(120);
        c.shutdown_drain = Duration::from_secs(120);
    })
    .await;
    crate::helpers::settings_warmed(&app.sim).await;
    let waiting = {
        let (http, address) = (app.http.clone(), app.address.clone());
        tokio::spawn(async move { crate::helpers::post_ticket(&http, &address, &example()).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = app.stats();
    let started = std::time::Instant::now();
    let ready = app
        .http
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200, "busy is not unready");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(
        crate::helpers::calls_between(&before, &app.stats()),
        0,
        "the probe took no call from the waiting caller"
    );
    waiting.abort();
}

#[tokio::test]
async fn a_recent_successful_call_makes_readyz_free() {
    let app = spawn_app_with(sim_config(), |_| {}).await;
    assert_eq!(app.post_ticket(&example()).await.status(), 201);
    let before = app.stats();
    for _ in 0..3 {
        let ready = app
            .http
            .get(format!("{}/readyz", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), 200);
    }
    assert_eq!(crate::helpers::calls_between(&before, &app.stats()), 0);
}

/// The value of one sample in Prometheus text, 0 when absent.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| {
            let (_, rest) = l.split_at(name.len());
            rest.starts_with('{') || rest.starts_with(' ')
        })
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn metrics_move_with_the_traffic() {
    let app = spawn_app_with(sim_config(), |_| {}).await;
    let scrape = || async {
        app.http
            .get(format!("{}/metrics", app.address))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    // Other tests share the process-wide recorder, so compare before and after.
    let before = scrape().await;
    let body = ticket_for("+1 555 0600", Some("metrics@example.com"));
    assert_eq!(app.post_ticket(&body).await.status(), 201);
    assert_eq!(app.post_ticket(&body).await.status(), 201);
    assert_eq!(app.post_ticket(&json!({})).await.status(), 400);
    let after = scrape().await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        sample(&after, name, labels) - sample(&before, name, labels)
    };

    assert!(
        delta(
            "gorgias_proxy_http_requests_total",
            &[("route", "/ticket"), ("status", "201")]
        ) >= 2.0
    );
    assert!(
        delta(
            "gorgias_proxy_http_requests_total",
            &[("route", "/ticket"), ("status", "400")]
        ) >= 1.0
    );
    assert!(
        delta(
            "gorgias_proxy_http_request_duration_seconds_count",
            &[("route", "/ticket")]
        ) >= 3.0
    );
    assert!(
        delta(
            "gorgias_proxy_gorgias_calls_total",
            &[("endpoint", "POST /api/tickets"), ("status", "201")]
        ) >= 2.0
    );
    assert!(
        delta(
            "gorgias_proxy_gorgias_call_duration_seconds_count",
            &[("endpoint", "POST /api/tickets")]
        ) >= 2.0
    );
    assert!(delta("gorgias_proxy_customer_cache_total", &[("result", "miss")]) >= 1.0);
    assert!(delta("gorgias_proxy_customer_cache_total", &[("result", "hit")]) >= 1.0);
    assert!(after.contains("# TYPE gorgias_proxy_http_requests_in_flight gauge"));
    for name in [
        "gorgias_proxy_gorgias_retries_total",
        "gorgias_proxy_rate_limiter_waits_total",
        "gorgias_proxy_idempotency_replays_total",
    ] {
        // Declared up front so dashboards see a zero rather than a missing series.
        assert!(
            after.contains(&format!("# TYPE {name} counter")),
            "{name} missing"
        );
    }
}

#[tokio::test]
async fn logs_never_carry_secrets_or_customer_data() {
    const API_KEY: &str = "k3y-SECRET-0b1d4e";
    const TOKEN: &str = "tok-SECRET-77aa";
    const PHONE: &str = "+33 6 98 76 54 32";
    const EMAIL: &str = "leak.test@example.org";
    let (_sim, sim_url) = start_sim(&["--rate-limit", "off", "--api-key", API_KEY]);
    let (proxy, url, logs) = start_proxy_capturing(
        &sim_url,
        &[
            ("GORGIAS_API_KEY", API_KEY),
            ("API_TOKENS", &format!("{TOKEN},other-SECRET-token")),
            ("ALLOW_UNAUTHENTICATED", "false"),
            ("RUST_LOG", "debug"),
            ("GORGIAS_TIMEOUT_MS", "300"),
            ("REQUEST_DEADLINE_MS", "1000"),
        ],
    );
    let http = reqwest::Client::new();
    let body = ticket_for(PHONE, Some(EMAIL));
    let post = |b: &Value, token: Option<&str>| {
        let mut r = http.post(format!("{url}/ticket")).json(b);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    // Success (new customer: lookup, search, create, ticket).
    assert_eq!(post(&body, Some(TOKEN)).await.unwrap().status(), 201);
    // 401: no token, a wrong one.
    assert_eq!(post(&body, None).await.unwrap().status(), 401);
    assert_eq!(
        post(&body, Some("wrong-SECRET")).await.unwrap().status(),
        401
    );
    // 400 and 422 carrying the customer's data.
    let mut bad = body.clone();
    bad["extra"] = json!(EMAIL);
    assert_eq!(post(&bad, Some(TOKEN)).await.unwrap().status(), 400);
    let mut invalid = body.clone();
    invalid["ticket"]["messages"] = json!([]);
    assert_eq!(post(&invalid, Some(TOKEN)).await.unwrap().status(), 422);
    // Upstream failures: 5xx, timeout, refused credentials — for a new customer, so lookups run.
    let other = ticket_for("+33 6 11 22 33 44", Some("second.leak@example.org"));
    let set_faults = |f: Faults| http.post(format!("{sim_url}/_sim/faults")).json(&f).send();
    set_faults(Faults {
        error_rate: 1.0,
        error_status: Some(503),
        ..Faults::default()
    })
    .await
    .unwrap();
    assert_eq!(post(&other, Some(TOKEN)).await.unwrap().status(), 503);
    set_faults(Faults {
        latency_ms: 2_000,
        ..Faults::default()
    })
    .await
    .unwrap();
    assert_eq!(post(&other, Some(TOKEN)).await.unwrap().status(), 504);
    set_faults(Faults::default()).await.unwrap();
    http.post(format!("{sim_url}/_sim/credentials"))
        .json(&json!({"username": "x@example.com", "api_key": "rotated"}))
        .send()
        .await
        .unwrap();
    assert_eq!(post(&other, Some(TOKEN)).await.unwrap().status(), 502);
    assert!(sim_stats(&http, &sim_url).await.requests_total > 0);
    drop(proxy); // stop it so every line is flushed
    tokio::time::sleep(Duration::from_millis(100)).await;

    let text = logs.lock().unwrap().join("\n");
    assert!(text.contains("request finished"), "the logs were captured");
    let basic = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(format!("sandbox@example.com:{API_KEY}"))
    };
    for secret in [
        API_KEY,
        &basic,
        TOKEN,
        "other-SECRET-token",
        "wrong-SECRET",
        PHONE,
        "33698765432",
        "6 98 76 54 32",
        EMAIL,
        "leak.test",
        "second.leak",
        "33611223344",
        "leak%40example",
    ] {
        assert!(!text.contains(secret), "the logs contain `{secret}`");
    }
    assert!(
        text.contains("l***@example.org"),
        "masked email is logged for correlation"
    );
    // Every line written inside a request names it.
    for line in text.lines().filter(|l| l.contains("request finished")) {
        let v: Value = serde_json::from_str(line).unwrap();
        assert!(
            v["span"]["request_id"]
                .as_str()
                .is_some_and(|s| !s.is_empty()),
            "{line}"
        );
    }
}

#[tokio::test]
async fn the_served_openapi_document_matches_the_committed_copy() {
    let app = spawn_app_with(sim_config(), |_| {}).await;
    let served = app
        .http
        .get(format!("{}/openapi.json", app.address))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(path, &served).unwrap();
    }
    let committed = std::fs::read_to_string(path).unwrap();
    assert!(
        served == committed,
        "openapi.json is stale: run `UPDATE_OPENAPI=1 cargo test --test api openapi` and commit it"
    );
    let doc: Value = serde_json::from_str(&served).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let responses = &doc["paths"]["/ticket"]["post"]["responses"];
    for status in [
        "201", "400", "401", "409", "413", "415", "422", "502", "503", "504",
    ] {
        assert!(
            responses.get(status).is_some(),
            "status {status} is documented"
        );
    }
    assert!(responses["503"]["headers"].get("Retry-After").is_some());
}

#[tokio::test]
async fn metrics_listen_moves_metrics_to_their_own_address() {
    let sim = gorgias_sim::Simulator::spawn(sim_config(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut config = test_config(sim.url());
    config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let app = Application::build(config).await.unwrap();
    let main = format!("http://{}", app.local_addr().unwrap());
    let metrics = format!("http://{}", app.metrics_addr().unwrap().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::new();
    let own = http.get(format!("{metrics}/metrics")).send().await.unwrap();
    assert_eq!(own.status(), 200);
    assert!(
        own.text()
            .await
            .unwrap()
            .contains("gorgias_proxy_http_requests_in_flight")
    );
    let moved = http.get(format!("{main}/metrics")).send().await.unwrap();
    assert_eq!(moved.status(), 404, "not on the main listener any more");
    drop(stop);
}

/// The service serves from threads of its own (one runtime per core). When the future that runs
/// it is dropped without a shutdown signal (its runtime ended, as a test's does), those threads
/// must stop too, and the port with them; left running, they would serve on with nothing behind
/// them.
#[test]
fn a_dropped_service_stops_serving_on_all_its_threads() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (addr, sim) = rt.block_on(async {
        let sim = gorgias_sim::Simulator::spawn(sim_config(), "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let mut config = test_config(sim.url());
        config.server_threads = 3;
        let app = Application::build(config).await.unwrap();
        let addr = app.local_addr().unwrap();
        tokio::spawn(app.run_until_stopped(std::future::pending()));
        let http = reqwest::Client::new();
        // Several connections, so that more than one thread is likely to have served.
        for _ in 0..6 {
            let resp = reqwest::Client::new()
                .get(format!("http://{addr}/healthz"))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
        }
        let resp = crate::helpers::post_ticket(
            &http,
            &format!("http://{addr}"),
            &ticket_for("+1 555 0300", None),
        )
        .await;
        assert_eq!(resp.status(), 201);
        (addr, sim)
    });
    drop(rt);
    drop(sim);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Err(_) => break,
            Ok(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(_) => panic!("still accepting connections 5 s after the service was dropped"),
        }
    }
}
