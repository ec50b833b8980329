//! Every setting, read once from flags, the environment and `.env`, checked, and typed.
//! Tests build [`Config`] directly; only `main` reads the environment (through [`Cli`]).

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, Subcommand};
use secrecy::SecretString;
use url::Url;

use crate::ticketing::{MessageChannel, TicketingSettings};
use gorgias::{Auth, ClientSettings, RetryPolicy};

/// The service's settings, valid by construction.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The Gorgias account and how to call it.
    pub gorgias: ClientSettings,
    /// Caches and channel choice.
    pub ticketing: TicketingSettings,
    /// Largest accepted request body, in bytes.
    pub body_limit: usize,
    /// Time allowed for one inbound request, Gorgias retries included.
    pub request_deadline: Duration,
    /// Time allowed for in-flight requests after SIGTERM.
    pub shutdown_drain: Duration,
    /// How long `/readyz` reuses its verdict.
    pub readiness_ttl: Duration,
    /// How long an `Idempotency-Key`'s answer is replayed.
    pub idempotency_ttl: Duration,
    /// Redis, for state shared by replicas (idempotency keys, rate limit, customer creation).
    pub redis_url: Option<String>,
    /// Bearer tokens callers must present on `POST /ticket`.
    pub api_tokens: Vec<SecretString>,
    /// Serve without inbound auth when no token is configured (else refuse to start).
    pub allow_unauthenticated: bool,
    /// A separate address for `GET /metrics` (else it is served on `listen`).
    pub metrics_listen: Option<SocketAddr>,
    /// Time a client has to send a request's headers.
    pub header_read_timeout: Duration,
    /// Time a client has to send a request's whole body.
    pub body_read_timeout: Duration,
    /// Requests served at once; more are refused at once with 503 + `Retry-After`.
    pub max_concurrent_requests: usize,
    /// Open client connections at once; more are closed as they arrive.
    pub max_connections: usize,
    /// Threads that serve HTTP, each with its own single-threaded runtime (0: one per core).
    pub server_threads: usize,
    /// Deployment-specific value rules (`PHONE_DEFAULT_REGION`).
    pub rules: crate::domain::request::Rules,
    /// The outbox for `Prefer: respond-async`; `None` turns async requests off.
    pub outbox: Option<crate::outbox::OutboxTarget>,
    /// How queued deliveries are made.
    pub delivery: crate::outbox::DeliverySettings,
    /// Where `ticket.delivered` / `ticket.failed` events go, and their signing secret.
    pub webhook: Option<(Url, secrecy::SecretString)>,
    /// Whether `gorgias` is a default account (from `GORGIAS_*`) that requests without a
    /// `Connection-Id` go to; `false` leaves it a template for stored connections only.
    pub default_account: bool,
    /// Bearer tokens of the admin API (`ADMIN_TOKENS`); none turns the admin API off.
    pub admin_tokens: Vec<SecretString>,
    /// The key stored connections' secrets are sealed with (`CONNECTIONS_KEY`, base64).
    pub connections_key: Option<SecretString>,
    /// The key before the last rotation, still used to open (`CONNECTIONS_KEY_PREVIOUS`).
    pub connections_key_previous: Option<SecretString>,
    /// Whether a connection may name any `base_url` (simulators, tests), not only a subdomain.
    pub allow_custom_base_urls: bool,
    /// The OAuth2 app connections are installed and refreshed with.
    pub oauth: Option<gorgias::OAuthClient>,
}

impl Config {
    /// Defaults around one Gorgias base URL: what the sandbox and tests start from.
    pub fn with_gorgias(base_url: Url, auth: Auth) -> Self {
        let rate_limit = Some(default_rate_limit(&auth));
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            gorgias: ClientSettings {
                base_url,
                auth,
                attempt_timeout: Duration::from_secs(10),
                retry: RetryPolicy::default(),
                rate_limit,
                replicas: 1,
            },
            ticketing: TicketingSettings::default(),
            body_limit: 2 * 1024 * 1024,
            request_deadline: Duration::from_secs(30),
            shutdown_drain: Duration::from_secs(35),
            readiness_ttl: Duration::from_secs(10),
            idempotency_ttl: Duration::from_secs(24 * 3600),
            redis_url: None,
            api_tokens: Vec::new(),
            allow_unauthenticated: false,
            metrics_listen: None,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            max_concurrent_requests: 256,
            max_connections: 1024,
            server_threads: 0,
            rules: crate::domain::request::Rules::default(),
            outbox: Some(crate::outbox::OutboxTarget::Sqlite(
                std::path::PathBuf::from("data").join("outbox.db"),
            )),
            delivery: crate::outbox::DeliverySettings::default(),
            webhook: None,
            default_account: true,
            admin_tokens: Vec::new(),
            connections_key: None,
            connections_key_previous: None,
            allow_custom_base_urls: false,
            oauth: None,
        }
    }
}

