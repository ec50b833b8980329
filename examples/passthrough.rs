//! The floor of this service's stack, for `scripts/bench`: an axum server that forwards
//! `POST /api/tickets` to Gorgias (or the simulator) with the same reqwest settings as the
//! `gorgias` client, and answers with Gorgias's status and body. No validation, no JSON, no
//! logging, no metrics, no limiter: what axum + hyper + reqwest on a multi-threaded Tokio runtime
//! cost on their own, so the bench can show how much of the service's CPU per request is the
//! stack and how much is the service's own work.
//!
//! `UPSTREAM=http://127.0.0.1:8081 LISTEN_ADDR=127.0.0.1:8090 cargo run --release --example passthrough`

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::post;

#[derive(Clone)]
struct Upstream {
    http: reqwest::Client,
    url: String,
}

async fn forward(
    State(up): State<Upstream>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, Bytes) {
    let mut req = up
        .http
        .post(&up.url)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json")
        .body(body);
    if let Some(auth) = headers.get(header::AUTHORIZATION) {
        req = req.header(header::AUTHORIZATION, auth.clone());
    }
    match req.send().await {
        Ok(resp) => {
            let status = resp.status();
            match resp.bytes().await {
                Ok(bytes) => (status, bytes),
                Err(_) => (StatusCode::BAD_GATEWAY, Bytes::new()),
            }
        }
        Err(_) => (StatusCode::BAD_GATEWAY, Bytes::new()),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let upstream = std::env::var("UPSTREAM").unwrap_or_else(|_| "http://127.0.0.1:8081".into());
    let listen = std::env::var("LISTEN_ADDR").unwrap_or_else(|_| "127.0.0.1:8090".into());
    // As `gorgias::GorgiasClient::new` builds its client.
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .retry(reqwest::retry::never().max_retries_per_request(0))
        .build()?;
    let state = Upstream {
        http,
        url: format!("{}/api/tickets", upstream.trim_end_matches('/')),
    };
    let app = Router::new()
        .route("/api/tickets", post(forward))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
