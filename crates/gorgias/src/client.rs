//! The Gorgias REST client: one method per endpoint we use, with auth, per-attempt timeouts,
//! retries of safe calls within the caller's deadline, and error classification.
//!
//! Reference: <https://developers.gorgias.com/reference> (see `gorgias-api.md` in the project
//! history for what is confirmed and what is inferred).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use backon::BackoffBuilder;
use bytes::Bytes;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use tracing::Instrument;
use url::Url;

use crate::error::{BuildError, GorgiasError};
use crate::models::{
    CreateCustomer, CreateTicket, Customer, ErrorBody, List, PhoneHit, SearchItem, SearchQuery,
    Settings, Ticket,
};
use crate::pacing::{Pacer, Priority, SharedBudget};

/// How we prove who we are to Gorgias.
#[derive(Clone)]
pub enum Auth {
    /// A private app's API key: HTTP Basic with the key owner's email as the username.
    Basic {
        /// The Gorgias user's email.
        username: String,
        /// The API key.
        api_key: SecretString,
    },
    /// An OAuth2 access token.
    Bearer(SecretString),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Basic { .. } => f.write_str("Auth::Basic([redacted])"),
            Self::Bearer(_) => f.write_str("Auth::Bearer([redacted])"),
        }
    }
}

impl Auth {
    /// The `Authorization` header value, marked sensitive so hyper and our logs never print it.
    fn header(&self) -> Result<HeaderValue, reqwest::header::InvalidHeaderValue> {
        use base64::Engine as _;
        let raw = match self {
            Self::Basic { username, api_key } => {
                let pair = format!("{username}:{}", api_key.expose_secret());
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                )
            }
            Self::Bearer(token) => format!("Bearer {}", token.expose_secret()),
        };
        let mut value = HeaderValue::from_str(&raw)?;
        value.set_sensitive(true);
        Ok(value)
    }

    /// True for OAuth2, whose default account budget is larger.
    pub fn is_oauth(&self) -> bool {
        matches!(self, Self::Bearer(_))
    }
}

/// How failed safe calls are retried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts after the first one, at most.
    pub max_retries: usize,
    /// First backoff delay (before jitter).
    pub base_delay: Duration,
    /// Longest computed backoff delay.
    pub max_delay: Duration,
    /// Longest `Retry-After` we honour before giving up instead.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 4,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            max_retry_after: Duration::from_secs(20),
        }
    }
}

impl RetryPolicy {
    fn delays(&self) -> impl Iterator<Item = Duration> + use<> {
        backon::ExponentialBuilder::default()
            .with_min_delay(self.base_delay)
            .with_max_delay(self.max_delay)
            .with_max_times(self.max_retries)
            .with_jitter()
            .build()
    }
}

/// Everything the client needs.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// `https://{domain}.gorgias.com/` or the simulator's address.
    pub base_url: Url,
    /// Credentials.
    pub auth: Auth,
    /// Longest one attempt may take, connection to last body byte.
    pub attempt_timeout: Duration,
    /// Retries of safe calls.
    pub retry: RetryPolicy,
    /// Calls per window the account allows us; `None` turns client-side pacing off.
    pub rate_limit: Option<(u32, Duration)>,
    /// Processes calling the same account: without a shared budget (or while it is
    /// unreachable) each paces at this share of `rate_limit`.
    pub replicas: u32,
}

