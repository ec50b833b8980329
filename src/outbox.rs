//! The durable outbox behind `Prefer: respond-async`: an accepted request is a row, written
//! before the caller is answered 202, and delivered to Gorgias by [`crate::delivery`] until it
//! is `delivered` or `failed`. The row is also the status resource (`GET /tickets/{id}`).
//!
//! Storage is [`crate::store`]: an embedded SQLite file by default (one process), PostgreSQL
//! for several replicas. A row is durable once `accept` returned (fsynced).
//!
//! Exactly once: each delivery has a stable ticket `external_id` (derived from the caller,
//! key and body when keyed, `async-{id}` otherwise); an attempt after the first looks the
//! ticket up by it before creating. A delivery being worked on holds a lease (`lease_until`,
//! on the database's clock) and an `owner` token: every write about the attempt must match
//! the token, and a crashed worker's delivery is taken over only after its lease and the
//! settle window have both passed.
//!
//! Why not a job-queue crate (apalis): the status resource, caller scoping, idempotency keys
//! and acceptance order are this table's columns, and claiming is one statement; a job
//! framework would add its own tables beside ours and a second notion of state.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

use crate::store::{Row, Store};

pub use crate::store::StoreError as OutboxError;
pub use crate::store::StoreTarget as OutboxTarget;

/// How deliveries run.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// After this long since acceptance, a delivery still failing transiently is `failed`.
    pub max_age: Duration,
    /// Deliveries attempted at once (each is mostly waiting for the budget).
    pub concurrency: usize,
    /// How long a claimed delivery is ours without renewal; a crashed worker's delivery is
    /// claimed again after it (and after the settle window, see [`Outbox::claim`]).
    pub lease: Duration,
    /// The first retry's delay; doubled per attempt, capped at `max_backoff`.
    pub base_backoff: Duration,
    /// The longest delay between attempts.
    pub max_backoff: Duration,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(24 * 3600),
            concurrency: 4,
            lease: Duration::from_secs(60),
            base_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// A delivery's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Waiting for its (next) attempt.
    Queued,
    /// An attempt is running.
    Delivering,
    /// The ticket exists; `ticket` holds it.
    Delivered,
    /// Gorgias refused it, or it could not be delivered within `DELIVERY_MAX_AGE`.
    Failed,
}

impl Status {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Delivering => "delivering",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "delivering" => Self::Delivering,
            "delivered" => Self::Delivered,
            "failed" => Self::Failed,
            _ => Self::Queued,
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Queued => 0,
            Self::Delivering => 1,
            Self::Delivered => 2,
            Self::Failed => 3,
        }
    }
}

/// A delivery as its caller sees it.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Opaque id.
    pub id: String,
    /// Where it stands.
    pub status: Status,
    /// Attempts started so far.
    pub attempts: u32,
    /// When it was accepted (Unix ms).
    pub accepted_at: u64,
    /// When the ticket was recorded (Unix ms).
    pub delivered_at: Option<u64>,
    /// When the next attempt is due (Unix ms), while queued.
    pub next_attempt_at: Option<u64>,
    /// The output model of `POST /ticket`, once delivered (JSON text).
    pub ticket: Option<String>,
    /// The problem a synchronous request would have received (JSON text): the last one while
    /// retrying, the final one when failed.
    pub problem: Option<String>,
    /// The connection it was accepted for (empty: the default account).
    pub connection: String,
}

/// `GET /tickets/{id}`: a delivery's status.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct DeliveryStatus {
    /// Opaque id of the delivery.
    pub id: String,
    /// `queued`, `delivering`, `delivered` or `failed`.
    pub status: Status,
    /// Attempts started so far.
    pub attempts: u32,
    /// The connection it was accepted for (`Connection-Id`); absent for the default account.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_id: Option<String>,
    /// When it was accepted (RFC 3339).
    pub accepted_at: String,
    /// When the ticket was recorded (RFC 3339), once delivered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<String>,
    /// When the next attempt is due (RFC 3339), while queued.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
    /// The ticket, exactly as `POST /ticket` answers it, once delivered.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::output::Ticket>)]
    pub ticket: Option<serde_json::Value>,
    /// The problem a synchronous request would have received: the last one while retrying,
    /// the final one when failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::error::Problem>)]
    pub problem: Option<serde_json::Value>,
}