/// 40 calls per 20 s for an API key, 80 for OAuth (Gorgias's documented account limits).
pub fn default_rate_limit(auth: &Auth) -> (u32, Duration) {
    let calls = if auth.is_oauth() { 80 } else { 40 };
    (calls, Duration::from_secs(20))
}

/// Why the settings could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Required settings are absent; one line names them all.
    #[error("missing settings: {}", .0.join(", "))]
    Missing(Vec<&'static str>),
    /// A setting has an unusable value.
    #[error("{name}: {problem}")]
    Invalid {
        /// The variable.
        name: &'static str,
        /// What is wrong with it (never its value: it may be a secret).
        problem: String,
    },
}

/// Command line; every flag can also come from the environment variable it names.
#[derive(Debug, Parser)]
#[command(
    name = "gorgias-proxy",
    version,
    about = "Opens Gorgias tickets for internal services."
)]
pub struct Cli {
    /// A one-shot command instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Run against an in-process Gorgias simulator: no account needed, inbound auth off.
    #[arg(long)]
    pub sandbox: bool,
    /// Address to listen on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Gorgias account subdomain: `acme` for https://acme.gorgias.com.
    #[arg(long, env = "GORGIAS_DOMAIN")]
    pub gorgias_domain: Option<String>,
    /// Full Gorgias base URL (overrides GORGIAS_DOMAIN; for the simulator and tests).
    #[arg(long, env = "GORGIAS_BASE_URL")]
    pub gorgias_base_url: Option<Url>,
    /// Email of the Gorgias user owning the API key (HTTP Basic username).
    #[arg(long, env = "GORGIAS_USERNAME")]
    pub gorgias_username: Option<String>,
    /// Gorgias REST API key.
    #[arg(long, env = "GORGIAS_API_KEY", hide_env_values = true)]
    pub gorgias_api_key: Option<String>,
    /// OAuth2 access token (instead of username + API key).
    #[arg(long, env = "GORGIAS_ACCESS_TOKEN", hide_env_values = true)]
    pub gorgias_access_token: Option<String>,
    /// Fixed ticket channel, instead of deriving it from the account settings.
    #[arg(long, env = "TICKET_CHANNEL")]
    pub ticket_channel: Option<String>,
    /// Channel of every message sent: `phone` (default) or `api`. Never `email`: Gorgias
    /// refuses email messages without a source envelope.
    #[arg(long, env = "MESSAGE_CHANNEL")]
    pub message_channel: Option<String>,
    /// Client-side pacing, `CALLS/SECONDSs` (e.g. `40/20s`) or `off`.
    #[arg(long, env = "GORGIAS_RATE_LIMIT")]
    pub gorgias_rate_limit: Option<String>,
    /// Replicas calling the same Gorgias account. Without Redis, or while it is unreachable,
    /// each paces at 1/N of the account's budget (with Redis, at least the number of
    /// replicas it last saw), so N replicas never spend N times the limit.
    #[arg(long, env = "GORGIAS_REPLICAS", default_value_t = 1)]
    pub gorgias_replicas: u32,
    /// Longest single Gorgias call, in milliseconds.
    #[arg(long, env = "GORGIAS_TIMEOUT_MS", default_value_t = 10_000)]
    pub gorgias_timeout_ms: u64,
    /// After a ticket create of unknown outcome (a timeout, a lost connection, a 5xx), how
    /// long to wait before looking the ticket up by `external_id` and creating again only if
    /// it is not found, in seconds. Size it above how long Gorgias's ticket list may lag
    /// its writes: a lag longer than this window can still make a duplicate.
    #[arg(long, env = "GORGIAS_SETTLE_SECS", default_value_t = 15)]
    pub gorgias_settle_secs: u64,
    /// Longest inbound request, Gorgias retries included, in milliseconds.
    #[arg(long, env = "REQUEST_DEADLINE_MS", default_value_t = 30_000)]
    pub request_deadline_ms: u64,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "BODY_LIMIT_BYTES", default_value_t = 2 * 1024 * 1024)]
    pub body_limit_bytes: usize,
    /// How long a resolved customer is reused, in seconds.
    #[arg(long, env = "CUSTOMER_CACHE_TTL_SECS", default_value_t = 600)]
    pub customer_cache_ttl_secs: u64,
    /// How many resolved customers are kept.
    #[arg(long, env = "CUSTOMER_CACHE_CAPACITY", default_value_t = 100_000)]
    pub customer_cache_capacity: u64,
    /// How long the account's ticket channel is reused, in seconds.
    #[arg(long, env = "SETTINGS_CACHE_TTL_SECS", default_value_t = 300)]
    pub settings_cache_ttl_secs: u64,
    /// Time allowed for in-flight requests after SIGTERM, in seconds.
    #[arg(long, env = "SHUTDOWN_DRAIN_SECS", default_value_t = 35)]
    pub shutdown_drain_secs: u64,
    /// How long an Idempotency-Key's answer is replayed, in seconds.
    #[arg(long, env = "IDEMPOTENCY_TTL_SECS", default_value_t = 86_400)]
    pub idempotency_ttl_secs: u64,
    /// Redis URL (`redis://host:6379`) for state shared by several replicas.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Bearer tokens accepted on POST /ticket, comma-separated.
    #[arg(long, env = "API_TOKENS", hide_env_values = true)]
    pub api_tokens: Option<String>,
    /// A file of bearer tokens, one per line (`#` comments allowed).
    #[arg(long, env = "API_TOKENS_FILE")]
    pub api_tokens_file: Option<std::path::PathBuf>,
    /// Serve without inbound auth when no token is configured.
    /// Bearer tokens of the admin API (`/connections`), comma-separated; never accepted on
    /// `POST /ticket`, as caller tokens are never accepted here.
    #[arg(long, env = "ADMIN_TOKENS", hide_env_values = true)]
    pub admin_tokens: Option<String>,
    /// A file of admin tokens, one per line.
    #[arg(long, env = "ADMIN_TOKENS_FILE")]
    pub admin_tokens_file: Option<std::path::PathBuf>,
    /// 32 random bytes in base64 (`openssl rand -base64 32`): seals stored connections'
    /// secrets (AES-256-GCM).
    #[arg(long, env = "CONNECTIONS_KEY", hide_env_values = true)]
    pub connections_key: Option<String>,
    /// A file holding CONNECTIONS_KEY.
    #[arg(long, env = "CONNECTIONS_KEY_FILE")]
    pub connections_key_file: Option<std::path::PathBuf>,
    /// The key before a rotation: still opens secrets until `connections rekey` has run.
    #[arg(long, env = "CONNECTIONS_KEY_PREVIOUS", hide_env_values = true)]
    pub connections_key_previous: Option<String>,
    /// The OAuth2 app's client id (Gorgias developer portal): installs connections with
    /// `/oauth/authorize` and refreshes their tokens.
    #[arg(long, env = "OAUTH_CLIENT_ID")]
    pub oauth_client_id: Option<String>,
    /// The OAuth2 app's client secret.
    #[arg(long, env = "OAUTH_CLIENT_SECRET", hide_env_values = true)]
    pub oauth_client_secret: Option<String>,
    /// Where Gorgias sends the merchant back: this service's `/oauth/callback`, as the
    /// outside world reaches it (registered with the app).
    #[arg(long, env = "OAUTH_REDIRECT_URL")]
    pub oauth_redirect_url: Option<Url>,
    /// Let a connection name any `base_url` (simulators, tests) instead of a subdomain only.
    #[arg(long, env = "ALLOW_CUSTOM_BASE_URLS", default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_custom_base_urls: bool,
    #[arg(long, env = "ALLOW_UNAUTHENTICATED", default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_unauthenticated: bool,
    /// Time a client has to send a request's headers, in milliseconds.
    #[arg(long, env = "HEADER_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_read_timeout_ms: u64,
    /// Time a client has to send a request's whole body, in milliseconds.
    #[arg(long, env = "BODY_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub body_read_timeout_ms: u64,
    /// ISO 3166 region (`KE`, `US`) in which phone numbers without a country code are read;
    /// numbers are then normalised to E.164 before lookup and creation.
    #[arg(long, env = "PHONE_DEFAULT_REGION")]
    pub phone_default_region: Option<String>,
    /// Requests served at once; more get 503 with Retry-After (memory stays bounded).
    #[arg(long, env = "MAX_CONCURRENT_REQUESTS", default_value_t = 256)]
    pub max_concurrent_requests: usize,
    /// Open client connections at once; more are closed on arrival.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// Threads that serve HTTP, each running its own single-threaded runtime and accepting
    /// from the same socket; 0 means one per CPU core.
    #[arg(long, env = "SERVER_THREADS", default_value_t = 0)]
    pub server_threads: usize,
    /// Directory for the service's own data (the outbox); created at start-up.
    #[arg(long, env = "DATA_DIR", default_value = "data")]
    pub data_dir: std::path::PathBuf,
    /// The outbox for `Prefer: respond-async`: `sqlite://PATH`, or `off`; default
    /// `$DATA_DIR/outbox.db`.
    #[arg(long, env = "OUTBOX_URL", hide_env_values = true)]
    pub outbox_url: Option<String>,
    /// After this many seconds since acceptance, a delivery still failing transiently is
    /// `failed`.
    #[arg(long, env = "DELIVERY_MAX_AGE_SECS", default_value_t = 86_400)]
    pub delivery_max_age_secs: u64,
    /// Queued deliveries attempted at once.
    #[arg(long, env = "DELIVERY_CONCURRENCY", default_value_t = 4)]
    pub delivery_concurrency: usize,
    /// With a PostgreSQL outbox: how long a replica's claim on a delivery lasts without
    /// renewal, i.e. how soon another replica takes over the deliveries of one that crashed.
    #[arg(long, env = "DELIVERY_LEASE_SECS", default_value_t = 60)]
    pub delivery_lease_secs: u64,
    /// Where `ticket.delivered` and `ticket.failed` events of asynchronous requests are POSTed.
    #[arg(long, env = "WEBHOOK_URL")]
    pub webhook_url: Option<Url>,
    /// The events' signing secret (`whsec_` + base64), per Standard Webhooks.
    #[arg(long, env = "WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// Serve GET /metrics on this address instead of LISTEN_ADDR.
    #[arg(long, env = "METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Log format: `json` or `pretty` (default: json unless stdout is a terminal).
    #[arg(long, env = "LOG_FORMAT")]
    pub log_format: Option<String>,
}

