//! Many Gorgias accounts (#20): stored connections, their admin API, routing by
//! `Connection-Id`, caller limits, sealed secrets, key rotation, refused credentials.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use gorgias_proxy::config::Config;
use gorgias_sim::{SimConfig, Simulator};
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::helpers::{example, get_json, serve, sim_config, test_config};

const ADMIN: &str = "admin-token-1";
const CALLER_ALL: &str = "caller-all-token";
const CALLER_A: &str = "caller-a-token";

fn key(byte: u8) -> String {
    base64::engine::general_purpose::STANDARD.encode([byte; 32])
}

/// The simulator of account `i`, with credentials of its own.
async fn account_sim(i: usize) -> Simulator {
    Simulator::spawn(
        SimConfig {
            username: format!("agent{i}@example.com"),
            api_key: format!("api-key-{i}-s3cr3t"),
            ..sim_config()
        },
        SocketAddr::from(([127, 0, 0, 1], 0)),
    )
    .await
    .unwrap()
}

/// The simulator of account `i`, limiting calls as `rate` (Gorgias: 40 per 20 s).
async fn limited_sim(i: usize, rate: (u32, Duration)) -> Simulator {
    Simulator::spawn(
        SimConfig {
            username: format!("agent{i}@example.com"),
            api_key: format!("api-key-{i}-s3cr3t"),
            rate_limit: Some(rate),
            ..SimConfig::default()
        },
        SocketAddr::from(([127, 0, 0, 1], 0)),
    )
    .await
    .unwrap()
}

/// A connection's body for simulator `i`.
fn body_for(sim: &Simulator, i: usize) -> Value {
    json!({
        "base_url": sim.url().as_str(),
        "auth": {"type": "basic", "username": format!("agent{i}@example.com"),
                 "api_key": format!("api-key-{i}-s3cr3t")},
        "rate_limit": "off",
        "ticket_channel": "phone",
    })
}

/// A deployment with a default account (`default`), admin and caller tokens, and a key.
fn multi_config(default: &Simulator, data: &std::path::Path, connections_key: u8) -> Config {
    let mut c = test_config(default.url());
    c.outbox = Some(gorgias_proxy::outbox::OutboxTarget::Sqlite(
        data.join("outbox.db"),
    ));
    c.allow_unauthenticated = false;
    c.api_tokens = vec![
        SecretString::from(format!("all@*:{CALLER_ALL}")),
        SecretString::from(format!("limited@acme:{CALLER_A}")),
    ];
    c.admin_tokens = vec![SecretString::from(ADMIN)];
    c.connections_key = Some(SecretString::from(key(connections_key)));
    c.allow_custom_base_urls = true;
    c.ticketing.channel_override = Some("phone".into());
    c
}

struct Deployment {
    address: String,
    http: reqwest::Client,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Deployment {
    async fn start(config: Config) -> Self {
        let (address, stop) = serve(config).await;
        Self {
            address,
            http: reqwest::Client::new(),
            _stop: stop,
        }
    }

    async fn put(&self, id: &str, body: &Value) -> reqwest::Response {
        self.http
            .put(format!("{}/connections/{id}", self.address))
            .bearer_auth(ADMIN)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    async fn ticket(
        &self,
        token: &str,
        connection: Option<&str>,
        body: &Value,
    ) -> reqwest::Response {
        let mut req = self
            .http
            .post(format!("{}/ticket", self.address))
            .bearer_auth(token)
            .json(body);
        if let Some(c) = connection {
            req = req.header("connection-id", c);
        }
        req.send().await.unwrap()
    }

    async fn admin_get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.address))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
    }
}

fn tickets(sim: &Simulator) -> usize {
    sim.ticket_external_ids().len()
}

