//! What several replicas must agree on, through Redis (`REDIS_URL`): the account's call budget
//! (a GCRA limiter in one Lua script, on Redis's clock), and the creation of a new customer (a
//! short lock plus a shared record of customers already resolved, so a replica that waited for
//! the lock finds the customer without asking Gorgias again).
//!
//! Without Redis none of this exists: the in-process limiter and single-flight cache suffice.

use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::time::Instant;

use gorgias::{BoxFuture, Budget, BudgetError, Customer, SharedBudget};

/// Redis key prefix, so the service can share a Redis with others.
const PREFIX: &str = "gorgias-proxy:";

/// GCRA over Redis's own clock, so replicas with skewed clocks still share one budget.
/// ARGV: period ms, burst tolerance ms, cost, force (1 = take even if it means waiting; used to
/// charge calls Gorgias counted but we did not). Returns 0 when allowed, else ms to wait.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local period = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + period * cost
local wait = new_tat - tau - now
if wait > 0 and ARGV[4] ~= '1' then return math.ceil(wait) end
redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', math.max(1, math.ceil(new_tat - now + tau)))
return 0
";

/// The account's call budget shared by every replica.
#[derive(Clone)]
pub struct SharedLimiter {
    conn: ConnectionManager,
    key: String,
    period_ms: f64,
    tau_ms: f64,
    script: redis::Script,
}

impl std::fmt::Debug for SharedLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SharedLimiter({} every {:.1} ms)",
            self.key, self.period_ms
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
            key: format!("{PREFIX}gcra:{account}"),
            period_ms,
            tau_ms: period_ms * f64::from(allowed.max(1)),
            script: redis::Script::new(GCRA),
        }
    }

    /// Takes one call, or says how long to wait for it.
    ///
    /// # Errors
    /// When Redis cannot be reached.
    pub async fn try_take(&self) -> Result<Option<Duration>, redis::RedisError> {
        let wait: u64 = self.run(1, false).await?;
        Ok((wait > 0).then(|| Duration::from_millis(wait)))
    }

    /// Charges `calls` that Gorgias counted beyond ours.
    ///
    /// # Errors
    /// When Redis cannot be reached.
    pub async fn charge(&self, calls: u32) -> Result<(), redis::RedisError> {
        self.run(calls, true).await.map(|_: u64| ())
    }

    async fn run(&self, cost: u32, force: bool) -> Result<u64, redis::RedisError> {
        let mut conn = self.conn.clone();
        self.script
            .key(&self.key)
            .arg(self.period_ms)
            .arg(self.tau_ms)
            .arg(cost)
            .arg(if force { "1" } else { "0" })
            .invoke_async(&mut conn)
            .await
    }
}

impl SharedBudget for SharedLimiter {
    fn try_take(&self) -> BoxFuture<'_, Result<Option<Duration>, BudgetError>> {
        Box::pin(async move { Ok(SharedLimiter::try_take(self).await?) })
    }

    fn charge(&self, calls: u32) -> BoxFuture<'_, Result<(), BudgetError>> {
        Box::pin(async move { Ok(SharedLimiter::charge(self, calls).await?) })
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

/// How long one replica may hold a creation lock before others assume it died.
const LOCK_TTL: Duration = Duration::from_secs(10);

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
                .arg(LOCK_TTL.as_millis() as u64)
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
