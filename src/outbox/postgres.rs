//! The outbox in PostgreSQL (`OUTBOX_URL=postgres://…`), for several replicas: the same table
//! and states as the SQLite outbox, with claims that let each delivery run on one replica at
//! a time (`FOR UPDATE SKIP LOCKED`, then a lease). A crashed replica's deliveries are taken
//! over once their lease (the visibility timeout) lapses; their next attempt looks the ticket
//! up by `external_id` first, so nothing is created twice.

use std::time::Duration;

use deadpool_postgres::{Manager, Pool};
use tokio_postgres::NoTls;

use super::{Accepted, Claimed, Delivery, Depth, OutboxError, RETENTION, Status, ms, now_ms};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS deliveries (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    caller TEXT NOT NULL,
    idem_key TEXT UNIQUE,
    fingerprint TEXT NOT NULL,
    request BYTEA,
    external_id TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    accepted_at BIGINT NOT NULL,
    delivered_at BIGINT,
    next_attempt_at BIGINT NOT NULL,
    lease_until BIGINT,
    ticket TEXT,
    problem TEXT,
    finished_at BIGINT,
    webhook TEXT,
    webhook_attempts INTEGER NOT NULL DEFAULT 0,
    webhook_next_at BIGINT
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(status, next_attempt_at, seq);
CREATE INDEX IF NOT EXISTS deliveries_webhooks ON deliveries(webhook, webhook_next_at, seq);
CREATE TABLE IF NOT EXISTS heartbeat (id INTEGER PRIMARY KEY, at BIGINT NOT NULL);
";

/// Serialises schema creation between replicas starting together (an arbitrary constant).
const SCHEMA_LOCK: i64 = 0x6f75_7462_6f78;

const COLUMNS: &str = "id, status, attempts, accepted_at, delivered_at, next_attempt_at, ticket, problem, fingerprint";

fn t(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn delivery(row: &tokio_postgres::Row) -> Result<(Delivery, String), tokio_postgres::Error> {
    let status = Status::parse(row.try_get::<_, &str>(1)?);
    let next: i64 = row.try_get(5)?;
    Ok((
        Delivery {
            id: row.try_get(0)?,
            status,
            attempts: u32::try_from(row.try_get::<_, i32>(2)?).unwrap_or(0),
            accepted_at: u(row.try_get(3)?),
            delivered_at: row.try_get::<_, Option<i64>>(4)?.map(u),
            next_attempt_at: (status == Status::Queued).then(|| u(next)),
            ticket: row.try_get(6)?,
            problem: row.try_get(7)?,
        },
        row.try_get(8)?,
    ))
}

/// Connects (a small pool) and creates the schema.
///
/// # Errors
/// When the URL is unusable or the database cannot be reached.
pub(super) async fn open(url: &str) -> Result<Pool, OutboxError> {
    let config: tokio_postgres::Config = url.parse().map_err(OutboxError::Postgres)?;
    let pool = Pool::builder(Manager::new(config, NoTls))
        .max_size(8)
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(5)))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| OutboxError::Pool(e.to_string()))?;
    let mut client = pool
        .get()
        .await
        .map_err(|e| OutboxError::Pool(e.to_string()))?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
        .await?;
    tx.batch_execute(SCHEMA).await?;
    tx.commit().await?;
    Ok(pool)
}

async fn client(pool: &Pool) -> Result<deadpool_postgres::Object, OutboxError> {
    pool.get()
        .await
        .map_err(|e| OutboxError::Pool(e.to_string()))
}

