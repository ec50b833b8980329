//! One-shot subcommands of the binary (`healthcheck`), kept out of `main.rs`.

use std::net::SocketAddr;
use std::time::Duration;

/// Probes `GET /healthz` and returns the process exit code: 0 when it answers 200.
pub async fn healthcheck(url: Option<url::Url>, listen: SocketAddr) -> i32 {
    let url = match url {
        Some(u) => u.to_string(),
        None => format!("http://127.0.0.1:{}/healthz", listen.port()),
    };
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
    {
        Ok(c) => c,
        Err(_) => return 1,
    };
    match client.get(&url).send().await {
        Ok(r) if r.status().is_success() => 0,
        Ok(r) => {
            eprintln!("healthcheck: {url} answered {}", r.status());
            1
        }
        Err(e) => {
            eprintln!("healthcheck: {url}: {e}");
            1
        }
    }
}
