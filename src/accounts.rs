//! The Gorgias accounts this deployment serves: a registry from a connection id to a cheap
//! handle on that account's client, use case and rules.
//!
//! Every route that talks to Gorgias is handed one [`Account`] by the [`Route`] extractor;
//! the use case never learns that there is more than one. The default account comes from the
//! `GORGIAS_*` settings (a request without `Connection-Id` goes there, exactly as before
//! connections existed); the others are connections stored in the database.
//!
//! What is shared and what is not:
//! - HTTP pools are shared by every account (credentials travel as a header on each call);
//! - the call budget is per *Gorgias account* (its base URL): two connections to one
//!   subdomain pace against one budget, in memory and in Redis;
//! - caches (customers, the ticket channel), idempotency keys and deliveries are per
//!   connection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gorgias::{ClientSettings, GorgiasClient, HttpPools, Pacer};

use crate::callers::Caller;
use crate::connections::{Connections, Status};
use crate::coordination::{SharedCustomers, SharedLimiter};
use crate::domain::request::Rules;
use crate::secrets::Keyring;
use crate::ticketing::{Ticketing, TicketingSettings};
use redis::aio::ConnectionManager as RedisConn;

/// The header that names the connection a request is for (Nango's name for it).
pub const CONNECTION_ID: &str = "connection-id";

/// The most characters in a connection id.
const ID_MAX: usize = 64;

/// A connection's id: 1 to 64 letters, digits, `.`, `_` or `-` (safe in a URL path, a log
/// line and a key).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(String);

impl ConnectionId {
    /// The id, when `s` is one.
    pub fn parse(s: &str) -> Option<Self> {
        ((1..=ID_MAX).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')))
        .then(|| Self(s.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One account's handle: cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Account(Arc<AccountInner>);

/// What an account's handle holds.
pub struct AccountInner {
    /// The stored connection, or `None` for the default account from `GORGIAS_*`.
    pub connection: Option<ConnectionId>,
    /// The create-ticket use case over this account's client and caches.
    pub ticketing: Ticketing,
    /// Value rules (the phone region) for this account's tickets.
    pub rules: Rules,
    /// Gorgias refused this connection's credentials: synchronous requests are answered 503
    /// at once, deliveries wait.
    needs_reconnect: AtomicBool,
    /// When its success was last written (Unix ms).
    last_ok_write: AtomicU64,
    /// The version of the stored row it was built from (0: the default account).
    version: i64,
    /// Whether its credentials are OAuth2 tokens (refreshed on expiry and on a 401).
    oauth: bool,
}

impl std::ops::Deref for Account {
    type Target = AccountInner;
    fn deref(&self) -> &AccountInner {
        &self.0
    }
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.connection {
            Some(id) => write!(f, "Account({id})"),
            None => f.write_str("Account(default)"),
        }
    }
}

impl Account {
    /// The scope of a caller's idempotency keys and deliveries on this account: the caller
    /// alone on the default account (so keys written before connections existed still
    /// replay), `caller@connection` on a stored one. A key is never shared across
    /// connections: the same key sent to two merchants is two tickets.
    pub fn scope(&self, caller: &Caller) -> String {
        scope_of(caller, self.connection.as_ref())
    }

    /// Whether Gorgias refused this connection's credentials (a new `PUT` clears it).
    pub fn needs_reconnect(&self) -> bool {
        self.needs_reconnect.load(Ordering::Relaxed)
    }

    /// Whether its credentials are OAuth2 tokens that can be refreshed.
    pub fn is_oauth(&self) -> bool {
        self.oauth
    }

    fn set_needs_reconnect(&self, yes: bool) {
        self.needs_reconnect.store(yes, Ordering::Relaxed);
    }

    /// The connection as stored on a delivery: empty for the default account.
    pub fn connection_column(&self) -> &str {
        self.connection.as_ref().map_or("", ConnectionId::as_str)
    }
}

/// The one spelling of a caller's scope on a connection (see [`Account::scope`]).
fn scope_of(caller: &Caller, connection: Option<&ConnectionId>) -> String {
    match connection {
        None => caller.as_str().to_owned(),
        Some(id) => format!("{}@{id}", caller.as_str()),
    }
}

/// Why a request's account could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    /// No `Connection-Id` and no default account.
    #[error("this deployment has no default Gorgias account: send a Connection-Id header")]
    Required,
    /// An unknown connection, one this caller may not use, or a malformed id: all alike, so
    /// callers cannot learn which connections exist.
    #[error("no such connection")]
    Unknown,
    /// The database holding the connections cannot be read.
    #[error("the connections cannot be read")]
    Unavailable,
    /// Gorgias refused the connection's refresh token (`invalid_grant`) or credentials: a
    /// person must reconnect it.
    #[error(
        "Gorgias refused the credentials of connection {0}; it needs reconnecting (PUT \
         /connections/{0} with new credentials)"
    )]
    NeedsReconnect(ConnectionId),
}

/// Calls per window, or `None` for pacing off (as `ClientSettings::rate_limit`).
type Rate = Option<(u32, std::time::Duration)>;

/// Builds account handles: the parts every account shares (HTTP pools, Redis, the per-account
/// budgets) and the defaults each connection may override.
pub struct AccountFactory {
    pools: HttpPools,
    client: ClientSettings,
    ticketing: TicketingSettings,
    rules: Rules,
    redis: Option<RedisConn>,
    /// One pacer per Gorgias account (base URL), shared by its connections, with the rate it
    /// was built for.
    pacers: Mutex<HashMap<String, (Rate, Pacer)>>,
}

/// What a connection may set differently from the deployment's defaults.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// Calls per window (`None`: the default for the auth type; `Some(None)`: pacing off).
    pub rate_limit: Option<Option<(u32, std::time::Duration)>>,
    /// A fixed ticket channel.
    pub ticket_channel: Option<String>,
    /// The messages' channel.
    pub message_channel: Option<crate::ticketing::MessageChannel>,
    /// The phone region.
    pub phone_region: Option<phonenumber::country::Id>,
}

