//! The state every handler reaches, built once from the config: the use case, the stores,
//! the caller tokens, readiness. Kept apart from `app` (which serves) and `http` (which routes)
//! so neither needs the other's internals.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::callers::InboundAuth;
use crate::config::Config;
use crate::error::ApiError;
use crate::idempotency::IdempotencyStore;
use crate::ticketing::Ticketing;
use gorgias::{GorgiasClient, GorgiasError};
use metrics_exporter_prometheus::PrometheusHandle;

/// What every handler can reach: one `Arc`, so the per-request clones axum makes cost one
/// atomic increment (cloning the fields themselves showed up in the profile).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The state's contents.
pub struct Shared {
    /// The create-ticket use case and its caches.
    pub ticketing: Ticketing,
    /// Largest accepted body, in bytes.
    pub body_limit: usize,
    /// Time allowed for one inbound request, Gorgias retries included.
    pub request_deadline: Duration,
    /// Time allowed to receive a request's body.
    pub body_read_timeout: Duration,
    /// Cached readiness verdict.
    pub readiness: Readiness,
    /// Where `Idempotency-Key` answers live.
    pub idempotency: IdempotencyStore,
    /// Inbound bearer tokens.
    pub auth: InboundAuth,
    /// The Prometheus recorder's handle, for `/metrics`.
    pub metrics: Option<PrometheusHandle>,
    /// Whether `/metrics` is served on the main listener.
    pub metrics_on_main: bool,
    /// Requests served at once; more are refused with 503.
    pub max_in_flight: usize,
    /// Deployment-specific value rules (the phone region).
    pub rules: crate::domain::request::Rules,
}

impl AppState {
    /// Builds the state from a config; connects to Redis when one is configured.
    ///
    /// # Errors
    /// When the Gorgias client cannot be built (bad credentials encoding, TLS), or Redis is
    /// configured but unreachable (a replica that cannot share state must not start).
    pub async fn new(config: &Config) -> anyhow::Result<Self> {
        let mut client = GorgiasClient::new(config.gorgias.clone())?;
        let mut ticketing_settings = config.ticketing.clone();
        let idempotency = match &config.redis_url {
            Some(url) => {
                let conn = crate::coordination::connect(url).await.map_err(|e| {
                    anyhow::anyhow!("REDIS_URL is set but Redis cannot be used: {e}")
                })?;
                if let Some(budget) = client.pacer().budget() {
                    let limiter = crate::coordination::SharedLimiter::new(
                        conn.clone(),
                        client.base_url().as_str(),
                        budget,
                    );
                    client = client.share_pacing(Arc::new(limiter));
                }
                ticketing_settings.shared = Some(crate::coordination::SharedCustomers::new(
                    conn.clone(),
                    config.ticketing.customer_cache_ttl,
                    config.gorgias.base_url.as_str(),
                ));
                // An in-flight claim outlives the request's deadline, so only a dead replica's
                // claim ever expires on its own.
                let claim_ttl = config.request_deadline + Duration::from_secs(30);
                IdempotencyStore::redis(conn, config.idempotency_ttl, claim_ttl)
            }
            None => IdempotencyStore::memory(config.idempotency_ttl),
        };
        Ok(Self(Arc::new(Shared {
            ticketing: Ticketing::new(client, ticketing_settings),
            body_limit: config.body_limit,
            request_deadline: config.request_deadline,
            body_read_timeout: config.body_read_timeout,
            readiness: Readiness::new(config.readiness_ttl),
            idempotency,
            auth: InboundAuth::new(&config.api_tokens),
            metrics: Some(crate::metrics::install_with_upkeep()),
            metrics_on_main: config.metrics_listen.is_none(),
            max_in_flight: config.max_concurrent_requests,
            rules: config.rules,
        })))
    }
}

/// When a readiness check ran, and what it found (the reason when not ready).
type Verdict = (Instant, Result<(), String>);

/// `/readyz`'s verdict, cached so probes do not spend the account's call budget.
#[derive(Clone)]
pub struct Readiness {
    ttl: Duration,
    last: Arc<Mutex<Option<Verdict>>>,
}

impl Readiness {
    fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            last: Arc::new(Mutex::new(None)),
        }
    }

    /// Ready when an authenticated Gorgias call succeeds (at most one call per TTL).
    ///
    /// # Errors
    /// `NotReady` with the reason.
    pub async fn check(&self, ticketing: &Ticketing) -> Result<(), ApiError> {
        // The lock is held across the call on purpose: concurrent probes share one check.
        let mut last = self.last.lock().await;
        if let Some((at, verdict)) = last.as_ref()
            && at.elapsed() < self.ttl
        {
            return verdict.clone().map_err(ApiError::NotReady);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let verdict = match ticketing.client().assignment_channels(deadline).await {
            Ok(_) => Ok(()),
            Err(GorgiasError::Rejected {
                status: status @ (401 | 403),
                ..
            }) => Err(format!(
                "Gorgias rejected our credentials ({status}); check GORGIAS_USERNAME/GORGIAS_API_KEY"
            )),
            Err(e) => Err(format!("Gorgias is not usable: {e}")),
        };
        *last = Some((Instant::now(), verdict.clone()));
        verdict.map_err(ApiError::NotReady)
    }
}