/// One-shot commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Exit 0 when `GET /healthz` of a running service answers 200 (for container health
    /// checks without shell tools).
    Healthcheck {
        /// URL to probe; default: this service's LISTEN_ADDR port on 127.0.0.1.
        #[arg(long)]
        url: Option<Url>,
    },
    /// Read-only preflight against the configured Gorgias account (same settings and `.env`
    /// as the service): credentials, channels, rate limit, and the three lookups the service
    /// relies on. One PASS/WARN/FAIL line per check; exit 0 when nothing failed, 1 when
    /// something did, 2 when the settings themselves are unusable. Writes nothing and spends
    /// at most 8 Gorgias calls, so it is safe in CI of a deployment and against a live account.
    /// Needs no inbound token (it serves nothing).
    Check {
        /// Print one JSON document instead of lines (for CI).
        #[arg(long)]
        json: bool,
    },
    /// Manage stored connections (same settings as the service: DATA_DIR / OUTBOX_URL and
    /// CONNECTIONS_KEY).
    Connections {
        /// What to do.
        #[command(subcommand)]
        action: ConnectionsCommand,
    },
}

/// `gorgias-proxy connections …`.
#[derive(Debug, Subcommand)]
pub enum ConnectionsCommand {
    /// Rewrites every stored secret under CONNECTIONS_KEY, opening the old ones with
    /// CONNECTIONS_KEY_PREVIOUS; afterwards the previous key is no longer needed. With SQLite,
    /// stop the service first (one process owns the file); with PostgreSQL it can run live.
    Rekey,
}

