//! What several replicas must agree on, through Redis (`REDIS_URL`): the account's call budget
//! (a GCRA limiter in one Lua script, on Redis's clock), and the creation of a new customer (a
//! short lock plus a shared record of customers already resolved, so a replica that waited for
//! the lock finds the customer without asking Gorgias again).
//!
//! Without Redis none of this exists: the in-process limiter and single-flight cache suffice.

use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::time::Instant;

use gorgias::{BoxFuture, Budget, BudgetError, Customer, Grant, SharedBudget};

/// Redis key prefix, so the service can share a Redis with others.
const PREFIX: &str = "gorgias-proxy:";

/// GCRA over Redis's own clock, so replicas with skewed clocks still share one budget.
/// KEYS: the GCRA state, the 429 pause, the usage-feedback record, the set of live replicas.
/// ARGV: period ms, burst tolerance ms, mode, replica id, and per mode:
/// - `take`: take one call unless paused or none is free. Returns `{wait_ms, replicas}`
///   (`wait_ms` 0 when taken); `replicas` counts the processes that asked in the last 30 s.
/// - `excess N WINDOW_MS`: the account is N calls beyond our share; charge what this window has
///   not been charged yet (every answer of a window reports the same usage).
/// - `pause MS`: no call for MS (a 429's `Retry-After`), unless a longer pause is set.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local period = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local mode = ARGV[3]
local function charge(cost, force)
  local tat = tonumber(redis.call('GET', KEYS[1]) or now)
  if tat < now then tat = now end
  local new_tat = tat + period * cost
  local wait = new_tat - tau - now
  if wait > 0 and not force then return math.ceil(wait) end
  redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', math.max(1, math.ceil(new_tat - now + tau)))
  return 0
end
if mode == 'take' then
  redis.call('ZADD', KEYS[4], now, ARGV[4])
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - 30000)
  redis.call('PEXPIRE', KEYS[4], 60000)
  local replicas = redis.call('ZCARD', KEYS[4])
  local paused = redis.call('PTTL', KEYS[2])
  if paused > 0 then return {paused, replicas} end
  return {charge(1, false), replicas}
elseif mode == 'excess' then
  local excess = tonumber(ARGV[5])
  local prev = tonumber(redis.call('GET', KEYS[3]) or 0)
  if excess <= prev then return 0 end
  charge(excess - prev, true)
  if prev == 0 then
    redis.call('SET', KEYS[3], excess, 'PX', ARGV[6])
  else
    redis.call('SET', KEYS[3], excess, 'KEEPTTL')
  end
  return excess - prev
elseif mode == 'pause' then
  local ms = tonumber(ARGV[5])
  if redis.call('PTTL', KEYS[2]) < ms then
    redis.call('SET', KEYS[2], '1', 'PX', ms)
  end
  return 0
end
return redis.error_reply('unknown mode')
";

/// The account's call budget shared by every replica.
#[derive(Clone)]
pub struct SharedLimiter {
    conn: ConnectionManager,
    /// `gcra`, `pause`, `feedback`, `replicas` keys, in the script's order.
    keys: [String; 4],
    /// This process, in the set of live replicas.
    replica: String,
    period_ms: f64,
    tau_ms: f64,
    script: redis::Script,
}

impl std::fmt::Debug for SharedLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SharedLimiter({} every {:.1} ms)",
            self.keys[0], self.period_ms
        )
    }
}

impl SharedLimiter {
    /// `budget.allowed` calls per `budget.window`, shared under `account` (the Gorgias base
    /// URL).
    pub fn new(conn: ConnectionManager, account: &str, budget: Budget) -> Self {
        let Budget { allowed, window } = budget;
        let period_ms = window.as_secs_f64() * 1e3 / f64::from(allowed.max(1));
        Self {
            conn,
            keys: ["gcra", "pause", "feedback", "replicas"]
                .map(|k| format!("{PREFIX}{k}:{account}")),
            replica: uuid::Uuid::new_v4().to_string(),
            period_ms,
            // Burst tolerance: the whole budget at once, as the in-process limiter allows.
            tau_ms: period_ms * f64::from(allowed.max(1)),
            script: redis::Script::new(GCRA),
        }
    }

