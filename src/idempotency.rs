//! `Idempotency-Key`: the first final answer to a key is stored and replayed to every retry of
//! the same request, so a caller that timed out can safely send again.
//!
//! **Where a key lives.** In the service's durable database ([`crate::store`]: SQLite in
//! `DATA_DIR`, or PostgreSQL for replicas), so a key outlives a Redis flush, a Redis restart
//! and a service restart: only its TTL ends it. With `REDIS_URL`, Redis is also asked first
//! (replicas on their own SQLite files share keys through it), but never as the only copy.
//! Without a database (`OUTBOX_URL=off`) keys live in this process's memory.
//!
//! **A claim is a lease.** A key is first *claimed* (in flight), then either *completed* with
//! a final answer (201, or a 4xx that will not change) or *released* (5xx, 503: the caller may
//! retry). The work holding a claim renews it every third of [`LEASE`]; when the work is gone
//! (a panic, a crash, a killed replica) the lease lapses and the next retry takes the key
//! over. Every write after a claim matches the claim's token, so a stale worker changes
//! nothing.
//!
//! **A create is marked before it is sent** ([`IdempotencyStore::fence`]): the mark is how a
//! later claim knows a ticket may exist (look it up by `external_id` first) and how long
//! Gorgias may need to show it (the settle window, counted from the end of that attempt, or
//! from the lapse of a dead worker's lease).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::{Store, StoreError};

/// An answer worth replaying.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredAnswer {
    /// HTTP status.
    pub status: u16,
    /// `Content-Type` of the body.
    pub content_type: String,
    /// The body, verbatim.
    pub body: String,
}

/// What a key's record holds (the Redis and memory forms; the database has a row).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Record {
    /// Claimed by a request whose work renews the lease until `lease_until` (Unix ms, on the
    /// store's clock); `token` identifies the claim. Past it, the work is presumed dead.
    InFlight {
        fingerprint: String,
        token: String,
        lease_until: u64,
        /// A create was sent under this claim.
        #[serde(default)]
        attempted: bool,
    },
    /// Finished; replay `answer` to the same request.
    Done {
        fingerprint: String,
        answer: StoredAnswer,
    },
    /// An attempt ended without a final answer (5xx, 503). Its ticket create may have landed
    /// in Gorgias all the same, so the next attempt looks the ticket up before creating one,
    /// and not before `settle_until` (Unix ms).
    Failed {
        fingerprint: String,
        #[serde(default)]
        settle_until: u64,
    },
}

/// Memory the in-process idempotency store may use for finished keys and answers: 64 MiB.
pub const MEMORY_BUDGET_BYTES: u64 = 64 * 1024 * 1024;

impl Record {
    /// Roughly the bytes this record holds (strings plus a fixed overhead).
    fn weight(&self) -> usize {
        const OVERHEAD: usize = 128;
        OVERHEAD
            + match self {
                Self::InFlight {
                    fingerprint, token, ..
                } => fingerprint.len() + token.len(),
                Self::Done {
                    fingerprint,
                    answer,
                } => fingerprint.len() + answer.content_type.len() + answer.body.len(),
                Self::Failed { fingerprint, .. } => fingerprint.len(),
            }
    }

    fn fingerprint(&self) -> &str {
        match self {
            Self::InFlight { fingerprint, .. }
            | Self::Done { fingerprint, .. }
            | Self::Failed { fingerprint, .. } => fingerprint,
        }
    }
}

/// The outcome of claiming a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Ours: do the work, then [`IdempotencyStore::complete`] or [`IdempotencyStore::release`].
    Acquired(ClaimToken),
    /// Already answered for this very request: replay it.
    Replay(StoredAnswer),
    /// The same request is still running elsewhere (409).
    InProgress,
    /// The key was used with another body (422).
    Mismatch,
}

/// Proof of a claim, needed to renew, fence, complete or release it (so a late request cannot
/// touch a claim that is not its own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimToken {
    key: String,
    fingerprint: String,
    token: String,
    /// An earlier attempt with this key may have created the ticket: look it up by
    /// `external_id` before creating.
    pub reconcile_first: bool,
    /// How long from the claim until that earlier create has had the settle window to show
    /// in Gorgias's lists: the lookup must not be made before.
    pub settle_remaining: Duration,
}