impl AccountFactory {
    /// A factory over the deployment's defaults.
    ///
    /// # Errors
    /// When the TLS stack cannot start.
    pub fn new(
        client: ClientSettings,
        ticketing: TicketingSettings,
        rules: Rules,
        redis: Option<RedisConn>,
    ) -> Result<Self, gorgias::BuildError> {
        let pools = HttpPools::new(
            client
                .attempt_timeout
                .min(std::time::Duration::from_secs(5)),
        )?;
        Ok(Self {
            pools,
            client,
            ticketing,
            rules,
            redis,
            pacers: Mutex::new(HashMap::new()),
        })
    }

    /// The handle for `settings` (whose base URL and credentials name the account), with the
    /// connection's `overrides` applied.
    ///
    /// # Errors
    /// When the credentials cannot form a header value.
    pub fn build(
        &self,
        connection: Option<ConnectionId>,
        base_url: url::Url,
        auth: gorgias::Auth,
        overrides: &Overrides,
    ) -> Result<Account, gorgias::BuildError> {
        let (settings, ticketing, rules) =
            self.settings(connection.is_some(), base_url, auth, overrides);
        let client = GorgiasClient::with_pools(settings.clone(), &self.pools)?;
        let pacer = self.pacer(&client, &settings);
        let client = client.with_pacer(pacer);
        let mut ticketing = ticketing;
        ticketing.shared = self.redis.as_ref().map(|conn| {
            SharedCustomers::new(
                conn.clone(),
                ticketing.customer_cache_ttl,
                client.base_url().as_str(),
            )
        });
        Ok(Account(Arc::new(AccountInner {
            connection,
            ticketing: Ticketing::new(client, ticketing),
            rules,
            needs_reconnect: AtomicBool::new(false),
            last_ok_write: AtomicU64::new(0),
            version: 0,
            oauth: false,
        })))
    }