#[tokio::test]
async fn three_connections_route_each_ticket_to_its_own_account_and_nothing_leaks() {
    let default = account_sim(0).await;
    let sims = [
        account_sim(1).await,
        account_sim(2).await,
        account_sim(3).await,
    ];
    let data = crate::helpers::temp_data_dir();
    let mut config = multi_config(&default, &data, 1);
    config.gorgias.auth = gorgias::Auth::Basic {
        username: "agent0@example.com".into(),
        api_key: SecretString::from("api-key-0-s3cr3t"),
    };
    let app = Deployment::start(config).await;
    for (i, (id, sim)) in ["acme", "globex", "initech"].iter().zip(&sims).enumerate() {
        let resp = app.put(id, &body_for(sim, i + 1)).await;
        assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
    }
    // Replacing answers 200.
    assert_eq!(app.put("acme", &body_for(&sims[0], 1)).await.status(), 200);
    for (round, id) in ["acme", "globex", "initech", "globex", "initech", "initech"]
        .iter()
        .enumerate()
    {
        let resp = app.ticket(CALLER_ALL, Some(id), &example()).await;
        assert_eq!(
            resp.status(),
            201,
            "round {round} to {id}: {}",
            resp.text().await.unwrap()
        );
    }
    assert_eq!(
        sims.iter().map(tickets).collect::<Vec<_>>(),
        [1, 2, 3],
        "each ticket in its own account"
    );
    // Without the header: the default account from GORGIAS_*, as before connections.
    let resp = app.ticket(CALLER_ALL, None, &example()).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(tickets(&default), 1);
    assert_eq!(sims.iter().map(tickets).sum::<usize>(), 6);

    // The admin view: state, no secret.
    let view: Value = app
        .admin_get("/connections/globex")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(view["connection_id"], "globex");
    assert_eq!(view["status"], "ok", "{view}");
    assert!(view["last_success_at"].is_string(), "{view}");
    assert_eq!(view["queued_deliveries"], 0);
    assert_eq!(view["auth"]["type"], "basic");
    let text = view.to_string();
    assert!(!text.contains("s3cr3t"), "a secret in the answer: {text}");

    // A page of two, then the rest.
    let page: Value = app
        .admin_get("/connections?limit=2")
        .await
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = page["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["connection_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["acme", "globex"]);
    assert_eq!(page["next_cursor"], "globex");
    let rest: Value = app
        .admin_get("/connections?limit=2&cursor=globex")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(rest["connections"][0]["connection_id"], "initech");
    assert!(rest.get("next_cursor").is_none(), "{rest}");
    assert!(!page.to_string().contains("s3cr3t"));

    // The database holds no secret in clear: every file of it, read as bytes.
    for entry in std::fs::read_dir(&data).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        for i in 1..=3 {
            let secret = format!("api-key-{i}-s3cr3t");
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret} in clear on disk"
            );
        }
    }
}

#[tokio::test]
async fn callers_and_admins_hold_different_powers_and_unknown_connections_say_nothing() {
    let default = account_sim(0).await;
    let acme = account_sim(1).await;
    let globex = account_sim(2).await;
    let data = crate::helpers::temp_data_dir();
    let app = Deployment::start(multi_config(&default, &data, 1)).await;
    assert_eq!(app.put("acme", &body_for(&acme, 1)).await.status(), 201);
    assert_eq!(app.put("globex", &body_for(&globex, 2)).await.status(), 201);

    // Limited to acme: acme works, globex is "unknown", exactly like a connection that does
    // not exist.
    assert_eq!(
        app.ticket(CALLER_A, Some("acme"), &example())
            .await
            .status(),
        201
    );
    let denied = app.ticket(CALLER_A, Some("globex"), &example()).await;
    assert_eq!(denied.status(), 404);
    let denied: Value = denied.json().await.unwrap();
    assert_eq!(denied["code"], "unknown_connection");
    let missing: Value = app
        .ticket(CALLER_A, Some("nope"), &example())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(missing["code"], denied["code"]);
    assert_eq!(missing["detail"], denied["detail"]);
    assert_eq!(tickets(&globex), 0);

    // An admin token opens no ticket; a caller token manages no connection.
    assert_eq!(app.ticket(ADMIN, None, &example()).await.status(), 401);
    assert_eq!(
        app.ticket(ADMIN, Some("acme"), &example()).await.status(),
        401
    );
    let as_caller = app
        .http
        .put(format!("{}/connections/evil", app.address))
        .bearer_auth(CALLER_ALL)
        .json(&body_for(&acme, 1))
        .send()
        .await
        .unwrap();
    assert_eq!(as_caller.status(), 401);
    let as_caller = app
        .http
        .get(format!("{}/connections/acme", app.address))
        .bearer_auth(CALLER_ALL)
        .send()
        .await
        .unwrap();
    assert_eq!(as_caller.status(), 401);

    // Bodies are validated like POST /ticket: every problem, with its path.
    let bad = app
        .put(
            "acme",
            &json!({"subdomain": "Not Valid", "auth": {"type": "basic", "username": 3},
                    "colour": "red"}),
        )
        .await;
    assert_eq!(bad.status(), 400);
    assert_eq!(bad.headers()["content-type"], "application/problem+json");
    let bad: Value = bad.json().await.unwrap();
    let fields: Vec<&str> = bad["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    for f in ["colour", "subdomain", "auth.username", "auth.api_key"] {
        assert!(fields.contains(&f), "{f} not in {fields:?}");
    }
    // A malformed id in the path is a 400, not a 500 or a stored row.
    assert_eq!(app.put("bad%20id", &body_for(&acme, 1)).await.status(), 400);
}

#[tokio::test]
async fn a_custom_base_url_is_refused_unless_the_deployment_allows_it() {
    let default = account_sim(0).await;
    let data = crate::helpers::temp_data_dir();
    let mut config = multi_config(&default, &data, 1);
    config.allow_custom_base_urls = false;
    let app = Deployment::start(config).await;
    let resp = app.put("internal", &body_for(&default, 0)).await;
    assert_eq!(resp.status(), 422);
    let p: Value = resp.json().await.unwrap();
    assert_eq!(p["errors"][0]["field"], "base_url", "{p}");
    assert_eq!(app.admin_get("/connections/internal").await.status(), 404);
    // A subdomain is fine.
    let ok = app
        .put(
            "acme",
            &json!({"subdomain": "acme", "auth": {"type": "basic", "username": "a@b.c",
                    "api_key": "k"}}),
        )
        .await;
    assert_eq!(ok.status(), 201);
    let view: Value = ok.json().await.unwrap();
    assert_eq!(view["base_url"], "https://acme.gorgias.com/");
    assert_eq!(view["status"], "unchecked");
}

