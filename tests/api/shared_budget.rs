//! The account's budget in Redis, as every replica sees it: a 429 pauses all of them, usage
//! feedback is charged once per window however many answers report it, and the replicas that
//! spend from it are counted (the share each falls back to when Redis goes away).

use std::time::Duration;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use gorgias::{BoxFuture, Budget, BudgetError, Grant, Pacer, Priority, SharedBudget};
use gorgias_proxy::coordination::{SharedLimiter, connect};

use crate::helpers::{redis_url, unique};

async fn limiter(account: &str, allowed: u32, window: Duration) -> Option<SharedLimiter> {
    let conn = connect(&redis_url()?).await.unwrap();
    Some(SharedLimiter::new(
        conn,
        account,
        Budget { allowed, window },
    ))
}

#[tokio::test]
async fn a_429_seen_by_one_replica_pauses_every_replica() {
    let account = unique("acct-pause");
    let Some(a) = limiter(&account, 100, Duration::from_secs(10)).await else {
        return;
    };
    let b = limiter(&account, 100, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(SharedBudget::try_take(&b).await.unwrap().wait, None);
    SharedBudget::pause(&a, Duration::from_secs(3))
        .await
        .unwrap();
    let wait = SharedBudget::try_take(&b).await.unwrap().wait.unwrap();
    assert!(
        wait > Duration::from_millis(2500) && wait <= Duration::from_secs(3),
        "{wait:?}"
    );
    // A shorter pause does not cut a longer one short.
    SharedBudget::pause(&b, Duration::from_millis(10))
        .await
        .unwrap();
    assert!(SharedBudget::try_take(&a).await.unwrap().wait.unwrap() > Duration::from_secs(2));
}

#[tokio::test]
async fn usage_feedback_is_charged_once_per_window_across_replicas() {
    let account = unique("acct-feedback");
    // 10 calls per 10 s: one call is 1 s of budget.
    let Some(a) = limiter(&account, 10, Duration::from_secs(10)).await else {
        return;
    };
    let b = limiter(&account, 10, Duration::from_secs(10))
        .await
        .unwrap();
    // Three answers on two replicas report the same excess of 4 calls.
    for l in [&a, &b, &a] {
        SharedBudget::observe_excess(l, 4, Duration::from_secs(10))
            .await
            .unwrap();
    }
    // 10 per window less the 4 charged once: 6 calls are left now, not none.
    let mut taken = 0;
    while SharedBudget::try_take(&a).await.unwrap().wait.is_none() {
        taken += 1;
        assert!(taken <= 10, "the excess was not charged at all");
    }
    assert_eq!(taken, 6, "charged once, not three times");
}

#[tokio::test]
async fn the_replicas_spending_from_the_budget_are_counted() {
    let account = unique("acct-count");
    let Some(a) = limiter(&account, 100, Duration::from_secs(10)).await else {
        return;
    };
    let b = limiter(&account, 100, Duration::from_secs(10))
        .await
        .unwrap();
    let c = limiter(&account, 100, Duration::from_secs(10))
        .await
        .unwrap();
    SharedBudget::try_take(&a).await.unwrap();
    SharedBudget::try_take(&b).await.unwrap();
    assert_eq!(SharedBudget::try_take(&c).await.unwrap().processes, 3);
}

/// The real shared budget until `gone` is set, then a Redis that cannot be reached.
#[derive(Debug)]
struct Vanishing {
    real: SharedLimiter,
    gone: Arc<AtomicBool>,
}

impl SharedBudget for Vanishing {
    fn try_take(&self) -> BoxFuture<'_, Result<Grant, BudgetError>> {
        Box::pin(async move {
            if self.gone.load(Ordering::SeqCst) {
                return Err("connection refused".into());
            }
            SharedBudget::try_take(&self.real).await
        })
    }
    fn observe_excess(
        &self,
        excess: u32,
        window: Duration,
    ) -> BoxFuture<'_, Result<(), BudgetError>> {
        SharedBudget::observe_excess(&self.real, excess, window)
    }
    fn pause(&self, pause: Duration) -> BoxFuture<'_, Result<(), BudgetError>> {
        SharedBudget::pause(&self.real, pause)
    }
}

#[tokio::test]
async fn with_redis_gone_a_replica_paces_at_the_share_it_last_measured() {
    let account = unique("acct-gone");
    let Some(real) = limiter(&account, 36, Duration::from_secs(20)).await else {
        return;
    };
    // Three other replicas spend from the account: four in all.
    for _ in 0..3 {
        let other = limiter(&account, 36, Duration::from_secs(20))
            .await
            .unwrap();
        SharedBudget::try_take(&other).await.unwrap();
    }
    let gone = Arc::new(AtomicBool::new(false));
    // GORGIAS_REPLICAS left at 1: the share comes from what Redis showed.
    let pacer = Pacer::new(Some((40, Duration::from_secs(20)))).shared(Arc::new(Vanishing {
        real,
        gone: Arc::clone(&gone),
    }));
    let soon = || tokio::time::Instant::now() + Duration::from_secs(1);
    pacer.until_ready("t", Priority::New, soon()).await.unwrap();
    gone.store(true, Ordering::SeqCst);
    // 36 calls per 20 s shared by 4: 9 at once, then one per 2.2 s. The whole budget would
    // have allowed 36 at once.
    for i in 0..9 {
        assert!(
            pacer.until_ready("t", Priority::New, soon()).await.is_ok(),
            "call {i} of our share"
        );
    }
    assert!(
        pacer.until_ready("t", Priority::New, soon()).await.is_err(),
        "beyond a quarter of the budget, a replica without Redis waits"
    );
}