/// A Unix-ms time in RFC 3339, as the status resource writes it.
pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

impl Delivery {
    /// The status resource's body (`GET /tickets/{id}`, and the `data` of webhook events).
    pub fn document(&self) -> DeliveryStatus {
        DeliveryStatus {
            id: self.id.clone(),
            status: self.status,
            attempts: self.attempts,
            connection_id: (!self.connection.is_empty()).then(|| self.connection.clone()),
            accepted_at: rfc3339(self.accepted_at),
            delivered_at: self.delivered_at.map(rfc3339),
            next_attempt_at: self.next_attempt_at.map(rfc3339),
            ticket: self
                .ticket
                .as_deref()
                .and_then(|t| serde_json::from_str(t).ok()),
            problem: self
                .problem
                .as_deref()
                .and_then(|p| serde_json::from_str(p).ok()),
        }
    }
}

/// What `accept` found.
#[derive(Debug, Clone)]
pub enum Accepted {
    /// A new delivery.
    New(Delivery),
    /// The same caller, key and body were accepted before: that delivery.
    Existing(Delivery),
    /// The caller's key was used with another body.
    Mismatch,
}

/// A delivery claimed for an attempt.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// Its id.
    pub id: String,
    /// The request as accepted (the validated, normalised ticket).
    pub request: Vec<u8>,
    /// The ticket's `external_id`.
    pub external_id: String,
    /// Attempts including this one.
    pub attempts: u32,
    /// When it was accepted (Unix ms).
    pub accepted_at: u64,
    /// The connection it was accepted for (empty: the default account).
    pub connection: String,
    /// The problem the attempt before this one ended with (JSON), if any.
    pub last_problem: Option<String>,
    /// This claim's token: every write about the attempt must still match it, so a worker
    /// whose lease lapsed (and whose delivery another worker took over) changes nothing.
    pub owner: String,
    /// The `traceparent` of the span that accepted it (traces on).
    pub trace_parent: Option<String>,
    /// The `traceparent` of this attempt's span (traces on), stored when the attempt finishes
    /// the delivery: its webhook carries it.
    pub attempt_trace: Option<String>,
}

/// Counts for metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct Depth {
    /// Rows per status, in [`Status`] order.
    pub by_status: [u64; 4],
    /// Age of the oldest queued or delivering row.
    pub oldest_pending: Duration,
}

/// The outbox; cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    /// Woken when a delivery is accepted (the worker need not poll for new work).
    accepted: Notify,
    /// Woken when a delivery finishes (requests waiting with `wait=N` look again).
    finished: Notify,
    /// How long a create of unknown outcome needs to show in Gorgias's lists: a lapsed lease
    /// is taken over only this long after it lapsed.
    settle: Duration,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Outbox({:?})", self.inner.store)
    }
}

/// How long finished deliveries stay readable (and their keys replayable).
pub const RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub(crate) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The busy connections as one parameter, `a,b`: the statement looks for `,{connection},` in
/// `,{list},`, so the default account (an empty id) is found when the list has an empty
/// entry, and an empty list must be something no entry matches.
fn busy_list(busy: &[String]) -> String {
    if busy.is_empty() {
        // No entry at all: an empty list must not match the default account's `,,`.
        return "\u{1}".to_owned();
    }
    busy.join(",")
}

/// A row of the delivery columns (from `offset`, as [`with_columns`] lists them): the delivery and its fingerprint.
fn delivery_row(row: &Row, offset: usize) -> (Delivery, String) {
    let status = Status::parse(&row.text(offset + 1));
    (
        Delivery {
            id: row.text(offset),
            status,
            attempts: u32::try_from(row.uint(offset + 2)).unwrap_or(u32::MAX),
            accepted_at: row.uint(offset + 3),
            delivered_at: row
                .opt_int(offset + 4)
                .map(|v| u64::try_from(v).unwrap_or(0)),
            next_attempt_at: (status == Status::Queued).then(|| row.uint(offset + 5)),
            ticket: row.opt_text(offset + 6),
            problem: row.opt_text(offset + 7),
            connection: row.text(offset + 9),
        },
        row.text(offset + 8),
    )
}