#[tokio::test]
async fn without_a_default_account_a_request_without_connection_id_is_400() {
    let acme = account_sim(1).await;
    let data = crate::helpers::temp_data_dir();
    let mut config = multi_config(&acme, &data, 1);
    config.default_account = false;
    let app = Deployment::start(config).await;
    let resp = app.ticket(CALLER_ALL, None, &example()).await;
    assert_eq!(resp.status(), 400);
    let p: Value = resp.json().await.unwrap();
    assert_eq!(p["code"], "connection_required");
    assert_eq!(tickets(&acme), 0, "nothing reached the template's address");
    assert_eq!(app.put("acme", &body_for(&acme, 1)).await.status(), 201);
    assert_eq!(
        app.ticket(CALLER_ALL, Some("acme"), &example())
            .await
            .status(),
        201
    );
    assert_eq!(tickets(&acme), 1);
}

async fn post_async(app: &Deployment, connection: &str) -> Value {
    let resp = app
        .http
        .post(format!("{}/ticket", app.address))
        .bearer_auth(CALLER_ALL)
        .header("connection-id", connection)
        .header("prefer", "respond-async")
        .json(&example())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    resp.json().await.unwrap()
}

async fn status_of(app: &Deployment, connection: &str, accepted: &Value) -> Value {
    let resp = app
        .http
        .get(format!(
            "{}{}",
            app.address,
            accepted["status_url"].as_str().unwrap()
        ))
        .bearer_auth(CALLER_ALL)
        .header("connection-id", connection)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

#[tokio::test]
async fn a_refused_key_needs_reconnecting_and_its_deliveries_wait_for_the_new_one() {
    let default = account_sim(0).await;
    let acme = account_sim(1).await;
    let data = crate::helpers::temp_data_dir();
    let mut config = multi_config(&default, &data, 1);
    config.delivery.base_backoff = Duration::from_millis(100);
    config.delivery.max_backoff = Duration::from_millis(300);
    let app = Deployment::start(config).await;
    // Stored with a key Gorgias no longer accepts (rotated a minute too early).
    let mut stale = body_for(&acme, 1);
    stale["auth"]["api_key"] = json!("api-key-1-rotated-out");
    assert_eq!(app.put("acme", &stale).await.status(), 201);

    let sync = app.ticket(CALLER_ALL, Some("acme"), &example()).await;
    assert_eq!(sync.status(), 503);
    let p: Value = sync.json().await.unwrap();
    assert_eq!(p["code"], "connection_needs_reconnect");
    assert!(p["detail"].as_str().unwrap().contains("acme"), "{p}");
    let view: Value = app
        .admin_get("/connections/acme")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(view["status"], "needs_reconnect", "{view}");
    assert!(
        view["last_error"]["error"]
            .as_str()
            .unwrap()
            .contains("401"),
        "{view}"
    );
    assert!(!view.to_string().contains("rotated-out"));
    // The next one is answered at once, without spending a call.
    let calls = acme.stats().requests_total;
    assert_eq!(
        app.ticket(CALLER_ALL, Some("acme"), &example())
            .await
            .status(),
        503
    );
    assert_eq!(acme.stats().requests_total, calls);

    // Queued deliveries wait: not failed, however many attempts.
    let accepted: Vec<Value> =
        futures_util::future::join_all((0..3).map(|_| post_async(&app, "acme"))).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    for a in &accepted {
        let doc = status_of(&app, "acme", a).await;
        assert_eq!(doc["status"], "queued", "{doc}");
        assert_eq!(
            doc["problem"]["code"], "connection_needs_reconnect",
            "{doc}"
        );
    }
    let view: Value = app
        .admin_get("/connections/acme")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(view["queued_deliveries"], 3);
    assert_eq!(tickets(&acme), 0);

    // The new key: every waiting delivery is delivered, once.
    assert_eq!(app.put("acme", &body_for(&acme, 1)).await.status(), 200);
    let start = Instant::now();
    for a in &accepted {
        loop {
            let doc = status_of(&app, "acme", a).await;
            if doc["status"] == "delivered" {
                break;
            }
            assert_ne!(doc["status"], "failed", "{doc}");
            assert!(start.elapsed() < Duration::from_secs(10), "{doc}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(tickets(&acme), 3);
    let view: Value = app
        .admin_get("/connections/acme")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(view["status"], "ok", "{view}");
}

#[tokio::test]
async fn deleting_a_connection_with_queued_deliveries_needs_force_and_fails_them() {
    let default = account_sim(0).await;
    let acme = account_sim(1).await;
    let data = crate::helpers::temp_data_dir();
    let app = Deployment::start(multi_config(&default, &data, 1)).await;
    // Refused credentials keep its deliveries queued.
    let mut stale = body_for(&acme, 1);
    stale["auth"]["api_key"] = json!("wrong");
    assert_eq!(app.put("acme", &stale).await.status(), 201);
    let accepted = post_async(&app, "acme").await;
    let delete = |force: bool| {
        let url = format!(
            "{}/connections/acme{}",
            app.address,
            if force { "?force=true" } else { "" }
        );
        app.http.delete(url).bearer_auth(ADMIN).send()
    };
    let refused = delete(false).await.unwrap();
    assert_eq!(refused.status(), 409);
    let p: Value = refused.json().await.unwrap();
    assert_eq!(p["code"], "connection_has_deliveries");
    assert_eq!(app.admin_get("/connections/acme").await.status(), 200);

    assert_eq!(delete(true).await.unwrap().status(), 204);
    assert_eq!(app.admin_get("/connections/acme").await.status(), 404);
    // The connection is gone; its deliveries' outcome is still readable under its id.
    let doc = status_of(&app, "acme", &accepted).await;
    assert_eq!(doc["status"], "failed", "{doc}");
    assert_eq!(doc["problem"]["code"], "connection_deleted", "{doc}");
    assert_eq!(delete(false).await.unwrap().status(), 404);
}

#[tokio::test]
async fn two_connections_to_one_account_share_its_budget_and_meet_no_429() {
    // The simulator enforces 20 calls per 2 s; both connections pace at that rate, against
    // one budget: together they never exceed it.
    let shared = limited_sim(1, (20, Duration::from_secs(2))).await;
    let default = account_sim(0).await;
    let data = crate::helpers::temp_data_dir();
    let app = Deployment::start(multi_config(&default, &data, 1)).await;
    for id in ["shop-a", "shop-b"] {
        let mut body = body_for(&shared, 1);
        body["rate_limit"] = json!("20/2s");
        assert_eq!(app.put(id, &body).await.status(), 201);
    }
    let sends = (0..40).map(|i| {
        let app = &app;
        async move {
            let id = if i % 2 == 0 { "shop-a" } else { "shop-b" };
            let body = crate::helpers::ticket_for(&format!("+1 555 01{:02}", i % 100), None);
            app.ticket(CALLER_ALL, Some(id), &body).await.status()
        }
    });
    let statuses = futures_util::future::join_all(sends).await;
    let created = statuses.iter().filter(|s| s.as_u16() == 201).count();
    assert!(created > 0, "{statuses:?}");
    let stats = shared.stats();
    assert_eq!(
        stats.rate_limited, 0,
        "the two connections overran their one account's budget: {stats:?}"
    );
}

#[tokio::test]
async fn secrets_survive_a_key_rotation_and_rekey_retires_the_old_key() {
    let default = account_sim(0).await;
    let acme = account_sim(1).await;
    let data = crate::helpers::temp_data_dir();
    {
        let app = Deployment::start(multi_config(&default, &data, 1)).await;
        assert_eq!(app.put("acme", &body_for(&acme, 1)).await.status(), 201);
    }
    // Let the first deployment release its SQLite file.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let bin = env!("CARGO_BIN_EXE_gorgias-proxy");
    let run = |current: &str, previous: Option<&str>| {
        let mut cmd = std::process::Command::new(bin);
        cmd.args(["connections", "rekey"])
            .env_clear()
            .env("DATA_DIR", &data)
            .env("CONNECTIONS_KEY", current);
        if let Some(p) = previous {
            cmd.env("CONNECTIONS_KEY_PREVIOUS", p);
        }
        cmd.output().unwrap()
    };
    // Without the old key nothing opens, and nothing is written.
    let out = wait_for_lock(|| run(&key(2), None));
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains(&key(2)) && !stderr.contains("s3cr3t"),
        "{stderr}"
    );
    // A service with only the new key refuses to start, naming the setting.
    let mut only_new = multi_config(&default, &data, 2);
    only_new.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    let err = gorgias_proxy::app::Application::build(only_new)
        .await
        .err()
        .expect("refuses to start");
    assert!(
        err.to_string().contains("CONNECTIONS_KEY_PREVIOUS"),
        "{err}"
    );

    let out = wait_for_lock(|| run(&key(2), Some(&key(1))));
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("rekeyed 1"),
        "{out:?}"
    );
    // The old key is no longer needed: a service with only the new one serves acme.
    let app = Deployment::start(multi_config(&default, &data, 2)).await;
    assert_eq!(
        app.ticket(CALLER_ALL, Some("acme"), &example())
            .await
            .status(),
        201
    );
    assert_eq!(tickets(&acme), 1);
}

/// Runs `f` until it does not fail for the SQLite file being in use (a test's server may still
/// be letting go of it).
fn wait_for_lock(f: impl Fn() -> std::process::Output) -> std::process::Output {
    let start = Instant::now();
    loop {
        let out = f();
        if !String::from_utf8_lossy(&out.stderr).contains("already in use")
            || start.elapsed() > Duration::from_secs(10)
        {
            return out;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test]
async fn the_service_refuses_to_start_with_stored_connections_and_no_key() {
    let default = account_sim(0).await;
    let acme = account_sim(1).await;
    let data = crate::helpers::temp_data_dir();
    {
        let app = Deployment::start(multi_config(&default, &data, 1)).await;
        assert_eq!(app.put("acme", &body_for(&acme, 1)).await.status(), 201);
        let health: Value = get_json(&app.http, &format!("{}/healthz", app.address)).await;
        assert_eq!(health["status"], "ok");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut no_key = multi_config(&default, &data, 1);
    no_key.connections_key = None;
    let start = Instant::now();
    let err = loop {
        match gorgias_proxy::app::Application::build(no_key.clone()).await {
            Err(e)
                if e.to_string().contains("already in use")
                    && start.elapsed() < Duration::from_secs(10) =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => break e,
            Ok(_) => panic!("started without the key of its stored connections"),
        }
    };
    assert!(err.to_string().contains("CONNECTIONS_KEY"), "{err}");
}

#[tokio::test]
async fn the_real_binarys_logs_never_show_a_connections_secret() {
    let default = account_sim(0).await;
    let acme = account_sim(1).await;
    let data = crate::helpers::temp_data_dir();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_gorgias-proxy"));
    cmd.args(["--listen", "127.0.0.1:0"])
        .env_clear()
        .env("GORGIAS_BASE_URL", default.url().as_str())
        .env("GORGIAS_USERNAME", "agent0@example.com")
        .env("GORGIAS_API_KEY", "api-key-0-s3cr3t")
        .env("API_TOKENS", format!("all@*:{CALLER_ALL}"))
        .env("ADMIN_TOKENS", ADMIN)
        .env("CONNECTIONS_KEY", key(1))
        .env("ALLOW_CUSTOM_BASE_URLS", "true")
        .env("DATA_DIR", &data)
        .env("LOG_FORMAT", "json")
        // Everything the service logs, the database drivers' debug lines included.
        .env("RUST_LOG", "debug");
    let (_proc, addr, captured) = crate::helpers::start_capturing(cmd, |line| {
        let v: Value = serde_json::from_str(line).ok()?;
        (v["fields"]["message"] == "gorgias-proxy listening")
            .then(|| v["fields"]["addr"].as_str().map(str::to_owned))?
    });
    let app = Deployment {
        address: format!("http://{addr}"),
        http: reqwest::Client::new(),
        _stop: tokio::sync::oneshot::channel().0,
    };
    let mut oauth = body_for(&acme, 1);
    oauth["auth"] = json!({"type": "oauth2", "access_token": "access-tok-s3cr3t",
                           "refresh_token": "refresh-tok-s3cr3t"});
    assert_eq!(app.put("globex", &oauth).await.status(), 201);
    assert_eq!(app.put("acme", &body_for(&acme, 1)).await.status(), 201);
    assert_eq!(
        app.ticket(CALLER_ALL, Some("acme"), &example())
            .await
            .status(),
        201
    );
    // Refused (the simulator takes no bearer token here): logged as a refusal, not a token.
    assert_eq!(
        app.ticket(CALLER_ALL, Some("globex"), &example())
            .await
            .status(),
        503
    );
    let mut rotated = body_for(&acme, 1);
    rotated["auth"]["api_key"] = json!("api-key-9-s3cr3t");
    assert_eq!(app.put("acme", &rotated).await.status(), 200);
    assert_eq!(
        app.ticket(CALLER_ALL, Some("acme"), &example())
            .await
            .status(),
        503
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lines = captured.lock().unwrap().clone();
    assert!(lines.len() > 10, "the debug log was written: {lines:?}");
    for line in &lines {
        for secret in ["s3cr3t", &key(1)] {
            assert!(!line.contains(secret), "a secret in the log: {line}");
        }
    }
}

/// A deployment that knows the simulator's OAuth2 app.
fn oauth_config(default: &Simulator, data: &std::path::Path) -> Config {
    let mut c = multi_config(default, data, 1);
    c.oauth = Some(gorgias::OAuthClient {
        client_id: gorgias_sim::DEFAULT_CLIENT_ID.into(),
        client_secret: SecretString::from(gorgias_sim::DEFAULT_CLIENT_SECRET),
        redirect_url: "http://127.0.0.1:9/oauth/callback".parse().unwrap(),
    });
    c
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Follows an install from our `/oauth/authorize` answer to the callback's query.
async fn consent(http: &reqwest::Client, ours: reqwest::Response) -> (String, String) {
    assert_eq!(ours.status(), 302, "{:?}", ours.text().await);
    let to_gorgias = ours.headers()["location"].to_str().unwrap().to_owned();
    let gorgias_url: url::Url = to_gorgias.parse().unwrap();
    let q: std::collections::HashMap<_, _> = gorgias_url.query_pairs().into_owned().collect();
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["client_id"], gorgias_sim::DEFAULT_CLIENT_ID);
    assert_eq!(
        q["scope"],
        "openid offline tickets:write customers:read customers:write account:read"
    );
    assert_eq!(q["redirect_uri"], "http://127.0.0.1:9/oauth/callback");
    let back = http.get(gorgias_url).send().await.unwrap();
    assert_eq!(back.status(), 302);
    let back: url::Url = back.headers()["location"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let q: std::collections::HashMap<_, _> = back.query_pairs().into_owned().collect();
    (q["code"].clone(), q["state"].clone())
}

#[tokio::test]
async fn the_oauth2_install_stores_a_connection_that_opens_tickets_and_a_replayed_state_is_refused()
{
    let default = account_sim(0).await;
    let acme = account_sim(1).await;
    let data = crate::helpers::temp_data_dir();
    let app = Deployment::start(oauth_config(&default, &data)).await;
    let http = no_redirects();
    let authorize = format!(
        "{}/oauth/authorize?connection_id=acme&base_url={}",
        app.address,
        url::form_urlencoded::byte_serialize(acme.url().as_str().as_bytes()).collect::<String>()
    );
    // Not without an admin token (or a signed link).
    assert_eq!(http.get(&authorize).send().await.unwrap().status(), 401);
    assert_eq!(
        http.get(&authorize)
            .bearer_auth(CALLER_ALL)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let ours = http
        .get(&authorize)
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    let (code, state) = consent(&http, ours).await;

    // A forged state stores nothing and never reaches Gorgias.
    let forged = http
        .get(format!(
            "{}/oauth/callback?code={code}&state=forged",
            app.address
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 400);
    let p: Value = forged.json().await.unwrap();
    assert_eq!(p["code"], "invalid_oauth_state");
    assert_eq!(acme.stats().codes_exchanged, 0);

    let callback = format!("{}/oauth/callback?code={code}&state={state}", app.address);
    let done = http.get(&callback).send().await.unwrap();
    assert_eq!(done.status(), 200, "{:?}", done.text().await);
    assert_eq!(acme.stats().codes_exchanged, 1);
    // Replayed: refused, and nothing stored again.
    let replay = http.get(&callback).send().await.unwrap();
    assert_eq!(replay.status(), 400);
    assert_eq!(acme.stats().codes_exchanged, 1);

    let view: Value = app
        .admin_get("/connections/acme")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(view["auth"]["type"], "oauth2", "{view}");
    assert!(view["access_token_expires_at"].is_string(), "{view}");
    assert!(!view.to_string().contains("sim-at-") && !view.to_string().contains("sim-rt-"));
    let resp = app.ticket(CALLER_ALL, Some("acme"), &example()).await;
    assert_eq!(resp.status(), 201, "{:?}", resp.text().await);
    assert_eq!(tickets(&acme), 1);

    // A signed link works without the admin token, only as signed, and only for its install.
    let link: Value = app
        .http
        .post(format!("{}/connections/globex/oauth-link", app.address))
        .bearer_auth(ADMIN)
        .json(&json!({"base_url": acme.url().as_str()}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = format!("{}{}", app.address, link["url"].as_str().unwrap());
    let tampered = url.replace("connection_id=globex", "connection_id=acme");
    assert_eq!(http.get(&tampered).send().await.unwrap().status(), 401);
    let ours = http.get(&url).send().await.unwrap();
    let (code, state) = consent(&http, ours).await;
    let done = http
        .get(format!(
            "{}/oauth/callback?code={code}&state={state}",
            app.address
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 200);
    assert_eq!(app.admin_get("/connections/globex").await.status(), 200);
}

/// An OAuth2 connection for `sim`, with tokens the simulator issued that live `ttl`.
fn oauth_body(sim: &Simulator, ttl: Duration) -> Value {
    let (access, refresh) = sim.issue_tokens();
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        + ttl;
    json!({
        "base_url": sim.url().as_str(),
        "auth": {"type": "oauth2", "access_token": access, "refresh_token": refresh,
                 "expires_at": humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + expires).to_string()},
        "rate_limit": "off",
        "ticket_channel": "phone",
    })
}

async fn short_lived_sim(ttl: Duration) -> Simulator {
    Simulator::spawn(
        SimConfig {
            oauth: gorgias_sim::OAuthConfig {
                access_token_ttl: ttl,
                ..gorgias_sim::OAuthConfig::default()
            },
            oauth_rate_limit: None,
            ..sim_config()
        },
        SocketAddr::from(([127, 0, 0, 1], 0)),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn short_lived_access_tokens_are_refreshed_and_callers_never_see_a_401() {
    let ttl = Duration::from_secs(3);
    let sim = short_lived_sim(ttl).await;
    let default = account_sim(0).await;
    let data = crate::helpers::temp_data_dir();
    let app = Deployment::start(oauth_config(&default, &data)).await;
    assert_eq!(app.put("acme", &oauth_body(&sim, ttl)).await.status(), 201);
    // 200 requests over some 10 s: more than three lifetimes.
    let start = Instant::now();
    let mut statuses = Vec::new();
    for round in 0..20u64 {
        let batch = (0..10).map(|i| {
            let body = crate::helpers::ticket_for(&format!("+1 555 02{round:02}{i}"), None);
            let app = &app;
            async move {
                app.ticket(CALLER_ALL, Some("acme"), &body)
                    .await
                    .status()
                    .as_u16()
            }
        });
        statuses.extend(futures_util::future::join_all(batch).await);
        tokio::time::sleep_until((start + Duration::from_millis(500 * (round + 1))).into()).await;
    }
    assert!(statuses.iter().all(|s| *s == 201), "{statuses:?}");
    let stats = sim.stats();
    assert_eq!(stats.tickets_created, 200);
    // Refreshed ahead of expiry (a third of the lifetime before it), once per token.
    let lifetimes = start.elapsed().as_secs_f64() / ttl.as_secs_f64();
    assert!(stats.token_refreshes >= 3, "{stats:?}");
    assert!(
        (stats.token_refreshes as f64) <= lifetimes * 1.5 + 1.0,
        "more refreshes than tokens needed: {stats:?} over {lifetimes:.1} lifetimes"
    );
    assert_eq!(
        stats.expired_tokens, 0,
        "an expired token was sent: {stats:?}"
    );
}

#[tokio::test]
async fn a_revoked_refresh_token_needs_reconnecting_and_deliveries_wait_for_the_new_tokens() {
    let ttl = Duration::from_secs(2);
    let sim = short_lived_sim(ttl).await;
    let default = account_sim(0).await;
    let data = crate::helpers::temp_data_dir();
    let mut config = oauth_config(&default, &data);
    config.delivery.base_backoff = Duration::from_millis(100);
    config.delivery.max_backoff = Duration::from_millis(300);
    let app = Deployment::start(config).await;
    assert_eq!(app.put("acme", &oauth_body(&sim, ttl)).await.status(), 201);
    assert_eq!(
        app.ticket(CALLER_ALL, Some("acme"), &example())
            .await
            .status(),
        201
    );
    // The merchant uninstalls the app: refreshes are refused from now on.
    sim.set_revoked(true);
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    let sync = app.ticket(CALLER_ALL, Some("acme"), &example()).await;
    assert_eq!(sync.status(), 503);
    let p: Value = sync.json().await.unwrap();
    assert_eq!(p["code"], "connection_needs_reconnect", "{p}");
    assert!(p["detail"].as_str().unwrap().contains("acme"));
    let view: Value = app
        .admin_get("/connections/acme")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(view["status"], "needs_reconnect", "{view}");
    assert!(sim.stats().refused_grants >= 1);

    let accepted = post_async(&app, "acme").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let doc = status_of(&app, "acme", &accepted).await;
    assert_eq!(doc["status"], "queued", "{doc}");
    assert_eq!(sim.stats().tickets_created, 1);

    // Reinstalled (new tokens PUT): the delivery goes through, once.
    sim.set_revoked(false);
    assert_eq!(
        app.put("acme", &oauth_body(&sim, Duration::from_secs(60)))
            .await
            .status(),
        200
    );
    let start = Instant::now();
    loop {
        let doc = status_of(&app, "acme", &accepted).await;
        if doc["status"] == "delivered" {
            break;
        }
        assert_ne!(doc["status"], "failed", "{doc}");
        assert!(start.elapsed() < Duration::from_secs(10), "{doc}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(sim.stats().tickets_created, 2);
}

#[tokio::test]
async fn two_replicas_on_postgresql_refresh_each_token_once() {
    let Some(outbox) = crate::helpers::postgres_outbox_url().await else {
        return;
    };
    let ttl = Duration::from_secs(3);
    let sim = short_lived_sim(ttl).await;
    let default = account_sim(0).await;
    let replica = |outbox: &str| {
        let mut c = oauth_config(&default, &crate::helpers::temp_data_dir());
        c.outbox = Some(
            gorgias_proxy::outbox::OutboxTarget::parse(Some(outbox), std::path::Path::new("."))
                .unwrap(),
        );
        c.redis_url = std::env::var("REDIS_URL").ok().filter(|u| !u.is_empty());
        c
    };
    let a = Deployment::start(replica(&outbox)).await;
    let b = Deployment::start(replica(&outbox)).await;
    assert_eq!(a.put("acme", &oauth_body(&sim, ttl)).await.status(), 201);
    let start = Instant::now();
    let mut statuses = Vec::new();
    for round in 0..20u64 {
        let batch = (0..6).map(|i| {
            let body = crate::helpers::ticket_for(&format!("+1 555 03{round:02}{i}"), None);
            let app = if i % 2 == 0 { &a } else { &b };
            async move {
                app.ticket(CALLER_ALL, Some("acme"), &body)
                    .await
                    .status()
                    .as_u16()
            }
        });
        statuses.extend(futures_util::future::join_all(batch).await);
        tokio::time::sleep_until((start + Duration::from_millis(500 * (round + 1))).into()).await;
    }
    assert!(statuses.iter().all(|s| *s == 201), "{statuses:?}");
    let stats = sim.stats();
    let lifetimes = start.elapsed().as_secs_f64() / ttl.as_secs_f64();
    // One replica refreshes (the row's lock); the other finds the new tokens.
    assert!(stats.token_refreshes >= 2, "{stats:?}");
    assert!(
        (stats.token_refreshes as f64) <= lifetimes * 1.5 + 1.0,
        "two replicas refreshed the same token: {stats:?} over {lifetimes:.1} lifetimes"
    );
}

async fn post_async_body(app: &Deployment, connection: &str, body: &Value) -> Value {
    let resp = app
        .http
        .post(format!("{}/ticket", app.address))
        .bearer_auth(CALLER_ALL)
        .header("connection-id", connection)
        .header("prefer", "respond-async")
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    resp.json().await.unwrap()
}

#[tokio::test]
async fn a_backlog_on_one_connection_does_not_hold_back_another() {
    // A: 500 deliveries queued behind Gorgias's 40 calls per 20 s.
    let slow = limited_sim(1, (40, Duration::from_secs(20))).await;
    let fast = account_sim(2).await;
    let default = account_sim(0).await;
    let data = crate::helpers::temp_data_dir();
    let app = Deployment::start(multi_config(&default, &data, 1)).await;
    let mut a = body_for(&slow, 1);
    a["rate_limit"] = json!("40/20s");
    assert_eq!(app.put("a", &a).await.status(), 201);
    assert_eq!(app.put("b", &body_for(&fast, 2)).await.status(), 201);
    for chunk in 0..10 {
        let sends = (0..50).map(|i| {
            let body = crate::helpers::ticket_for(&format!("+1 555 4{chunk:02}{i:04}"), None);
            let app = &app;
            async move { post_async_body(app, "a", &body).await }
        });
        futures_util::future::join_all(sends).await;
    }
    // B: 10 accepted afterwards, each delivered within 15 s.
    let accepted_at = Instant::now();
    let mut b_accepted = Vec::new();
    for i in 0..10 {
        let body = crate::helpers::ticket_for(&format!("+1 555 5000{i:03}"), None);
        b_accepted.push(post_async_body(&app, "b", &body).await);
    }
    for accepted in &b_accepted {
        loop {
            let doc = status_of(&app, "b", accepted).await;
            if doc["status"] == "delivered" {
                break;
            }
            assert!(
                accepted_at.elapsed() < Duration::from_secs(15),
                "B waited behind A's backlog: {doc}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(tickets(&fast), 10);
    // A's backlog is still draining, and its account never saw a 429.
    assert!(tickets(&slow) < 500);
    assert_eq!(slow.stats().rate_limited, 0, "{:?}", slow.stats());
}

#[tokio::test]
async fn a_connections_deliveries_and_their_webhook_events_name_it() {
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let (hook, got) = crate::asynchronous::receiver().await;
    let default = account_sim(0).await;
    let acme = account_sim(1).await;
    let data = crate::helpers::temp_data_dir();
    let mut config = multi_config(&default, &data, 1);
    config.webhook = Some((hook.parse().unwrap(), SecretString::from(SECRET)));
    config.delivery.base_backoff = Duration::from_millis(100);
    let app = Deployment::start(config).await;
    assert_eq!(app.put("acme", &body_for(&acme, 1)).await.status(), 201);
    let accepted = post_async(&app, "acme").await;
    let start = Instant::now();
    let doc = loop {
        let doc = status_of(&app, "acme", &accepted).await;
        if doc["status"] == "delivered" {
            break doc;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{doc}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(doc["connection_id"], "acme", "{doc}");
    // The receiver refuses the first send; the retry brings it.
    let start = Instant::now();
    while got.lock().unwrap().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no event arrived"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, body) = got.lock().unwrap()[0].clone();
    let event: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(event["type"], "ticket.delivered");
    assert_eq!(event["data"]["connection_id"], "acme", "{event}");
    // The default account's deliveries carry none.
    let default_doc: Value = {
        let resp = app
            .http
            .post(format!("{}/ticket", app.address))
            .bearer_auth(CALLER_ALL)
            .header("prefer", "respond-async")
            .json(&example())
            .send()
            .await
            .unwrap();
        resp.json().await.unwrap()
    };
    let doc: Value = app
        .http
        .get(format!(
            "{}{}",
            app.address,
            default_doc["status_url"].as_str().unwrap()
        ))
        .bearer_auth(CALLER_ALL)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc.get("connection_id").is_none(), "{doc}");
}

/// A deployment that was not set up for OAuth2 or stored connections answers their routes with
/// a 404 naming the setting: nothing failed, so nothing may look like an outage (a 5xx pages
/// someone). Before, these were 503 `connections_unavailable`, which schemathesis caught.
#[tokio::test]
async fn routes_of_a_feature_that_is_not_set_up_answer_404_not_enabled() {
    let acme = account_sim(1).await;
    let data = crate::helpers::temp_data_dir();
    let mut config = multi_config(&acme, &data, 1);
    config.connections_key = None;
    let app = Deployment::start(config).await;
    let http = no_redirects();
    for path in [
        "/oauth/callback?code=&state=x",
        "/oauth/authorize?connection_id=&sig=&expires=0",
    ] {
        let resp = http
            .get(format!("{}{path}", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404, "{path}");
        let p: Value = resp.json().await.unwrap();
        assert_eq!(p["code"], "not_enabled", "{path}");
        assert!(p["detail"].as_str().unwrap().contains("OAUTH_"), "{p}");
    }
    let resp = app.put("acme", &body_for(&acme, 1)).await;
    assert_eq!(resp.status(), 404);
    let p: Value = resp.json().await.unwrap();
    assert_eq!(p["code"], "not_enabled");
    assert!(p["detail"].as_str().unwrap().contains("CONNECTIONS_KEY"));
}