/// A Gorgias account, as one cheap-to-clone handle (the HTTP pool is shared inside).
#[derive(Debug, Clone)]
pub struct GorgiasClient {
    http: HttpPools,
    base_url: Url,
    /// The URLs of the fixed paths ([`FIXED_PATHS`]), joined once: joining parses the URL
    /// again, a cost every call would otherwise pay.
    fixed_urls: Arc<[(&'static str, Url)]>,
    auth: HeaderValue,
    attempt_timeout: Duration,
    retry: RetryPolicy,
    pacer: Pacer,
    /// When a call last got a 2xx, in milliseconds since [`epoch`] (0: never).
    last_success: Arc<AtomicU64>,
}

/// The HTTP connection pools: one per thread that calls, shared by every client built with
/// them ([`GorgiasClient::with_pools`]). Credentials travel as a header on each call, so one
/// pool per host serves any number of accounts: a deployment with 2,000 connections keeps one
/// set of pools, not 2,000.
///
/// A pooled connection is driven by a task on the runtime that opened it. A server that runs a
/// single-threaded runtime per core (as the service does) would otherwise send each call over a
/// connection driven by another thread, and every call would wake that thread and be woken
/// back. With a pool per thread, a call and its connection stay on one thread. Clones share the
/// pools. More connections are open at once (at most one set per calling thread).
#[derive(Clone)]
pub struct HttpPools {
    /// Which client's pools these are, in each thread's list.
    id: u64,
    connect_timeout: Duration,
    /// Built when the client is: the pool of a thread whose own cannot be built (never seen;
    /// building only fails when the TLS stack cannot start, and this one did).
    fallback: reqwest::Client,
}

thread_local! {
    /// This thread's pools, by [`HttpPools::id`].
    static POOLS: std::cell::RefCell<Vec<(u64, reqwest::Client)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

impl std::fmt::Debug for HttpPools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpPools").field("id", &self.id).finish()
    }
}

impl HttpPools {
    /// Pools kept per thread; the oldest goes first (only clients built and dropped over and
    /// over, as in tests, ever reach it).
    const PER_THREAD: usize = 8;

    /// Pools whose connections time out connecting after `connect_timeout`.
    ///
    /// # Errors
    /// When the TLS stack cannot start.
    pub fn new(connect_timeout: Duration) -> Result<Self, BuildError> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Ok(Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            connect_timeout,
            fallback: Self::build(connect_timeout).map_err(BuildError::Http)?,
        })
    }

    fn build(connect_timeout: Duration) -> reqwest::Result<reqwest::Client> {
        reqwest::Client::builder()
            .user_agent(concat!("gorgias-rs/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            // Retries are ours: classified per call (a create is never resent blindly), within
            // the caller's deadline. reqwest's own layer would also clone every request.
            .retry(reqwest::retry::never().max_retries_per_request(0))
            .build()
    }

    /// This thread's pool (a handle: cloning it is cheap).
    fn get(&self) -> reqwest::Client {
        POOLS.with(|pools| {
            let mut pools = pools.borrow_mut();
            if let Some((_, client)) = pools.iter().find(|(id, _)| *id == self.id) {
                return client.clone();
            }
            let client =
                Self::build(self.connect_timeout).unwrap_or_else(|_| self.fallback.clone());
            if pools.len() >= Self::PER_THREAD {
                pools.remove(0);
            }
            pools.push((self.id, client.clone()));
            client
        })
    }
}

/// The process's reference instant for [`GorgiasClient::last_success`].
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

tokio::task_local! {
    /// Set while a task does work nobody waits on (see [`in_background`]).
    static BACKGROUND: ();
    /// Set while a task looks for what a create of unknown outcome left (see [`reconciling`]).
    static RECONCILING: ();
}

/// Runs `work` with every Gorgias call it makes marked as a reconcile in its trace span
/// (`gorgias.reconcile`): a lookup made because a create's outcome is unknown, not new work.
pub async fn reconciling<F: std::future::Future>(work: F) -> F::Output {
    RECONCILING.scope((), work).await
}

/// Runs `work` with every Gorgias call it makes at [`Priority::Background`]: served only from
/// the budget that callers who are waiting leave (queued deliveries, batch jobs).
pub async fn in_background<F: std::future::Future>(work: F) -> F::Output {
    BACKGROUND.scope((), work).await
}

/// Which work a call serves, for the limiter: reading a ticket back settles a create whose
/// outcome is unknown, creating the ticket finishes a request that holds its customer, and the
/// rest starts new work; anything inside [`in_background`] waits for all of them.
fn priority(endpoint: &'static str) -> Priority {
    if BACKGROUND.try_with(|()| ()).is_ok() {
        return Priority::Background;
    }
    match endpoint {
        "GET /api/tickets" | "GET /api/tickets/{id}" => Priority::Reconcile,
        "POST /api/tickets" => Priority::Commit,
        _ => Priority::New,
    }
}

/// Whether a call may be sent again after a failure whose effect is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resend {
    /// Reads and searches: sending twice does no harm.
    Safe,
    /// Creates: the caller reconciles before sending again.
    Never,
}

