//! `gorgias-sim`: the Gorgias simulator as a program, for scripts, compose and benchmarks.

use std::io::Write as _;
use std::net::SocketAddr;

use clap::Parser;
use gorgias_proxy::config::parse_rate_limit;
use gorgias_proxy::sim::{CommitFailure, Faults, SimConfig, Simulator};

/// An in-memory Gorgias account that answers in Gorgias's recorded shapes.
#[derive(Debug, Parser)]
#[command(name = "gorgias-sim", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// HTTP Basic username accepted.
    #[arg(long, default_value = "sandbox@example.com")]
    username: String,
    /// API key accepted.
    #[arg(long, default_value = "sandbox-key")]
    api_key: String,
    /// Bearer token also accepted.
    #[arg(long)]
    access_token: Option<String>,
    /// The account's leaky bucket, `CALLS/SECONDSs`, or `off`.
    #[arg(long, default_value = "40/20s")]
    rate_limit: String,
    /// Customers to preload: customer{i}@example.com with phone +1555 and i on 7 digits.
    #[arg(long, default_value_t = 0)]
    seed_customers: usize,
    /// Latency added to every answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Up to this much more latency, at random, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_jitter_ms: u64,
    /// Share of calls answered with --error-status.
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Status of injected errors.
    #[arg(long, default_value_t = 503)]
    error_status: u16,
    /// Share of ticket creates that store the ticket, then fail.
    #[arg(long, default_value_t = 0.0)]
    fail_after_commit: f64,
    /// How they fail: `500` or `drop`.
    #[arg(long, default_value = "500")]
    fail_after_commit_mode: String,
    /// Channels of the ticket-assignment setting, comma-separated.
    #[arg(long)]
    assignment_channels: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let mut config = SimConfig {
        username: a.username,
        api_key: a.api_key,
        access_token: a.access_token,
        rate_limit: parse_rate_limit(&a.rate_limit)?,
        seed_customers: a.seed_customers,
        faults: Faults {
            latency_ms: a.latency_ms,
            latency_jitter_ms: a.latency_jitter_ms,
            error_rate: a.error_rate,
            error_status: Some(a.error_status),
            fail_after_commit_rate: a.fail_after_commit,
            fail_after_commit: match a.fail_after_commit_mode.as_str() {
                "drop" => CommitFailure::Drop,
                "500" => CommitFailure::Status500,
                other => anyhow::bail!("--fail-after-commit-mode must be 500 or drop, not {other}"),
            },
        },
        ..SimConfig::default()
    };
    if let Some(list) = a.assignment_channels {
        config.assignment_channels = list.split(',').map(|s| s.trim().to_owned()).collect();
    }
    let sim = Simulator::spawn(config, a.listen).await?;
    println!("listening on http://{}", sim.addr());
    std::io::stdout().flush()?;
    gorgias_proxy::app::shutdown_signal().await;
    Ok(())
}
