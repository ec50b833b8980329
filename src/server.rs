//! The accept loop. `axum::serve` offers no header-read timeout, so a client trickling its
//! headers would hold a connection (and a task) forever; this loop is axum's, with hyper's
//! `header_read_timeout`, a bounded header buffer, and graceful shutdown.
//!
//! It runs once per core ([`serve_per_core`]): a thread with its own single-threaded runtime
//! accepts connections from the shared socket and serves them, the request's work included, on
//! that thread. nginx's workers do the same, and for the same reason: on the work-stealing
//! runtime, a request's steps woke each other across threads (about four `futex` calls per
//! request), which cost more CPU than the service's own JSON work.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

/// Connection-level limits.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// A client must send a request's whole header within this time (also bounds how long an
    /// idle keep-alive connection waits for its next request).
    pub header_read_timeout: Duration,
    /// Largest request head (request line and headers), in bytes; larger gets 431.
    pub max_header_bytes: usize,
    /// Open connections at once (over all threads); a connection past the cap is closed on
    /// arrival, before it costs a task or buffers.
    pub max_connections: usize,
    /// Serving threads; 0 means one per CPU core.
    pub threads: usize,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            max_connections: 1024,
            threads: 0,
        }
    }
}

/// Serves `app` on `listener` from [`ConnLimits::threads`] threads, each with its own
/// current-thread runtime, until `shutdown` completes. Each thread then stops accepting, lets its
/// connections finish their in-flight requests, and waits for the work those requests spawned in
/// `tasks` before its runtime ends (the caller bounds that wait).
///
/// # Errors
/// When the socket cannot be shared between threads, a thread or its runtime cannot start, or
/// a serving thread failed or panicked (the others are then stopped).
pub async fn serve_per_core(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()>,
    limits: ConnLimits,
    tasks: TaskTracker,
) -> std::io::Result<()> {
    let threads = match limits.threads {
        0 => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
        n => n,
    };
    let listener = listener.into_std()?;
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let stop = CancellationToken::new();
    // Dropped unfinished (its runtime ends first, as in tests), this stops the threads too.
    let _stop_on_drop = stop.clone().drop_guard();
    // A thread keeps its runtime until every thread has drained: tasks a runtime started
    // (a connection's driver, the limiter's dispatcher) may still serve the others' requests.
    let release = CancellationToken::new();
    let _release_on_drop = release.clone().drop_guard();
    let (finished_tx, mut finished) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..threads {
        let (listener, app, stopping, released, connections, tasks, finished_tx) = (
            listener.try_clone()?,
            app.clone(),
            stop.clone(),
            release.clone(),
            connections.clone(),
            tasks.clone(),
            finished_tx.clone(),
        );
        std::thread::Builder::new()
            .name(format!("http-{i}"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = finished_tx.send(Err(e));
                        return;
                    }
                };
                rt.block_on(async move {
                    let served = async {
                        let listener = TcpListener::from_std(listener)?;
                        serve(
                            listener,
                            app,
                            stopping.cancelled_owned(),
                            limits,
                            connections,
                        )
                        .await?;
                        // Work spawned by this thread's requests runs on its runtime: it must
                        // finish before the runtime ends.
                        tasks.close();
                        tasks.wait().await;
                        Ok(())
                    };
                    let _ = finished_tx.send(served.await);
                    // Gone before the wait, so a thread that panicked shows as a missing
                    // result rather than a wait that never ends.
                    drop(finished_tx);
                    released.cancelled().await;
                });
            })?;
    }
    drop((listener, finished_tx));
    tokio::pin!(shutdown);
    tokio::select! {
        () = &mut shutdown => {}
        // A thread that ends before shutdown failed (its runtime or socket): stop them all.
        Some(served) = finished.recv() => {
            served?;
            return Err(std::io::Error::other("a serving thread stopped"));
        }
    }
    stop.cancel();
    let mut left = threads;
    while left > 0 {
        let Some(served) = finished.recv().await else {
            // Every sender is gone without a result: a thread panicked.
            return Err(std::io::Error::other("a serving thread panicked"));
        };
        left -= 1;
        served?;
    }
    release.cancel();
    Ok(())
}

/// One thread's accept loop: serves `app` on `listener` until `shutdown` completes, then stops
/// accepting and waits for open connections to finish their in-flight requests.
///
/// # Errors
/// Never in practice: accept errors (e.g. out of file descriptors) are logged and retried.
async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()>,
    limits: ConnLimits,
    connections: Arc<Semaphore>,
) -> std::io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        // A peer that stops answering pings is gone: its connection is closed instead of
        // being held open forever.
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(10))
        .max_concurrent_streams(64);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::warn!(
                max = limits.max_connections,
                "connection cap reached; closing a new connection"
            );
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(
            app.clone()
                .map_request(|req: Request<Incoming>| req.map(Body::new)),
        );
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
