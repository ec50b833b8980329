//! The durable outbox behind `Prefer: respond-async`: an accepted request is a row, written
//! before the caller is answered 202, and delivered to Gorgias by [`crate::delivery`] until it
//! is `delivered` or `failed`. The row is also the status resource (`GET /tickets/{id}`).
//!
//! Storage is an embedded SQLite database in WAL mode (`$DATA_DIR/outbox.db`): one replica
//! needs nothing else, and a row survives a restart or `kill -9` once `accept` returned.
//!
//! Exactly once: each delivery has a stable ticket `external_id` (`async-{id}`); an attempt
//! after the first looks the ticket up by it before creating (a crash between Gorgias saving
//! the ticket and us recording it is the case this covers). A delivery being worked on holds a
//! lease (`lease_until`); a crashed worker's lease lapses and the delivery is claimed again.
//!
//! Why not a job-queue crate (apalis): the status resource, caller scoping, idempotency keys
//! and acceptance order are this table's columns, and claiming is one statement; a job
//! framework would add its own tables beside ours and a second notion of state.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::Notify;

/// How deliveries run.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// After this long since acceptance, a delivery still failing transiently is `failed`.
    pub max_age: Duration,
    /// Deliveries attempted at once (each is mostly waiting for the budget).
    pub concurrency: usize,
    /// How long a claimed delivery is ours without renewal; a crashed worker's delivery is
    /// claimed again after it.
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

/// Where the outbox lives (`OUTBOX_URL`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboxTarget {
    /// An SQLite file: one replica.
    Sqlite(PathBuf),
    /// A PostgreSQL database (`postgres://…`): any number of replicas.
    Postgres(String),
}

impl OutboxTarget {
    /// Reads `OUTBOX_URL`: `sqlite://PATH` or `sqlite:PATH`; unset, `$DATA_DIR/outbox.db`.
    ///
    /// # Errors
    /// A message naming what is not supported.
    pub fn parse(url: Option<&str>, data_dir: &Path) -> Result<Self, String> {
        let Some(url) = url.map(str::trim).filter(|u| !u.is_empty()) else {
            return Ok(Self::Sqlite(data_dir.join("outbox.db")));
        };
        if let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            return Ok(Self::Sqlite(PathBuf::from(path)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Self::Postgres(url.to_owned()));
        }
        Err("must be sqlite://PATH or postgres://… (or unset for $DATA_DIR/outbox.db)".into())
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
    /// The request body as accepted.
    pub request: Vec<u8>,
    /// The ticket's `external_id`.
    pub external_id: String,
    /// Attempts including this one.
    pub attempts: u32,
    /// When it was accepted (Unix ms).
    pub accepted_at: u64,
}

/// Counts for metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct Depth {
    /// Rows per status, in [`Status`] order.
    pub by_status: [u64; 4],
    /// Age of the oldest queued or delivering row.
    pub oldest_pending: Duration,
}

/// The outbox could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// SQLite failed.
    #[error("the outbox database failed: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Its directory could not be created.
    #[error("the outbox directory {path} cannot be created: {source}")]
    Directory {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// PostgreSQL failed.
    #[error("the outbox database failed: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// No PostgreSQL connection could be had.
    #[error("the outbox database cannot be reached: {0}")]
    Pool(String),
    /// A blocking task did not finish (the runtime is shutting down).
    #[error("the outbox task did not finish")]
    Task,
}

/// The outbox; cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Backend,
    /// Woken when a delivery is accepted (the worker need not poll for new work).
    accepted: Notify,
    /// Woken when a delivery finishes (requests waiting with `wait=N` look again).
    finished: Notify,
}

enum Backend {
    Sqlite(Mutex<Connection>),
    Postgres(deadpool_postgres::Pool),
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.inner.backend {
            Backend::Sqlite(_) => "Outbox(sqlite)",
            Backend::Postgres(_) => "Outbox(postgres)",
        })
    }
}

