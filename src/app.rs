//! Wiring: the server around the state, and its shutdown. Build and run are separate so tests
//! can bind port 0, learn the port, then serve.

use std::future::Future;
use std::net::SocketAddr;

use std::time::Duration;

use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::config::Config;
pub use crate::state::AppState;

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
                threads: config.server_threads,
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
        if let Some(warm) = self.state.accounts.default_account().cloned() {
            tokio::spawn(async move {
                warm.ticketing
                    .warm_up(Instant::now() + Duration::from_secs(10))
                    .await;
            });
        }
        if let (Some(listener), Some(handle)) = (self.metrics_listener, self.state.metrics.clone())
        {
            let metrics_app: axum::Router = crate::http::metrics_route(handle);
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, metrics_app).await {
                    tracing::error!(error = %e, "the metrics listener stopped");
                }
            });
        }
        let tasks = self.state.tasks.clone();
        // Deliveries stop being claimed at SIGTERM; the attempts in hand finish in the drain.
        let stop_deliveries = tokio_util::sync::CancellationToken::new();
        // Dropped unfinished (an aborted task, a test's runtime), this stops the deliveries too:
        // the serving threads wait for every tracked task before they end.
        let _stop_deliveries_on_drop = stop_deliveries.clone().drop_guard();
        crate::delivery::start(&self.state, &stop_deliveries);
        let app = crate::http::router(self.state);
        let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
        let signal = async move {
            shutdown.await;
            tracing::info!("shutting down: no new connections, draining in-flight requests");
            stop_deliveries.cancel();
            let _ = stopping_tx.send(());
        };
        let serve = async move {
            crate::server::serve_per_core(
                self.listener,
                app,
                signal,
                self.conn_limits,
                tasks.clone(),
            )
            .await?;
            // Work whose caller hung up still runs; the drain waits for it too.
            tasks.close();
            tasks.wait().await;
            Ok::<_, std::io::Error>(())
        };
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