/// The store could not be used: the caller gets a 503 and may retry.
#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    /// Redis failed.
    #[error("the idempotency store is unavailable")]
    Redis(#[source] redis::RedisError),
    /// The database failed.
    #[error("the idempotency store is unavailable")]
    Database(#[source] StoreError),
}

/// How long a claim lives without renewal: the time a dead request's key stays answered 409
/// before a retry may take it over.
pub const LEASE: Duration = Duration::from_secs(10);

/// Where keys live, and how long leases and settle windows last.
#[derive(Clone)]
pub struct IdempotencyStore {
    backend: Backend,
    lease: Duration,
    ttl: Duration,
    /// The settle window (`GORGIAS_SETTLE_SECS`).
    settle: Duration,
}

#[derive(Clone)]
enum Backend {
    /// This process's memory: finished records bounded by bytes, claims never dropped.
    Memory(Arc<Memory>),
    /// The durable database, with Redis asked first when configured.
    Durable {
        store: Store,
        redis: Option<ConnectionManager>,
    },
}

/// The memory backend. Claims in flight live in a map of their own: a bounded cache's
/// admission policy may refuse a new entry when full, and a refused claim would let two
/// requests with one key both proceed. Their number is bounded by the requests in flight.
struct Memory {
    in_flight: tokio::sync::Mutex<HashMap<String, Record>>,
    finished: Cache<String, Record>,
}

impl std::fmt::Debug for IdempotencyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.backend {
            Backend::Memory(_) => f.write_str("IdempotencyStore::Memory"),
            Backend::Durable { store, redis } => write!(
                f,
                "IdempotencyStore::Durable({store:?}, redis: {})",
                redis.is_some()
            ),
        }
    }
}

/// Now, in Unix milliseconds (the memory store's clock; the database and Redis use theirs).
fn unix_ms() -> u64 {
    crate::outbox::now_ms()
}

/// Claims `KEYS[1]` in Redis: a free key, a failed attempt of the same body, or an in-flight
/// claim of the same body whose lease lapsed. The key keeps its whole TTL. ARGV: fingerprint,
/// token, lease ms, TTL ms. Returns `acquired`, `reconcile`, or the record that stands.
const CLAIM: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local v = redis.call('GET', KEYS[1])
local outcome = 'acquired'
if v then
  local ok, r = pcall(cjson.decode, v)
  if not ok or type(r) ~= 'table' or r.fingerprint ~= ARGV[1] then return v end
  local lapsed = r.state == 'in_flight' and tonumber(r.lease_until or 0) < now
  if r.state ~= 'failed' and not lapsed then return v end
  outcome = 'reconcile'
end
local rec = '{"state":"in_flight","fingerprint":' .. cjson.encode(ARGV[1]) .. ',"token":' ..
  cjson.encode(ARGV[2]) .. ',"lease_until":' .. string.format('%d', now + tonumber(ARGV[3])) .. '}'
redis.call('SET', KEYS[1], rec, 'PX', ARGV[4])
return outcome
"#;

/// Renews the lease of `KEYS[1]` when it is still the claim `ARGV[1]`; keeps the key's TTL.
/// ARGV: token, lease ms. Returns 1 when renewed, 0 when the claim is no longer ours.
const RENEW: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local ok, r = pcall(cjson.decode, v)
if not ok or type(r) ~= 'table' or r.state ~= 'in_flight' or r.token ~= ARGV[1] then return 0 end
local rec = '{"state":"in_flight","fingerprint":' .. cjson.encode(r.fingerprint) .. ',"token":' ..
  cjson.encode(r.token) .. ',"lease_until":' .. string.format('%d', now + tonumber(ARGV[2])) .. '}'
redis.call('SET', KEYS[1], rec, 'KEEPTTL')
return 1
"#;

/// Replaces `KEYS[1]` with `ARGV[2]` when it is still the claim `ARGV[1]`. ARGV: token,
/// record, TTL ms.
const SETTLE: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local ok, r = pcall(cjson.decode, v)
if not ok or type(r) ~= 'table' or r.state ~= 'in_flight' or r.token ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"#;

/// Redis key prefix, so the service can share a Redis with others.
const PREFIX: &str = "gorgias-proxy:idem:";