    /// The client settings, use-case settings and rules of an account: the deployment's,
    /// with the connection's `overrides` applied.
    pub fn settings(
        &self,
        stored: bool,
        base_url: url::Url,
        auth: gorgias::Auth,
        overrides: &Overrides,
    ) -> (ClientSettings, TicketingSettings, Rules) {
        let mut settings = self.client.clone();
        settings.base_url = base_url;
        if stored {
            // A stored connection's budget follows its own auth type, not the default's.
            settings.rate_limit = Some(crate::config::default_rate_limit(&auth));
        }
        settings.auth = auth;
        if let Some(rate) = overrides.rate_limit {
            settings.rate_limit = rate;
        }
        let mut ticketing = self.ticketing.clone();
        if let Some(channel) = &overrides.ticket_channel {
            ticketing.channel_override = Some(channel.clone());
        }
        if let Some(channel) = overrides.message_channel {
            ticketing.message_channel = channel;
        }
        let mut rules = self.rules;
        if overrides.phone_region.is_some() {
            rules.phone_region = overrides.phone_region;
        }
        (settings, ticketing, rules)
    }

    /// The Gorgias account's one pacer: made by the first connection to it, shared by the
    /// next (the budget is the account's, whatever the credentials). With Redis it is shared
    /// across replicas under the account's base URL too.
    fn pacer(&self, client: &GorgiasClient, settings: &ClientSettings) -> Pacer {
        let account = client.base_url().as_str().to_owned();
        let mut pacers = self
            .pacers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((rate, pacer)) = pacers.get(&account) {
            // Gorgias counts one budget per account, so its connections share one pacer: the
            // first one built sets its rate. A connection configured otherwise is paced at
            // that rate, not its own; say so, since its `rate_limit` is then not what applies.
            if *rate != settings.rate_limit {
                tracing::warn!(
                    account = %client.base_url().host_str().unwrap_or_default(),
                    "connections to one Gorgias account have different rate limits; they share \
                     the budget of the first one used (give them the same rate_limit)"
                );
            }
            return pacer.clone();
        }
        let mut pacer = Pacer::with_replicas(settings.rate_limit, settings.replicas);
        if let (Some(conn), Some(budget)) = (&self.redis, pacer.budget()) {
            let limiter = SharedLimiter::new(conn.clone(), &account, budget);
            pacer = pacer.shared(Arc::new(limiter));
        }
        pacers.insert(account, (settings.rate_limit, pacer.clone()));
        pacer
    }
}

/// How long a cached connection's handle is used before its row's version is read again: a
/// `PUT` or `DELETE` on another replica reaches this one within this time (on this replica,
/// at once).
const REVALIDATE_AFTER: Duration = Duration::from_secs(5);

/// The registry: the default account, and the stored connections loaded on first use.
///
/// Handles are cached (a connection's customer cache lives in its handle, so rebuilding it
/// per request would spend the account's budget on lookups); a cached handle is checked
/// against its row's version every [`REVALIDATE_AFTER`] and rebuilt only when the row
/// changed. With 10,000 stored connections only those in use have a handle.
#[derive(Clone)]
pub struct Accounts(Arc<Registry>);

struct Registry {
    default: Option<Account>,
    factory: AccountFactory,
    stored: Option<Stored>,
    oauth: Option<OAuth>,
}

/// The OAuth2 app the deployment is (`OAUTH_CLIENT_ID` …), and a client for the token
/// endpoint.
pub struct OAuth {
    /// The app.
    pub client: gorgias::OAuthClient,
    /// For the token endpoint (not the API's pools: these calls are rare and unpaced).
    pub http: reqwest::Client,
}

