//! `Idempotency-Key`: the first final answer to a key is stored and replayed to every retry of
//! the same request, so a caller that timed out can safely send again.
//!
//! Two stores with one behaviour: in memory (one replica) or Redis (`REDIS_URL`, any replica can
//! replay any key). A key is first *claimed* (in flight), then either *completed* with a final
//! answer (201, or a 4xx that will not change) or *released* (5xx, 503: the caller may retry).
//!
//! A claim is a **lease**: the work holding it renews it every third of [`LEASE`]; when the work
//! is gone (a panic, a crash, a killed replica) the lease lapses within seconds and the next
//! retry takes the key over. The key itself is kept for its whole TTL whatever happens to the
//! lease, so it remembers that a create was attempted: every later claim of a key that was not
//! completed looks the ticket up by `external_id` before creating one.

use std::time::Duration;

use moka::future::Cache;
use moka::ops::compute::Op;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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

/// What a key's record holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Record {
    /// Claimed by a request whose work renews the lease until `lease_until` (Unix ms, on the
    /// store's clock); `token` identifies the claim. Past it, the work is presumed dead.
    InFlight {
        fingerprint: String,
        token: String,
        lease_until: u64,
    },
    /// Finished; replay `answer` to the same request.
    Done {
        fingerprint: String,
        answer: StoredAnswer,
    },
    /// An attempt ended without a final answer (5xx, 503). Its ticket create may have landed
    /// in Gorgias all the same, so the next attempt looks the ticket up before creating one.
    Failed { fingerprint: String },
}

/// Memory the in-process idempotency store may use for keys and answers: 64 MiB.
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
                Self::Failed { fingerprint } => fingerprint.len(),
            }
    }

    fn fingerprint(&self) -> &str {
        match self {
            Self::InFlight { fingerprint, .. }
            | Self::Done { fingerprint, .. }
            | Self::Failed { fingerprint } => fingerprint,
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

/// Proof of a claim, needed to complete or release it (so a late request cannot release a
/// claim that is not its own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimToken {
    key: String,
    fingerprint: String,
    token: String,
    /// An earlier attempt with this key failed after it may have created the ticket: look it
    /// up by `external_id` before creating.
    pub reconcile_first: bool,
}

/// The store could not be used (Redis down): the caller gets a 503 and may retry.
#[derive(Debug, thiserror::Error)]
#[error("the idempotency store is unavailable")]
pub struct StoreError(#[source] pub redis::RedisError);

/// How long a claim lives without renewal: the time a dead request's key stays answered 409
/// before a retry may take it over.
pub const LEASE: Duration = Duration::from_secs(10);

/// Where keys live, and how long a lease lasts.
#[derive(Clone)]
pub struct IdempotencyStore {
    backend: Backend,
    lease: Duration,
}

#[derive(Clone)]
enum Backend {
    /// This process's memory (bounded, with TTL).
    Memory(Cache<String, Record>),
    /// Shared Redis.
    Redis {
        /// Reconnecting connection.
        conn: ConnectionManager,
        /// How long a key is remembered.
        ttl: Duration,
    },
}

impl std::fmt::Debug for IdempotencyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.backend {
            Backend::Memory(_) => "IdempotencyStore::Memory",
            Backend::Redis { .. } => "IdempotencyStore::Redis",
        })
    }
}

/// Now, in Unix milliseconds (the memory store's lease clock; Redis uses its own).
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Claims `KEYS[1]`: a free key, a failed attempt of the same body, or an in-flight claim of
/// the same body whose lease lapsed. The key keeps its whole TTL. ARGV: fingerprint, token,
/// lease ms, TTL ms. Returns `acquired`, `reconcile`, or the record that stands.
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

/// Marks `KEYS[1]` failed when it is still the claim `ARGV[1]`. ARGV: token, record, TTL ms.
const RELEASE: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local ok, r = pcall(cjson.decode, v)
if not ok or type(r) ~= 'table' or r.state ~= 'in_flight' or r.token ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"#;

/// Redis key prefix, so the service can share a Redis with others.
const PREFIX: &str = "gorgias-proxy:idem:";

impl IdempotencyStore {
    /// An in-memory store remembering keys for `ttl`, bounded by [`MEMORY_BUDGET_BYTES`].
    pub fn memory(ttl: Duration) -> Self {
        Self::memory_with_budget(ttl, MEMORY_BUDGET_BYTES)
    }

