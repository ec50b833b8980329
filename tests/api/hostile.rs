//! Hostile HTTP: slow clients, idle connections, pipelining, oversized and huge inputs. Raw TCP
//! where reqwest would be too polite.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{TestApp, sim_config, spawn_app_with, ticket_for};

fn host(app: &TestApp) -> String {
    app.address.trim_start_matches("http://").to_owned()
}

/// Reads until the server closes the connection (or `limit` passes); returns what it sent.
async fn read_to_close(stream: &mut TcpStream, limit: Duration) -> (String, bool) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let started = Instant::now();
    loop {
        let left = limit.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&buf).into_owned(), true),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => return (String::from_utf8_lossy(&buf).into_owned(), false),
        }
    }
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

async fn tasks_settle_to(baseline: usize) {
    for _ in 0..400 {
        if alive_tasks() <= baseline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("tasks leaked: {} alive, {baseline} before", alive_tasks());
}

#[tokio::test]
async fn clients_trickling_headers_are_cut_off_without_leaking_tasks() {
    let app = spawn_app_with(sim_config(), |c| {
        c.header_read_timeout = Duration::from_millis(300);
    })
    .await;
    // Let start-up work (settings warm-up) finish before counting tasks.
    crate::helpers::settings_warmed(&app.sim).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let baseline = alive_tasks();
    let mut clients = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(host(&app)).await.unwrap();
        s.write_all(b"POST /ticket HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        clients.push(s);
    }
    let started = Instant::now();
    for s in &mut clients {
        // Keep trickling: one byte of a header every 100 ms, never finishing it.
        for b in b"X-Sl" {
            if s.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    for s in &mut clients {
        let (_, closed) = read_to_close(s, Duration::from_secs(3)).await;
        assert!(closed, "the server hung up on the slow client");
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    drop(clients);
    tasks_settle_to(baseline).await;
}

#[tokio::test]
async fn a_body_trickled_past_the_read_timeout_is_refused() {
    let app = spawn_app_with(sim_config(), |c| {
        c.body_read_timeout = Duration::from_millis(300);
    })
    .await;
    let mut s = TcpStream::connect(host(&app)).await.unwrap();
    s.write_all(b"POST /ticket HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
        .await
        .unwrap();
    let started = Instant::now();
    let (answer, _) = read_to_close(&mut s, Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("unreadable_body"));
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(app.stats().tickets_created, 0);
}

#[tokio::test]
async fn a_thousand_idle_connections_do_not_stop_others_being_served() {
    let app = spawn_app_with(sim_config(), |_| {}).await;
    let mut idle = Vec::with_capacity(1000);
    for _ in 0..1000 {
        idle.push(TcpStream::connect(host(&app)).await.unwrap());
    }
    let started = Instant::now();
    let resp = app.post_ticket(&ticket_for("+1 555 0700", None)).await;
    assert_eq!(resp.status(), 201);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    drop(idle);
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let app = spawn_app_with(sim_config(), |_| {}).await;
    let body = serde_json::to_vec(&ticket_for("+1 555 0701", None)).unwrap();
    let mut wire = Vec::new();
    wire.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    wire.extend_from_slice(
        format!("POST /ticket HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes(),
    );
    wire.extend_from_slice(&body);
    wire.extend_from_slice(b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut s = TcpStream::connect(host(&app)).await.unwrap();
    s.write_all(&wire).await.unwrap();
    let (answer, closed) = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert!(closed);
    let statuses: Vec<&str> = answer
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &answer[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["200", "201", "404"], "{answer}");
}

#[tokio::test]
async fn oversized_headers_are_refused_before_the_handler() {
    let app = spawn_app_with(sim_config(), |_| {}).await;
    let mut s = TcpStream::connect(host(&app)).await.unwrap();
    let big = "a".repeat(200 * 1024);
    let req = format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    let _ = s.write_all(req.as_bytes()).await; // the server may hang up mid-write
    let (answer, closed) = read_to_close(&mut s, Duration::from_secs(3)).await;
    assert!(closed);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer}"
    );
    // And the service is fine.
    let ok = app
        .http
        .get(format!("{}/healthz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn huge_strings_within_the_limit_and_deep_nesting_are_handled() {
    let app = spawn_app_with(sim_config(), |_| {}).await;
    let mut big = ticket_for("+1 555 0702", None);
    big["ticket"]["messages"][0]["body_text"] = json!("x".repeat(1_900_000));
    let resp = app.post_ticket(&big).await;
    assert_eq!(resp.status(), 201);
    let out: Value = resp.json().await.unwrap();
    assert_eq!(
        out["messages"][0]["body_text"].as_str().unwrap().len(),
        1_900_000
    );

    let deep = format!("{}{}", "[".repeat(500_000), "]".repeat(500_000));
    let resp = app.post_raw(deep, Some("application/json")).await;
    assert_eq!(
        resp.status(),
        400,
        "nesting is capped, not a stack overflow"
    );

    let over = vec![b' '; 2 * 1024 * 1024 + 1];
    let resp = app.post_raw(over, Some("application/json")).await;
    assert_eq!(resp.status(), 413, "one byte over the default limit");
}

#[tokio::test]
async fn past_the_concurrency_cap_requests_are_shed_at_once_with_503_and_retry_after() {
    // Arrange: two requests at a time, a Gorgias that takes a second.
    let mut sim = sim_config();
    sim.faults.latency_ms = 1_000;
    let app = spawn_app_with(sim, |c| c.max_concurrent_requests = 2).await;
    // Act: six at once.
    let mut set = tokio::task::JoinSet::new();
    for i in 0..6 {
        let req = app
            .http
            .post(format!("{}/ticket", app.address))
            .json(&ticket_for(&format!("+1 555 08{i:02}"), None))
            .send();
        set.spawn(async move {
            let started = Instant::now();
            let r = req.await.unwrap();
            let retry_after = r.headers().get("retry-after").cloned();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or_default();
            (status, retry_after, body, started.elapsed())
        });
    }
    let answers = set.join_all().await;
    // Assert: two served, the rest refused at once, saying why and when to come back.
    let shed: Vec<_> = answers.iter().filter(|a| a.0 == 503).collect();
    assert_eq!(
        answers.iter().filter(|a| a.0 == 201).count(),
        2,
        "{answers:?}"
    );
    assert_eq!(shed.len(), 4, "{answers:?}");
    for (_, retry_after, body, took) in shed {
        assert_eq!(body["code"], "overloaded");
        assert_eq!(retry_after.as_ref().unwrap(), "1");
        assert!(
            *took < Duration::from_millis(900),
            "shed, not queued: {took:?}"
        );
    }
}

#[tokio::test]
async fn past_the_connection_cap_new_connections_are_closed() {
    let app = spawn_app_with(sim_config(), |c| c.max_connections = 3).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(host(&app)).await.unwrap());
    }
    let mut extra = TcpStream::connect(host(&app)).await.unwrap();
    let _ = extra
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    let (answer, closed) = read_to_close(&mut extra, Duration::from_secs(2)).await;
    assert!(
        closed && answer.is_empty(),
        "answered past the cap: {answer}"
    );
    drop(held);
    // Once the held connections are gone, new ones are served again.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let resp = app.post_ticket(&ticket_for("+1 555 0900", None)).await;
    assert_eq!(resp.status(), 201);
}

#[tokio::test]
async fn a_two_mib_body_of_empty_attachments_gets_a_small_4xx_keyed_or_not() {
    // ~700,000 empty attachments: each one breaks four rules, so an unbounded answer would
    // list millions of problems.
    let app = spawn_app_with(sim_config(), |_| {}).await;
    let mut body = String::from(
        r#"{"customer":{"phone_number":"0719908543"},"ticket":{"messages":[{"id":"m","body_text":"x","body_html":"","attachments":["#,
    );
    let n = (2 * 1024 * 1024 - 200) / 3;
    for i in 0..n {
        body.push_str(if i == 0 { "{}" } else { ",{}" });
    }
    body.push_str("]}]}}");
    assert!(body.len() <= 2 * 1024 * 1024);
    for key in [None, Some("hostile-key-1")] {
        let mut req = app
            .http
            .post(format!("{}/ticket", app.address))
            .header("content-type", "application/json")
            .body(body.clone());
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        let started = Instant::now();
        let resp = req.send().await.unwrap();
        let took = started.elapsed();
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap();
        assert!((400..500).contains(&status), "{status}");
        assert!(bytes.len() <= 64 * 1024, "{} bytes", bytes.len());
        let problem: Value = serde_json::from_slice(&bytes).unwrap();
        let last = problem["errors"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .clone();
        assert!(
            last["message"].as_str().unwrap().contains("more problems"),
            "{last}"
        );
        eprintln!(
            "hostile body ({key:?}): {status}, {} bytes in {took:?}",
            bytes.len()
        );
    }
}