/// Claims a key in the database. A new key is inserted; a key whose TTL passed is taken as
/// new; every claim keeps the key for a whole TTL from now (a caller still retrying a failed
/// attempt must not see its key, and the mark of its create, expire under it); a failed attempt or a lapsed claim of the same body is taken over, reconciling only
/// when a create was sent under it, and settling from the end of that attempt (or the lapse
/// of its lease). Returns whether to reconcile and the settle time left (ms, may be ≤ 0);
/// no row when another record stands.
const DB_CLAIM: &str = "INSERT INTO idempotency \
     (key, fingerprint, state, token, lease_until, reconcile, expires_at) \
     VALUES ($1, $2, 'in_flight', $3, {now} + $4, 0, {now} + $5) \
     ON CONFLICT (key) DO UPDATE SET \
     reconcile = CASE WHEN idempotency.expires_at < {now} THEN 0 \
                      WHEN idempotency.reconcile = 1 THEN 1 \
                      WHEN idempotency.state = 'in_flight' AND idempotency.status = 1 THEN 1 \
                      ELSE 0 END, \
     settle_until = CASE WHEN idempotency.expires_at < {now} THEN NULL \
                         WHEN idempotency.state = 'failed' THEN idempotency.settle_until \
                         WHEN idempotency.status = 1 THEN idempotency.lease_until + $6 \
                         ELSE idempotency.settle_until END, \
     fingerprint = excluded.fingerprint, state = 'in_flight', token = excluded.token, \
     lease_until = excluded.lease_until, status = NULL, content_type = NULL, body = NULL, \
     expires_at = excluded.expires_at \
     WHERE idempotency.expires_at < {now} \
        OR (idempotency.fingerprint = excluded.fingerprint \
            AND (idempotency.state = 'failed' \
                 OR (idempotency.state = 'in_flight' AND idempotency.lease_until < {now}))) \
     RETURNING reconcile, COALESCE(settle_until, 0) - {now}";

impl IdempotencyStore {
    /// An in-memory store remembering keys for `ttl`, bounded by [`MEMORY_BUDGET_BYTES`].
    pub fn memory(ttl: Duration) -> Self {
        Self::memory_with_budget(ttl, MEMORY_BUDGET_BYTES)
    }

    /// An in-memory store holding at most about `budget` bytes of finished keys and answers:
    /// a bound by entries would let a few large answers take any amount of memory. When full,
    /// the least useful finished records are evicted (a caller's retry then runs again and
    /// reconciles by `external_id`); claims in flight are never evicted.
    pub fn memory_with_budget(ttl: Duration, budget: u64) -> Self {
        Self {
            backend: Backend::Memory(Arc::new(Memory {
                in_flight: tokio::sync::Mutex::new(HashMap::new()),
                finished: Cache::builder()
                    .weigher(|key: &String, record: &Record| {
                        u32::try_from(key.len() + record.weight()).unwrap_or(u32::MAX)
                    })
                    .max_capacity(budget)
                    .time_to_live(ttl)
                    .build(),
            })),
            lease: LEASE,
            ttl,
            settle: Duration::ZERO,
        }
    }

    /// A durable store in `store`, with `redis` asked first when given.
    pub fn durable(store: Store, redis: Option<ConnectionManager>, ttl: Duration) -> Self {
        Self {
            backend: Backend::Durable { store, redis },
            lease: LEASE,
            ttl,
            settle: Duration::ZERO,
        }
    }

    /// The same store with another lease length (tests shorten it).
    #[must_use]
    pub fn with_lease(self, lease: Duration) -> Self {
        Self {
            lease: lease.max(Duration::from_millis(100)),
            ..self
        }
    }

    /// The same store with a settle window: how long after a create of unknown outcome a
    /// retry waits before looking the ticket up.
    #[must_use]
    pub fn with_settle(self, settle: Duration) -> Self {
        Self { settle, ..self }
    }

    /// How often a claim's work renews its lease: three times per lease, so two renewals may
    /// fail (a slow store) before the lease lapses under live work.
    pub fn renew_every(&self) -> Duration {
        self.lease / 3
    }

