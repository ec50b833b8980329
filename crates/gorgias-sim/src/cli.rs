//! The simulator's command line, as a library item so tests can start the simulator in-process
//! with exactly the flags the program takes.

use std::net::SocketAddr;

use clap::Parser;

use crate::{CommitFailure, Faults, SimConfig, parse_rate_limit};

/// An in-memory Gorgias account that answers in Gorgias's recorded shapes.
#[derive(Debug, Parser)]
#[command(name = "gorgias-sim", version)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,
    /// HTTP Basic username accepted.
    #[arg(long, default_value = crate::DEFAULT_USERNAME)]
    pub username: String,
    /// API key accepted.
    #[arg(long, default_value = crate::DEFAULT_API_KEY)]
    pub api_key: String,
    /// Bearer token also accepted.
    #[arg(long)]
    pub access_token: Option<String>,
    /// The account's leaky bucket, `CALLS/SECONDSs`, or `off`.
    #[arg(long, default_value = "40/20s")]
    pub rate_limit: String,
    /// Customers to preload: customer{i}@example.com with phone +1555 and i on 7 digits.
    #[arg(long, default_value_t = 0)]
    pub seed_customers: usize,
    /// Latency added to every answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Up to this much more latency, at random, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_jitter_ms: u64,
    /// Share of calls answered with --error-status.
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// Status of injected errors.
    #[arg(long, default_value_t = 503)]
    pub error_status: u16,
    /// A `Retry-After` header value injected errors carry, verbatim.
    #[arg(long)]
    pub error_retry_after: Option<String>,
    /// Only these routes get injected errors, e.g. `GET /api/tickets` (repeatable; default:
    /// every route).
    #[arg(long)]
    pub error_route: Vec<String>,
    /// Share of ticket creates that store the ticket, then fail.
    #[arg(long, default_value_t = 0.0)]
    pub fail_after_commit: f64,
    /// Milliseconds a ticket create waits after storing the ticket, before answering.
    #[arg(long, default_value_t = 0)]
    pub commit_latency_ms: u64,
    /// How they fail: `500` or `drop`.
    #[arg(long, default_value = "500")]
    pub fail_after_commit_mode: String,
    /// Channels of the ticket-assignment setting, comma-separated.
    #[arg(long)]
    pub assignment_channels: Option<String>,
    /// Milliseconds before a customer created through the API appears in search results.
    #[arg(long, default_value_t = 0)]
    pub search_lag_ms: u64,
    /// Milliseconds before a stored ticket appears in `GET /api/tickets?external_id=`.
    #[arg(long, default_value_t = 0)]
    pub ticket_list_lag_ms: u64,
    /// Milliseconds after a ticket create is called before the ticket is stored (and the
    /// call answered), whether or not the caller is still there.
    #[arg(long, default_value_t = 0)]
    pub late_commit_ms: u64,
    /// The OAuth2 app's client id.
    #[arg(long, default_value = crate::DEFAULT_CLIENT_ID)]
    pub oauth_client_id: String,
    /// The OAuth2 app's client secret.
    #[arg(long, default_value = crate::DEFAULT_CLIENT_SECRET)]
    pub oauth_client_secret: String,
    /// How long an OAuth2 access token lives, in seconds (Gorgias: 24 h).
    #[arg(long, default_value_t = 86_400)]
    pub access_token_ttl_secs: u64,
    /// Replace the refresh token on each refresh.
    #[arg(long)]
    pub rotate_refresh_tokens: bool,
    /// Refuse every refresh with `invalid_grant` (the app was uninstalled).
    #[arg(long)]
    pub revoke: bool,
    /// The budget of OAuth2 callers, `CALLS/SECONDSs`, or `off`.
    #[arg(long, default_value = "80/20s")]
    pub oauth_rate_limit: String,
}

impl Args {
    /// Parses flags the way the program does (the first item is the program name).
    ///
    /// # Errors
    /// When a flag is unknown or its value unusable.
    pub fn from_flags<I, T>(flags: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Self::try_parse_from(flags)
    }

    /// The simulator's configuration.
    ///
    /// # Errors
    /// When `--rate-limit` or `--fail-after-commit-mode` has an unusable value.
    pub fn config(self) -> Result<SimConfig, String> {
        let a = self;
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
                error_retry_after: a.error_retry_after,
                error_routes: a.error_route,
                commit_latency_ms: a.commit_latency_ms,
                late_commit_ms: a.late_commit_ms,
                fail_after_commit_rate: a.fail_after_commit,
                fail_after_commit: match a.fail_after_commit_mode.as_str() {
                    "drop" => CommitFailure::Drop,
                    "500" => CommitFailure::Status500,
                    other => {
                        return Err(format!(
                            "--fail-after-commit-mode must be 500 or drop, not {other}"
                        ));
                    }
                },
            },
            oauth: crate::OAuthConfig {
                client_id: a.oauth_client_id,
                client_secret: a.oauth_client_secret,
                access_token_ttl: std::time::Duration::from_secs(a.access_token_ttl_secs),
                rotate_refresh_tokens: a.rotate_refresh_tokens,
                revoked: a.revoke,
            },
            oauth_rate_limit: parse_rate_limit(&a.oauth_rate_limit)?,
            search_lag: std::time::Duration::from_millis(a.search_lag_ms),
            ticket_list_lag: std::time::Duration::from_millis(a.ticket_list_lag_ms),
            ..SimConfig::default()
        };
        if let Some(list) = a.assignment_channels {
            config.assignment_channels = list.split(',').map(|s| s.trim().to_owned()).collect();
        }
        Ok(config)
    }
}