/// The paths called without parameters in the path.
const FIXED_PATHS: [&str; 4] = [
    "api/tickets",
    "api/customers",
    "api/search",
    "api/account/settings",
];

/// Least time left in the request's deadline for a create to be sent: enough for Gorgias to
/// answer and, if its answer is lost, for the lookup that reconciles it.
const MIN_WRITE_BUDGET: Duration = Duration::from_millis(1500);

/// Search page size: Gorgias's maximum, so a prefix search that matches many numbers still
/// includes the exact one in most accounts.
const SEARCH_SIZE: u32 = 50;

impl GorgiasClient {
    /// The longest wait an upstream hint may impose: one window of the account's rate limit
    /// (its configured pacing), or [`DEFAULT_HINT_CAP`] with pacing off.
    fn hint_cap(&self) -> Duration {
        self.pacer
            .budget()
            .map_or(DEFAULT_HINT_CAP, |b| b.window)
            .max(Duration::from_secs(1))
    }

    /// Builds the client and its connection pool.
    ///
    /// # Errors
    /// When the credentials cannot form a header value or the TLS stack cannot start.
    pub fn new(settings: ClientSettings) -> Result<Self, BuildError> {
        let http = HttpPools::new(settings.attempt_timeout.min(Duration::from_secs(5)))?;
        Self::with_pools(settings, &http)
    }

    /// Builds the client over pools shared with other clients (other accounts): building it
    /// opens nothing, so a client per account costs a few hundred bytes.
    ///
    /// # Errors
    /// When the credentials cannot form a header value.
    pub fn with_pools(settings: ClientSettings, http: &HttpPools) -> Result<Self, BuildError> {
        let auth = settings
            .auth
            .header()
            .map_err(|_| BuildError::Credentials)?;
        let http = http.clone();
        let mut base_url = settings.base_url;
        if !base_url.path().ends_with('/') {
            let path = format!("{}/", base_url.path());
            base_url.set_path(&path);
        }
        let fixed_urls = FIXED_PATHS
            .iter()
            .filter_map(|path| Some((*path, base_url.join(path).ok()?)))
            .collect();
        Ok(Self {
            http,
            base_url,
            fixed_urls,
            auth,
            attempt_timeout: settings.attempt_timeout,
            retry: settings.retry,
            pacer: Pacer::with_replicas(settings.rate_limit, settings.replicas),
            last_success: Arc::new(AtomicU64::new(0)),
        })
    }

    /// A fresh backoff schedule, for callers that retry a whole step (e.g. a reconciled create).
    pub fn retry_delays(&self) -> impl Iterator<Item = Duration> + use<> {
        self.retry.delays()
    }

    /// The account's base URL (it names the account, e.g. for keys in a shared store).
    pub fn base_url(&self) -> &Url {
        &self.base_url
    }

    /// Shares the call budget with other processes through `backend` (see
    /// [`Pacer::budget`] for what it should enforce).
    pub fn share_pacing(mut self, backend: Arc<dyn SharedBudget>) -> Self {
        self.pacer = std::mem::take(&mut self.pacer).shared(backend);
        self
    }

    /// Paces this client's calls with `pacer`: clients of several connections to one Gorgias
    /// account share that account's one budget.
    pub fn with_pacer(mut self, pacer: Pacer) -> Self {
        self.pacer = pacer;
        self
    }

    /// The limiter this client paces its calls with (shared by all clones).
    pub fn pacer(&self) -> &Pacer {
        &self.pacer
    }

