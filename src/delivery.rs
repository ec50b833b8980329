//! Delivering the outbox: workers claim accepted requests in order of acceptance and create
//! their tickets through the same use case as synchronous requests, with every Gorgias call at
//! [`gorgias::Priority::Background`] (only the budget waiting callers leave).
//!
//! An attempt ends in one of three ways: the ticket (`delivered`), a refusal that will not
//! change (`failed`, with the problem a synchronous caller would have got), or a failure that
//! may pass (5xx, 429, timeouts, unreachable, an unknown outcome): the delivery is queued again
//! with jittered exponential backoff, until `DELIVERY_MAX_AGE` after acceptance. Every attempt
//! after the first looks the ticket up by `external_id` before creating it.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::accounts::{AccountError, CreateError};
use crate::domain::{NewTicket, StoredTicket};
use crate::error::ApiError;
use crate::outbox::{Claimed, DeliverySettings, Outbox, Status};
use crate::state::AppState;
use crate::ticketing::{Attempt, Fence, TicketingError};
use crate::webhooks::{Event, Webhooks};
use gorgias::GorgiasError;

/// Starts the workers and the metrics upkeep on the state's task tracker; they stop claiming
/// when `stop` is cancelled and finish the attempt in hand (the shutdown drain waits for it).
pub fn start(state: &AppState, stop: &CancellationToken) {
    let Some(outbox) = state.outbox.clone() else {
        return;
    };
    let turns = std::sync::Arc::new(Turns::default());
    for _ in 0..state.delivery.concurrency.max(1) {
        state.tasks.spawn(work(
            state.clone(),
            outbox.clone(),
            turns.clone(),
            stop.clone(),
        ));
    }
    if let Some(webhooks) = state.webhooks.clone() {
        state.tasks.spawn(notify(
            state.clone(),
            outbox.clone(),
            webhooks,
            stop.clone(),
        ));
    }
    state.tasks.spawn(upkeep(outbox, stop.clone()));
}

/// Sends the events of finished deliveries, in order, each until the receiver takes it or
/// `max_age` has passed since the delivery finished.
async fn notify(state: AppState, outbox: Outbox, webhooks: Webhooks, stop: CancellationToken) {
    while !stop.is_cancelled() {
        match outbox.claim_webhook(Duration::from_secs(60)).await {
            Ok(Some((delivery, attempts, finished_at, attempt_trace))) => {
                let kind = if delivery.status == Status::Delivered {
                    "ticket.delivered"
                } else {
                    "ticket.failed"
                };
                let event = Event {
                    kind,
                    timestamp: crate::outbox::rfc3339(finished_at),
                    data: delivery.document(),
                };
                let body = serde_json::to_vec(&event).unwrap_or_default();
                let outcome = webhooks
                    .send(
                        &format!("msg_{}", delivery.id),
                        body,
                        attempt_trace.as_deref(),
                    )
                    .await;
                let recorded = match outcome {
                    Ok(()) => {
                        crate::metrics::webhook("sent");
                        outbox.webhook_done(&delivery.id, true).await
                    }
                    Err(e) => {
                        let age = Duration::from_millis(
                            crate::outbox::now_ms().saturating_sub(finished_at),
                        );
                        if age >= state.delivery.max_age {
                            tracing::warn!(error = %e, attempts, "webhook given up");
                            crate::metrics::webhook("gave_up");
                            outbox.webhook_done(&delivery.id, false).await
                        } else {
                            tracing::info!(error = %e, attempts, "webhook will be retried");
                            crate::metrics::webhook("retry");
                            let wait = backoff(&state.delivery, attempts, &ApiError::Internal);
                            outbox.webhook_retry(&delivery.id, wait).await
                        }
                    }
                };
                if let Err(e) = recorded {
                    tracing::error!(error = %e, "could not record a webhook's outcome");
                }
            }
            Ok(None) => {
                tokio::select! {
                    () = outbox.finished() => {}
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    () = stop.cancelled() => {}
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read webhooks from the outbox");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = stop.cancelled() => {}
                }
            }
        }
    }
}