    fn invocation(&self, mode: &str) -> redis::ScriptInvocation<'_> {
        let mut inv = self.script.prepare_invoke();
        for key in &self.keys {
            inv.key(key);
        }
        inv.arg(self.period_ms)
            .arg(self.tau_ms)
            .arg(mode)
            .arg(&self.replica);
        inv
    }

    /// Takes one call, or says how long to wait for it; with the replicas seen lately.
    ///
    /// # Errors
    /// When Redis cannot be reached.
    pub async fn try_take(&self) -> Result<Grant, redis::RedisError> {
        let mut conn = self.conn.clone();
        let (wait, replicas): (u64, u32) = self.invocation("take").invoke_async(&mut conn).await?;
        Ok(Grant {
            wait: (wait > 0).then(|| Duration::from_millis(wait)),
            processes: replicas,
        })
    }

    /// Charges the part of `excess` this window has not been charged yet.
    ///
    /// # Errors
    /// When Redis cannot be reached.
    pub async fn observe_excess(
        &self,
        excess: u32,
        window: Duration,
    ) -> Result<(), redis::RedisError> {
        let mut conn = self.conn.clone();
        self.invocation("excess")
            .arg(excess)
            .arg(millis(window))
            .invoke_async::<i64>(&mut conn)
            .await
            .map(|_| ())
    }

    /// Pauses every replica for `pause`.
    ///
    /// # Errors
    /// When Redis cannot be reached.
    pub async fn pause(&self, pause: Duration) -> Result<(), redis::RedisError> {
        let mut conn = self.conn.clone();
        self.invocation("pause")
            .arg(millis(pause))
            .invoke_async::<i64>(&mut conn)
            .await
            .map(|_| ())
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl SharedBudget for SharedLimiter {
    fn try_take(&self) -> BoxFuture<'_, Result<Grant, BudgetError>> {
        Box::pin(async move { Ok(SharedLimiter::try_take(self).await?) })
    }

    fn observe_excess(
        &self,
        excess: u32,
        window: Duration,
    ) -> BoxFuture<'_, Result<(), BudgetError>> {
        Box::pin(async move { Ok(SharedLimiter::observe_excess(self, excess, window).await?) })
    }

    fn pause(&self, pause: Duration) -> BoxFuture<'_, Result<(), BudgetError>> {
        Box::pin(async move { Ok(SharedLimiter::pause(self, pause).await?) })
    }
}

/// Customers resolved by any replica, and the lock that makes one replica create a new one.
#[derive(Clone)]
pub struct SharedCustomers {
    conn: ConnectionManager,
    ttl: Duration,
    /// Key namespace: the Gorgias account, since customer ids mean nothing across accounts.
    namespace: String,
}

impl std::fmt::Debug for SharedCustomers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedCustomers")
    }
}

/// How long a creation lock lives without renewal. The holder renews it every third of this
/// while its section runs (pacing waits, call timeouts and retries can take longer than any
/// fixed time), so it lapses only when the holder is gone.
const LOCK_LEASE: Duration = Duration::from_secs(6);

/// A held creation lock; release it with [`SharedCustomers::unlock`].
#[derive(Debug)]
pub struct LockToken {
    key: String,
    token: String,
    /// True when another replica held the lock first (it may have created the customer).
    pub waited: bool,
}

impl SharedCustomers {
    /// Shared records for `account`, kept for `ttl` (the customer cache's TTL).
    pub fn new(conn: ConnectionManager, ttl: Duration, account: &str) -> Self {
        Self {
            conn,
            ttl,
            namespace: format!("{PREFIX}{account}:"),
        }
    }

    /// A customer some replica resolved for `key`, if any.
    ///
    /// # Errors
    /// When Redis cannot be reached.
    pub async fn get(&self, key: &str) -> Result<Option<Customer>, redis::RedisError> {
        let mut conn = self.conn.clone();
        let raw: Option<String> = redis::cmd("GET")
            .arg(format!("{}customer:{key}", self.namespace))
            .query_async(&mut conn)
            .await?;
        Ok(raw.and_then(|r| serde_json::from_str(&r).ok()))
    }