    /// When a call last got a successful answer from Gorgias (any clone's call): proof the
    /// account and credentials work that costs no call.
    pub fn last_success(&self) -> Option<Instant> {
        match self.last_success.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(epoch() + Duration::from_millis(ms)),
        }
    }

    /// `GET /api/account/settings`: the channels whose tickets are auto-assigned.
    ///
    /// # Errors
    /// Any [`GorgiasError`] once retries within `deadline` are spent.
    pub async fn assignment_channels(
        &self,
        deadline: Instant,
    ) -> Result<Vec<String>, GorgiasError> {
        let endpoint = "GET /api/account/settings";
        let s: Settings = self
            .call_json(
                endpoint,
                Method::GET,
                "api/account/settings",
                &[],
                None,
                deadline,
                Resend::Safe,
            )
            .await?;
        Ok(s.assignment_channels())
    }

    /// `GET /api/customers?email=`: at most one customer owns a primary email.
    ///
    /// # Errors
    /// Any [`GorgiasError`] once retries within `deadline` are spent.
    pub async fn customers_by_email(
        &self,
        email: &str,
        deadline: Instant,
    ) -> Result<Vec<Customer>, GorgiasError> {
        let endpoint = "GET /api/customers";
        let list: List<Customer> = self
            .call_json(
                endpoint,
                Method::GET,
                "api/customers",
                &[("email", email), ("limit", "2")],
                None,
                deadline,
                Resend::Safe,
            )
            .await?;
        Ok(list.0)
    }

    /// `POST /api/search` with `customer_channel_phone`: phone channels whose address matches
    /// `query` (a prefix or fuzzy match; the caller filters for the exact number).
    ///
    /// # Errors
    /// Any [`GorgiasError`] once retries within `deadline` are spent.
    pub async fn search_phone(
        &self,
        query: &str,
        deadline: Instant,
    ) -> Result<Vec<PhoneHit>, GorgiasError> {
        let endpoint = "POST /api/search";
        let body = encode(&SearchQuery {
            kind: "customer_channel_phone",
            query,
            size: SEARCH_SIZE,
        })?;
        let answer: List<SearchItem> = self
            .call_json(
                endpoint,
                Method::POST,
                "api/search",
                &[],
                Some(body),
                deadline,
                Resend::Safe,
            )
            .await?;
        Ok(answer
            .0
            .into_iter()
            .flat_map(SearchItem::into_hits)
            .collect())
    }

    /// `POST /api/customers`. Sent once: after an ambiguous failure the caller looks the
    /// customer up before creating again.
    ///
    /// # Errors
    /// Any [`GorgiasError`]; 409 arrives as `Rejected { status: 409 }`.
    pub async fn create_customer(
        &self,
        customer: &CreateCustomer<'_>,
        deadline: Instant,
    ) -> Result<Customer, GorgiasError> {
        let endpoint = "POST /api/customers";
        let body = encode(customer)?;
        self.call_json(
            endpoint,
            Method::POST,
            "api/customers",
            &[],
            Some(body),
            deadline,
            Resend::Never,
        )
        .await
    }

    /// `POST /api/tickets`. Sent once: after an ambiguous failure the caller looks the ticket
    /// up by `external_id` before creating again.
    ///
    /// # Errors
    /// Any [`GorgiasError`].
    pub async fn create_ticket(
        &self,
        ticket: &CreateTicket<'_>,
        deadline: Instant,
    ) -> Result<Ticket, GorgiasError> {
        let endpoint = "POST /api/tickets";
        let body = encode(ticket)?;
        self.call_json(
            endpoint,
            Method::POST,
            "api/tickets",
            &[],
            Some(body),
            deadline,
            Resend::Never,
        )
        .await
    }

    /// `GET /api/tickets?external_id=`: the tickets carrying our idempotency marker. List items
    /// are abridged (no `messages`): fetch a full one with [`GorgiasClient::ticket`].
    ///
    /// # Errors
    /// Any [`GorgiasError`] once retries within `deadline` are spent.
    pub async fn tickets_by_external_id(
        &self,
        external_id: &str,
        deadline: Instant,
    ) -> Result<Vec<Ticket>, GorgiasError> {
        let endpoint = "GET /api/tickets";
        let list: List<Ticket> = self
            .call_json(
                endpoint,
                Method::GET,
                "api/tickets",
                &[("external_id", external_id), ("limit", "1")],
                None,
                deadline,
                Resend::Safe,
            )
            .await?;
        Ok(list.0)
    }

    /// `GET /api/tickets/{id}`: the full ticket (list items may be abridged).
    ///
    /// # Errors
    /// Any [`GorgiasError`] once retries within `deadline` are spent.
    pub async fn ticket(&self, id: u64, deadline: Instant) -> Result<Ticket, GorgiasError> {
        let endpoint = "GET /api/tickets/{id}";
        let path = format!("api/tickets/{id}");
        self.call_json(
            endpoint,
            Method::GET,
            &path,
            &[],
            None,
            deadline,
            Resend::Safe,
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn call_json<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<Bytes>,
        deadline: Instant,
        resend: Resend,
    ) -> Result<T, GorgiasError> {
        let bytes = self
            .call(endpoint, method, path, query, body, deadline, resend)
            .await?;
        serde_json::from_slice(&bytes).map_err(|e| GorgiasError::Decode {
            endpoint,
            source: e.into(),
        })
    }

    /// Sends one call, retrying transient failures of safe calls with jittered exponential
    /// backoff (or Gorgias's `Retry-After`) as long as the wait fits before `deadline`.
    #[allow(clippy::too_many_arguments)]
    async fn call(
        &self,
        endpoint: &'static str,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<Bytes>,
        deadline: Instant,
        resend: Resend,
    ) -> Result<Bytes, GorgiasError> {
        let url = match self.fixed_urls.iter().find(|(fixed, _)| *fixed == path) {
            Some((_, url)) => url.clone(),
            None => endpoint_url(&self.base_url, path, endpoint)?,
        };
        let mut delays = self.retry.delays();
        let reconcile = RECONCILING.try_with(|_| true).unwrap_or(false);
        let (verb, template) = endpoint.split_once(' ').unwrap_or(("", endpoint));
        let mut number = 0u32;
        loop {
            number += 1;
            // One span per attempt, named by the route template: never a raw id, phone or
            // email (they are in the path or query, which the span does not carry).
            let span = tracing::info_span!(
                target: crate::TRACE_TARGET,
                "gorgias.call",
                otel.name = endpoint,
                otel.kind = "client",
                http.request.method = verb,
                url.template = template,
                gorgias.attempt = i64::from(number),
                gorgias.reconcile = reconcile,
                http.response.status_code = tracing::field::Empty,
                otel.status_code = tracing::field::Empty,
                error.type = tracing::field::Empty,
            );
            let err = match self
                .attempt(
                    endpoint,
                    method.clone(),
                    url.clone(),
                    query,
                    body.clone(),
                    deadline,
                    resend,
                    &span,
                )
                .instrument(span.clone())
                .await
            {
                Ok(bytes) => return Ok(bytes),
                Err(e) => e,
            };
            // A 429 or an unreachable host means the call had no effect, so even a create may
            // be sent again; anything else is resent only when the call is safe.
            let had_no_effect = matches!(
                err,
                GorgiasError::RateLimited { .. } | GorgiasError::Unreachable { .. }
            );
            let resendable = resend == Resend::Safe || had_no_effect;
            if !resendable || !err.is_transient() {
                return Err(err);
            }
            let Some(backoff) = delays.next() else {
                return Err(err);
            };
            let wait = match err.retry_after() {
                Some(asked) if asked > self.retry.max_retry_after => {
                    return Err(err);
                }
                Some(asked) => asked,
                None => backoff,
            };
            if Instant::now() + wait >= deadline {
                // A timed-out call stays a timeout (504); anything else becomes "come back
                // later" (503 with Retry-After).
                if matches!(err, GorgiasError::Timeout { .. }) {
                    return Err(err);
                }
                tracing::warn!(
                    endpoint,
                    wait_ms = wait.as_millis() as u64,
                    "no time left to retry Gorgias"
                );
                return Err(GorgiasError::DeadlineExhausted {
                    endpoint,
                    retry_after: Some(wait.max(Duration::from_secs(1))),
                });
            }
            tracing::warn!(endpoint, error = %err, wait_ms = wait.as_millis() as u64, "retrying Gorgias call");
            crate::metrics::gorgias_retry(endpoint);
            tokio::time::sleep(wait).await;
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        endpoint: &'static str,
        method: Method,
        url: Url,
        query: &[(&str, &str)],
        body: Option<Bytes>,
        deadline: Instant,
        resend: Resend,
        span: &tracing::Span,
    ) -> Result<Bytes, GorgiasError> {
        let waiting = std::time::Instant::now();
        let ready = self
            .pacer
            .until_ready(endpoint, priority(endpoint), deadline)
            .await;
        let waited = waiting.elapsed();
        if waited >= Duration::from_millis(1) {
            tracing::info!(
                target: crate::TRACE_TARGET,
                // As i64: tracing-opentelemetry writes unsigned values as strings.
                wait_ms = i64::try_from(waited.as_millis()).unwrap_or(i64::MAX),
                "limiter wait"
            );
        }
        if let Err(e) = ready {
            failed(span, error_label(&e));
            return Err(e);
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            failed(span, "timeout");
            return Err(GorgiasError::Timeout { endpoint });
        }
        // A write sent with almost no time left may land in Gorgias after we gave up on its
        // answer, leaving a ticket the caller was told failed. Better not to send it: the
        // caller gets 503 with Retry-After and nothing was created.
        if resend == Resend::Never && remaining < MIN_WRITE_BUDGET.min(self.attempt_timeout) {
            failed(span, "deadline");
            return Err(GorgiasError::DeadlineExhausted {
                endpoint,
                retry_after: Some(Duration::from_secs(1)),
            });
        }
        let budget = self.attempt_timeout.min(remaining);
        let mut req = self
            .http
            .get()
            .request(method, url)
            .header(AUTHORIZATION, self.auth.clone())
            .header(ACCEPT, "application/json");
        if !query.is_empty() {
            req = req.query(query);
        }
        if let Some(body) = body {
            req = req.header(CONTENT_TYPE, "application/json").body(body);
        }
        let started = std::time::Instant::now();
        let outcome = tokio::time::timeout(budget, async {
            let resp = req.send().await.map_err(|e| transport(endpoint, e))?;
            let status = resp.status();
            // Only the two headers we read are kept, not a copy of them all.
            let headers = Headers {
                retry_after: header_string(resp.headers(), RETRY_AFTER.as_str()),
                usage: header_string(resp.headers(), "x-gorgias-account-api-call-limit"),
            };
            let bytes = resp.bytes().await.map_err(|e| {
                if e.is_timeout() {
                    GorgiasError::Timeout { endpoint }
                } else {
                    GorgiasError::ConnectionLost {
                        endpoint,
                        source: e.without_url().into(),
                    }
                }
            })?;
            Ok::<_, GorgiasError>((status, headers, bytes))
        })
        .await
        .unwrap_or(Err(GorgiasError::Timeout { endpoint }));
        let elapsed = started.elapsed();
        let (status, headers, bytes) = match outcome {
            Ok(parts) => parts,
            Err(e) => {
                crate::metrics::gorgias_call(endpoint, error_label(&e), elapsed);
                failed(span, error_label(&e));
                return Err(e);
            }
        };
        crate::metrics::gorgias_call(endpoint, status.as_str(), elapsed);
        // As i64: tracing-opentelemetry writes unsigned values as strings.
        span.record("http.response.status_code", i64::from(status.as_u16()));
        if let Some(used) = &headers.usage {
            self.pacer.observe_usage(used).await;
        }
        if status.is_success() {
            let since = u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX);
            self.last_success.store(since.max(1), Ordering::Relaxed);
            return Ok(bytes);
        }
        let err = classify(endpoint, status, &headers, &bytes, self.hint_cap());
        failed(span, status.as_str());
        if let GorgiasError::RateLimited { retry_after, .. } = &err {
            // Every call of this process (and, shared, of every replica) waits it out: the
            // next ones would only be refused too.
            self.pacer
                .pause(retry_after.unwrap_or(Duration::from_secs(1)))
                .await;
        }
        Err(err)
    }
}