/// Whose turn it is, shared by this process's workers: claims go round-robin across
/// connections, and a connection out of budget is skipped until its next call is due, so a
/// worker never waits on one account's budget while another's deliveries are due.
#[derive(Default)]
struct Turns {
    /// The connection claimed last.
    last: std::sync::Mutex<String>,
    /// Connections out of budget, until when.
    busy: std::sync::Mutex<std::collections::HashMap<String, Instant>>,
}

impl Turns {
    fn busy_now(&self) -> Vec<String> {
        let now = Instant::now();
        let mut busy = self
            .busy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        busy.retain(|_, until| *until > now);
        busy.keys().cloned().collect()
    }

    fn last(&self) -> String {
        self.last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn claimed(&self, connection: &str) {
        connection.clone_into(
            &mut self
                .last
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
    }

    fn out_of_budget(&self, connection: &str, for_: Duration) {
        self.busy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(connection.to_owned(), Instant::now() + for_);
    }
}

/// How long a connection whose budget is spent is skipped: until its next call is due (one
/// call's share of its window), or a quarter second without pacing.
fn budget_wait(account: &crate::accounts::Account) -> Option<Duration> {
    let pacer = account.ticketing.client().pacer();
    if !pacer.is_busy() {
        return None;
    }
    Some(pacer.budget().map_or(Duration::from_millis(250), |b| {
        (b.window / b.allowed.max(1)).max(Duration::from_millis(50))
    }))
}

async fn work(
    state: AppState,
    outbox: Outbox,
    turns: std::sync::Arc<Turns>,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        let busy = turns.busy_now();
        match outbox
            .claim_fairly(state.delivery.lease, &busy, &turns.last())
            .await
        {
            Ok(Some(mut claimed)) => {
                turns.claimed(&claimed.connection);
                if let Ok(account) = state.accounts.for_delivery(&claimed.connection).await
                    && let Some(wait) = budget_wait(&account)
                {
                    // Its account has no call to spare now: back in the queue, not an
                    // attempt, and this worker goes to another connection's delivery.
                    turns.out_of_budget(&claimed.connection, wait);
                    if let Err(e) = outbox.release(&claimed, Duration::ZERO).await {
                        tracing::warn!(error = %e, "could not put a delivery back");
                    }
                    continue;
                }
                // The attempt's log lines and its stored problem name the delivery, as a
                // request's name its request id: the status document's `problem.request_id`
                // is this id, and so is the `delivery_id` of the lines an operator greps for.
                let id = claimed.id.clone();
                let span = tracing::info_span!(
                    "delivery",
                    delivery_id = %id,
                    trace_id = tracing::field::Empty,
                    span_id = tracing::field::Empty
                );
                // Each attempt is a trace of its own, linked to the request that accepted it.
                let trace =
                    crate::traces::delivery_span(claimed.attempts, claimed.trace_parent.as_deref());
                crate::traces::stamp(&span, &trace);
                claimed.attempt_trace = crate::traces::traceparent(&trace);
                crate::traces::scope(
                    trace,
                    crate::request_id::REQUEST_ID
                        .scope(id, attempt(&state, &outbox, claimed))
                        .instrument(span),
                )
                .await;
            }
            Ok(None) => {
                // New work wakes us at once; retries come due on the tick.
                tokio::select! {
                    () = outbox.accepted() => {}
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    () = stop.cancelled() => {}
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot claim deliveries from the outbox");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = stop.cancelled() => {}
                }
            }
        }
    }
}

async fn upkeep(outbox: Outbox, stop: CancellationToken) {
    while !stop.is_cancelled() {
        match outbox.upkeep().await {
            Ok(depth) => crate::metrics::outbox_depth(&depth),
            Err(e) => tracing::warn!(error = %e, "outbox upkeep failed"),
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
            () = stop.cancelled() => {}
        }
    }
}

/// One attempt at one delivery, its lease renewed while it runs. A panic in the attempt is
/// caught and recorded as a failure to retry: the worker goes on to the next delivery.
async fn attempt(state: &AppState, outbox: &Outbox, claimed: Claimed) {
    let work = async {
        tokio::select! {
            o = create(state, outbox, &claimed) => o,
            () = keep_leased(outbox, &claimed, state.delivery.lease) => unreachable!("never completes"),
        }
    };
    let outcome = guarded(work).await;
    let age = Duration::from_millis(crate::outbox::now_ms().saturating_sub(claimed.accepted_at));
    let recorded = match outcome {
        Ok(ticket) => {
            crate::metrics::delivery("delivered");
            outbox
                .delivered(&claimed, &ticket, state.webhooks.is_some())
                .await
        }
        Err((err, permanent)) => {
            crate::traces::record_failure(&crate::traces::current(), err.parts().1);
            let problem = serde_json::to_string(&err.problem()).unwrap_or_default();
            if permanent || age >= state.delivery.max_age {
                tracing::warn!(
                    code = err.parts().1,
                    attempts = claimed.attempts,
                    "delivery failed"
                );
                crate::metrics::delivery("failed");
                outbox
                    .failed(&claimed, problem, state.webhooks.is_some())
                    .await
            } else {
                let wait = backoff(&state.delivery, claimed.attempts, &err);
                tracing::info!(
                    code = err.parts().1,
                    attempts = claimed.attempts,
                    retry_in_ms = wait.as_millis() as u64,
                    "delivery will be retried"
                );
                crate::metrics::delivery("retry");
                outbox.retry_after(&claimed, wait, problem).await
            }
        }
    };
    match recorded {
        Ok(true) => {}
        // Another worker took the delivery over after our lease lapsed: its record stands.
        Ok(false) => tracing::warn!("a delivery's claim was lost; its outcome was not recorded"),
        // The lease lapses and the delivery is claimed again (after the settle window); its
        // ticket is found by external_id, so nothing is created twice.
        Err(e) => tracing::error!(error = %e, "could not record a delivery's outcome"),
    }
}

/// Runs an attempt's work; a panic in it becomes a failure to retry (500 `internal`, not
/// final), so the worker records it and goes on to the next delivery.
async fn guarded<T>(
    work: impl Future<Output = Result<T, (ApiError, bool)>>,
) -> Result<T, (ApiError, bool)> {
    use futures_util::FutureExt as _;
    match std::panic::AssertUnwindSafe(work).catch_unwind().await {
        Ok(outcome) => outcome,
        Err(_) => {
            tracing::error!("a delivery attempt panicked");
            crate::metrics::delivery("panicked");
            Err((ApiError::Internal, false))
        }
    }
}

/// A delivery's fence: its create is sent only while its claim is still ours.
struct DeliveryFence<'a> {
    outbox: &'a Outbox,
    claimed: &'a Claimed,
}