impl Cli {
    /// Turns flags and environment into a [`Config`]. In sandbox mode Gorgias settings are
    /// not needed (the caller points the config at the simulator afterwards).
    ///
    /// # Errors
    /// [`ConfigError::Missing`] naming every absent variable at once, or the first invalid one.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let has_key = self
            .connections_key
            .as_deref()
            .is_some_and(|k| !k.trim().is_empty())
            || self.connections_key_file.is_some();
        let (base_url, auth, default_account) = if self.sandbox {
            let (base_url, auth) = sandbox_placeholder()?;
            (base_url, auth, true)
        } else if has_key && self.gorgias_unset() {
            // Stored connections only: no default account; a request without Connection-Id
            // is answered 400 `connection_required`.
            let (base_url, auth) = sandbox_placeholder_url();
            (base_url, auth, false)
        } else {
            let (base_url, auth) = self.gorgias_target()?;
            (base_url, auth, true)
        };
        let mut config = Config::with_gorgias(base_url, auth);
        config.default_account = default_account;
        config.listen = self.listen;
        config.gorgias.attempt_timeout =
            positive_ms("GORGIAS_TIMEOUT_MS", self.gorgias_timeout_ms)?;
        config.request_deadline = positive_ms("REQUEST_DEADLINE_MS", self.request_deadline_ms)?;
        if let Some(spec) = &self.gorgias_rate_limit {
            config.gorgias.rate_limit = parse_rate_limit(spec)?;
        }
        if self.gorgias_replicas == 0 {
            return Err(invalid("GORGIAS_REPLICAS", "must be 1 or more"));
        }
        config.gorgias.replicas = self.gorgias_replicas;
        config.outbox = match self.outbox_url.as_deref().map(str::trim) {
            Some(off) if off.eq_ignore_ascii_case("off") => None,
            url => Some(
                crate::outbox::OutboxTarget::parse(url, &self.data_dir)
                    .map_err(|e| invalid("OUTBOX_URL", &e))?,
            ),
        };
        if self.delivery_concurrency == 0 {
            return Err(invalid("DELIVERY_CONCURRENCY", "must be 1 or more"));
        }
        config.delivery.concurrency = self.delivery_concurrency;
        if self.delivery_lease_secs < 3 {
            return Err(invalid("DELIVERY_LEASE_SECS", "must be 3 or more"));
        }
        config.delivery.lease = Duration::from_secs(self.delivery_lease_secs);
        config.webhook = match (
            self.webhook_url,
            self.webhook_secret.filter(|s| !s.trim().is_empty()),
        ) {
            (None, None) => None,
            (Some(url), Some(secret)) => {
                crate::webhooks::Webhooks::new(url.clone(), &secret)
                    .map_err(|e| invalid("WEBHOOK_SECRET", &e))?;
                Some((url, secrecy::SecretString::from(secret)))
            }
            (Some(_), None) => {
                return Err(invalid("WEBHOOK_SECRET", "is required with WEBHOOK_URL"));
            }
            (None, Some(_)) => {
                return Err(invalid("WEBHOOK_URL", "is required with WEBHOOK_SECRET"));
            }
        };
        config.delivery.max_age = Duration::from_secs(self.delivery_max_age_secs.max(1));
        config.body_limit = self.body_limit_bytes;
        if config.body_limit == 0 {
            return Err(invalid("BODY_LIMIT_BYTES", "must be more than 0"));
        }
        config.ticketing = TicketingSettings {
            customer_cache_ttl: Duration::from_secs(self.customer_cache_ttl_secs),
            customer_cache_capacity: self.customer_cache_capacity,
            settings_ttl: Duration::from_secs(self.settings_cache_ttl_secs),
            channel_override: self
                .ticket_channel
                .map(|c| c.trim().to_owned())
                .filter(|c| !c.is_empty()),
            message_channel: match self.message_channel.as_deref().map(str::trim) {
                None | Some("") => MessageChannel::default(),
                Some(c) => c
                    .parse()
                    .map_err(|()| invalid("MESSAGE_CHANNEL", "must be `phone` or `api`"))?,
            },
            settle: Duration::from_secs(self.gorgias_settle_secs),
            shared: None,
        };
        config.shutdown_drain = Duration::from_secs(self.shutdown_drain_secs);
        // A drain shorter than a request's deadline lets SIGTERM cut a request mid-create.
        if config.shutdown_drain < config.request_deadline {
            return Err(invalid(
                "SHUTDOWN_DRAIN_SECS",
                &format!(
                    "({} s) must be at least REQUEST_DEADLINE_MS ({} ms), or SIGTERM can cut a \
                     request in the middle of creating its ticket",
                    config.shutdown_drain.as_secs(),
                    config.request_deadline.as_millis()
                ),
            ));
        }
        config.idempotency_ttl = Duration::from_secs(self.idempotency_ttl_secs.max(1));
        // A key forgotten before its create has settled would let a retry create again.
        if config.idempotency_ttl <= Duration::from_secs(self.gorgias_settle_secs) {
            return Err(invalid(
                "IDEMPOTENCY_TTL_SECS",
                "must be longer than GORGIAS_SETTLE_SECS: a key must outlive the settle window \
                 of its create, or a retry after the window could create the ticket again",
            ));
        }
        config.redis_url = self.redis_url.filter(|u| !u.trim().is_empty());
        config.metrics_listen = self.metrics_listen;
        if self.max_concurrent_requests == 0 || self.max_connections == 0 {
            return Err(invalid(
                "MAX_CONCURRENT_REQUESTS",
                "MAX_CONCURRENT_REQUESTS and MAX_CONNECTIONS must be more than 0",
            ));
        }
        config.max_concurrent_requests = self.max_concurrent_requests;
        if let Some(region) = self
            .phone_default_region
            .as_deref()
            .map(str::trim)
            .filter(|r| !r.is_empty())
        {
            let id = region.to_ascii_uppercase().parse().map_err(|_| {
                invalid(
                    "PHONE_DEFAULT_REGION",
                    "must be an ISO 3166 region code such as KE or US",
                )
            })?;
            config.rules.phone_region = Some(id);
        }
        config.max_connections = self.max_connections;
        config.server_threads = self.server_threads;
        config.header_read_timeout =
            positive_ms("HEADER_READ_TIMEOUT_MS", self.header_read_timeout_ms)?;
        config.body_read_timeout = positive_ms("BODY_READ_TIMEOUT_MS", self.body_read_timeout_ms)?;
        config.api_tokens = token_list(
            self.api_tokens.as_deref(),
            self.api_tokens_file.as_deref(),
            "API_TOKENS_FILE",
        )?;
        config.admin_tokens = token_list(
            self.admin_tokens.as_deref(),
            self.admin_tokens_file.as_deref(),
            "ADMIN_TOKENS_FILE",
        )?;
        // One token in both lists would make a caller an admin (or an admin a caller).
        let callers = crate::callers::InboundAuth::new(&config.api_tokens);
        if config.admin_tokens.iter().any(|t| {
            crate::callers::parse_entry(secrecy::ExposeSecret::expose_secret(t))
                .is_ok_and(|(token, _)| callers.accepts(&token))
        }) {
            return Err(invalid(
                "ADMIN_TOKENS",
                "an admin token is also in API_TOKENS: give the admin API tokens of its own",
            ));
        }
        config.connections_key = match (
            self.connections_key.filter(|k| !k.trim().is_empty()),
            &self.connections_key_file,
        ) {
            (Some(k), _) => Some(SecretString::from(k)),
            (None, Some(path)) => Some(SecretString::from(
                std::fs::read_to_string(path)
                    .map_err(|e| invalid("CONNECTIONS_KEY_FILE", &format!("cannot be read: {e}")))?
                    .trim()
                    .to_owned(),
            )),
            (None, None) => None,
        };
        config.connections_key_previous = self
            .connections_key_previous
            .filter(|k| !k.trim().is_empty())
            .map(SecretString::from);
        if let Some(key) = &config.connections_key {
            crate::secrets::Keyring::new(key, None)
                .map_err(|e| invalid("CONNECTIONS_KEY", &e.to_string()))?;
        }
        if let Some(key) = &config.connections_key_previous {
            crate::secrets::Keyring::new(key, None)
                .map_err(|e| invalid("CONNECTIONS_KEY_PREVIOUS", &e.to_string()))?;
            if config.connections_key.is_none() {
                return Err(invalid(
                    "CONNECTIONS_KEY_PREVIOUS",
                    "needs CONNECTIONS_KEY (the key secrets are sealed with now)",
                ));
            }
        }
        config.allow_custom_base_urls = self.allow_custom_base_urls;
        config.oauth = match (
            self.oauth_client_id.filter(|v| !v.trim().is_empty()),
            self.oauth_client_secret.filter(|v| !v.trim().is_empty()),
            self.oauth_redirect_url,
        ) {
            (None, None, None) => None,
            (Some(client_id), Some(secret), Some(redirect_url)) => Some(gorgias::OAuthClient {
                client_id,
                client_secret: SecretString::from(secret),
                redirect_url,
            }),
            _ => {
                return Err(invalid(
                    "OAUTH_CLIENT_ID",
                    "OAUTH_CLIENT_ID, OAUTH_CLIENT_SECRET and OAUTH_REDIRECT_URL go together: \
                     set all three, or none",
                ));
            }
        };
        // Named entries (`name:token`) are checked now, so a typo stops the start-up rather
        // than silently refusing that caller.
        crate::callers::InboundAuth::parse(&config.api_tokens)
            .map_err(|e| invalid("API_TOKENS", &e.to_string()))?;
        config.allow_unauthenticated = self.allow_unauthenticated || self.sandbox;
        if config.api_tokens.is_empty() && !config.allow_unauthenticated {
            return Err(invalid(
                "API_TOKENS",
                "no inbound token is configured: set API_TOKENS or API_TOKENS_FILE, or set \
                 ALLOW_UNAUTHENTICATED=true to serve without inbound auth",
            ));
        }
        Ok(config)
    }

    /// No `GORGIAS_*` account setting is given at all.
    fn gorgias_unset(&self) -> bool {
        let unset = |v: &Option<String>| v.as_deref().is_none_or(|v| v.trim().is_empty());
        self.gorgias_base_url.is_none()
            && unset(&self.gorgias_domain)
            && unset(&self.gorgias_username)
            && unset(&self.gorgias_api_key)
            && unset(&self.gorgias_access_token)
    }

    fn gorgias_target(&self) -> Result<(Url, Auth), ConfigError> {
        let mut missing = Vec::new();
        let base_url = match (&self.gorgias_base_url, &self.gorgias_domain) {
            (Some(u), _) => Some(u.clone()),
            (None, Some(d)) => Some(domain_url(d)?),
            (None, None) => {
                missing.push("GORGIAS_DOMAIN (or GORGIAS_BASE_URL)");
                None
            }
        };
        let auth = match (
            &self.gorgias_access_token,
            &self.gorgias_username,
            &self.gorgias_api_key,
        ) {
            (Some(t), _, _) if !t.is_empty() => Some(Auth::Bearer(SecretString::from(t.clone()))),
            (_, Some(u), Some(k)) if !u.is_empty() && !k.is_empty() => Some(Auth::Basic {
                username: u.clone(),
                api_key: SecretString::from(k.clone()),
            }),
            (_, u, k) => {
                if u.as_deref().is_none_or(str::is_empty) {
                    missing.push("GORGIAS_USERNAME");
                }
                if k.as_deref().is_none_or(str::is_empty) {
                    missing.push("GORGIAS_API_KEY (or GORGIAS_ACCESS_TOKEN)");
                }
                None
            }
        };
        match (base_url, auth) {
            (Some(b), Some(a)) => Ok((b, a)),
            _ => Err(ConfigError::Missing(missing)),
        }
    }
}