    /// An in-memory store holding at most about `budget` bytes of keys and answers: a bound by
    /// entries would let a few large answers take any amount of memory. When full, the least
    /// useful records are evicted (a caller's retry then runs again and reconciles by
    /// `external_id`).
    pub fn memory_with_budget(ttl: Duration, budget: u64) -> Self {
        Self {
            backend: Backend::Memory(
                Cache::builder()
                    .weigher(|key: &String, record: &Record| {
                        u32::try_from(key.len() + record.weight()).unwrap_or(u32::MAX)
                    })
                    .max_capacity(budget)
                    .time_to_live(ttl)
                    .build(),
            ),
            lease: LEASE,
        }
    }

    /// A Redis store remembering keys for `ttl`.
    pub fn redis(conn: ConnectionManager, ttl: Duration) -> Self {
        Self {
            backend: Backend::Redis { conn, ttl },
            lease: LEASE,
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

    /// How often a claim's work renews its lease: three times per lease, so two renewals may
    /// fail (a slow Redis) before the lease lapses under live work.
    pub fn renew_every(&self) -> Duration {
        self.lease / 3
    }

    /// Claims `key` for a request whose body has `fingerprint`.
    ///
    /// # Errors
    /// When Redis cannot be reached.
    pub async fn claim(&self, key: &str, fingerprint: &str) -> Result<Claim, StoreError> {
        let token = uuid::Uuid::new_v4().to_string();
        let mut reconcile_first = false;
        let existing = match &self.backend {
            Backend::Memory(cache) => {
                let now = unix_ms();
                let mine = Record::InFlight {
                    fingerprint: fingerprint.to_owned(),
                    token: token.clone(),
                    lease_until: now.saturating_add(millis(self.lease)),
                };
                let mut found = None;
                cache
                    .entry(key.to_owned())
                    .and_compute_with(|current| {
                        // Runs under moka's per-key lock: claim and check are one step.
                        let op = match current.map(moka::Entry::into_value) {
                            None => Op::Put(mine),
                            Some(Record::Failed { fingerprint: f }) if f == fingerprint => {
                                reconcile_first = true;
                                Op::Put(mine)
                            }
                            Some(Record::InFlight {
                                fingerprint: f,
                                lease_until,
                                ..
                            }) if f == fingerprint && lease_until < now => {
                                reconcile_first = true;
                                Op::Put(mine)
                            }
                            Some(other) => {
                                found = Some(other);
                                Op::Nop
                            }
                        };
                        std::future::ready(op)
                    })
                    .await;
                found
            }
            Backend::Redis { conn, ttl } => {
                let mut conn = conn.clone();
                let outcome: String = redis::Script::new(CLAIM)
                    .key(format!("{PREFIX}{key}"))
                    .arg(fingerprint)
                    .arg(&token)
                    .arg(millis(self.lease))
                    .arg(millis(*ttl))
                    .invoke_async(&mut conn)
                    .await
                    .map_err(StoreError)?;
                match outcome.as_str() {
                    "acquired" => None,
                    "reconcile" => {
                        reconcile_first = true;
                        None
                    }
                    other => match serde_json::from_str::<Record>(other) {
                        Ok(r) => Some(r),
                        // Unreadable (another version's format): treat as still running.
                        Err(_) => return Ok(Claim::InProgress),
                    },
                }
            }
        };
        Ok(match existing {
            None => Claim::Acquired(ClaimToken {
                key: key.to_owned(),
                fingerprint: fingerprint.to_owned(),
                token,
                reconcile_first,
            }),
            Some(r) if r.fingerprint() != fingerprint => Claim::Mismatch,
            Some(Record::InFlight { .. }) => Claim::InProgress,
            Some(Record::Done { answer, .. }) => Claim::Replay(answer),
            // Only reached with another fingerprint, handled above; kept total.
            Some(Record::Failed { .. }) => Claim::Mismatch,
        })
    }

    /// Renews the claim's lease.
    ///
    /// # Errors
    /// When Redis cannot be reached. `Ok(false)` when the claim is no longer ours (its lease
    /// lapsed and another request took the key over).
    pub async fn renew(&self, claim: &ClaimToken) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::Memory(cache) => {
                let lease_until = unix_ms().saturating_add(millis(self.lease));
                let mut renewed = false;
                cache
                    .entry(claim.key.clone())
                    .and_compute_with(|current| {
                        let op = match current.map(moka::Entry::into_value) {
                            Some(Record::InFlight {
                                fingerprint, token, ..
                            }) if token == claim.token => {
                                renewed = true;
                                Op::Put(Record::InFlight {
                                    fingerprint,
                                    token,
                                    lease_until,
                                })
                            }
                            _ => Op::Nop,
                        };
                        std::future::ready(op)
                    })
                    .await;
                Ok(renewed)
            }
            Backend::Redis { conn, .. } => {
                let mut conn = conn.clone();
                redis::Script::new(RENEW)
                    .key(format!("{PREFIX}{}", claim.key))
                    .arg(&claim.token)
                    .arg(millis(self.lease))
                    .invoke_async::<i64>(&mut conn)
                    .await
                    .map(|n| n == 1)
                    .map_err(StoreError)
            }
        }
    }