    /// Claims `key` for a request whose body has `fingerprint`.
    ///
    /// # Errors
    /// When the store cannot be reached.
    pub async fn claim(&self, key: &str, fingerprint: &str) -> Result<Claim, KeyStoreError> {
        let token = uuid::Uuid::new_v4().to_string();
        let acquired = |reconcile_first, settle_remaining| {
            Claim::Acquired(ClaimToken {
                key: key.to_owned(),
                fingerprint: fingerprint.to_owned(),
                token: token.clone(),
                reconcile_first,
                settle_remaining,
            })
        };
        match &self.backend {
            Backend::Memory(memory) => {
                let (reconcile, settle) =
                    match self.memory_claim(memory, key, fingerprint, &token).await {
                        Ok(won) => won,
                        Err(standing) => return Ok(standing),
                    };
                Ok(acquired(reconcile, settle))
            }
            Backend::Durable { store, redis } => {
                let mut redis_reconcile = false;
                if let Some(conn) = redis {
                    match redis_claim(conn, key, fingerprint, &token, self.lease, self.ttl).await? {
                        Ok(reconcile) => redis_reconcile = reconcile,
                        Err(standing) => return Ok(standing),
                    }
                }
                let won = store
                    .query_opt(
                        DB_CLAIM,
                        vec![
                            key.into(),
                            fingerprint.into(),
                            token.as_str().into(),
                            millis(self.lease).into(),
                            millis(self.ttl).into(),
                            millis(self.settle).into(),
                        ],
                    )
                    .await
                    .map_err(KeyStoreError::Database)?;
                if let Some(row) = won {
                    let settle = Duration::from_millis(row.uint(1));
                    return Ok(acquired(redis_reconcile || row.int(0) == 1, settle));
                }
                let standing = self.standing(store, key, fingerprint).await?;
                if let (Some(conn), Claim::Replay(answer)) = (redis, &standing) {
                    // Redis forgot a finished key (a flush, a restart): put it back.
                    let done = Record::Done {
                        fingerprint: fingerprint.to_owned(),
                        answer: answer.clone(),
                    };
                    let _ = redis_settle(conn, key, &token, &done, self.ttl).await;
                } else if let Some(conn) = redis {
                    let failed = Record::Failed {
                        fingerprint: fingerprint.to_owned(),
                        settle_until: 0,
                    };
                    let _ = redis_settle(conn, key, &token, &failed, self.ttl).await;
                }
                Ok(standing)
            }
        }
    }

    /// The record that stands in the database against a claim.
    async fn standing(
        &self,
        store: &Store,
        key: &str,
        fingerprint: &str,
    ) -> Result<Claim, KeyStoreError> {
        let row = store
            .query_opt(
                "SELECT fingerprint, state, status, content_type, body FROM idempotency \
                 WHERE key = $1",
                vec![key.into()],
            )
            .await
            .map_err(KeyStoreError::Database)?;
        Ok(match row {
            // Gone between the two statements (its TTL): still being decided, retry.
            None => Claim::InProgress,
            Some(r) if r.text(0) != fingerprint => Claim::Mismatch,
            Some(r) if r.text(1) == "done" => Claim::Replay(StoredAnswer {
                status: u16::try_from(r.int(2)).unwrap_or(200),
                content_type: r.text(3),
                body: r.text(4),
            }),
            Some(_) => Claim::InProgress,
        })
    }

    async fn memory_claim(
        &self,
        memory: &Memory,
        key: &str,
        fingerprint: &str,
        token: &str,
    ) -> Result<(bool, Duration), Claim> {
        let now = unix_ms();
        let mut in_flight = memory.in_flight.lock().await;
        let (reconcile, settle_until) = match in_flight.get(key) {
            Some(r) if r.fingerprint() != fingerprint => return Err(Claim::Mismatch),
            Some(Record::InFlight {
                lease_until,
                attempted,
                ..
            }) if *lease_until < now => (
                *attempted,
                if *attempted {
                    lease_until.saturating_add(millis(self.settle))
                } else {
                    0
                },
            ),
            Some(_) => return Err(Claim::InProgress),
            None => match memory.finished.get(key).await {
                None => (false, 0),
                Some(r) if r.fingerprint() != fingerprint => return Err(Claim::Mismatch),
                Some(Record::Done { answer, .. }) => return Err(Claim::Replay(answer)),
                Some(Record::Failed { settle_until, .. }) => (true, settle_until),
                Some(Record::InFlight { .. }) => (false, 0),
            },
        };
        in_flight.insert(
            key.to_owned(),
            Record::InFlight {
                fingerprint: fingerprint.to_owned(),
                token: token.to_owned(),
                lease_until: now.saturating_add(millis(self.lease)),
                attempted: reconcile,
            },
        );
        Ok((
            reconcile,
            Duration::from_millis(settle_until.saturating_sub(now)),
        ))
    }

