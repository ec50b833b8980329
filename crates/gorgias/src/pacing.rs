//! Client-side pacing: one limiter per process, shared by every request, so we spend the
//! account's call budget evenly instead of bursting into Gorgias's 429s.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::time::Instant;

use crate::error::GorgiasError;

/// A boxed future, so the shared backend can be a trait object.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Why the shared budget could not be consulted; the pacer then falls back to its own.
pub type BudgetError = Box<dyn std::error::Error + Send + Sync>;

/// An account budget shared by several processes (replicas of a service calling one Gorgias
/// account), e.g. a GCRA limiter in Redis. The client knows only this trait, so it does not
/// depend on any store; the service brings the implementation.
pub trait SharedBudget: Send + Sync + std::fmt::Debug {
    /// Takes one call: `Ok(None)` when allowed now, `Ok(Some(wait))` when the next free slot is
    /// that far away (nothing is taken then).
    fn try_take(&self) -> BoxFuture<'_, Result<Option<Duration>, BudgetError>>;
    /// Charges `calls` that Gorgias counted beyond ours (other integrations on the account).
    fn charge(&self, calls: u32) -> BoxFuture<'_, Result<(), BudgetError>>;
}

/// The budget a shared backend should enforce: `allowed` calls (the account's limit less our
/// headroom) per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Calls per window we allow ourselves.
    pub allowed: u32,
    /// The window.
    pub window: Duration,
}

/// Share of the account's budget we allow ourselves: Gorgias's bucket and ours are not in step,
/// and other integrations on the same account spend from it too.
const HEADROOM: f64 = 0.9;

/// A handle to the process-wide limiter (cheap to clone); `None` inside means pacing is off.
#[derive(Clone, Default)]
pub struct Pacer {
    inner: Option<Arc<Inner>>,
    /// The budget shared with other processes; the local limiter is the fallback while it is
    /// unreachable.
    shared: Option<Arc<dyn SharedBudget>>,
}

struct Inner {
    limiter: DefaultDirectRateLimiter,
    limit: u32,
    allowed: u32,
    window: Duration,
}

impl std::fmt::Debug for Pacer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            Some(i) if self.shared.is_some() => write!(f, "Pacer({} per window, shared)", i.limit),
            Some(i) => write!(f, "Pacer({} per window)", i.limit),
            None => f.write_str("Pacer(off)"),
        }
    }
}

/// Takes a cell from the local limiter, or says how long until one is free.
fn local_wait(inner: &Inner) -> Option<Duration> {
    inner
        .limiter
        .check()
        .err()
        .map(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
}

impl Pacer {
    /// A limiter allowing `calls` per `window` (less headroom), or none.
    pub fn new(rate: Option<(u32, Duration)>) -> Self {
        let Some((calls, window)) = rate else {
            return Self::default();
        };
        let allowed = ((f64::from(calls) * HEADROOM).floor() as u32).max(1);
        let period = window / allowed;
        let Some(quota) = Quota::with_period(period.max(Duration::from_micros(1))) else {
            return Self::default();
        };
        let burst = NonZeroU32::new(allowed).unwrap_or(NonZeroU32::MIN);
        Self {
            inner: Some(Arc::new(Inner {
                limiter: RateLimiter::direct(quota.allow_burst(burst)),
                limit: calls,
                allowed,
                window,
            })),
            shared: None,
        }
    }

    /// The budget a shared backend should enforce, or `None` when pacing is off.
    pub fn budget(&self) -> Option<Budget> {
        self.inner.as_ref().map(|i| Budget {
            allowed: i.allowed,
            window: i.window,
        })
    }

    /// The same budget, shared with other processes through `backend`. Pacing off stays off.
    pub fn shared(self, backend: Arc<dyn SharedBudget>) -> Self {
        let shared = self.inner.is_some().then_some(backend);
        Self { shared, ..self }
    }

    /// Waits for a slot, unless the wait would pass `deadline`.
    ///
    /// # Errors
    /// `DeadlineExhausted` with the wait as `retry_after` when no slot comes in time.
    pub async fn until_ready(
        &self,
        endpoint: &'static str,
        deadline: Instant,
    ) -> Result<(), GorgiasError> {
        let Some(inner) = &self.inner else {
            return Ok(());
        };
        let mut waited = false;
        loop {
            // The shared (Redis) budget when there is one and it answers, else ours.
            let wait = match &self.shared {
                Some(shared) => match shared.try_take().await {
                    Ok(wait) => wait,
                    Err(e) => {
                        tracing::warn!(error = %e, "shared rate limiter unavailable; pacing locally");
                        local_wait(inner)
                    }
                },
                None => local_wait(inner),
            };
            let Some(wait) = wait else {
                if waited {
                    crate::metrics::limiter_wait(endpoint);
                }
                return Ok(());
            };
            if Instant::now() + wait >= deadline {
                return Err(GorgiasError::DeadlineExhausted {
                    endpoint,
                    retry_after: Some(wait.max(Duration::from_secs(1))),
                });
            }
            waited = true;
            tokio::time::sleep(wait).await;
        }
    }

    /// Reads `X-Gorgias-Account-Api-Call-Limit: used/limit`. When Gorgias counts the account
    /// nearer its limit than our headroom allows (other integrations spend from it too), we
    /// take the difference out of our own bucket so the next calls slow down.
    pub async fn observe_usage(&self, header: &str) {
        let Some(inner) = &self.inner else { return };
        let Some((used, limit)) = header.split_once('/') else {
            return;
        };
        let (Ok(used), Ok(limit)) = (used.trim().parse::<u32>(), limit.trim().parse::<u32>())
        else {
            return;
        };
        let comfortable = (f64::from(limit) * HEADROOM) as u32;
        if let Some(excess) = used.checked_sub(comfortable).and_then(NonZeroU32::new) {
            if let Some(shared) = &self.shared
                && shared.charge(excess.get()).await.is_ok()
            {
                return;
            }
            // Best effort: when our bucket cannot give that many cells, it is already empty.
            let _ = inner.limiter.check_n(excess);
        }
    }
}