/// The client settings' template when there is no default account: never called (no
/// request reaches it), only cloned into each stored connection's settings.
fn sandbox_placeholder_url() -> (Url, Auth) {
    let url = Url::parse("http://127.0.0.1:1/").unwrap_or_else(|_| unreachable!("a literal URL"));
    (
        url,
        Auth::Basic {
            username: String::new(),
            api_key: SecretString::from(String::new()),
        },
    )
}

/// The sandbox's Gorgias target: the simulator's credentials at a placeholder address that
/// the sandbox module replaces once the simulator is bound.
#[cfg(feature = "sandbox")]
fn sandbox_placeholder() -> Result<(Url, Auth), ConfigError> {
    let url = Url::parse("http://127.0.0.1:1/").unwrap_or_else(|_| unreachable!("a literal URL"));
    Ok((
        url,
        Auth::Basic {
            username: gorgias_sim::DEFAULT_USERNAME.into(),
            api_key: SecretString::from(gorgias_sim::DEFAULT_API_KEY),
        },
    ))
}

#[cfg(not(feature = "sandbox"))]
fn sandbox_placeholder() -> Result<(Url, Auth), ConfigError> {
    Err(invalid(
        "--sandbox",
        "this build has no simulator (built without the `sandbox` feature)",
    ))
}