#[async_trait::async_trait]
impl Fence for DeliveryFence<'_> {
    async fn may_create(&self) -> bool {
        match self.outbox.holds(self.claimed).await {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(error = %e, "could not fence a delivery's create");
                false
            }
        }
    }
}

/// Creates the ticket: the output model, or the error and whether it is final.
async fn create(
    state: &AppState,
    outbox: &Outbox,
    claimed: &Claimed,
) -> Result<crate::output::Ticket, (ApiError, bool)> {
    // The account it was accepted for: a connection deleted since fails it for good.
    let account = state
        .accounts
        .for_delivery(&claimed.connection)
        .await
        .map_err(|e| match e {
            AccountError::Unknown => (ApiError::ConnectionDeleted, true),
            e => (ApiError::Account(e), false),
        })?;
    // The ticket as validated at acceptance. Rows accepted before the stored form existed
    // hold the caller's body, validated again here.
    let ticket = match StoredTicket::decode(&claimed.request) {
        Some(ticket) => ticket,
        None => {
            let parsed = serde_json::from_slice::<serde_json::Value>(&claimed.request)
                .map_err(|e| (ApiError::MalformedJson(e.to_string()), true))?;
            NewTicket::parse_with(&parsed, &account.rules)
                .map_err(|e| (ApiError::Invalid(e), true))?
        }
    };
    let fence = DeliveryFence { outbox, claimed };
    let attempt = Attempt {
        external_id: &claimed.external_id,
        deadline: Instant::now() + state.request_deadline,
        // Every attempt after the first may follow a create that landed (its settle window
        // has passed: the attempt was scheduled after it), unless the one before ended in a
        // refusal of the credentials: that attempt sent nothing, or looked first (finding
        // nothing) and was refused its create, so there is nothing to look for.
        reconcile_first: claimed.attempts > 1 && !refused_before(claimed),
        settle_remaining: Duration::ZERO,
        wait_in_attempt: false,
        fence: &fence,
    };
    let created =
        gorgias::in_background(state.accounts.create_ticket(&account, &ticket, &attempt)).await;
    match created {
        Ok(t) => Ok(t),
        // Refused credentials wait for new ones (a `PUT`, a refresh), until DELIVERY_MAX_AGE:
        // the backlog of a key rotated a minute early is delivered, not failed.
        Err(CreateError::NeedsReconnect(id)) => Err((ApiError::NeedsReconnect(id), false)),
        Err(CreateError::Ticketing(e)) if crate::accounts::is_refusal(&e) => {
            Err((ApiError::Upstream(e), false))
        }
        Err(CreateError::Ticketing(e)) => {
            let permanent = matches!(
                e,
                TicketingError::Gorgias(GorgiasError::Rejected { status, .. }) if status != 409
            );
            Err((ApiError::Upstream(e), permanent))
        }
    }
}

