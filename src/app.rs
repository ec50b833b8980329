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
use crate::gorgias::{GorgiasClient, GorgiasError};
use crate::ticketing::Ticketing;

/// What every handler can reach. Cheap to clone: everything inside is shared.
#[derive(Clone)]
pub struct AppState {
    /// The create-ticket use case and its caches.
    pub ticketing: Ticketing,
    /// Largest accepted body, in bytes.
    pub body_limit: usize,
    /// Time allowed for one inbound request, Gorgias retries included.
    pub request_deadline: Duration,
    /// Cached readiness verdict.
    pub readiness: Readiness,
}

impl AppState {
    /// Builds the state from a config (no I/O).
    ///
    /// # Errors
    /// When the Gorgias client cannot be built (bad credentials encoding, TLS).
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        let client = GorgiasClient::new(config.gorgias.clone())?;
        Ok(Self {
            ticketing: Ticketing::new(client, config.ticketing.clone()),
            body_limit: config.body_limit,
            request_deadline: config.request_deadline,
            readiness: Readiness::new(config.readiness_ttl),
        })
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
    state: AppState,
    drain: Duration,
}

impl Application {
    /// Binds the listener and builds the state.
    ///
    /// # Errors
    /// When the address cannot be bound or the state cannot be built.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let state = AppState::new(&config)?;
        let listener = TcpListener::bind(config.listen).await?;
        Ok(Self {
            listener,
            state,
            drain: config.shutdown_drain,
        })
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
        let app = crate::http::router(self.state);
        let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
        let signal = async move {
            shutdown.await;
            tracing::info!("shutting down: no new connections, draining in-flight requests");
            let _ = stopping_tx.send(());
        };
        let serve = axum::serve(self.listener, app)
            .with_graceful_shutdown(signal)
            .into_future();
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