    /// Records the customer resolved for `key`.
    ///
    /// # Errors
    /// When Redis cannot be reached.
    pub async fn put(&self, key: &str, customer: &Customer) -> Result<(), redis::RedisError> {
        let mut conn = self.conn.clone();
        let json = serde_json::to_string(customer).unwrap_or_default();
        redis::cmd("SET")
            .arg(format!("{}customer:{key}", self.namespace))
            .arg(json)
            .arg("PX")
            .arg(
                u64::try_from(self.ttl.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1),
            )
            .query_async(&mut conn)
            .await
    }

    /// Waits for the creation lock of `key` until `deadline`.
    ///
    /// # Errors
    /// When Redis cannot be reached; `Ok(None)` when the deadline passes first.
    pub async fn lock(
        &self,
        key: &str,
        deadline: Instant,
    ) -> Result<Option<LockToken>, redis::RedisError> {
        let mut conn = self.conn.clone();
        let lock_key = format!("{}lock:customer:{key}", self.namespace);
        let token = uuid::Uuid::new_v4().to_string();
        let mut waited = false;
        loop {
            let got: Option<String> = redis::cmd("SET")
                .arg(&lock_key)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(millis(LOCK_LEASE))
                .query_async(&mut conn)
                .await?;
            if got.is_some() {
                return Ok(Some(LockToken {
                    key: lock_key,
                    token,
                    waited,
                }));
            }
            waited = true;
            let pause = Duration::from_millis(20 + fastrand::u64(0..20));
            if Instant::now() + pause >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// Extends the lock's lease when it is still ours.
    ///
    /// # Errors
    /// When Redis cannot be reached. `Ok(false)` when the lock is no longer ours.
    pub async fn renew(&self, lock: &LockToken) -> Result<bool, redis::RedisError> {
        let mut conn = self.conn.clone();
        redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0",
        )
        .key(&lock.key)
        .arg(&lock.token)
        .arg(millis(LOCK_LEASE))
        .invoke_async::<i64>(&mut conn)
        .await
        .map(|n| n == 1)
    }

    /// Whether the lock is still ours: the fence checked before a customer create is sent, so
    /// a holder whose lease lapsed (a stall longer than the lease) never creates alongside the
    /// replica that took the lock over.
    ///
    /// # Errors
    /// When Redis cannot be reached.
    pub async fn holds(&self, lock: &LockToken) -> Result<bool, redis::RedisError> {
        let mut conn = self.conn.clone();
        let owner: Option<String> = redis::cmd("GET")
            .arg(&lock.key)
            .query_async(&mut conn)
            .await?;
        Ok(owner.as_deref() == Some(lock.token.as_str()))
    }

    /// Renews the lock for as long as it is polled: run it alongside the section the lock
    /// guards. Never completes.
    pub async fn keep_alive(&self, lock: &LockToken) {
        let mut tick = tokio::time::interval(LOCK_LEASE / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            match self.renew(lock).await {
                Ok(true) => {}
                Ok(false) => tracing::warn!("a customer creation lock lapsed while held"),
                Err(e) => tracing::warn!(error = %e, "could not renew a customer creation lock"),
            }
        }
    }

    /// Releases a lock if it is still ours.
    ///
    /// # Errors
    /// When Redis cannot be reached (the lock then expires by itself).
    pub async fn unlock(&self, lock: LockToken) -> Result<(), redis::RedisError> {
        let mut conn = self.conn.clone();
        redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
        )
        .key(lock.key)
        .arg(lock.token)
        .invoke_async::<i64>(&mut conn)
        .await
        .map(|_| ())
    }
}

/// Connects to Redis with a reconnecting connection.
///
/// # Errors
/// When the URL is invalid or Redis cannot be reached now.
pub async fn connect(url: &str) -> Result<ConnectionManager, redis::RedisError> {
    let client = redis::Client::open(url)?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)));
    ConnectionManager::new_with_config(client, config).await
}
