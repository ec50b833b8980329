//! Each ticket once, under the faults a deployment meets outside the process: a Redis that
//! forgets, a restart between a 201 and the retry, a second process on one data directory, a
//! stricter configuration after acceptance, a stale PostgreSQL worker, a blackholed database.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::asynchronous::{accepted, post_async, until_final};
use crate::helpers::{
    Running, closed_port, postgres_outbox_url, redis_url, sim_stats, start_proxy, start_sim,
    temp_data_dir, ticket_for, unique,
};
use crate::leases::post_keyed;

/// A keyed 201, then `between` (given the simulator's URL and the running service, it
/// returns the service to retry on), then the caller's retry: the same ticket, replayed, and
/// one ticket in Gorgias.
async fn retry_after_a_201(
    env: &[(&str, &str)],
    between: impl AsyncFnOnce(&str, (Running, String)) -> (Running, String),
) {
    let (_sim, sim_url) = start_sim(&["--rate-limit", "off"]);
    let (proxy, url) = start_proxy(&sim_url, env);
    let http = reqwest::Client::new();
    let key = unique("durable");
    let body = ticket_for("+1 555 0707070", None);
    let first = post_keyed(&http, &url, &key, &body, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();

    let (_proxy, url) = between(&sim_url, (proxy, url)).await;
    let retry = post_keyed(&http, &url, &key, &body, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(retry.status(), 201);
    assert_eq!(retry.headers()["idempotency-replayed"], "true");
    let retry: Value = retry.json().await.unwrap();
    assert_eq!(retry["id"], first["id"], "the same ticket");
    assert_eq!(
        sim_stats(&http, &sim_url).await.tickets_created,
        1,
        "no second ticket"
    );
}

#[tokio::test]
async fn a_redis_flush_between_a_201_and_the_retry_replays_the_same_ticket() {
    let Some(redis) = redis_url() else { return };
    // A database of Redis's own for this test, so its flush touches no other test's keys.
    let redis = format!("{}/9", redis.trim_end_matches('/'));
    let env = [("REDIS_URL", redis.as_str()), ("TICKET_CHANNEL", "phone")];
    retry_after_a_201(&env, async |_, running| {
        let client = redis::Client::open(redis.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        redis::cmd("FLUSHDB")
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
        running
    })
    .await;
}

#[tokio::test]
async fn a_restart_between_a_201_and_the_retry_replays_the_same_ticket() {
    let data = temp_data_dir();
    let data = data.to_str().unwrap().to_owned();
    let env = [("DATA_DIR", data.as_str()), ("TICKET_CHANNEL", "phone")];
    retry_after_a_201(&env, async |sim_url, (first, _)| {
        drop(first); // SIGKILL: no drain
        start_proxy_when_free(sim_url, &env)
    })
    .await;
}

/// Starts a service on `env`'s data directory as soon as the previous owner has let go.
fn start_proxy_when_free(sim_url: &str, env: &[(&str, &str)]) -> (Running, String) {
    let start = Instant::now();
    loop {
        let attempt = std::panic::catch_unwind(|| start_proxy(sim_url, env));
        match attempt {
            Ok(started) => return started,
            Err(_) if start.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => std::panic::resume_unwind(e),
        }
    }
}

#[tokio::test]
async fn a_second_process_on_one_data_dir_refuses_to_start_naming_the_path() {
    let (_sim, sim_url) = start_sim(&["--rate-limit", "off"]);
    let data = temp_data_dir();
    let env = [("DATA_DIR", data.to_str().unwrap())];
    let (_first, _) = start_proxy(&sim_url, &env);
    let mut second = std::process::Command::new(env!("CARGO_BIN_EXE_gorgias-proxy"))
        .args(["--listen", "127.0.0.1:0"])
        .env("GORGIAS_BASE_URL", &sim_url)
        .env("GORGIAS_USERNAME", "sandbox@example.com")
        .env("GORGIAS_API_KEY", "sandbox-key")
        .env("ALLOW_UNAUTHENTICATED", "true")
        .env("DATA_DIR", &data)
        .env_remove("RUST_LOG")
        .env_remove("REDIS_URL")
        .env_remove("OUTBOX_URL")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(15) {
            let _ = second.kill();
            panic!("a second process on one DATA_DIR started and kept running");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = second.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!status.success(), "{said}");
    assert!(
        said.contains(data.to_str().unwrap()),
        "names the path: {said}"
    );
    assert!(
        said.contains("PostgreSQL"),
        "says what to use instead: {said}"
    );
}

#[tokio::test]
async fn a_stricter_configuration_after_acceptance_still_delivers_what_was_accepted() {
    // Accepted while Gorgias is down, under PHONE_DEFAULT_REGION=KE (the national spelling
    // becomes +254…).
    let (held, down) = closed_port();
    let data = temp_data_dir();
    let data = data.to_str().unwrap().to_owned();
    let (first, first_url) = start_proxy(
        &format!("http://{down}"),
        &[
            ("DATA_DIR", data.as_str()),
            ("TICKET_CHANNEL", "phone"),
            ("PHONE_DEFAULT_REGION", "KE"),
        ],
    );
    let http = reqwest::Client::new();
    let status_url = accepted(&http, &first_url, &ticket_for("0719 908 543", None)).await;
    drop(first);
    drop(held);

    // Restarted under a rule the number does not meet (region US), with Gorgias back.
    let (_sim, sim_url) = start_sim(&["--rate-limit", "off"]);
    let env = [
        ("DATA_DIR", data.as_str()),
        ("TICKET_CHANNEL", "phone"),
        ("PHONE_DEFAULT_REGION", "US"),
    ];
    let (_second, url) = start_proxy_when_free(&sim_url, &env);
    let doc = until_final(&http, &url, &status_url, Duration::from_secs(60)).await;
    assert_eq!(doc["status"], "delivered", "{doc}");
    assert_eq!(sim_stats(&http, &sim_url).await.tickets_created, 1);
    let sim_get = |path: String| {
        let (http, sim_url) = (http.clone(), sim_url.clone());
        async move {
            http.get(format!("{sim_url}{path}"))
                .basic_auth("sandbox@example.com", Some("sandbox-key"))
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let list = sim_get("/api/customers?limit=10".into()).await;
    let id = &list["data"][0]["id"];
    let customer = sim_get(format!("/api/customers/{id}")).await;
    assert!(
        customer.to_string().contains("+254719908543"),
        "delivered as accepted (E.164 under KE): {customer}"
    );
}

#[tokio::test]
async fn a_stale_postgresql_worker_whose_lease_passed_changes_nothing() {
    use gorgias_proxy::outbox::{Accepted, Outbox, Status};
    use gorgias_proxy::store::{OpenOptions, Store, StoreTarget};
    let Some(url) = postgres_outbox_url().await else {
        return;
    };
    let target = StoreTarget::Postgres(url);
    let options = OpenOptions {
        settle: Duration::ZERO,
    };
    let a = Outbox::new(Store::open(&target, options).await.unwrap(), Duration::ZERO);
    let b = Outbox::new(Store::open(&target, options).await.unwrap(), Duration::ZERO);
    let Accepted::New(d) = a.accept("c", "", None, "f", b"{}", None).await.unwrap() else {
        panic!("new");
    };
    let stale = a.claim(Duration::from_millis(200)).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let current = b.claim(Duration::from_secs(30)).await.unwrap().unwrap();
    assert_eq!((current.id.as_str(), current.attempts), (d.id.as_str(), 2));
    // The stale worker wakes up: no fence, no renewal, no record.
    assert!(!a.holds(&stale).await.unwrap());
    assert!(!a.renew(&stale, Duration::from_secs(30)).await.unwrap());
    let ticket = |id: u64| {
        let mut wire: Value = serde_json::from_str::<Value>(include_str!(
            "../fixtures/post-tickets.json"
        ))
        .unwrap()["body"]
            .clone();
        wire["id"] = id.into();
        gorgias_proxy::output::Ticket::try_from(
            serde_json::from_value::<gorgias::Ticket>(wire).unwrap(),
        )
        .unwrap()
    };
    assert!(!a.delivered(&stale, &ticket(1), false).await.unwrap());
    assert!(!a.failed(&stale, "{}".into(), false).await.unwrap());
    let seen = b.get("c", &d.id).await.unwrap().unwrap();
    assert_eq!(seen.status, Status::Delivering);
    assert!(b.delivered(&current, &ticket(2), false).await.unwrap());
    let done = b.get("c", &d.id).await.unwrap().unwrap();
    let stored: Value = serde_json::from_str(done.ticket.as_deref().unwrap()).unwrap();
    assert_eq!(stored["id"], "2", "the current worker's record stands");
}

/// A TCP forwarder to `target` that can be made to blackhole: once `hole` is set, nothing more
/// is forwarded either way and new connections are accepted and never answered, as with a
/// database host whose packets are dropped.
async fn blackholing_forwarder(target: SocketAddr) -> (SocketAddr, Arc<AtomicBool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hole = Arc::new(AtomicBool::new(false));
    let flag = hole.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((inbound, _)) = listener.accept().await {
            if flag.load(Ordering::SeqCst) {
                held.push(inbound);
                continue;
            }
            let Ok(outbound) = tokio::net::TcpStream::connect(target).await else {
                continue;
            };
            let (ri, wi) = inbound.into_split();
            let (ro, wo) = outbound.into_split();
            tokio::spawn(pipe(ri, wo, flag.clone()));
            tokio::spawn(pipe(ro, wi, flag.clone()));
        }
    });
    (addr, hole)
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    hole: Arc<AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let Ok(n) = from.read(&mut buf).await else {
            return;
        };
        if n == 0 {
            return;
        }
        if hole.load(Ordering::SeqCst) {
            // Swallow everything from now on, keeping both ends open.
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

// Multi-threaded: the forwarder must run while `start_proxy` blocks this thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_postgresql_answers_503_in_time_and_spares_the_synchronous_path() {
    let Some(outbox) = postgres_outbox_url().await else {
        return;
    };
    let mut through = url::Url::parse(&outbox).unwrap();
    let db: SocketAddr = format!(
        "{}:{}",
        through.host_str().unwrap(),
        through.port().unwrap_or(5432)
    )
    .parse()
    .unwrap();
    let (addr, hole) = blackholing_forwarder(db).await;
    through.set_port(Some(addr.port())).unwrap();
    through.set_host(Some("127.0.0.1")).unwrap();

    let (_sim, sim_url) = start_sim(&["--rate-limit", "off"]);
    let env = [
        ("OUTBOX_URL", through.as_str()),
        ("TICKET_CHANNEL", "phone"),
    ];
    let (_proxy, url) = start_proxy(&sim_url, &env);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let body = ticket_for("+1 555 0808080", None);
    let status_url = accepted(&http, &url, &body).await;

    hole.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let refused = post_async(&http, &url, &body, "respond-async")
        .send()
        .await
        .expect("an accept answers within its deadline");
    assert_eq!(refused.status(), 503);
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(problem["code"], "outbox_unavailable", "{problem}");
    let status = http
        .get(format!("{url}{status_url}"))
        .send()
        .await
        .expect("a status read answers within its deadline");
    assert_eq!(status.status(), 503);
    let ready = http
        .get(format!("{url}/readyz"))
        .send()
        .await
        .expect("/readyz answers within its deadline");
    assert_eq!(ready.status(), 503);
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "each answered within the database's deadline: {:?}",
        started.elapsed()
    );
    // A request that needs no database is served as ever.
    let sync = http
        .post(format!("{url}/ticket"))
        .json(&ticket_for("+1 555 0808081", None))
        .send()
        .await
        .unwrap();
    assert_eq!(sync.status(), 201);
}

/// The simulator's tickets' `external_id`s, each with how many tickets carry it.
async fn external_ids(
    http: &reqwest::Client,
    sim_url: &str,
) -> std::collections::BTreeMap<String, usize> {
    let all: Value = crate::helpers::get_json(http, &format!("{sim_url}/_sim/tickets")).await;
    let mut counts = std::collections::BTreeMap::new();
    for t in all["data"].as_array().unwrap() {
        let id = t["external_id"].as_str().unwrap_or_default().to_owned();
        *counts.entry(id).or_insert(0) += 1;
    }
    counts
}

/// Gorgias's list by `external_id` lags 5 s behind a create, and half the create answers are
/// lost after the ticket was stored; the settle window (7 s) is longer than the lag.
const LAGGING: &[&str] = &[
    "--rate-limit",
    "off",
    "--ticket-list-lag-ms",
    "5000",
    "--fail-after-commit",
    "0.5",
    "--fail-after-commit-mode",
    "drop",
];
const SETTLE: (&str, &str) = ("GORGIAS_SETTLE_SECS", "7");
/// The simulator does not rate-limit here, so the service need not pace: every request gets
/// its calls within its deadline.
const UNPACED: (&str, &str) = ("GORGIAS_RATE_LIMIT", "off");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_lists_and_lost_answers_make_no_duplicate_for_keyed_requests() {
    let (_sim, sim_url) = start_sim(LAGGING);
    let (_proxy, url) = start_proxy(&sim_url, &[("TICKET_CHANNEL", "phone"), SETTLE, UNPACED]);
    let http = reqwest::Client::new();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..30 {
        let (http, url) = (http.clone(), url.clone());
        set.spawn(async move {
            let key = unique("lag-keyed");
            let body = ticket_for(&format!("+1 555 03{i:05}"), None);
            // A caller retries with its key until a final answer, as the README asks.
            for _ in 0..10 {
                let resp = post_keyed(&http, &url, &key, &body, Duration::from_secs(40)).await;
                if let Ok(resp) = resp {
                    let status = resp.status().as_u16();
                    if status == 201 {
                        return resp.json::<Value>().await.unwrap()["external_id"]
                            .as_str()
                            .unwrap()
                            .to_owned();
                    }
                    assert!(status >= 500 || status == 409, "{status}");
                    let wait = resp
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                        .unwrap_or(1);
                    tokio::time::sleep(Duration::from_secs(wait)).await;
                }
            }
            panic!("no final answer");
        });
    }
    let answered = set.join_all().await;
    let counts = external_ids(&http, &sim_url).await;
    assert_eq!(counts.len(), 30, "{counts:?}");
    assert!(counts.values().all(|n| *n == 1), "duplicates: {counts:?}");
    for id in &answered {
        assert_eq!(counts.get(id), Some(&1), "{id} answered and stored once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_lists_and_lost_answers_make_no_duplicate_for_unkeyed_requests() {
    let (_sim, sim_url) = start_sim(LAGGING);
    let (_proxy, url) = start_proxy(&sim_url, &[("TICKET_CHANNEL", "phone"), SETTLE, UNPACED]);
    let http = reqwest::Client::new();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..30 {
        let (http, url) = (http.clone(), url.clone());
        set.spawn(async move {
            let body = ticket_for(&format!("+1 555 04{i:05}"), None);
            let resp = http
                .post(format!("{url}/ticket"))
                .timeout(Duration::from_secs(40))
                .json(&body)
                .send()
                .await
                .unwrap();
            resp.status().as_u16()
        });
    }
    let statuses = set.join_all().await;
    // Each request is answered (its ticket, or "outcome unknown" naming it), and makes one
    // ticket at most: the creates all land, so exactly one each.
    assert!(
        statuses.iter().all(|s| *s == 201 || *s == 503),
        "{statuses:?}"
    );
    let counts = external_ids(&http, &sim_url).await;
    assert!(counts.values().all(|n| *n == 1), "duplicates: {counts:?}");
    assert_eq!(counts.len(), 30, "one ticket per request: {counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_lists_and_lost_answers_make_no_duplicate_for_async_deliveries() {
    let (_sim, sim_url) = start_sim(LAGGING);
    let (_proxy, url) = start_proxy(
        &sim_url,
        &[
            ("TICKET_CHANNEL", "phone"),
            ("DELIVERY_CONCURRENCY", "4"),
            SETTLE,
        ],
    );
    let http = reqwest::Client::new();
    let mut urls = Vec::new();
    for i in 0..20 {
        let body = ticket_for(&format!("+1 555 05{i:05}"), None);
        urls.push(accepted(&http, &url, &body).await);
    }
    for status_url in &urls {
        let doc = until_final(&http, &url, status_url, Duration::from_secs(120)).await;
        assert_eq!(doc["status"], "delivered", "{doc}");
    }
    let counts = external_ids(&http, &sim_url).await;
    assert_eq!(counts.len(), 20, "{counts:?}");
    assert!(counts.values().all(|n| *n == 1), "duplicates: {counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_committed_after_our_timeout_is_found_not_made_again() {
    // Gorgias stores the ticket 3 s after the call; we stop waiting at 2 s.
    let (_sim, sim_url) = start_sim(&["--rate-limit", "off", "--late-commit-ms", "3000"]);
    let (_proxy, url) = start_proxy(
        &sim_url,
        &[
            ("TICKET_CHANNEL", "phone"),
            ("GORGIAS_TIMEOUT_MS", "2000"),
            ("GORGIAS_SETTLE_SECS", "5"),
        ],
    );
    let http = reqwest::Client::new();
    let key = unique("late");
    let body = ticket_for("+1 555 0909090", None);
    let resp = post_keyed(&http, &url, &key, &body, Duration::from_secs(40))
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let ticket: Value = resp.json().await.unwrap();
    let counts = external_ids(&http, &sim_url).await;
    assert_eq!(counts.len(), 1, "{counts:?}");
    assert_eq!(
        counts.get(ticket["external_id"].as_str().unwrap()),
        Some(&1),
        "the late ticket was found, not made again"
    );
}

#[tokio::test]
async fn two_replicas_on_one_postgresql_share_keys_without_redis() {
    let Some(outbox) = postgres_outbox_url().await else {
        return;
    };
    let (_sim, sim_url) = start_sim(&["--rate-limit", "off"]);
    let env = [("OUTBOX_URL", outbox.as_str()), ("TICKET_CHANNEL", "phone")];
    let (_a, a) = start_proxy(&sim_url, &env);
    let (_b, b) = start_proxy(&sim_url, &env);
    let http = reqwest::Client::new();
    let key = unique("pg-key");
    let body = ticket_for("+1 555 0606061", None);
    let first = post_keyed(&http, &a, &key, &body, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let again = post_keyed(&http, &b, &key, &body, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotency-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap()["id"], first["id"]);
    let other = post_keyed(
        &http,
        &b,
        &key,
        &ticket_for("+1 555 0606062", None),
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    assert_eq!(other.status(), 422, "the key with another body");
    assert_eq!(sim_stats(&http, &sim_url).await.tickets_created, 1);

    // An asynchronous key, accepted on one replica, names the same delivery on the other.
    let async_key = unique("pg-async-key");
    let queued = ticket_for("+1 555 0606063", None);
    let send = |url: &str| {
        post_async(&http, url, &queued, "respond-async")
            .header("idempotency-key", &async_key)
            .send()
    };
    let on_a = send(&a).await.unwrap();
    assert_eq!(on_a.status(), 202);
    let on_a: Value = on_a.json().await.unwrap();
    let on_b = send(&b).await.unwrap();
    assert_eq!(on_b.headers()["idempotency-replayed"], "true");
    let status = on_b.status();
    let on_b: Value = on_b.json().await.unwrap();
    if status == 201 {
        // Delivered before the replay came: the replay is that delivery's ticket.
        let url = format!("{a}{}", on_a["status_url"].as_str().unwrap());
        let doc: Value = crate::helpers::get_json(&http, &url).await;
        assert_eq!(doc["ticket"]["id"], on_b["id"], "{doc}");
    } else {
        assert_eq!(status, 202);
        assert_eq!(on_a["id"], on_b["id"]);
    }
}

/// Gorgias answers 429 with `retry_after` to ticket creates; then it recovers. The service
/// must answer without a panic, and a ticket must go through within about one window.
async fn a_hostile_retry_after_pauses_at_most_one_window(retry_after: &str) {
    let (_sim, sim_url) = start_sim(&[
        "--rate-limit",
        "off",
        "--error-rate",
        "1.0",
        "--error-status",
        "429",
        "--error-route",
        "POST /api/tickets",
        "--error-retry-after",
        retry_after,
    ]);
    // The service's own pacing is on (40/20 s by default): a 429 pauses it.
    let (_proxy, url) = start_proxy(&sim_url, &[("TICKET_CHANNEL", "phone")]);
    let http = reqwest::Client::new();
    let body = ticket_for("+1 555 0101010", None);
    let refused = http
        .post(format!("{url}/ticket"))
        .timeout(Duration::from_secs(40))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503, "{retry_after}: no panic, no 500");
    let wait: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(wait <= 21, "{retry_after}: Retry-After {wait} s");

    // Gorgias recovers: a ticket goes through within about one window.
    let cleared = http
        .post(format!("{sim_url}/_sim/faults"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert!(cleared.status().is_success());
    let recovered = Instant::now();
    loop {
        let resp = http
            .post(format!("{url}/ticket"))
            .timeout(Duration::from_secs(40))
            .json(&body)
            .send()
            .await
            .unwrap();
        if resp.status() == 201 {
            break;
        }
        assert!(
            recovered.elapsed() < Duration::from_secs(35),
            "{retry_after}: still {} after {:?}",
            resp.status(),
            recovered.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn a_retry_after_of_u64_max_pauses_at_most_one_window() {
    a_hostile_retry_after_pauses_at_most_one_window("18446744073709551615").await;
}

#[tokio::test]
async fn a_retry_after_of_a_year_pauses_at_most_one_window() {
    a_hostile_retry_after_pauses_at_most_one_window("31536000").await;
}

#[tokio::test]
async fn a_retry_after_dated_in_9999_pauses_at_most_one_window() {
    a_hostile_retry_after_pauses_at_most_one_window("Fri, 31 Dec 9999 23:59:59 GMT").await;
}

#[tokio::test]
async fn a_decimal_retry_after_is_honoured() {
    a_hostile_retry_after_pauses_at_most_one_window("0.5").await;
}

#[tokio::test]
async fn a_2xx_create_whose_body_cannot_be_read_is_an_unknown_outcome_naming_the_external_id() {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    let gorgias = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/customers"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            serde_json::json!({"data": [{"id": 488071553, "email": "garbled@example.com"}]}),
        ))
        .mount(&gorgias)
        .await;
    // The ticket is created, and its answer is cut to garbage.
    Mock::given(method("POST"))
        .and(path("/api/tickets"))
        .respond_with(ResponseTemplate::new(201).set_body_string("{\"id\": 1739"))
        .expect(1)
        .mount(&gorgias)
        .await;
    // Nobody can tell yet: every lookup fails.
    Mock::given(method("GET"))
        .and(path("/api/tickets"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&gorgias)
        .await;
    let mut config = crate::helpers::test_config(gorgias.uri().parse().unwrap());
    config.ticketing.channel_override = Some("phone".into());
    let (address, _stop) = crate::helpers::serve(config).await;
    let resp = reqwest::Client::new()
        .post(format!("{address}/ticket"))
        .header("idempotency-key", unique("garbled"))
        .json(&ticket_for("+1 555 0303031", Some("garbled@example.com")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503, "not a 502: the ticket exists");
    let problem: Value = resp.json().await.unwrap();
    assert_eq!(problem["code"], "ticket_outcome_unknown", "{problem}");
    assert!(
        problem["external_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("idem-")),
        "{problem}"
    );
    // `expect(1)` on the POST is checked when the mock server drops: never created twice.
}

#[tokio::test]
async fn a_named_caller_keeps_its_keys_and_deliveries_across_a_token_rotation() {
    use crate::helpers::{sim_config, spawn_app_with};
    // During the rotation both tokens are configured under one name.
    let app = spawn_app_with(sim_config(), |c| {
        c.api_tokens = vec!["billing:tok-old".into(), "billing:tok-new".into()];
        c.allow_unauthenticated = false;
    })
    .await;
    let key = unique("rotation");
    let body = ticket_for("+1 555 0404041", None);
    let post = |token: &'static str| {
        app.http
            .post(format!("{}/ticket", app.address))
            .bearer_auth(token)
            .header("idempotency-key", &key)
            .json(&body)
            .send()
    };
    let first = post("tok-old").await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let retried = post("tok-new").await.unwrap();
    assert_eq!(retried.status(), 201);
    assert_eq!(retried.headers()["idempotency-replayed"], "true");
    assert_eq!(retried.json::<Value>().await.unwrap()["id"], first["id"]);
    assert_eq!(app.stats().tickets_created, 1, "no second ticket");

    // A delivery accepted with the old token is the caller's, read with the new one.
    let accepted = app
        .http
        .post(format!("{}/ticket", app.address))
        .bearer_auth("tok-old")
        .header("prefer", "respond-async")
        .json(&ticket_for("+1 555 0404042", None))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 202);
    let status_url = accepted.json::<Value>().await.unwrap()["status_url"]
        .as_str()
        .unwrap()
        .to_owned();
    let read = app
        .http
        .get(format!("{}{status_url}", app.address))
        .bearer_auth("tok-new")
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
}