pub(super) async fn accept(
    pool: &Pool,
    caller: &str,
    key: Option<&str>,
    fingerprint: &str,
    request: &[u8],
) -> Result<Accepted, OutboxError> {
    let c = client(pool).await?;
    let key = key.map(|k| format!("{caller}:{k}"));
    let id = uuid::Uuid::new_v4().simple().to_string();
    let now = now_ms();
    let inserted = c
        .execute(
            "INSERT INTO deliveries (id, caller, idem_key, fingerprint, request, external_id, \
             status, accepted_at, next_attempt_at) \
             VALUES ($1, $2, $3, $4, $5, $6, 'queued', $7, $7) ON CONFLICT (idem_key) DO NOTHING",
            &[
                &id,
                &caller,
                &key,
                &fingerprint,
                &request,
                &format!("async-{id}"),
                &t(now),
            ],
        )
        .await?;
    if inserted == 1 {
        return Ok(Accepted::New(Delivery {
            id,
            status: Status::Queued,
            attempts: 0,
            accepted_at: now,
            delivered_at: None,
            next_attempt_at: Some(now),
            ticket: None,
            problem: None,
        }));
    }
    let row = c
        .query_one(
            &format!("SELECT {COLUMNS} FROM deliveries WHERE idem_key = $1"),
            &[&key],
        )
        .await?;
    let (d, f) = delivery(&row)?;
    Ok(if f == fingerprint {
        Accepted::Existing(d)
    } else {
        Accepted::Mismatch
    })
}

pub(super) async fn get(
    pool: &Pool,
    caller: &str,
    id: &str,
) -> Result<Option<Delivery>, OutboxError> {
    let row = client(pool)
        .await?
        .query_opt(
            &format!("SELECT {COLUMNS} FROM deliveries WHERE id = $1 AND caller = $2"),
            &[&id, &caller],
        )
        .await?;
    Ok(row.map(|r| delivery(&r)).transpose()?.map(|(d, _)| d))
}

pub(super) async fn claim(pool: &Pool, lease: Duration) -> Result<Option<Claimed>, OutboxError> {
    let now = now_ms();
    let row = client(pool)
        .await?
        .query_opt(
            "UPDATE deliveries SET status = 'delivering', attempts = attempts + 1, lease_until = $2 \
             WHERE seq = (SELECT seq FROM deliveries \
                          WHERE (status = 'queued' AND next_attempt_at <= $1) \
                             OR (status = 'delivering' AND lease_until < $1) \
                          ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED) \
             RETURNING id, request, external_id, attempts, accepted_at",
            &[&t(now), &t(now + ms(lease))],
        )
        .await?;
    row.map(|r| {
        Ok(Claimed {
            id: r.try_get(0)?,
            request: r.try_get::<_, Option<Vec<u8>>>(1)?.unwrap_or_default(),
            external_id: r.try_get(2)?,
            attempts: u32::try_from(r.try_get::<_, i32>(3)?).unwrap_or(0),
            accepted_at: u(r.try_get(4)?),
        })
    })
    .transpose()
}