/// Marks an attempt's span failed, with the error's class (`error.type`: the status, or
/// `timeout`, `unreachable`...).
fn failed(span: &tracing::Span, class: &str) {
    span.record("otel.status_code", "ERROR");
    span.record("error.type", class);
}

/// The response headers the client acts on.
struct Headers {
    retry_after: Option<String>,
    usage: Option<String>,
}

fn header_string(headers: &reqwest::header::HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn encode<T: Serialize>(value: &T) -> Result<Bytes, GorgiasError> {
    // Serialising our own plain structs cannot fail; the error path exists to avoid a panic.
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| GorgiasError::Decode {
            endpoint: "encode",
            source: e.into(),
        })
}

/// `path` under the account's base URL; a path that cannot join is our bug, reported as a
/// refused call rather than a panic.
pub(crate) fn endpoint_url(
    base_url: &Url,
    path: &str,
    endpoint: &'static str,
) -> Result<Url, GorgiasError> {
    base_url.join(path).map_err(|_| GorgiasError::Rejected {
        endpoint,
        status: 0,
        msg: Some("invalid request path".into()),
        data: None,
    })
}

pub(crate) fn transport(endpoint: &'static str, e: reqwest::Error) -> GorgiasError {
    // The URL can carry a customer's email (`?email=`): never keep it in an error we may log.
    let e = e.without_url();
    if e.is_timeout() {
        GorgiasError::Timeout { endpoint }
    } else if e.is_connect() {
        GorgiasError::Unreachable {
            endpoint,
            source: e.into(),
        }
    } else {
        GorgiasError::ConnectionLost {
            endpoint,
            source: e.into(),
        }
    }
}