    /// Renews the claim's lease.
    ///
    /// # Errors
    /// When the store cannot be reached. `Ok(false)` when the claim is no longer ours (its
    /// lease lapsed and another request took the key over).
    pub async fn renew(&self, claim: &ClaimToken) -> Result<bool, KeyStoreError> {
        match &self.backend {
            Backend::Memory(memory) => {
                let mut in_flight = memory.in_flight.lock().await;
                Ok(match in_flight.get_mut(&claim.key) {
                    Some(Record::InFlight {
                        token, lease_until, ..
                    }) if *token == claim.token => {
                        *lease_until = unix_ms().saturating_add(millis(self.lease));
                        true
                    }
                    _ => false,
                })
            }
            Backend::Durable { store, redis } => {
                if let Some(conn) = redis {
                    let mut conn = conn.clone();
                    let renewed = redis::Script::new(RENEW)
                        .key(format!("{PREFIX}{}", claim.key))
                        .arg(&claim.token)
                        .arg(millis(self.lease))
                        .invoke_async::<i64>(&mut conn)
                        .await;
                    if let Err(e) = renewed {
                        tracing::warn!(error = %e, "could not renew an idempotency claim in Redis");
                    }
                }
                store
                    .execute(
                        "UPDATE idempotency SET lease_until = {now} + $3 \
                         WHERE key = $1 AND token = $2 AND state = 'in_flight'",
                        vec![
                            claim.key.as_str().into(),
                            claim.token.as_str().into(),
                            millis(self.lease).into(),
                        ],
                    )
                    .await
                    .map(|n| n == 1)
                    .map_err(KeyStoreError::Database)
            }
        }
    }

    /// The fence before a create: proves the claim is still ours with time left on its lease,
    /// and marks that a create is being sent under it (so whoever takes the key over later
    /// looks the ticket up first, after the settle window). `Ok(false)`: the claim was lost;
    /// the create must not be sent.
    ///
    /// # Errors
    /// When the store cannot be reached (the create must not be sent either).
    pub async fn fence(&self, claim: &ClaimToken) -> Result<bool, KeyStoreError> {
        match &self.backend {
            Backend::Memory(memory) => {
                let now = unix_ms();
                let mut in_flight = memory.in_flight.lock().await;
                Ok(match in_flight.get_mut(&claim.key) {
                    Some(Record::InFlight {
                        token,
                        lease_until,
                        attempted,
                        ..
                    }) if *token == claim.token && *lease_until > now => {
                        *attempted = true;
                        true
                    }
                    _ => false,
                })
            }
            // `status = 1` on a claim in flight is the mark (the column holds the answer's
            // status once done).
            Backend::Durable { store, .. } => store
                .execute(
                    "UPDATE idempotency SET status = 1 WHERE key = $1 AND token = $2 \
                     AND state = 'in_flight' AND lease_until > {now}",
                    vec![claim.key.as_str().into(), claim.token.as_str().into()],
                )
                .await
                .map(|n| n == 1)
                .map_err(KeyStoreError::Database),
        }
    }