struct Stored {
    connections: Connections,
    keys: Option<Arc<Keyring>>,
    cache: moka::future::Cache<ConnectionId, Cached>,
    /// Refreshes in flight, by connection and the version they replace: concurrent callers
    /// of one connection share one refresh.
    refreshes: moka::future::Cache<(ConnectionId, i64), Account>,
    /// Connections whose last refresh failed (not refused): no proactive refresh for
    /// [`REFRESH_COOL_DOWN`] while the old token lasts, so an outage of Gorgias's token
    /// endpoint is not asked again on every request (Nango waits 30 s too).
    cooling: moka::future::Cache<ConnectionId, ()>,
}

/// How long after a failed refresh the next proactive one waits.
const REFRESH_COOL_DOWN: Duration = Duration::from_secs(30);

/// Whether a refresh of `id` failed within the cool-down.
async fn stored_cooling(accounts: &Accounts, id: &ConnectionId) -> bool {
    match &accounts.0.stored {
        Some(stored) => stored.cooling.contains_key(id),
        None => false,
    }
}

/// A cached handle and what it was built from.
#[derive(Clone)]
struct Cached {
    account: Account,
    version: i64,
    /// When the version was last read (Unix ms).
    checked: Arc<AtomicU64>,
    /// When its access token should be refreshed (Unix ms), for OAuth2.
    refresh_at: Option<u64>,
    /// When its access token expires (Unix ms), for OAuth2.
    expires_at: Option<u64>,
}

/// Handles kept at most: more connections in use than this are rebuilt as they come back.
const CACHED_HANDLES: u64 = 10_000;

fn now_ms() -> u64 {
    crate::outbox::now_ms()
}

impl Accounts {
    /// The registry over the default account (if the deployment has one) and the stored
    /// connections (with a database). Without `keys`, stored connections cannot be opened:
    /// start-up refuses that when any is stored.
    pub fn new(
        default: Option<Account>,
        factory: AccountFactory,
        connections: Option<Connections>,
        keys: Option<Arc<Keyring>>,
        oauth: Option<OAuth>,
    ) -> Self {
        let stored = connections.map(|connections| Stored {
            connections,
            keys,
            cache: moka::future::Cache::builder()
                .max_capacity(CACHED_HANDLES)
                // A handle unused this long is dropped (its caches with it).
                .time_to_idle(Duration::from_secs(3600))
                .build(),
            refreshes: moka::future::Cache::builder()
                .max_capacity(CACHED_HANDLES)
                .time_to_live(Duration::from_secs(10))
                .build(),
            cooling: moka::future::Cache::builder()
                .max_capacity(CACHED_HANDLES)
                .time_to_live(REFRESH_COOL_DOWN)
                .build(),
        });
        Self(Arc::new(Registry {
            default,
            factory,
            stored,
            oauth,
        }))
    }

    /// The OAuth2 app, when configured.
    pub fn oauth(&self) -> Option<&OAuth> {
        self.0.oauth.as_ref()
    }

    /// The default account from `GORGIAS_*`, when the deployment has one.
    pub fn default_account(&self) -> Option<&Account> {
        self.0.default.as_ref()
    }

    /// The stored connections, when the deployment has a database.
    pub fn connections(&self) -> Option<&Connections> {
        self.0.stored.as_ref().map(|s| &s.connections)
    }

    /// The key ring secrets are sealed with, when configured.
    pub fn keys(&self) -> Option<&Arc<Keyring>> {
        self.0.stored.as_ref().and_then(|s| s.keys.as_ref())
    }

    /// The factory handles are built with (for the preflight of a stored connection).
    pub fn factory(&self) -> &AccountFactory {
        &self.0.factory
    }