/// A statement with the delivery columns spliced in: statements are `&'static str` (the
/// backends cache them), so the one column list is joined in at compile time.
macro_rules! with_columns {
    ($before:literal, $after:literal) => {
        concat!(
            $before,
            "id, status, attempts, accepted_at, delivered_at, next_attempt_at, ticket, problem, fingerprint, connection",
            $after
        )
    };
}

impl Outbox {
    /// The outbox over `store`; `settle` is the window a create of unknown outcome is given
    /// to show in Gorgias's lists before a taken-over delivery looks for it.
    pub fn new(store: Store, settle: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                accepted: Notify::new(),
                finished: Notify::new(),
                settle,
            }),
        }
    }

    fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Writes a delivery, durably, or finds the one this caller's key already names. A keyed
    /// delivery's ticket `external_id` is derived from the caller, the key and the body (as a
    /// synchronous request's is), so a keyed retry after a lost row still finds the ticket.
    /// `trace_parent` is the accepting span's, for the attempts' links.
    ///
    /// # Errors
    /// When the database cannot be written.
    pub async fn accept(
        &self,
        caller: &str,
        connection: &str,
        key: Option<&str>,
        fingerprint: &str,
        request: &[u8],
        trace_parent: Option<&str>,
    ) -> Result<Accepted, OutboxError> {
        let key = key.map(|k| format!("{caller}:{k}"));
        let id = uuid::Uuid::new_v4().simple().to_string();
        let external_id = match &key {
            Some(key) => crate::idempotency::external_id(key, fingerprint),
            None => format!("async-{id}"),
        };
        let inserted = self
            .store()
            .query_opt(
                with_columns!(
                    "INSERT INTO deliveries (id, caller, idem_key, fingerprint, request, \
                     external_id, status, accepted_at, next_attempt_at, connection, \
                     trace_parent) \
                     VALUES ($1, $2, $3, $4, $5, $6, 'queued', {now}, {now}, $7, $8) \
                     ON CONFLICT (idem_key) WHERE idem_key IS NOT NULL DO NOTHING RETURNING ",
                    ""
                ),
                vec![
                    id.into(),
                    caller.into(),
                    key.clone().into(),
                    fingerprint.into(),
                    request.to_vec().into(),
                    external_id.into(),
                    connection.into(),
                    trace_parent.map(str::to_owned).into(),
                ],
            )
            .await?;
        if let Some(row) = inserted {
            self.inner.accepted.notify_one();
            return Ok(Accepted::New(delivery_row(&row, 0).0));
        }
        let found = self
            .store()
            .query_opt(
                with_columns!("SELECT ", " FROM deliveries WHERE idem_key = $1"),
                vec![key.into()],
            )
            .await?;
        Ok(match found.map(|r| delivery_row(&r, 0)) {
            Some((d, f)) if f == fingerprint => Accepted::Existing(d),
            Some(_) => Accepted::Mismatch,
            // Deleted between the two statements (past its retention): a race lost, not a
            // conflict; the caller's retry is accepted anew.
            None => return Err(OutboxError::Task),
        })
    }

    /// The caller's delivery `id` (another caller's is not found).
    ///
    /// # Errors
    /// When the database cannot be read.
    pub async fn get(&self, caller: &str, id: &str) -> Result<Option<Delivery>, OutboxError> {
        Ok(self
            .store()
            .query_opt(
                with_columns!("SELECT ", " FROM deliveries WHERE id = $1 AND caller = $2"),
                vec![id.into(), caller.into()],
            )
            .await?
            .map(|r| delivery_row(&r, 0).0))
    }

    /// Claims the earliest accepted delivery that is due, for `lease`. A delivery whose
    /// worker's lease lapsed is taken over only once the settle window has passed since: the
    /// dead worker may have sent a create that Gorgias has not shown yet.
    ///
    /// # Errors
    /// When the database cannot be written.
    pub async fn claim(&self, lease: Duration) -> Result<Option<Claimed>, OutboxError> {
        self.claim_fairly(lease, &[], "").await
    }

    /// Claims the next due delivery round-robin across connections: the earliest of the first
    /// connection after `after` (in id order, wrapping around) that has one due, skipping the
    /// connections in `busy` (waiting for their budget). One backlog never holds back
    /// another connection's deliveries.
    ///
    /// # Errors
    /// When the database cannot be written.
    pub async fn claim_fairly(
        &self,
        lease: Duration,
        busy: &[String],
        after: &str,
    ) -> Result<Option<Claimed>, OutboxError> {
        let owner = uuid::Uuid::new_v4().simple().to_string();
        let row = self
            .store()
            .query_opt(
                "UPDATE deliveries SET status = 'delivering', attempts = attempts + 1, \
                 lease_until = {now} + $1, owner = $3 \
                 WHERE seq = (SELECT seq FROM deliveries \
                              WHERE ((status = 'queued' AND next_attempt_at <= {now}) \
                                 OR (status = 'delivering' AND lease_until + $2 < {now})) \
                                AND replace(',' || CAST($4 AS TEXT) || ',', \
                                            ',' || connection || ',', '') \
                                    = ',' || CAST($4 AS TEXT) || ',' \
                              ORDER BY (connection <= CAST($5 AS TEXT)), connection, seq \
                              LIMIT 1 {skip_locked}) \
                 RETURNING id, request, external_id, attempts, accepted_at, connection, problem, \
                           trace_parent",
                vec![
                    ms(lease).into(),
                    ms(self.inner.settle).into(),
                    owner.clone().into(),
                    // Ids cannot hold a ',': the list is unambiguous. An empty entry is the
                    // default account.
                    busy_list(busy).into(),
                    after.into(),
                ],
            )
            .await?;
        Ok(row.map(|r| Claimed {
            id: r.text(0),
            request: r.blob(1),
            external_id: r.text(2),
            attempts: u32::try_from(r.uint(3)).unwrap_or(u32::MAX),
            accepted_at: r.uint(4),
            connection: r.text(5),
            last_problem: r.opt_text(6),
            owner,
            trace_parent: r.opt_text(7),
            attempt_trace: None,
        }))
    }

    /// Puts a claimed delivery back, not counting it as an attempt, due again after `after`:
    /// its connection had no budget, and a worker must not wait for it. `Ok(false)`: the claim
    /// was lost.
    ///
    /// # Errors
    /// When the database cannot be written.
    pub async fn release(&self, claimed: &Claimed, after: Duration) -> Result<bool, OutboxError> {
        Ok(self
            .store()
            .execute(
                "UPDATE deliveries SET status = 'queued', attempts = attempts - 1, \
                 lease_until = NULL, owner = NULL, next_attempt_at = {now} + $3 \
                 WHERE id = $1 AND owner = $2 AND status = 'delivering'",
                vec![
                    claimed.id.clone().into(),
                    claimed.owner.clone().into(),
                    ms(after).into(),
                ],
            )
            .await?
            == 1)
    }

    /// Extends the lease of a delivery being worked on. `Ok(false)`: the claim is no longer
    /// ours (it lapsed and another worker took the delivery over).
    ///
    /// # Errors
    /// When the database cannot be written.
    pub async fn renew(&self, claimed: &Claimed, lease: Duration) -> Result<bool, OutboxError> {
        Ok(self
            .store()
            .execute(
                "UPDATE deliveries SET lease_until = {now} + $3 \
                 WHERE id = $1 AND owner = $2 AND status = 'delivering'",
                vec![
                    claimed.id.clone().into(),
                    claimed.owner.clone().into(),
                    ms(lease).into(),
                ],
            )
            .await?
            == 1)
    }

    /// Whether the claim is still ours and its lease has not run out: checked right before a
    /// create is sent, so a worker that lost its lease never creates.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub async fn holds(&self, claimed: &Claimed) -> Result<bool, OutboxError> {
        Ok(self
            .store()
            .query_opt(
                "SELECT 1 FROM deliveries WHERE id = $1 AND owner = $2 \
                 AND status = 'delivering' AND lease_until > {now}",
                vec![claimed.id.clone().into(), claimed.owner.clone().into()],
            )
            .await?
            .is_some())
    }

    /// Records the ticket, when the claim is still ours. The request (customer PII) is
    /// dropped: it is no longer needed. `Ok(false)`: the claim was lost, nothing changed.
    ///
    /// # Errors
    /// When the database cannot be written.
    pub async fn delivered(
        &self,
        claimed: &Claimed,
        ticket: &crate::output::Ticket,
        webhook: bool,
    ) -> Result<bool, OutboxError> {
        // Our own plain struct: encoding it cannot fail; were it to, the row says so.
        let ticket = serde_json::to_string(ticket).unwrap_or_else(|_| "null".into());
        let changed = self
            .store()
            .execute(
                "UPDATE deliveries SET status = 'delivered', delivered_at = {now}, \
                 finished_at = {now}, ticket = $3, problem = NULL, request = NULL, \
                 lease_until = NULL, owner = NULL, webhook = $4, webhook_next_at = {now}, \
                 attempt_trace = $5 \
                 WHERE id = $1 AND owner = $2 AND status = 'delivering'",
                vec![
                    claimed.id.clone().into(),
                    claimed.owner.clone().into(),
                    ticket.into(),
                    webhook.then_some("pending").into(),
                    claimed.attempt_trace.clone().into(),
                ],
            )
            .await?;
        self.inner.finished.notify_waiters();
        Ok(changed == 1)
    }

    /// Records a final failure with its problem, when the claim is still ours.
    ///
    /// # Errors
    /// When the database cannot be written.
    pub async fn failed(
        &self,
        claimed: &Claimed,
        problem: String,
        webhook: bool,
    ) -> Result<bool, OutboxError> {
        let changed = self
            .store()
            .execute(
                "UPDATE deliveries SET status = 'failed', problem = $3, request = NULL, \
                 lease_until = NULL, owner = NULL, finished_at = {now}, webhook = $4, \
                 webhook_next_at = {now}, attempt_trace = $5 \
                 WHERE id = $1 AND owner = $2 AND status = 'delivering'",
                vec![
                    claimed.id.clone().into(),
                    claimed.owner.clone().into(),
                    problem.into(),
                    webhook.then_some("pending").into(),
                    claimed.attempt_trace.clone().into(),
                ],
            )
            .await?;
        self.inner.finished.notify_waiters();
        Ok(changed == 1)
    }

    /// Puts a delivery back in the queue until `after` has passed, keeping the last problem,
    /// when the claim is still ours.
    ///
    /// # Errors
    /// When the database cannot be written.
    pub async fn retry_after(
        &self,
        claimed: &Claimed,
        after: Duration,
        problem: String,
    ) -> Result<bool, OutboxError> {
        Ok(self
            .store()
            .execute(
                "UPDATE deliveries SET status = 'queued', next_attempt_at = {now} + $3, \
                 problem = $4, lease_until = NULL, owner = NULL \
                 WHERE id = $1 AND owner = $2 AND status = 'delivering'",
                vec![
                    claimed.id.clone().into(),
                    claimed.owner.clone().into(),
                    ms(after).into(),
                    problem.into(),
                ],
            )
            .await?
            == 1)
    }

    /// Claims the earliest finished delivery whose webhook is due, for `lease` (a crashed
    /// sender's event is sent again after it: receivers dedupe by `webhook-id`). Returns the
    /// delivery, its webhook attempts including this one, when it finished (Unix ms), and the
    /// `traceparent` of the attempt that finished it.
    ///
    /// # Errors
    /// When the database cannot be written.
    pub async fn claim_webhook(
        &self,
        lease: Duration,
    ) -> Result<Option<(Delivery, u32, u64, Option<String>)>, OutboxError> {
        let row = self
            .store()
            .query_opt(
                with_columns!(
                    "UPDATE deliveries SET webhook_attempts = webhook_attempts + 1, \
                     webhook_next_at = {now} + $1 \
                     WHERE seq = (SELECT seq FROM deliveries \
                                  WHERE webhook = 'pending' AND webhook_next_at <= {now} \
                                  ORDER BY seq LIMIT 1 {skip_locked}) \
                     RETURNING webhook_attempts, finished_at, attempt_trace, ",
                    ""
                ),
                vec![ms(lease).into()],
            )
            .await?;
        Ok(row.map(|r| {
            let attempts = u32::try_from(r.uint(0)).unwrap_or(u32::MAX);
            let finished = r
                .opt_int(1)
                .map_or_else(now_ms, |v| u64::try_from(v).unwrap_or(0));
            (delivery_row(&r, 3).0, attempts, finished, r.opt_text(2))
        }))
    }

    /// Records the webhook's end: `sent`, or `gave_up` after retrying for long enough.
    ///
    /// # Errors
    /// When the database cannot be written.
    pub async fn webhook_done(&self, id: &str, sent: bool) -> Result<(), OutboxError> {
        self.store()
            .execute(
                "UPDATE deliveries SET webhook = $2, webhook_next_at = NULL WHERE id = $1",
                vec![id.into(), if sent { "sent" } else { "gave_up" }.into()],
            )
            .await
            .map(|_| ())
    }

    /// Sends the webhook again after `after`.
    ///
    /// # Errors
    /// When the database cannot be written.
    pub async fn webhook_retry(&self, id: &str, after: Duration) -> Result<(), OutboxError> {
        self.store()
            .execute(
                "UPDATE deliveries SET webhook_next_at = {now} + $2 \
                 WHERE id = $1 AND webhook = 'pending'",
                vec![id.into(), ms(after).into()],
            )
            .await
            .map(|_| ())
    }

    /// Counts by status and the oldest pending delivery's age; deletes finished deliveries
    /// older than [`RETENTION`] and idempotency records past their TTL.
    ///
    /// # Errors
    /// When the database cannot be read or written.
    pub async fn upkeep(&self) -> Result<Depth, OutboxError> {
        let store = self.store();
        store
            .execute(
                "DELETE FROM deliveries WHERE status IN ('delivered', 'failed') \
                 AND accepted_at < {now} - $1",
                vec![ms(RETENTION).into()],
            )
            .await?;
        store
            .execute("DELETE FROM idempotency WHERE expires_at < {now}", vec![])
            .await?;
        let mut depth = Depth::default();
        for row in store
            .query(
                "SELECT status, COUNT(*) FROM deliveries GROUP BY status",
                vec![],
            )
            .await?
        {
            depth.by_status[Status::parse(&row.text(0)).index()] = row.uint(1);
        }
        let oldest = store
            .query_opt(
                "SELECT {now} - MIN(accepted_at) FROM deliveries \
                 WHERE status IN ('queued', 'delivering')",
                vec![],
            )
            .await?
            .and_then(|r| r.opt_int(0));
        depth.oldest_pending =
            Duration::from_millis(oldest.map_or(0, |v| u64::try_from(v).unwrap_or(0)));
        Ok(depth)
    }

    /// Proves the outbox can be written (for `/readyz`).
    ///
    /// # Errors
    /// When it cannot.
    pub async fn check_writable(&self) -> Result<(), OutboxError> {
        self.store().check_writable().await
    }

    /// Completes when a delivery is accepted (or at once if one was accepted since the last
    /// call): the worker's wake-up.
    pub async fn accepted(&self) {
        self.inner.accepted.notified().await;
    }

    /// Completes when any delivery finishes.
    pub fn finished(&self) -> tokio::sync::futures::Notified<'_> {
        self.inner.finished.notified()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::path::PathBuf;

    /// The recorded ticket, as the output model.
    fn ticket() -> crate::output::Ticket {
        let text = std::fs::read_to_string(format!(
            "{}/tests/fixtures/post-tickets.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let wire: serde_json::Value = serde_json::from_str(&text).unwrap();
        let ticket: gorgias::Ticket = serde_json::from_value(wire["body"].clone()).unwrap();
        crate::output::Ticket::try_from(ticket).unwrap()
    }

    async fn temp_outbox() -> (Outbox, PathBuf) {
        let dir = std::env::temp_dir().join(format!("outbox-{}", uuid::Uuid::new_v4()));
        let path = dir.join("outbox.db");
        let options = crate::store::OpenOptions {
            settle: Duration::ZERO,
        };
        let store = Store::open(&OutboxTarget::Sqlite(path), options)
            .await
            .unwrap();
        (Outbox::new(store, Duration::ZERO), dir)
    }

    #[test]
    fn outbox_urls() {
        use std::path::Path;
        let data = Path::new("/data");
        assert_eq!(
            OutboxTarget::parse(None, data).unwrap(),
            OutboxTarget::Sqlite("/data/outbox.db".into())
        );
        assert_eq!(
            OutboxTarget::parse(Some("sqlite:///tmp/x.db"), data).unwrap(),
            OutboxTarget::Sqlite("/tmp/x.db".into())
        );
        assert_eq!(
            OutboxTarget::parse(Some("postgres://db/x"), data).unwrap(),
            OutboxTarget::Postgres("postgres://db/x".into())
        );
        assert!(OutboxTarget::parse(Some("mysql://db/x"), data).is_err());
    }

    #[tokio::test]
    async fn accept_claim_deliver_and_replay_by_key() {
        let (outbox, dir) = temp_outbox().await;
        let Accepted::New(d) = outbox
            .accept("c", "", Some("k"), "f", b"{}", None)
            .await
            .unwrap()
        else {
            panic!("new")
        };
        assert!(matches!(
            outbox.accept("c", "", Some("k"), "f", b"{}", None).await.unwrap(),
            Accepted::Existing(e) if e.id == d.id
        ));
        assert!(matches!(
            outbox
                .accept("c", "", Some("k"), "other", b"{}", None)
                .await
                .unwrap(),
            Accepted::Mismatch
        ));
        // Another caller's key is another delivery, and it cannot see this one.
        assert!(matches!(
            outbox.accept("c2", "", Some("k"), "f", b"{}", None).await.unwrap(),
            Accepted::New(e) if e.id != d.id
        ));
        assert!(outbox.get("c2", &d.id).await.unwrap().is_none());

        let claimed = outbox
            .claim(Duration::from_secs(10))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(claimed.id, d.id, "acceptance order");
        assert_eq!(claimed.attempts, 1);
        // Keyed: derived from the caller, key and body, as a synchronous request's is.
        assert_eq!(
            claimed.external_id,
            crate::idempotency::external_id("c:k", "f")
        );
        assert!(outbox.delivered(&claimed, &ticket(), true).await.unwrap());
        let (event, attempts, _, _) = outbox
            .claim_webhook(Duration::from_secs(10))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((event.id.as_str(), attempts), (d.id.as_str(), 1));
        assert!(
            outbox
                .claim_webhook(Duration::from_secs(10))
                .await
                .unwrap()
                .is_none()
        );
        outbox.webhook_done(&d.id, true).await.unwrap();
        let got = outbox.get("c", &d.id).await.unwrap().unwrap();
        assert_eq!(got.status, Status::Delivered);
        let stored: serde_json::Value =
            serde_json::from_str(got.ticket.as_deref().unwrap()).unwrap();
        assert_eq!(stored, serde_json::to_value(ticket()).unwrap());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_lapsed_lease_is_claimed_again_and_a_retry_waits_its_turn() {
        // Wide enough that a loaded CI machine (each write is fsynced) cannot
        // let a lease or a backoff lapse between two statements: at 50 and
        // 100 ms it did.
        const LEASE: Duration = Duration::from_secs(1);
        const BACKOFF: Duration = Duration::from_secs(2);
        let (outbox, dir) = temp_outbox().await;
        let Accepted::New(d) = outbox
            .accept("c", "", None, "f", b"{}", None)
            .await
            .unwrap()
        else {
            panic!("new")
        };
        let first = outbox.claim(LEASE).await.unwrap().unwrap();
        assert!(
            outbox
                .claim(Duration::from_secs(10))
                .await
                .unwrap()
                .is_none()
        );
        tokio::time::sleep(LEASE + Duration::from_millis(100)).await;
        let again = outbox
            .claim(Duration::from_secs(10))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((again.id.as_str(), again.attempts), (first.id.as_str(), 2));
        // The first worker lost its claim: none of its writes changes anything.
        assert!(!outbox.renew(&first, Duration::from_secs(10)).await.unwrap());
        assert!(!outbox.holds(&first).await.unwrap());
        assert!(!outbox.delivered(&first, &ticket(), false).await.unwrap());
        assert!(!outbox.failed(&first, "{}".into(), false).await.unwrap());
        assert!(outbox.holds(&again).await.unwrap());
        assert_eq!(
            outbox.get("c", &d.id).await.unwrap().unwrap().status,
            Status::Delivering
        );
        assert!(
            outbox
                .retry_after(&again, BACKOFF, "{}".into())
                .await
                .unwrap()
        );
        assert!(
            outbox
                .claim(Duration::from_secs(10))
                .await
                .unwrap()
                .is_none()
        );
        let queued = outbox.get("c", &d.id).await.unwrap().unwrap();
        assert_eq!(queued.status, Status::Queued);
        assert!(queued.next_attempt_at.is_some());
        tokio::time::sleep(BACKOFF + Duration::from_millis(100)).await;
        assert!(
            outbox
                .claim(Duration::from_secs(10))
                .await
                .unwrap()
                .is_some()
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