    /// Renews the claim's lease for as long as it is polled: run it alongside the claim's
    /// work, so the lease lives exactly as long as the work does. Never completes.
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

    /// Stores the final answer under the claimed key.
    ///
    /// # Errors
    /// When Redis cannot be reached (the answer was already sent; the key then expires).
    pub async fn complete(
        &self,
        claim: ClaimToken,
        answer: StoredAnswer,
    ) -> Result<(), StoreError> {
        let done = Record::Done {
            fingerprint: claim.fingerprint,
            answer,
        };
        match &self.backend {
            Backend::Memory(cache) => {
                cache.insert(claim.key, done).await;
                Ok(())
            }
            Backend::Redis { conn, ttl } => {
                let mut conn = conn.clone();
                let json = serde_json::to_string(&done).unwrap_or_default();
                redis::cmd("SET")
                    .arg(format!("{PREFIX}{}", claim.key))
                    .arg(json)
                    .arg("PX")
                    .arg(millis(*ttl))
                    .query_async::<()>(&mut conn)
                    .await
                    .map_err(StoreError)
            }
        }
    }

    /// Marks the claim failed, so the caller can try again with the same key and that attempt
    /// reconciles before creating.
    ///
    /// # Errors
    /// When Redis cannot be reached (the claim then expires by itself).
    pub async fn release(&self, claim: ClaimToken) -> Result<(), StoreError> {
        let failed = Record::Failed {
            fingerprint: claim.fingerprint.clone(),
        };
        match &self.backend {
            Backend::Memory(cache) => {
                // Only our own claim: a finished answer stored meanwhile is kept.
                cache
                    .entry(claim.key.clone())
                    .and_compute_with(|current| {
                        let op = match current.map(moka::Entry::into_value) {
                            Some(Record::InFlight { token, .. }) if token == claim.token => {
                                Op::Put(failed)
                            }
                            _ => Op::Nop,
                        };
                        std::future::ready(op)
                    })
                    .await;
                Ok(())
            }
            Backend::Redis { conn, ttl } => {
                let mut conn = conn.clone();
                redis::Script::new(RELEASE)
                    .key(format!("{PREFIX}{}", claim.key))
                    .arg(claim.token)
                    .arg(serde_json::to_string(&failed).unwrap_or_default())
                    .arg(millis(*ttl))
                    .invoke_async::<i64>(&mut conn)
                    .await
                    .map(|_| ())
                    .map_err(StoreError)
            }
        }
    }
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
        let Backend::Memory(cache) = &store.backend else {
            unreachable!()
        };
        cache.run_pending_tasks().await;
        assert!(
            cache.weighted_size() <= 1024 * 1024,
            "{}",
            cache.weighted_size()
        );
        assert!(cache.entry_count() <= 16, "{}", cache.entry_count());
    }

    #[tokio::test]
    async fn a_lease_that_is_not_renewed_lapses_and_the_retry_reconciles() {
        let store = IdempotencyStore::memory(Duration::from_secs(60))
            .with_lease(Duration::from_millis(200));
        let Claim::Acquired(first) = store.claim("k", "f").await.unwrap() else {
            panic!("a fresh key is ours");
        };
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