    /// Renews the claim's lease for as long as it is polled: run it alongside the claim's
    /// work, so the lease lives exactly as long as the work does. Never completes. A claim
    /// found lost is only logged here: the work's next create is refused by [`Self::fence`].
    pub async fn keep_alive(&self, claim: &ClaimToken) {
        let mut tick = tokio::time::interval(self.renew_every());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            match self.renew(claim).await {
                Ok(true) => {}
                Ok(false) => tracing::warn!(
                    "an idempotency claim was taken over while its work was still running"
                ),
                Err(e) => tracing::warn!(error = %e, "could not renew an idempotency claim"),
            }
        }
    }

    /// Stores the final answer under the claimed key, when the claim is still ours.
    ///
    /// # Errors
    /// When the store cannot be reached (the answer was already sent; the key then lapses and
    /// a retry reconciles).
    pub async fn complete(
        &self,
        claim: ClaimToken,
        answer: StoredAnswer,
    ) -> Result<(), KeyStoreError> {
        match &self.backend {
            Backend::Memory(memory) => {
                let mut in_flight = memory.in_flight.lock().await;
                if matches!(in_flight.get(&claim.key), Some(Record::InFlight { token, .. }) if *token == claim.token)
                {
                    let done = Record::Done {
                        fingerprint: claim.fingerprint,
                        answer,
                    };
                    memory.finished.insert(claim.key.clone(), done).await;
                    in_flight.remove(&claim.key);
                }
                Ok(())
            }
            Backend::Durable { store, redis } => {
                store
                    .execute(
                        "UPDATE idempotency SET state = 'done', status = $3, content_type = $4, \
                         body = $5, token = NULL, lease_until = NULL, settle_until = NULL, \
                         reconcile = 0, expires_at = {now} + $6 \
                         WHERE key = $1 AND token = $2 AND state = 'in_flight'",
                        vec![
                            claim.key.as_str().into(),
                            claim.token.as_str().into(),
                            i64::from(answer.status).into(),
                            answer.content_type.as_str().into(),
                            answer.body.as_str().into(),
                            millis(self.ttl).into(),
                        ],
                    )
                    .await
                    .map_err(KeyStoreError::Database)?;
                if let Some(conn) = redis {
                    let done = Record::Done {
                        fingerprint: claim.fingerprint,
                        answer,
                    };
                    redis_settle(conn, &claim.key, &claim.token, &done, self.ttl).await?;
                }
                Ok(())
            }
        }
    }

    /// Marks the claim failed, so the caller can try again with the same key; that attempt
    /// reconciles before creating when a create was sent under this claim, once the settle
    /// window has passed from now.
    ///
    /// # Errors
    /// When the store cannot be reached (the claim then lapses by itself).
    pub async fn release(&self, claim: ClaimToken) -> Result<(), KeyStoreError> {
        match &self.backend {
            Backend::Memory(memory) => {
                let mut in_flight = memory.in_flight.lock().await;
                if let Some(Record::InFlight {
                    token, attempted, ..
                }) = in_flight.get(&claim.key)
                    && *token == claim.token
                {
                    let failed = Record::Failed {
                        fingerprint: claim.fingerprint.clone(),
                        settle_until: if *attempted {
                            unix_ms().saturating_add(millis(self.settle))
                        } else {
                            0
                        },
                    };
                    memory.finished.insert(claim.key.clone(), failed).await;
                    in_flight.remove(&claim.key);
                }
                Ok(())
            }
            Backend::Durable { store, redis } => {
                store
                    .execute(
                        "UPDATE idempotency SET state = 'failed', token = NULL, \
                         lease_until = NULL, \
                         reconcile = CASE WHEN status = 1 OR reconcile = 1 THEN 1 ELSE 0 END, \
                         settle_until = CASE WHEN status = 1 THEN {now} + $3 \
                                             ELSE settle_until END, \
                         status = NULL \
                         WHERE key = $1 AND token = $2 AND state = 'in_flight'",
                        vec![
                            claim.key.as_str().into(),
                            claim.token.as_str().into(),
                            millis(self.settle).into(),
                        ],
                    )
                    .await
                    .map_err(KeyStoreError::Database)?;
                if let Some(conn) = redis {
                    let failed = Record::Failed {
                        fingerprint: claim.fingerprint.clone(),
                        settle_until: 0,
                    };
                    redis_settle(conn, &claim.key, &claim.token, &failed, self.ttl).await?;
                }
                Ok(())
            }
        }
    }
}

