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
use gorgias::GorgiasError;
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
    /// The Gorgias accounts: each one's use case, caches and rules.
    pub accounts: crate::accounts::Accounts,
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
    /// The admin API's bearer tokens (none: the admin API is off).
    pub admin: InboundAuth,
    /// Whether a stored connection may name a `base_url` (`ALLOW_CUSTOM_BASE_URLS`).
    pub allow_custom_base_urls: bool,
    /// The Prometheus recorder's handle, for `/metrics`.
    pub metrics: Option<PrometheusHandle>,
    /// Whether `/metrics` is served on the main listener.
    pub metrics_on_main: bool,
    /// Requests served at once; more are refused with 503.
    pub max_in_flight: usize,
    /// The durable outbox for `Prefer: respond-async` (`None`: `OUTBOX_URL=off`).
    pub outbox: Option<crate::outbox::Outbox>,
    /// How queued deliveries are made.
    pub delivery: crate::outbox::DeliverySettings,
    /// Events on delivery, when `WEBHOOK_URL` is set (only with an outbox).
    pub webhooks: Option<crate::webhooks::Webhooks>,
    /// The requests' work, run apart from their handlers (a caller hanging up does not cancel
    /// it) and awaited by the shutdown drain.
    pub tasks: tokio_util::task::TaskTracker,
}

impl AppState {
    /// Builds the state from a config; connects to Redis when one is configured.
    ///
    /// # Errors
    /// When the Gorgias client cannot be built (bad credentials encoding, TLS), or Redis is
    /// configured but unreachable (a replica that cannot share state must not start).
    pub async fn new(config: &Config) -> anyhow::Result<Self> {
        let settle = config.ticketing.settle;
        let redis =
            match &config.redis_url {
                Some(url) => Some(crate::coordination::connect(url).await.map_err(|e| {
                    anyhow::anyhow!("REDIS_URL is set but Redis cannot be used: {e}")
                })?),
                None => None,
            };
        let factory = crate::accounts::AccountFactory::new(
            config.gorgias.clone(),
            config.ticketing.clone(),
            config.rules,
            redis.clone(),
        )?;
        let default = if config.default_account {
            Some(factory.build(
                None,
                config.gorgias.base_url.clone(),
                config.gorgias.auth.clone(),
                &crate::accounts::Overrides::default(),
            )?)
        } else {
            None
        };
        // One database holds the outbox and the idempotency records; without one
        // (`OUTBOX_URL=off`) keys live in memory.
        let store = match &config.outbox {
            Some(target) => Some(
                crate::store::Store::open(target, crate::store::OpenOptions { settle })
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!("the database (DATA_DIR / OUTBOX_URL) cannot be used: {e}")
                    })?,
            ),
            None => None,
        };
        let idempotency = match &store {
            Some(store) => IdempotencyStore::durable(store.clone(), redis, config.idempotency_ttl),
            None => IdempotencyStore::memory(config.idempotency_ttl),
        }
        .with_settle(settle);
        let keys = match &config.connections_key {
            Some(key) => Some(Arc::new(
                crate::secrets::Keyring::new(key, config.connections_key_previous.as_ref())
                    .map_err(|e| anyhow::anyhow!("CONNECTIONS_KEY: {e}"))?,
            )),
            None => None,
        };
        let connections = store.clone().map(crate::connections::Connections::new);
        if let Some(connections) = &connections {
            check_keys(connections, keys.as_deref()).await?;
        }
        let outbox = store.map(|store| crate::outbox::Outbox::new(store, settle));
        let webhooks = match (&config.webhook, &outbox) {
            (Some((url, secret)), Some(_)) => Some(
                crate::webhooks::Webhooks::new(
                    url.clone(),
                    secrecy::ExposeSecret::expose_secret(secret),
                )
                .map_err(|e| anyhow::anyhow!(e))?,
            ),
            _ => None,
        };
        Ok(Self(Arc::new(Shared {
            accounts: crate::accounts::Accounts::new(
                default,
                factory,
                connections,
                keys,
                config
                    .oauth
                    .clone()
                    .map(|client| -> anyhow::Result<_> {
                        Ok(crate::accounts::OAuth {
                            client,
                            http: reqwest::Client::builder()
                                .connect_timeout(Duration::from_secs(5))
                                .redirect(reqwest::redirect::Policy::none())
                                .build()?,
                        })
                    })
                    .transpose()?,
            ),
            admin: InboundAuth::new(&config.admin_tokens),
            allow_custom_base_urls: config.allow_custom_base_urls,
            body_limit: config.body_limit,
            request_deadline: config.request_deadline,
            body_read_timeout: config.body_read_timeout,
            readiness: Readiness::new(config.readiness_ttl),
            idempotency,
            auth: InboundAuth::new(&config.api_tokens),
            metrics: Some(crate::metrics::install_with_upkeep()),
            metrics_on_main: config.metrics_listen.is_none(),
            max_in_flight: config.max_concurrent_requests,
            tasks: tokio_util::task::TaskTracker::new(),
            outbox,
            delivery: config.delivery.clone(),
            webhooks,
        })))
    }
}