    /// The account a request is for: its `Connection-Id` when it sends one (and its caller
    /// may use it), else the default.
    ///
    /// # Errors
    /// [`AccountError`] when there is none to use.
    pub async fn resolve(
        &self,
        caller: &Caller,
        connection: Option<&str>,
    ) -> Result<Account, AccountError> {
        let Some(connection) = connection else {
            return self.0.default.clone().ok_or(AccountError::Required);
        };
        let id = ConnectionId::parse(connection).ok_or(AccountError::Unknown)?;
        if !caller.may_use(&id) {
            return Err(AccountError::Unknown);
        }
        self.stored(&id).await
    }

    /// The scope of the caller's deliveries on the connection `connection` names (see
    /// [`Account::scope`]), without loading it: a deleted connection's deliveries stay
    /// readable (their final problem is `connection_deleted`).
    ///
    /// # Errors
    /// [`AccountError::Unknown`] for a malformed id or one the caller may not use.
    pub fn scope(&self, caller: &Caller, connection: Option<&str>) -> Result<String, AccountError> {
        let Some(connection) = connection else {
            return Ok(caller.as_str().to_owned());
        };
        let id = ConnectionId::parse(connection).ok_or(AccountError::Unknown)?;
        if !caller.may_use(&id) {
            return Err(AccountError::Unknown);
        }
        Ok(scope_of(caller, Some(&id)))
    }

    /// The account a delivery was accepted for (`""`: the default).
    ///
    /// # Errors
    /// [`AccountError::Unknown`] when the connection is gone.
    pub async fn for_delivery(&self, connection: &str) -> Result<Account, AccountError> {
        if connection.is_empty() {
            return self.0.default.clone().ok_or(AccountError::Unknown);
        }
        let id = ConnectionId::parse(connection).ok_or(AccountError::Unknown)?;
        self.stored(&id).await
    }

    /// Forgets a connection's handle (after a `PUT` or `DELETE` here).
    pub async fn forget(&self, id: &ConnectionId) {
        if let Some(stored) = &self.0.stored {
            stored.cache.invalidate(id).await;
        }
    }

    async fn stored(&self, id: &ConnectionId) -> Result<Account, AccountError> {
        let cached = self.cached(id).await?;
        let now = now_ms();
        match cached.refresh_at {
            Some(at)
                if now >= at
                    && !cached.account.needs_reconnect()
                    && !stored_cooling(self, id).await =>
            {
                match self.refresh_from(id, cached.version).await {
                    Ok(account) => Ok(account),
                    // Refused: the handle, marked; sync requests are answered 503 and
                    // deliveries wait.
                    Err(AccountError::NeedsReconnect(_)) => {
                        cached.account.set_needs_reconnect(true);
                        Ok(cached.account)
                    }
                    // Failed for now: the old token serves while it lasts.
                    Err(e) if cached.expires_at.is_none_or(|exp| now >= exp) => Err(e),
                    Err(_) => Ok(cached.account),
                }
            }
            _ => Ok(cached.account),
        }
    }

    /// The cached handle of a stored connection, revalidated against its row's version.
    async fn cached(&self, id: &ConnectionId) -> Result<Cached, AccountError> {
        let stored = self.0.stored.as_ref().ok_or(AccountError::Unknown)?;
        if let Some(cached) = stored.cache.get(id).await {
            let checked = cached.checked.load(Ordering::Relaxed);
            if now_ms().saturating_sub(checked) < ms(REVALIDATE_AFTER) {
                return Ok(cached);
            }
            match stored.connections.version(id).await {
                Ok(Some((version, status))) if version == cached.version => {
                    cached.checked.store(now_ms(), Ordering::Relaxed);
                    cached
                        .account
                        .set_needs_reconnect(status == Status::NeedsReconnect);
                    return Ok(cached);
                }
                Ok(_) => stored.cache.invalidate(id).await,
                Err(e) => {
                    // The database is down: the handle last built still serves.
                    tracing::warn!(error = %e, "could not revalidate a connection");
                    return Ok(cached);
                }
            }
        }
        stored
            .cache
            .try_get_with(id.clone(), self.load(stored, id))
            .await
            .map_err(|e| (*e).clone())
    }