/// Whether the attempt before this one ended with the credentials refused (401/403, or the
/// connection marked for reconnecting), which leaves no create behind.
fn refused_before(claimed: &Claimed) -> bool {
    let code = claimed
        .last_problem
        .as_deref()
        .and_then(|p| serde_json::from_str::<serde_json::Value>(p).ok())
        .and_then(|p| p["code"].as_str().map(str::to_owned));
    matches!(
        code.as_deref(),
        Some("upstream_auth" | "connection_needs_reconnect")
    )
}

async fn keep_leased(outbox: &Outbox, claimed: &Claimed, lease: Duration) {
    let mut tick = tokio::time::interval(lease / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        match outbox.renew(claimed, lease).await {
            Ok(true) => {}
            // The next create is refused by the fence; the outcome's record changes nothing.
            Ok(false) => tracing::warn!("a delivery's claim was taken over while it ran"),
            Err(e) => tracing::warn!(error = %e, "could not renew a delivery's lease"),
        }
    }
}

/// Jittered exponential backoff, or Gorgias's `Retry-After` (or the settle window of a create
/// of unknown outcome) when that is longer.
fn backoff(settings: &DeliverySettings, attempts: u32, err: &ApiError) -> Duration {
    let exp = settings
        .base_backoff
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(20))
        .min(settings.max_backoff);
    let jittered = exp.mul_f64(0.5 + fastrand::f64() / 2.0);
    let asked = match err {
        ApiError::Upstream(TicketingError::Gorgias(
            GorgiasError::RateLimited { retry_after, .. }
            | GorgiasError::DeadlineExhausted { retry_after, .. },
        )) => retry_after.unwrap_or_default(),
        ApiError::Upstream(TicketingError::OutcomeUnknown { retry_after, .. }) => *retry_after,
        _ => Duration::ZERO,
    };
    jittered.max(asked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_attempt_is_a_failure_to_retry_not_the_workers_end() {
        let outcome = guarded(async {
            if std::hint::black_box(true) {
                panic!("a bug in one delivery");
            }
            Ok::<u32, (ApiError, bool)>(1)
        })
        .await;
        assert!(matches!(outcome, Err((ApiError::Internal, false))));
        // The worker is still here to run the next one.
        assert_eq!(
            guarded(async { Ok::<u32, (ApiError, bool)>(2) }).await.ok(),
            Some(2)
        );
    }

    #[test]
    fn backoff_grows_is_jittered_and_capped() {
        let s = DeliverySettings::default();
        let err = ApiError::Internal;
        for attempts in 1..40 {
            let d = backoff(&s, attempts, &err);
            let full = s
                .base_backoff
                .saturating_mul(1 << (attempts - 1).min(20))
                .min(s.max_backoff);
            assert!(d >= full / 2 && d <= full, "{attempts}: {d:?} vs {full:?}");
        }
    }
}