fn domain_url(domain: &str) -> Result<Url, ConfigError> {
    let d = domain.trim();
    let ok = !d.is_empty() && d.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !ok {
        return Err(invalid(
            "GORGIAS_DOMAIN",
            "must be the account subdomain only, e.g. `acme` for https://acme.gorgias.com",
        ));
    }
    Url::parse(&format!("https://{d}.gorgias.com/"))
        .map_err(|e| invalid("GORGIAS_DOMAIN", &e.to_string()))
}

/// Tokens from a comma-separated setting and a file of one per line (`#` comments).
fn token_list(
    inline: Option<&str>,
    file: Option<&std::path::Path>,
    file_setting: &'static str,
) -> Result<Vec<SecretString>, ConfigError> {
    let mut tokens: Vec<String> = inline
        .iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| invalid(file_setting, &format!("cannot be read: {e}")))?;
        tokens.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned),
        );
    }
    Ok(tokens.into_iter().map(SecretString::from).collect())
}

fn positive_ms(name: &'static str, ms: u64) -> Result<Duration, ConfigError> {
    if ms == 0 {
        return Err(invalid(name, "must be more than 0"));
    }
    Ok(Duration::from_millis(ms))
}

fn invalid(name: &'static str, problem: &str) -> ConfigError {
    ConfigError::Invalid {
        name,
        problem: problem.to_owned(),
    }
}