/// Claims in Redis: `Ok(reconcile)` when ours, `Err(claim)` when another record stands.
async fn redis_claim(
    conn: &ConnectionManager,
    key: &str,
    fingerprint: &str,
    token: &str,
    lease: Duration,
    ttl: Duration,
) -> Result<Result<bool, Claim>, KeyStoreError> {
    let mut conn = conn.clone();
    let outcome: String = redis::Script::new(CLAIM)
        .key(format!("{PREFIX}{key}"))
        .arg(fingerprint)
        .arg(token)
        .arg(millis(lease))
        .arg(millis(ttl))
        .invoke_async(&mut conn)
        .await
        .map_err(KeyStoreError::Redis)?;
    Ok(match outcome.as_str() {
        "acquired" => Ok(false),
        "reconcile" => Ok(true),
        other => Err(match serde_json::from_str::<Record>(other) {
            Ok(r) if r.fingerprint() != fingerprint => Claim::Mismatch,
            Ok(Record::Done { answer, .. }) => Claim::Replay(answer),
            Ok(Record::Failed { .. }) => Claim::Mismatch,
            // In flight, or unreadable (another version's format): still running.
            Ok(Record::InFlight { .. }) | Err(_) => Claim::InProgress,
        }),
    })
}

/// Replaces our claim in Redis with `record`.
async fn redis_settle(
    conn: &ConnectionManager,
    key: &str,
    token: &str,
    record: &Record,
    ttl: Duration,
) -> Result<(), KeyStoreError> {
    let mut conn = conn.clone();
    redis::Script::new(SETTLE)
        .key(format!("{PREFIX}{key}"))
        .arg(token)
        .arg(serde_json::to_string(record).unwrap_or_default())
        .arg(millis(ttl))
        .invoke_async::<i64>(&mut conn)
        .await
        .map(|_| ())
        .map_err(KeyStoreError::Redis)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// An `Idempotency-Key` is 1..=255 visible ASCII characters.
pub fn is_valid_key(key: &str) -> bool {
    (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic())
}

/// The request's identity: the SHA-256 of its JSON in canonical form (keys sorted, no
/// whitespace), so the same request re-serialised by a client still matches; bodies that are
/// not JSON are hashed as bytes.
pub fn fingerprint(body: &[u8]) -> String {
    fingerprint_parsed(serde_json::from_slice(body).ok().as_ref(), body)
}

/// [`fingerprint`] for a body the caller already parsed (`None` when it is not JSON).
pub fn fingerprint_parsed(parsed: Option<&serde_json::Value>, body: &[u8]) -> String {
    let mut h = Sha256::new();
    match parsed {
        Some(v) => h.update(v.to_string().as_bytes()),
        None => {
            h.update(b"raw:");
            h.update(body);
        }
    }
    hex(&h.finalize())
}

/// The ticket `external_id` for a keyed request: stable for the same key and body, so a retry
/// after an ambiguous failure finds the ticket its first attempt created, on any replica.
pub fn external_id(key: &str, fingerprint: &str) -> String {
    let mut h = Sha256::new();
    h.update(key.as_bytes());
    h.update([0]);
    h.update(fingerprint.as_bytes());
    format!("idem-{}", &hex(&h.finalize())[..40])
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_ignore_formatting_and_key_order() {
        assert_eq!(
            fingerprint(br#"{"a":1,"b":[1,2]}"#),
            fingerprint(b"{ \"b\": [1, 2], \"a\": 1 }")
        );
        assert_ne!(fingerprint(br#"{"a":1}"#), fingerprint(br#"{"a":2}"#));
        assert_ne!(fingerprint(b"not json"), fingerprint(b"not  json"));
    }

    #[test]
    fn keys_are_visible_ascii_up_to_255() {
        assert!(is_valid_key("order-42"));
        assert!(!is_valid_key(""));
        assert!(!is_valid_key("with space"));
        assert!(!is_valid_key(&"k".repeat(256)));
        assert!(!is_valid_key("clé"));
    }

    #[tokio::test]
    async fn memory_store_claims_replays_and_releases() {
        let store = IdempotencyStore::memory(Duration::from_secs(60));
        let Claim::Acquired(token) = store.claim("k", "f1").await.unwrap() else {
            panic!("first claim must be ours");
        };
        assert_eq!(store.claim("k", "f1").await.unwrap(), Claim::InProgress);
        assert_eq!(store.claim("k", "f2").await.unwrap(), Claim::Mismatch);
        assert!(!token.reconcile_first);
        // A create is sent under the claim, then the attempt fails.
        assert!(store.fence(&token).await.unwrap());
        store.release(token).await.unwrap();
        assert_eq!(store.claim("k", "f2").await.unwrap(), Claim::Mismatch);
        let Claim::Acquired(token) = store.claim("k", "f1").await.unwrap() else {
            panic!("a released key can be claimed again");
        };
        assert!(
            token.reconcile_first,
            "the failed attempt may have created the ticket"
        );
        let answer = StoredAnswer {
            status: 201,
            content_type: "application/json".into(),
            body: "{}".into(),
        };
        store.complete(token, answer.clone()).await.unwrap();
        assert_eq!(store.claim("k", "f1").await.unwrap(), Claim::Replay(answer));
        assert_eq!(store.claim("k", "f2").await.unwrap(), Claim::Mismatch);
    }

    #[tokio::test]
    async fn the_memory_store_is_bounded_by_bytes_not_entries() {
        // 1 MiB of budget, 100 answers of 64 KiB each: at most ~16 fit, whatever the count.
        let store = IdempotencyStore::memory_with_budget(Duration::from_secs(60), 1024 * 1024);
        for i in 0..100 {
            let key = format!("k{i}");
            let Claim::Acquired(token) = store.claim(&key, "f").await.unwrap() else {
                panic!("a fresh key is ours");
            };
            let answer = StoredAnswer {
                status: 201,
                content_type: "application/json".into(),
                body: "x".repeat(64 * 1024),
            };
            store.complete(token, answer).await.unwrap();
        }
        let Backend::Memory(memory) = &store.backend else {
            unreachable!()
        };
        let cache = &memory.finished;
        cache.run_pending_tasks().await;
        assert!(
            cache.weighted_size() <= 1024 * 1024,
            "{}",
            cache.weighted_size()
        );
        assert!(cache.entry_count() <= 16, "{}", cache.entry_count());
    }

    #[tokio::test]
    async fn a_full_memory_store_never_drops_a_claim_in_flight() {
        // A budget that holds a handful of finished answers, filled well past it: a bounded
        // cache's admission policy then refuses new entries, and a refused claim would let two
        // requests with one key both proceed.
        let store = IdempotencyStore::memory_with_budget(Duration::from_secs(60), 64 * 1024);
        for i in 0..200 {
            let key = format!("done{i}");
            let Claim::Acquired(token) = store.claim(&key, "f").await.unwrap() else {
                panic!("a fresh key is ours");
            };
            let answer = StoredAnswer {
                status: 201,
                content_type: "application/json".into(),
                body: "x".repeat(8 * 1024),
            };
            store.complete(token, answer).await.unwrap();
        }
        for i in 0..200 {
            let key = format!("new{i}");
            let Claim::Acquired(_held) = store.claim(&key, "f").await.unwrap() else {
                panic!("a fresh key is ours");
            };
            assert_eq!(
                store.claim(&key, "f").await.unwrap(),
                Claim::InProgress,
                "{key}: the first claim was dropped"
            );
        }
    }

    #[tokio::test]
    async fn a_lease_that_is_not_renewed_lapses_and_the_retry_reconciles() {
        let store = IdempotencyStore::memory(Duration::from_secs(60))
            .with_lease(Duration::from_millis(200));
        let Claim::Acquired(first) = store.claim("k", "f").await.unwrap() else {
            panic!("a fresh key is ours");
        };
        // Its work sends a create.
        assert!(store.fence(&first).await.unwrap());
        assert_eq!(store.claim("k", "f").await.unwrap(), Claim::InProgress);
        // The work renews while it runs: the key stays in progress past one lease.
        let renewing = {
            let (store, first) = (store.clone(), first.clone());
            tokio::spawn(async move { store.keep_alive(&first).await })
        };
        tokio::time::sleep(Duration::from_millis(450)).await;
        assert_eq!(store.claim("k", "f").await.unwrap(), Claim::InProgress);
        // The work dies (no more renewals): within a lease the key can be taken over, and the
        // new claim knows a create may have happened.
        renewing.abort();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(store.claim("k", "other").await.unwrap(), Claim::Mismatch);
        let Claim::Acquired(second) = store.claim("k", "f").await.unwrap() else {
            panic!("a lapsed lease can be taken over");
        };
        assert!(second.reconcile_first);
        // The dead claim can no longer renew or release what is now the second's.
        assert!(!store.renew(&first).await.unwrap());
        store.release(first).await.unwrap();
        assert_eq!(store.claim("k", "f").await.unwrap(), Claim::InProgress);
    }
}