/// Refuses to serve stored connections whose secrets this process cannot open: without
/// `CONNECTIONS_KEY` when any is stored, or when one was sealed under a key it does not have.
async fn check_keys(
    connections: &crate::connections::Connections,
    keys: Option<&crate::secrets::Keyring>,
) -> anyhow::Result<()> {
    let (stored, unknown) = connections
        .census(keys)
        .await
        .map_err(|e| anyhow::anyhow!("the stored connections cannot be read: {e}"))?;
    if stored > 0 && keys.is_none() {
        anyhow::bail!(
            "{stored} connection(s) are stored but CONNECTIONS_KEY is not set: set \
             CONNECTIONS_KEY (or CONNECTIONS_KEY_FILE) to the key their secrets were sealed with"
        );
    }
    if !unknown.is_empty() {
        anyhow::bail!(
            "stored connection secrets are sealed under key id(s) {}, which neither \
             CONNECTIONS_KEY nor CONNECTIONS_KEY_PREVIOUS is: set CONNECTIONS_KEY_PREVIOUS to \
             the old key (then run `gorgias-proxy connections rekey`)",
            unknown.join(", ")
        );
    }
    Ok(())
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

    /// Ready when an authenticated Gorgias call succeeds (at most one call per TTL). A probe
    /// spends nothing from the account's budget while the service is busy: any call that
    /// succeeded within the TTL already proves it ready, and while calls wait for the budget
    /// the last verdict stands (a probe must not take a call from a caller, nor make every
    /// replica unready together at peak).
    ///
    /// # Errors
    /// `NotReady` with the reason.
    /// With `tolerate_outage` (an outbox accepts requests while Gorgias is down) only a
    /// refusal of our credentials makes the service unready, not Gorgias being unreachable.
    pub async fn check(
        &self,
        ticketing: &Ticketing,
        tolerate_outage: bool,
    ) -> Result<(), ApiError> {
        let client = ticketing.client();
        if client
            .last_success()
            .is_some_and(|at| at.elapsed() < self.ttl)
        {
            return Ok(());
        }
        // The lock is held across the call on purpose: concurrent probes share one check.
        let mut last = self.last.lock().await;
        if let Some((at, verdict)) = last.as_ref()
            && at.elapsed() < self.ttl
        {
            return verdict.clone().map_err(ApiError::NotReady);
        }
        if client.pacer().is_busy() {
            return match last.as_ref() {
                Some((_, verdict)) => verdict.clone().map_err(ApiError::NotReady),
                None => Ok(()),
            };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let verdict = match client.assignment_channels(deadline).await {
            Ok(_) => Ok(()),
            Err(GorgiasError::Rejected {
                status: status @ (401 | 403),
                ..
            }) => Err(format!(
                "Gorgias rejected our credentials ({status}); check GORGIAS_USERNAME/GORGIAS_API_KEY"
            )),
            Err(e) if tolerate_outage => {
                tracing::warn!(error = %e, "Gorgias is not usable; still ready to queue requests");
                Ok(())
            }
            Err(e) => Err(format!("Gorgias is not usable: {e}")),
        };
        *last = Some((Instant::now(), verdict.clone()));
        verdict.map_err(ApiError::NotReady)
    }
}