mod postgres;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS deliveries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    caller TEXT NOT NULL,
    idem_key TEXT,
    fingerprint TEXT NOT NULL,
    request BLOB,
    external_id TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    accepted_at INTEGER NOT NULL,
    delivered_at INTEGER,
    next_attempt_at INTEGER NOT NULL,
    lease_until INTEGER,
    ticket TEXT,
    problem TEXT,
    finished_at INTEGER,
    webhook TEXT,
    webhook_attempts INTEGER NOT NULL DEFAULT 0,
    webhook_next_at INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS deliveries_by_key ON deliveries(idem_key) WHERE idem_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(status, next_attempt_at, seq);
CREATE INDEX IF NOT EXISTS deliveries_webhooks ON deliveries(webhook, webhook_next_at, seq);
CREATE TABLE IF NOT EXISTS heartbeat (id INTEGER PRIMARY KEY, at INTEGER NOT NULL);
";

/// Columns added after the table's first version, for databases created by it.
const ADDED_COLUMNS: &[&str] = &[
    "finished_at INTEGER",
    "webhook TEXT",
    "webhook_attempts INTEGER NOT NULL DEFAULT 0",
    "webhook_next_at INTEGER",
];

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

/// SQLite stores integers as i64; our times fit.
fn sql(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn unsql(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

const DELIVERY_COLUMNS: &str = "id, status, attempts, accepted_at, delivered_at, next_attempt_at, ticket, problem, fingerprint";

fn delivery_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(Delivery, String)> {
    let status = Status::parse(&row.get::<_, String>(1)?);
    let next: i64 = row.get(5)?;
    Ok((
        Delivery {
            id: row.get(0)?,
            status,
            attempts: u32::try_from(row.get::<_, i64>(2)?).unwrap_or(u32::MAX),
            accepted_at: unsql(row.get(3)?),
            delivered_at: row.get::<_, Option<i64>>(4)?.map(unsql),
            next_attempt_at: (status == Status::Queued).then(|| unsql(next)),
            ticket: row.get(6)?,
            problem: row.get(7)?,
        },
        row.get(8)?,
    ))
}

impl Outbox {
    /// Opens (or creates) the outbox at `target`, creating its directory.
    ///
    /// # Errors
    /// When the directory or database cannot be created or opened.
    pub async fn open(target: &OutboxTarget) -> Result<Self, OutboxError> {
        let path = match target {
            OutboxTarget::Sqlite(path) => path,
            OutboxTarget::Postgres(url) => {
                return Ok(Self::with_backend(Backend::Postgres(
                    postgres::open(url).await?,
                )));
            }
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| OutboxError::Directory {
                path: dir.to_owned(),
                source,
            })?;
        }
        let conn = Connection::open(path)?;
        // WAL: readers do not block the writer; NORMAL sync is durable across a process crash
        // (kill -9), which is what a row must survive; FULL would add an fsync per commit
        // for power loss.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(Duration::from_secs(5))?;
        for column in ADDED_COLUMNS {
            // Fails with "duplicate column" on every database that has it: that is the point.
            let _ = conn.execute(&format!("ALTER TABLE deliveries ADD COLUMN {column}"), []);
        }
        conn.execute_batch(SCHEMA)?;
        // One process owns an SQLite outbox, so a delivery still marked in progress was cut
        // off by this process's previous life (a crash, kill -9): it is due again now, and its
        // next attempt looks the ticket up first (its attempts count says one was made).
        conn.execute(
            "UPDATE deliveries SET status = 'queued', next_attempt_at = ?1, lease_until = NULL \
             WHERE status = 'delivering'",
            params![sql(now_ms())],
        )?;
        Ok(Self::with_backend(Backend::Sqlite(Mutex::new(conn))))
    }

    fn with_backend(backend: Backend) -> Self {
        Self {
            inner: Arc::new(Inner {
                backend,
                accepted: Notify::new(),
                finished: Notify::new(),
            }),
        }
    }

    fn postgres(&self) -> Option<&deadpool_postgres::Pool> {
        match &self.inner.backend {
            Backend::Postgres(pool) => Some(pool),
            Backend::Sqlite(_) => None,
        }
    }

    /// Runs `f` on the connection on a blocking thread.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, OutboxError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let Backend::Sqlite(conn) = &inner.backend else {
                return Err(OutboxError::Task);
            };
            let mut conn = lock(conn);
            f(&mut conn).map_err(OutboxError::from)
        })
        .await
        .map_err(|_| OutboxError::Task)?
    }

    /// Writes a delivery, durably, or finds the one this caller's key already names.
    ///
    /// # Errors
    /// When the database cannot be written.
    pub async fn accept(
        &self,
        caller: &str,
        key: Option<&str>,
        fingerprint: &str,
        request: &[u8],
    ) -> Result<Accepted, OutboxError> {
        if let Some(pool) = self.postgres() {
            let accepted = postgres::accept(pool, caller, key, fingerprint, request).await?;
            if matches!(accepted, Accepted::New(_)) {
                self.inner.accepted.notify_one();
            }
            return Ok(accepted);
        }
        let (caller, key, fingerprint, request) = (
            caller.to_owned(),
            key.map(|k| format!("{caller}:{k}")),
            fingerprint.to_owned(),
            request.to_vec(),
        );
        let accepted = self
            .with(move |conn| {
                let tx = conn.transaction()?;
                if let Some(key) = &key {
                    let found = tx
                        .query_row(
                            &format!(
                                "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE idem_key = ?1"
                            ),
                            params![key],
                            delivery_row,
                        )
                        .optional()?;
                    if let Some((d, f)) = found {
                        return Ok(if f == fingerprint {
                            Accepted::Existing(d)
                        } else {
                            Accepted::Mismatch
                        });
                    }
                }
                let id = uuid::Uuid::new_v4().simple().to_string();
                let now = now_ms();
                tx.execute(
                    "INSERT INTO deliveries (id, caller, idem_key, fingerprint, request, \
                     external_id, status, accepted_at, next_attempt_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'queued', ?7, ?7)",
                    params![
                        id,
                        caller,
                        key,
                        fingerprint,
                        request,
                        format!("async-{id}"),
                        sql(now)
                    ],
                )?;
                tx.commit()?;
                Ok(Accepted::New(Delivery {
                    id,
                    status: Status::Queued,
                    attempts: 0,
                    accepted_at: now,
                    delivered_at: None,
                    next_attempt_at: Some(now),
                    ticket: None,
                    problem: None,
                }))
            })
            .await?;
        if matches!(accepted, Accepted::New(_)) {
            self.inner.accepted.notify_one();
        }
        Ok(accepted)
    }

    /// The caller's delivery `id` (another caller's is not found).
    ///
    /// # Errors
    /// When the database cannot be read.
    pub async fn get(&self, caller: &str, id: &str) -> Result<Option<Delivery>, OutboxError> {
        if let Some(pool) = self.postgres() {
            return postgres::get(pool, caller, id).await;
        }
        let (caller, id) = (caller.to_owned(), id.to_owned());
        self.with(move |conn| {
            conn.query_row(
                &format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = ?1 AND caller = ?2"),
                params![id, caller],
                delivery_row,
            )
            .optional()
            .map(|found| found.map(|(d, _)| d))
        })
        .await
    }

    /// Claims the earliest accepted delivery that is due (or whose worker's lease lapsed),
    /// for `lease`.
    ///
    /// # Errors
    /// When the database cannot be written.
    pub async fn claim(&self, lease: Duration) -> Result<Option<Claimed>, OutboxError> {
        if let Some(pool) = self.postgres() {
            return postgres::claim(pool, lease).await;
        }
        self.with(move |conn| {
            let now = now_ms();
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let found = tx
                .query_row(
                    "SELECT id, request, external_id, attempts, accepted_at FROM deliveries \
                     WHERE (status = 'queued' AND next_attempt_at <= ?1) \
                        OR (status = 'delivering' AND lease_until < ?1) \
                     ORDER BY seq LIMIT 1",
                    params![sql(now)],
                    |row| {
                        Ok(Claimed {
                            id: row.get(0)?,
                            request: row.get::<_, Option<Vec<u8>>>(1)?.unwrap_or_default(),
                            external_id: row.get(2)?,
                            attempts: u32::try_from(row.get::<_, i64>(3)?).unwrap_or(u32::MAX),
                            accepted_at: unsql(row.get(4)?),
                        })
                    },
                )
                .optional()?;
            let Some(mut claimed) = found else {
                return Ok(None);
            };
            tx.execute(
                "UPDATE deliveries SET status = 'delivering', attempts = attempts + 1, \
                 lease_until = ?2 WHERE id = ?1",
                params![claimed.id, sql(now + ms(lease))],
            )?;
            tx.commit()?;
            claimed.attempts += 1;
            Ok(Some(claimed))
        })
        .await
    }

    /// Extends the lease of a delivery being worked on.
    ///
    /// # Errors
    /// When the database cannot be written.
    pub async fn renew(&self, id: &str, lease: Duration) -> Result<(), OutboxError> {
        if let Some(pool) = self.postgres() {
            return postgres::renew(pool, id, lease).await;
        }
        let id = id.to_owned();
        self.with(move |conn| {
            conn.execute(
                "UPDATE deliveries SET lease_until = ?2 WHERE id = ?1 AND status = 'delivering'",
                params![id, sql(now_ms() + ms(lease))],
            )
            .map(|_| ())
        })
        .await
    }

    /// Records the ticket. The request body (customer PII) is dropped: it is no longer needed.
    ///
    /// # Errors
    /// When the database cannot be written.
    pub async fn delivered(
        &self,
        id: &str,
        ticket: String,
        webhook: bool,
    ) -> Result<(), OutboxError> {
        if let Some(pool) = self.postgres() {
            postgres::delivered(pool, id, &ticket, webhook).await?;
            self.inner.finished.notify_waiters();
            return Ok(());
        }
        let id = id.to_owned();
        self.with(move |conn| {
            let now = sql(now_ms());
            conn.execute(
                "UPDATE deliveries SET status = 'delivered', delivered_at = ?2, finished_at = ?2, \
                 ticket = ?3, problem = NULL, request = NULL, lease_until = NULL, \
                 webhook = ?4, webhook_next_at = ?2 WHERE id = ?1",
                params![id, now, ticket, webhook.then_some("pending")],
            )
            .map(|_| ())
        })
        .await?;
        self.inner.finished.notify_waiters();
        Ok(())
    }

    /// Records a final failure with its problem.
    ///
    /// # Errors
    /// When the database cannot be written.
    pub async fn failed(
        &self,
        id: &str,
        problem: String,
        webhook: bool,
    ) -> Result<(), OutboxError> {
        if let Some(pool) = self.postgres() {
            postgres::failed(pool, id, &problem, webhook).await?;
            self.inner.finished.notify_waiters();
            return Ok(());
        }
        let id = id.to_owned();
        self.with(move |conn| {
            conn.execute(
                "UPDATE deliveries SET status = 'failed', problem = ?2, request = NULL, \
                 lease_until = NULL, finished_at = ?3, webhook = ?4, webhook_next_at = ?3 \
                 WHERE id = ?1",
                params![id, problem, sql(now_ms()), webhook.then_some("pending")],
            )
            .map(|_| ())
        })
        .await?;
        self.inner.finished.notify_waiters();
        Ok(())
    }

    /// Puts a delivery back in the queue until `after` has passed, keeping the last problem.
    ///
    /// # Errors
    /// When the database cannot be written.
    pub async fn retry_after(
        &self,
        id: &str,
        after: Duration,
        problem: String,
    ) -> Result<(), OutboxError> {
        if let Some(pool) = self.postgres() {
            return postgres::retry_after(pool, id, after, &problem).await;
        }
        let id = id.to_owned();
        self.with(move |conn| {
            conn.execute(
                "UPDATE deliveries SET status = 'queued', next_attempt_at = ?2, problem = ?3, \
                 lease_until = NULL WHERE id = ?1",
                params![id, sql(now_ms() + ms(after)), problem],
            )
            .map(|_| ())
        })
        .await
    }

    /// Claims the earliest finished delivery whose webhook is due, for `lease` (a crashed
    /// sender's event is sent again after it: receivers dedupe by `webhook-id`). Returns the
    /// delivery, its webhook attempts including this one, and when it finished (Unix ms).
    ///
    /// # Errors
    /// When the database cannot be written.
    pub async fn claim_webhook(
        &self,
        lease: Duration,
    ) -> Result<Option<(Delivery, u32, u64)>, OutboxError> {
        if let Some(pool) = self.postgres() {
            return postgres::claim_webhook(pool, lease).await;
        }
        self.with(move |conn| {
            let now = now_ms();
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let found = tx
                .query_row(
                    &format!(
                        "SELECT {DELIVERY_COLUMNS}, webhook_attempts, finished_at FROM deliveries \
                         WHERE webhook = 'pending' AND webhook_next_at <= ?1 ORDER BY seq LIMIT 1"
                    ),
                    params![sql(now)],
                    |row| {
                        let (d, _) = delivery_row(row)?;
                        let attempts = u32::try_from(row.get::<_, i64>(9)?).unwrap_or(u32::MAX);
                        let finished = row.get::<_, Option<i64>>(10)?.map_or(now, unsql);
                        Ok((d, attempts + 1, finished))
                    },
                )
                .optional()?;
            if let Some((d, _, _)) = &found {
                tx.execute(
                    "UPDATE deliveries SET webhook_attempts = webhook_attempts + 1, \
                     webhook_next_at = ?2 WHERE id = ?1",
                    params![d.id, sql(now + ms(lease))],
                )?;
            }
            tx.commit()?;
            Ok(found)
        })
        .await
    }

    /// Records the webhook's end: `sent`, or `gave_up` after retrying for long enough.
    ///
    /// # Errors
    /// When the database cannot be written.
    pub async fn webhook_done(&self, id: &str, sent: bool) -> Result<(), OutboxError> {
        if let Some(pool) = self.postgres() {
            return postgres::webhook_done(pool, id, sent).await;
        }
        let id = id.to_owned();
        self.with(move |conn| {
            conn.execute(
                "UPDATE deliveries SET webhook = ?2, webhook_next_at = NULL WHERE id = ?1",
                params![id, if sent { "sent" } else { "gave_up" }],
            )
            .map(|_| ())
        })
        .await
    }

    /// Sends the webhook again after `after`.
    ///
    /// # Errors
    /// When the database cannot be written.
    pub async fn webhook_retry(&self, id: &str, after: Duration) -> Result<(), OutboxError> {
        if let Some(pool) = self.postgres() {
            return postgres::webhook_retry(pool, id, after).await;
        }
        let id = id.to_owned();
        self.with(move |conn| {
            conn.execute(
                "UPDATE deliveries SET webhook_next_at = ?2 WHERE id = ?1 AND webhook = 'pending'",
                params![id, sql(now_ms() + ms(after))],
            )
            .map(|_| ())
        })
        .await
    }

    /// Counts by status and the oldest pending delivery's age; deletes finished deliveries
    /// older than [`RETENTION`].
    ///
    /// # Errors
    /// When the database cannot be read or written.
    pub async fn upkeep(&self) -> Result<Depth, OutboxError> {
        if let Some(pool) = self.postgres() {
            return postgres::upkeep(pool).await;
        }
        self.with(move |conn| {
            let now = now_ms();
            conn.execute(
                "DELETE FROM deliveries WHERE status IN ('delivered', 'failed') AND accepted_at < ?1",
                params![sql(now.saturating_sub(ms(RETENTION)))],
            )?;
            let mut depth = Depth::default();
            let mut stmt = conn.prepare("SELECT status, COUNT(*) FROM deliveries GROUP BY status")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            for row in rows {
                let (status, n) = row?;
                let i = match Status::parse(&status) {
                    Status::Queued => 0,
                    Status::Delivering => 1,
                    Status::Delivered => 2,
                    Status::Failed => 3,
                };
                depth.by_status[i] = unsql(n);
            }
            let oldest: Option<i64> = conn.query_row(
                "SELECT MIN(accepted_at) FROM deliveries WHERE status IN ('queued', 'delivering')",
                [],
                |r| r.get(0),
            )?;
            depth.oldest_pending =
                Duration::from_millis(oldest.map_or(0, |t| now.saturating_sub(unsql(t))));
            Ok(depth)
        })
        .await
    }

    /// Proves the outbox can be written (for `/readyz`).
    ///
    /// # Errors
    /// When it cannot.
    pub async fn check_writable(&self) -> Result<(), OutboxError> {
        if let Some(pool) = self.postgres() {
            return postgres::check_writable(pool).await;
        }
        self.with(|conn| {
            conn.execute(
                "INSERT INTO heartbeat (id, at) VALUES (1, ?1) \
                 ON CONFLICT(id) DO UPDATE SET at = excluded.at",
                params![sql(now_ms())],
            )
            .map(|_| ())
        })
        .await
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

fn lock(conn: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    // A panic while holding the connection leaves SQLite consistent (it is transactional).
    conn.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn temp_outbox() -> (Outbox, PathBuf) {
        let dir = std::env::temp_dir().join(format!("outbox-{}", uuid::Uuid::new_v4()));
        let path = dir.join("outbox.db");
        (
            Outbox::open(&OutboxTarget::Sqlite(path.clone()))
                .await
                .unwrap(),
            dir,
        )
    }

    #[test]
    fn outbox_urls() {
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
        let Accepted::New(d) = outbox.accept("c", Some("k"), "f", b"{}").await.unwrap() else {
            panic!("new")
        };
        assert!(matches!(
            outbox.accept("c", Some("k"), "f", b"{}").await.unwrap(),
            Accepted::Existing(e) if e.id == d.id
        ));
        assert!(matches!(
            outbox.accept("c", Some("k"), "other", b"{}").await.unwrap(),
            Accepted::Mismatch
        ));
        // Another caller's key is another delivery, and it cannot see this one.
        assert!(matches!(
            outbox.accept("c2", Some("k"), "f", b"{}").await.unwrap(),
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
        assert_eq!(claimed.external_id, format!("async-{}", d.id));
        outbox
            .delivered(&d.id, "{\"id\":1}".into(), true)
            .await
            .unwrap();
        let (event, attempts, _) = outbox
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
        assert_eq!(got.ticket.as_deref(), Some("{\"id\":1}"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_lapsed_lease_is_claimed_again_and_a_retry_waits_its_turn() {
        let (outbox, dir) = temp_outbox().await;
        let Accepted::New(d) = outbox.accept("c", None, "f", b"{}").await.unwrap() else {
            panic!("new")
        };
        let first = outbox
            .claim(Duration::from_millis(50))
            .await
            .unwrap()
            .unwrap();
        assert!(
            outbox
                .claim(Duration::from_secs(10))
                .await
                .unwrap()
                .is_none()
        );
        tokio::time::sleep(Duration::from_millis(80)).await;
        let again = outbox
            .claim(Duration::from_secs(10))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((again.id.as_str(), again.attempts), (first.id.as_str(), 2));
        outbox
            .retry_after(&d.id, Duration::from_millis(100), "{}".into())
            .await
            .unwrap();
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
        tokio::time::sleep(Duration::from_millis(150)).await;
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