/// One statement with its parameters, for the updates that return nothing.
pub(super) async fn exec(
    pool: &Pool,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<(), OutboxError> {
    client(pool).await?.execute(sql, params).await?;
    Ok(())
}

pub(super) async fn renew(pool: &Pool, id: &str, lease: Duration) -> Result<(), OutboxError> {
    exec(
        pool,
        "UPDATE deliveries SET lease_until = $2 WHERE id = $1 AND status = 'delivering'",
        &[&id, &t(now_ms() + ms(lease))],
    )
    .await
}

pub(super) async fn delivered(
    pool: &Pool,
    id: &str,
    ticket: &str,
    webhook: bool,
) -> Result<(), OutboxError> {
    exec(
        pool,
        "UPDATE deliveries SET status = 'delivered', delivered_at = $2, finished_at = $2, \
         ticket = $3, problem = NULL, request = NULL, lease_until = NULL, webhook = $4, \
         webhook_next_at = $2 WHERE id = $1",
        &[&id, &t(now_ms()), &ticket, &webhook.then_some("pending")],
    )
    .await
}

pub(super) async fn failed(
    pool: &Pool,
    id: &str,
    problem: &str,
    webhook: bool,
) -> Result<(), OutboxError> {
    exec(
        pool,
        "UPDATE deliveries SET status = 'failed', problem = $2, request = NULL, \
         lease_until = NULL, finished_at = $3, webhook = $4, webhook_next_at = $3 WHERE id = $1",
        &[&id, &problem, &t(now_ms()), &webhook.then_some("pending")],
    )
    .await
}

pub(super) async fn retry_after(
    pool: &Pool,
    id: &str,
    after: Duration,
    problem: &str,
) -> Result<(), OutboxError> {
    exec(
        pool,
        "UPDATE deliveries SET status = 'queued', next_attempt_at = $2, problem = $3, \
         lease_until = NULL WHERE id = $1",
        &[&id, &t(now_ms() + ms(after)), &problem],
    )
    .await
}

pub(super) async fn claim_webhook(
    pool: &Pool,
    lease: Duration,
) -> Result<Option<(Delivery, u32, u64)>, OutboxError> {
    let now = now_ms();
    let row = client(pool)
        .await?
        .query_opt(
            &format!(
                "UPDATE deliveries SET webhook_attempts = webhook_attempts + 1, \
                 webhook_next_at = $2 \
                 WHERE seq = (SELECT seq FROM deliveries \
                              WHERE webhook = 'pending' AND webhook_next_at <= $1 \
                              ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED) \
                 RETURNING {COLUMNS}, webhook_attempts, finished_at"
            ),
            &[&t(now), &t(now + ms(lease))],
        )
        .await?;
    row.map(|r| {
        let (d, _) = delivery(&r)?;
        let attempts = u32::try_from(r.try_get::<_, i32>(9)?).unwrap_or(0);
        let finished = r.try_get::<_, Option<i64>>(10)?.map_or(now, u);
        Ok((d, attempts, finished))
    })
    .transpose()
}

pub(super) async fn webhook_done(pool: &Pool, id: &str, sent: bool) -> Result<(), OutboxError> {
    exec(
        pool,
        "UPDATE deliveries SET webhook = $2, webhook_next_at = NULL WHERE id = $1",
        &[&id, &if sent { "sent" } else { "gave_up" }],
    )
    .await
}

pub(super) async fn webhook_retry(
    pool: &Pool,
    id: &str,
    after: Duration,
) -> Result<(), OutboxError> {
    exec(
        pool,
        "UPDATE deliveries SET webhook_next_at = $2 WHERE id = $1 AND webhook = 'pending'",
        &[&id, &t(now_ms() + ms(after))],
    )
    .await
}

pub(super) async fn upkeep(pool: &Pool) -> Result<Depth, OutboxError> {
    let c = client(pool).await?;
    let now = now_ms();
    c.execute(
        "DELETE FROM deliveries WHERE status IN ('delivered', 'failed') AND accepted_at < $1",
        &[&t(now.saturating_sub(ms(RETENTION)))],
    )
    .await?;
    let mut depth = Depth::default();
    for row in c
        .query(
            "SELECT status, COUNT(*) FROM deliveries GROUP BY status",
            &[],
        )
        .await?
    {
        let i = match Status::parse(row.try_get::<_, &str>(0)?) {
            Status::Queued => 0,
            Status::Delivering => 1,
            Status::Delivered => 2,
            Status::Failed => 3,
        };
        depth.by_status[i] = u(row.try_get(1)?);
    }
    let oldest: Option<i64> = c
        .query_one(
            "SELECT MIN(accepted_at) FROM deliveries WHERE status IN ('queued', 'delivering')",
            &[],
        )
        .await?
        .try_get(0)?;
    depth.oldest_pending = Duration::from_millis(oldest.map_or(0, |o| now.saturating_sub(u(o))));
    Ok(depth)
}

pub(super) async fn check_writable(pool: &Pool) -> Result<(), OutboxError> {
    exec(
        pool,
        "INSERT INTO heartbeat (id, at) VALUES (1, $1) ON CONFLICT (id) DO UPDATE SET at = excluded.at",
        &[&t(now_ms())],
    )
    .await
}