fn error_label(e: &GorgiasError) -> &'static str {
    match e {
        GorgiasError::Unreachable { .. } => "unreachable",
        GorgiasError::Timeout { .. } => "timeout",
        GorgiasError::ConnectionLost { .. } => "connection_lost",
        GorgiasError::DeadlineExhausted { .. } => "deadline",
        _ => "error",
    }
}

/// Turns a non-2xx answer into an error, reading Gorgias's `{"error":{"msg","data"}}` body when
/// there is one (gateways answer HTML or nothing; that is tolerated).
fn classify(
    endpoint: &'static str,
    status: StatusCode,
    headers: &Headers,
    body: &[u8],
    hint_cap: Duration,
) -> GorgiasError {
    if status == StatusCode::TOO_MANY_REQUESTS {
        return GorgiasError::RateLimited {
            endpoint,
            retry_after: headers
                .retry_after
                .as_deref()
                .and_then(|v| parse_retry_after(v, hint_cap)),
        };
    }
    if status.is_server_error() {
        return GorgiasError::ServerError {
            endpoint,
            status: status.as_u16(),
        };
    }
    let parsed: ErrorBody = serde_json::from_slice(body).unwrap_or_default();
    let (msg, data) = match parsed.error {
        Some(inner) => (
            inner.msg.map(|m| match m {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            }),
            inner.data.filter(|d| !d.is_null()),
        ),
        None => (None, None),
    };
    GorgiasError::Rejected {
        endpoint,
        status: status.as_u16(),
        msg,
        data,
    }
}