    /// After Gorgias answered 401 to `account`'s access token: a refreshed handle (one
    /// refresh per connection, across threads and replicas; a replica that finds the row
    /// already refreshed uses that).
    ///
    /// # Errors
    /// [`AccountError::NeedsReconnect`] when the refresh is refused, or another
    /// [`AccountError`] when it cannot be done now.
    pub async fn refresh(&self, account: &Account) -> Result<Account, AccountError> {
        let id = account.connection.as_ref().ok_or(AccountError::Unknown)?;
        self.refresh_from(id, account.version).await
    }

    async fn refresh_from(&self, id: &ConnectionId, stale: i64) -> Result<Account, AccountError> {
        let stored = self.0.stored.as_ref().ok_or(AccountError::Unknown)?;
        stored
            .refreshes
            .try_get_with((id.clone(), stale), self.refresh_once(stored, id, stale))
            .await
            .map_err(|e| (*e).clone())
    }

    /// One refresh: take the row's refresh lock (or wait for whoever holds it), call the
    /// token endpoint, store what it answers.
    async fn refresh_once(
        &self,
        stored: &Stored,
        id: &ConnectionId,
        stale: i64,
    ) -> Result<Account, AccountError> {
        let unavailable = |e: crate::connections::ConnectionsError| {
            tracing::warn!(connection_id = %id, error = %e, "a token refresh could not be done");
            AccountError::Unavailable
        };
        let keys = stored.keys.as_ref().ok_or(AccountError::Unavailable)?;
        let owner = uuid::Uuid::new_v4().simple().to_string();
        let give_up = tokio::time::Instant::now() + Duration::from_secs(10);
        let record = loop {
            let record = stored
                .connections
                .get(id)
                .await
                .map_err(unavailable)?
                .ok_or(AccountError::Unknown)?;
            if record.version != stale {
                // Refreshed (or replaced) elsewhere meanwhile: use that.
                return self.reload(stored, id).await;
            }
            if record.status == Status::NeedsReconnect {
                return Err(AccountError::NeedsReconnect(id.clone()));
            }
            if stored
                .connections
                .lock_refresh(id, stale, &owner)
                .await
                .map_err(unavailable)?
            {
                break record;
            }
            if tokio::time::Instant::now() >= give_up {
                return Err(AccountError::Unavailable);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let outcome = match &self.0.oauth {
            None => Err(gorgias::TokenError::Refused(
                "OAUTH_CLIENT_ID and OAUTH_CLIENT_SECRET are not set, so tokens cannot be \
                 refreshed"
                    .into(),
            )),
            Some(oauth) => match (record.target(keys), record.refresh_token(keys)) {
                (Ok((base_url, _)), Ok(refresh)) => {
                    oauth.client.refresh(&oauth.http, &base_url, &refresh).await
                }
                _ => Err(gorgias::TokenError::Failed(
                    "a stored secret cannot be opened".into(),
                )),
            },
        };
        match outcome {
            Ok(tokens) => {
                crate::metrics::token_refresh("refreshed");
                let stored_ok = stored
                    .connections
                    .store_refreshed(id, &owner, &tokens, keys)
                    .await
                    .map_err(unavailable)?;
                if !stored_ok {
                    tracing::warn!(connection_id = %id, "a refresh lock lapsed before its tokens were stored");
                }
                tracing::info!(connection_id = %id, "access token refreshed");
                self.reload(stored, id).await
            }
            Err(e) => {
                let _ = stored.connections.unlock_refresh(id, &owner).await;
                match e {
                    gorgias::TokenError::Refused(why) => {
                        crate::metrics::token_refresh("refused");
                        tracing::warn!(connection_id = %id, "Gorgias refused a refresh; the connection needs reconnecting");
                        let _ = stored
                            .connections
                            .record_refusal(id, stale, &format!("oauth_refresh_refused: {why}"))
                            .await;
                        stored.cache.invalidate(id).await;
                        Err(AccountError::NeedsReconnect(id.clone()))
                    }
                    gorgias::TokenError::Failed(why) => {
                        crate::metrics::token_refresh("failed");
                        stored.cooling.insert(id.clone(), ()).await;
                        let _ = stored
                            .connections
                            .record_error(id, &format!("oauth_refresh_failed: {why}"))
                            .await;
                        Err(AccountError::Unavailable)
                    }
                }
            }
        }
    }

    /// Builds the handle from the row as it is now, and caches it.
    async fn reload(&self, stored: &Stored, id: &ConnectionId) -> Result<Account, AccountError> {
        let cached = self.load(stored, id).await?;
        stored.cache.insert(id.clone(), cached.clone()).await;
        Ok(cached.account)
    }

    async fn load(&self, stored: &Stored, id: &ConnectionId) -> Result<Cached, AccountError> {
        let record = stored
            .connections
            .get(id)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "the connections cannot be read");
                AccountError::Unavailable
            })?
            .ok_or(AccountError::Unknown)?;
        let keys = stored.keys.as_ref().ok_or(AccountError::Unavailable)?;
        let (base_url, auth) = record.target(keys)?;
        let account = self
            .0
            .factory
            .build(
                Some(id.clone()),
                base_url,
                auth,
                &record.settings.overrides(),
            )
            .map_err(|_| AccountError::Unavailable)?;
        // Just built, so this is the only handle on it.
        let mut inner = Arc::into_inner(account.0).ok_or(AccountError::Unavailable)?;
        inner.version = record.version;
        inner.oauth = record.auth_type == "oauth2";
        inner.needs_reconnect = AtomicBool::new(record.status == Status::NeedsReconnect);
        Ok(Cached {
            account: Account(Arc::new(inner)),
            version: record.version,
            checked: Arc::new(AtomicU64::new(now_ms())),
            refresh_at: record.refresh_at(),
            expires_at: record.expires_at,
        })
    }

    /// Creates the ticket through `account`, the one way requests and deliveries do. An
    /// OAuth2 access token Gorgias refuses (401) is refreshed once and the attempt made again
    /// (safe: a refused call created nothing). What the attempt showed about the connection is
    /// recorded.
    ///
    /// # Errors
    /// [`CreateError`].
    pub async fn create_ticket(
        &self,
        account: &Account,
        ticket: &crate::domain::NewTicket,
        attempt: &crate::ticketing::Attempt<'_>,
    ) -> Result<crate::output::Ticket, CreateError> {
        if let Some(id) = &account.connection
            && account.needs_reconnect()
        {
            return Err(CreateError::NeedsReconnect(id.clone()));
        }
        let mut account = account.clone();
        let mut created = account.ticketing.create_ticket(ticket, attempt).await;
        if account.is_oauth()
            && let Err(crate::ticketing::TicketingError::Gorgias(gorgias::GorgiasError::Rejected {
                status: 401,
                ..
            })) = &created
        {
            match self.refresh(&account).await {
                Ok(fresh) => {
                    account = fresh;
                    created = account.ticketing.create_ticket(ticket, attempt).await;
                }
                Err(AccountError::NeedsReconnect(id)) => {
                    return Err(CreateError::NeedsReconnect(id));
                }
                // Not refreshed now: the 401 stands, and is handled as any refusal.
                Err(_) => {}
            }
        }
        self.observe_result(&account, &created).await;
        match (created, &account.connection) {
            (Ok(t), _) => Ok(t),
            (Err(e), Some(id)) if is_refusal(&e) => Err(CreateError::NeedsReconnect(id.clone())),
            (Err(e), _) => Err(CreateError::Ticketing(e)),
        }
    }

    /// Records what a ticket attempt through `account` showed about its connection: success
    /// (written at most every [`crate::connections::SUCCESS_WRITE_EVERY`]), or a refusal of
    /// its credentials (`needs_reconnect` at once). Nothing for the default account, whose
    /// state is `/readyz`'s.
    pub async fn observe_result<T>(
        &self,
        account: &Account,
        result: &Result<T, crate::ticketing::TicketingError>,
    ) {
        match result {
            Ok(_) => self.observe(account, Outcome::Ok).await,
            Err(e) if shows_refusal(e) => {
                let text = format!("upstream_auth: {e}");
                self.observe(account, Outcome::Refused(&text)).await;
            }
            Err(_) => {}
        }
    }

    /// Records one [`Outcome`] (see [`Self::observe_result`]).
    pub async fn observe(&self, account: &Account, outcome: Outcome<'_>) {
        let (Some(id), Some(stored)) = (&account.connection, &self.0.stored) else {
            return;
        };
        let written = match outcome {
            Outcome::Ok => {
                let last = account.last_ok_write.load(Ordering::Relaxed);
                let due = account.needs_reconnect()
                    || now_ms().saturating_sub(last) >= ms(crate::connections::SUCCESS_WRITE_EVERY);
                if !due {
                    return;
                }
                account.last_ok_write.store(now_ms(), Ordering::Relaxed);
                account.set_needs_reconnect(false);
                stored.connections.record_ok(id).await
            }
            Outcome::Refused(error) => {
                account.set_needs_reconnect(true);
                // The version whose credentials were refused: a `PUT` since then stands.
                let version = account.version;
                tracing::warn!(connection_id = %id, "Gorgias refused a connection's credentials; it needs reconnecting");
                stored.connections.record_refusal(id, version, error).await
            }
        };
        if let Err(e) = written {
            tracing::warn!(error = %e, "could not record a connection's state");
        }
    }
}

