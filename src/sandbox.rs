//! `--sandbox` and the `healthcheck` subcommand: small helpers kept out of `main.rs`.

use std::net::SocketAddr;
use std::time::Duration;

use crate::config::Config;
use crate::sim::{SimConfig, Simulator};

/// Starts an in-process simulator on a free loopback port and points `config` at it.
///
/// # Errors
/// When no loopback port can be bound.
pub async fn attach_simulator(config: &mut Config) -> std::io::Result<Simulator> {
    let sim = Simulator::spawn(
        SimConfig {
            // The sandbox is for trying the service, not for meeting Gorgias's rate limit.
            rate_limit: None,
            ..SimConfig::default()
        },
        SocketAddr::from(([127, 0, 0, 1], 0)),
    )
    .await?;
    config.gorgias.base_url = sim.url();
    config.gorgias.rate_limit = None;
    config.allow_unauthenticated = true;
    tracing::warn!(
        simulator = %sim.url(),
        "SANDBOX MODE: tickets go to an in-memory Gorgias simulator, not to Gorgias; inbound auth is off"
    );
    Ok(sim)
}

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