/// The longest wait an upstream hint may ask for when the account's window is not known:
/// Gorgias's leaky bucket for an API key is 40 calls per 20 s.
pub const DEFAULT_HINT_CAP: Duration = Duration::from_secs(20);

/// `Retry-After` is seconds in every recorded answer; decimals and an HTTP date are accepted
/// too. The one place an upstream wait enters the client: whatever the header says
/// (`18446744073709551615`, a year, a date in 9999), the wait is at most `cap` (one rate-limit
/// window), so no later arithmetic on it can overflow and no answer can stall every call for
/// longer than a window. Negative, non-finite and unreadable values are no hint at all.
pub fn parse_retry_after(value: &str, cap: Duration) -> Option<Duration> {
    let value = value.trim();
    let asked = if let Ok(secs) = value.parse::<u64>() {
        Duration::from_secs(secs.min(cap.as_secs().saturating_add(1)))
    } else if let Ok(secs) = value.parse::<f64>() {
        if !secs.is_finite() || secs < 0.0 {
            return None;
        }
        Duration::from_secs_f64(secs.min(cap.as_secs_f64()))
    } else {
        let when = httpdate::parse_http_date(value).ok()?;
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO)
    };
    Some(asked.min(cap))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pools_on_this_thread() -> Vec<u64> {
        POOLS.with(|p| p.borrow().iter().map(|(id, _)| *id).collect())
    }

    #[test]
    fn each_thread_gets_its_own_pool_and_keeps_it() {
        let pools = HttpPools::new(Duration::from_secs(1)).unwrap();
        let _ = pools.get();
        let _ = pools.clone().get();
        assert_eq!(
            pools_on_this_thread(),
            vec![pools.id],
            "one pool, shared by clones"
        );
        let there = {
            let pools = pools.clone();
            std::thread::spawn(move || {
                let _ = pools.get();
                pools_on_this_thread()
            })
            .join()
            .unwrap()
        };
        assert_eq!(there, vec![pools.id], "another thread builds its own");
        assert_eq!(pools_on_this_thread(), vec![pools.id]);
    }

    #[test]
    fn a_thread_keeps_the_pools_of_its_last_clients_only() {
        let clients: Vec<HttpPools> = (0..HttpPools::PER_THREAD + 3)
            .map(|_| HttpPools::new(Duration::from_secs(1)).unwrap())
            .collect();
        for c in &clients {
            let _ = c.get();
        }
        let kept = pools_on_this_thread();
        let newest: Vec<u64> = clients[3..].iter().map(|c| c.id).collect();
        assert_eq!(kept, newest);
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let cap = DEFAULT_HINT_CAP;
        assert_eq!(parse_retry_after("5", cap), Some(Duration::from_secs(5)));
        assert_eq!(parse_retry_after(" 0 ", cap), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("1.5", cap),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", cap),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", cap), None);
        assert_eq!(parse_retry_after("-3", cap), None);
    }

    #[test]
    fn hostile_retry_after_values_are_clamped_to_one_window() {
        let cap = Duration::from_secs(20);
        for hostile in [
            "18446744073709551615",
            "31536000",
            "1e308",
            "99999999999999999999999999",
            "Fri, 31 Dec 9999 23:59:59 GMT",
        ] {
            assert_eq!(parse_retry_after(hostile, cap), Some(cap), "{hostile}");
        }
        for none in ["NaN", "inf", "-inf", "-1", "-0.5", "", "1.5s"] {
            assert_eq!(parse_retry_after(none, cap), None, "{none}");
        }
        assert_eq!(
            parse_retry_after("0.25", cap),
            Some(Duration::from_millis(250))
        );
        // The account's own window, when it says another.
        assert_eq!(
            parse_retry_after("31536000", Duration::from_secs(60)),
            Some(Duration::from_secs(60))
        );
    }

    #[test]
    fn auth_headers_are_sensitive_and_debug_is_redacted() {
        let auth = Auth::Basic {
            username: "u@example.com".into(),
            api_key: SecretString::from("k3y"),
        };
        let h = auth.header().unwrap();
        assert!(h.is_sensitive());
        assert_eq!(h.to_str().unwrap(), "Basic dUBleGFtcGxlLmNvbTprM3k=");
        assert!(!format!("{auth:?}").contains("k3y"));
    }

    #[test]
    fn backoff_is_bounded() {
        let p = RetryPolicy::default();
        let delays: Vec<_> = p.delays().collect();
        assert_eq!(delays.len(), p.max_retries);
        assert!(delays.iter().all(|d| *d <= p.max_delay * 2));
    }
}
