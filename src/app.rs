//! Wiring: the shared state, the server, and its shutdown. Build and run are separate so tests
//! can bind port 0, learn the port, then serve.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::config::Config;
use crate::error::ApiError;
use crate::http::auth::InboundAuth;
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

/// A bound, not yet serving, service.
pub struct Application {
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    state: AppState,
    drain: Duration,
    conn_limits: crate::server::ConnLimits,
}

impl Application {
    /// Binds the listener and builds the state.
    ///
    /// # Errors
    /// When the address cannot be bound or the state cannot be built.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        if config.api_tokens.is_empty() && !config.allow_unauthenticated {
            anyhow::bail!(
                "no inbound token is configured: set API_TOKENS or API_TOKENS_FILE, or \
                 ALLOW_UNAUTHENTICATED=true to serve without inbound auth"
            );
        }
        if config.api_tokens.is_empty() {
            tracing::warn!(
                "inbound auth is OFF: any caller that reaches this port can open tickets"
            );
        }
        let state = AppState::new(&config).await?;
        let listener = TcpListener::bind(config.listen).await?;
        let metrics_listener = match config.metrics_listen {
            Some(addr) => Some(TcpListener::bind(addr).await?),
            None => None,
        };
        Ok(Self {
            listener,
            metrics_listener,
            state,
            drain: config.shutdown_drain,
            conn_limits: crate::server::ConnLimits {
                header_read_timeout: config.header_read_timeout,
                max_connections: config.max_connections,
                ..Default::default()
            },
        })
    }

    /// The metrics listener's address, when `METRICS_LISTEN` gave it its own.
    ///
    /// # Errors
    /// When the OS cannot tell.
    pub fn metrics_addr(&self) -> std::io::Result<Option<SocketAddr>> {
        self.metrics_listener
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()
    }

    /// The address actually bound (port 0 resolved).
    ///
    /// # Errors
    /// When the OS cannot tell.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes, then stops accepting and lets in-flight requests
    /// finish for up to the drain timeout.
    ///
    /// # Errors
    /// When serving fails, or draining takes longer than allowed.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let warm = self.state.ticketing.clone();
        tokio::spawn(async move {
            warm.warm_up(Instant::now() + Duration::from_secs(10)).await;
        });
        if let (Some(listener), Some(handle)) = (self.metrics_listener, self.state.metrics.clone())
        {
            let metrics_app: axum::Router = crate::http::metrics_route(handle);
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, metrics_app).await {
                    tracing::error!(error = %e, "the metrics listener stopped");
                }
            });
        }
        let app = crate::http::router(self.state);
        let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
        let signal = async move {
            shutdown.await;
            tracing::info!("shutting down: no new connections, draining in-flight requests");
            let _ = stopping_tx.send(());
        };
        let serve = crate::server::serve(self.listener, app, signal, self.conn_limits);
        tokio::pin!(serve);
        let drain = self.drain;
        tokio::select! {
            r = &mut serve => r.map_err(Into::into),
            () = async {
                let _ = stopping_rx.await;
                tokio::time::sleep(drain).await;
            } => {
                anyhow::bail!("in-flight requests did not finish within {drain:?}")
            }
        }
    }
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