/// Whether an error is Gorgias refusing the credentials themselves (401/403): retrying
/// cannot help until they are replaced, and nothing was created.
pub fn is_refusal(e: &crate::ticketing::TicketingError) -> bool {
    matches!(
        e,
        crate::ticketing::TicketingError::Gorgias(gorgias::GorgiasError::Rejected {
            status: 401 | 403,
            ..
        })
    )
}

/// Whether an error shows the credentials refused, even where the ticket's outcome is
/// unknown (the lookup after an earlier create was refused): the connection needs
/// reconnecting either way.
fn shows_refusal(e: &crate::ticketing::TicketingError) -> bool {
    use crate::ticketing::{TicketingError, Unknown};
    is_refusal(e)
        || matches!(
            e,
            TicketingError::OutcomeUnknown {
                why: Unknown::Gorgias(gorgias::GorgiasError::Rejected {
                    status: 401 | 403,
                    ..
                }),
                ..
            }
        )
}

/// Why [`Accounts::create_ticket`] made no ticket.
#[derive(Debug)]
pub enum CreateError {
    /// The use case failed (Gorgias, mapping, an unknown outcome).
    Ticketing(crate::ticketing::TicketingError),
    /// Gorgias refused the stored connection's credentials (or its refresh token).
    NeedsReconnect(ConnectionId),
}

/// What a Gorgias call showed about a connection.
pub enum Outcome<'a> {
    /// A call succeeded.
    Ok,
    /// Gorgias refused the credentials (`code: detail`).
    Refused(&'a str),
}

fn ms(d: Duration) -> u64 {
    crate::outbox::ms(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_ids_are_short_and_plain() {
        assert!(ConnectionId::parse("acme-eu_1.prod").is_some());
        assert!(ConnectionId::parse("").is_none());
        assert!(ConnectionId::parse(&"a".repeat(65)).is_none());
        for bad in ["a b", "a/b", "a:b", "a@b", "é", "a\n"] {
            assert!(ConnectionId::parse(bad).is_none(), "{bad:?}");
        }
    }
}