/// Reads `40/20s`, `80/20`, `20/2s` or `off`.
///
/// # Errors
/// When the text is none of those forms.
pub fn parse_rate_limit(spec: &str) -> Result<Option<(u32, Duration)>, ConfigError> {
    let s = spec.trim();
    if s.eq_ignore_ascii_case("off") || s == "0" {
        return Ok(None);
    }
    let bad = || invalid("GORGIAS_RATE_LIMIT", "must look like 40/20s, or be off");
    let (calls, window) = s.split_once('/').ok_or_else(bad)?;
    let calls: u32 = calls.trim().parse().map_err(|_| bad())?;
    let window = window.trim().trim_end_matches('s');
    let secs: f64 = window.parse().map_err(|_| bad())?;
    if calls == 0 || !secs.is_finite() || secs <= 0.0 {
        return Err(bad());
    }
    // A window too long for a Duration (`40/1e30s`) is refused, not a panic.
    let window = Duration::try_from_secs_f64(secs).map_err(|_| bad())?;
    Ok(Some((calls, window)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        let mut all = vec!["gorgias-proxy"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).unwrap()
    }

    #[test]
    fn missing_gorgias_settings_are_named_together() {
        // Only flags are given so the test does not depend on the process environment, which
        // clap also reads; an absent variable in CI is the usual case.
        let c = Cli {
            gorgias_domain: None,
            gorgias_base_url: None,
            gorgias_username: None,
            gorgias_api_key: None,
            gorgias_access_token: None,
            ..cli(&[])
        };
        let err = c.into_config().unwrap_err().to_string();
        assert_eq!(
            err,
            "missing settings: GORGIAS_DOMAIN (or GORGIAS_BASE_URL), GORGIAS_USERNAME, GORGIAS_API_KEY (or GORGIAS_ACCESS_TOKEN)"
        );
    }

    #[test]
    fn a_domain_becomes_the_account_url() {
        let c = Cli {
            gorgias_domain: Some("acme".into()),
            gorgias_base_url: None,
            gorgias_username: Some("u@example.com".into()),
            gorgias_api_key: Some("k".into()),
            gorgias_access_token: None,
            api_tokens: Some("t1, t2".into()),
            ..cli(&[])
        };
        let config = c.into_config().unwrap();
        assert_eq!(
            config.gorgias.base_url.as_str(),
            "https://acme.gorgias.com/"
        );
        assert_eq!(
            config.gorgias.rate_limit,
            Some((40, Duration::from_secs(20)))
        );
    }

    #[test]
    fn message_channel_is_phone_unless_set_to_api_and_never_email() {
        let base = || Cli {
            gorgias_base_url: Some(Url::parse("http://127.0.0.1:1/").unwrap()),
            gorgias_username: Some("u@example.com".into()),
            gorgias_api_key: Some("k".into()),
            gorgias_access_token: None,
            allow_unauthenticated: true,
            message_channel: None,
            ..cli(&[])
        };
        let c = base().into_config().unwrap();
        assert_eq!(c.ticketing.message_channel, MessageChannel::Phone);
        let c = Cli {
            message_channel: Some("API".into()),
            ..base()
        };
        assert_eq!(
            c.into_config().unwrap().ticketing.message_channel,
            MessageChannel::Api
        );
        let c = Cli {
            message_channel: Some("email".into()),
            ..base()
        };
        assert_eq!(
            c.into_config().unwrap_err().to_string(),
            "MESSAGE_CHANNEL: must be `phone` or `api`"
        );
    }

    #[test]
    fn webhooks_need_a_url_and_a_base64_secret_together() {
        let with = |url: Option<&str>, secret: Option<&str>| {
            Cli {
                gorgias_base_url: Some(Url::parse("http://127.0.0.1:1/").unwrap()),
                gorgias_username: Some("u@example.com".into()),
                gorgias_api_key: Some("k".into()),
                gorgias_access_token: None,
                allow_unauthenticated: true,
                webhook_url: url.map(|u| Url::parse(u).unwrap()),
                webhook_secret: secret.map(str::to_owned),
                ..cli(&[])
            }
            .into_config()
            .map(|c| c.webhook.is_some())
            .map_err(|e| e.to_string())
        };
        assert_eq!(with(None, None), Ok(false));
        assert_eq!(
            with(
                Some("http://hooks.internal/x"),
                Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            ),
            Ok(true)
        );
        assert!(
            with(Some("http://hooks.internal/x"), None)
                .unwrap_err()
                .contains("WEBHOOK_SECRET")
        );
        assert!(
            with(None, Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"))
                .unwrap_err()
                .contains("WEBHOOK_URL")
        );
        assert!(
            with(Some("http://hooks.internal/x"), Some("whsec_not base64!"))
                .unwrap_err()
                .contains("WEBHOOK_SECRET")
        );
    }

    /// Settings that start, whatever the environment holds.
    fn usable_cli() -> Cli {
        Cli {
            gorgias_base_url: Some(Url::parse("http://127.0.0.1:1/").unwrap()),
            gorgias_username: Some("u@example.com".into()),
            gorgias_api_key: Some("k".into()),
            gorgias_access_token: None,
            allow_unauthenticated: true,
            ..cli(&[])
        }
    }

    #[test]
    fn a_drain_shorter_than_the_deadline_refuses_to_start_naming_both() {
        let c = Cli {
            shutdown_drain_secs: 5,
            request_deadline_ms: 30_000,
            ..usable_cli()
        };
        let err = c.into_config().unwrap_err().to_string();
        assert!(
            err.contains("SHUTDOWN_DRAIN_SECS") && err.contains("REQUEST_DEADLINE_MS"),
            "{err}"
        );
    }

    #[test]
    fn a_key_ttl_within_the_settle_window_refuses_to_start_naming_both() {
        let c = Cli {
            idempotency_ttl_secs: 10,
            gorgias_settle_secs: 15,
            ..usable_cli()
        };
        let err = c.into_config().unwrap_err().to_string();
        assert!(
            err.contains("IDEMPOTENCY_TTL_SECS") && err.contains("GORGIAS_SETTLE_SECS"),
            "{err}"
        );
    }

    #[test]
    fn rate_limits_parse() {
        assert_eq!(
            parse_rate_limit("20/2s").unwrap(),
            Some((20, Duration::from_secs(2)))
        );
        assert_eq!(parse_rate_limit("off").unwrap(), None);
        assert!(parse_rate_limit("fast").is_err());
        assert!(parse_rate_limit("0/2s").is_err());
        assert!(parse_rate_limit("40/1e30s").is_err());
    }
}
