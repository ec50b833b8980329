//! The service's durable state, one schema behind one trait: the outbox's deliveries, the
//! idempotency records of synchronous requests and the marks that a create was attempted, and
//! the stored connections (their secrets sealed).
//!
//! Two backends, one set of queries: an embedded SQLite file (one process owns it, see
//! [`sqlite`]) and PostgreSQL (any number of replicas, see [`postgres`]). Every operation is
//! written once, as one SQL statement in PostgreSQL's dialect with two tokens the backend
//! fills in: `{now}` (the database's clock in Unix milliseconds, so leases never compare
//! against a replica's own clock) and `{skip_locked}` (`FOR UPDATE SKIP LOCKED` where
//! PostgreSQL needs it). A backend only runs statements ([`Db`]); the logic lives in
//! [`crate::outbox`] and [`crate::idempotency`], once.
//!
//! Why statements and not a query builder or an ORM (sqlx, diesel): one statement per
//! operation keeps each operation atomic in both databases without transactions, and the two
//! drivers the service already has (rusqlite, tokio-postgres) run them as they are.

use std::path::PathBuf;
use std::sync::Arc;

pub(crate) mod postgres;
pub(crate) mod sqlite;

/// A parameter or a column value: the four kinds both databases share.
#[derive(Debug, Clone, PartialEq)]
pub enum V {
    /// `NULL`.
    Null,
    /// An integer (`BIGINT`).
    Int(i64),
    /// Text.
    Text(String),
    /// Bytes (`BLOB` / `BYTEA`).
    Blob(Vec<u8>),
}

impl From<i64> for V {
    fn from(v: i64) -> Self {
        Self::Int(v)
    }
}

impl From<u64> for V {
    fn from(v: u64) -> Self {
        Self::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}

impl From<&str> for V {
    fn from(v: &str) -> Self {
        Self::Text(v.to_owned())
    }
}

impl From<String> for V {
    fn from(v: String) -> Self {
        Self::Text(v)
    }
}

impl From<Vec<u8>> for V {
    fn from(v: Vec<u8>) -> Self {
        Self::Blob(v)
    }
}

impl<T: Into<V>> From<Option<T>> for V {
    fn from(v: Option<T>) -> Self {
        v.map_or(Self::Null, Into::into)
    }
}

/// One result row, read by position.
#[derive(Debug, Clone, Default)]
pub struct Row(pub Vec<V>);

impl Row {
    fn at(&self, i: usize) -> &V {
        self.0.get(i).unwrap_or(&V::Null)
    }

    /// An integer column (`NULL` is 0).
    pub fn int(&self, i: usize) -> i64 {
        self.opt_int(i).unwrap_or(0)
    }

    /// A nullable integer column.
    pub fn opt_int(&self, i: usize) -> Option<i64> {
        match self.at(i) {
            V::Int(v) => Some(*v),
            _ => None,
        }
    }

    /// A non-negative integer column as `u64` (negative and `NULL` are 0).
    pub fn uint(&self, i: usize) -> u64 {
        u64::try_from(self.int(i)).unwrap_or(0)
    }

    /// A text column (`NULL` is empty).
    pub fn text(&self, i: usize) -> String {
        self.opt_text(i).unwrap_or_default()
    }

    /// A nullable text column.
    pub fn opt_text(&self, i: usize) -> Option<String> {
        match self.at(i) {
            V::Text(v) => Some(v.clone()),
            _ => None,
        }
    }

    /// A bytes column (`NULL` is empty).
    pub fn blob(&self, i: usize) -> Vec<u8> {
        match self.at(i) {
            V::Blob(v) => v.clone(),
            V::Text(v) => v.clone().into_bytes(),
            _ => Vec::new(),
        }
    }
}

/// The database could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("the database failed: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL failed.
    #[error("the database failed: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// The transaction a statement was grouped into failed (SQLite's group commit).
    #[error("the database failed: {0}")]
    Batch(String),
    /// No PostgreSQL connection could be had.
    #[error("the database cannot be reached: {0}")]
    Pool(String),
    /// The database did not answer within its deadline (a blackholed or overloaded server).
    #[error("the database did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The data directory could not be created.
    #[error("the data directory {path} cannot be created: {source}")]
    Directory {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Another process already owns this SQLite database.
    #[error(
        "{path} is already in use by another gorgias-proxy process. An SQLite database belongs \
         to one process: give each replica its own DATA_DIR, or use PostgreSQL \
         (OUTBOX_URL=postgres://…) to run several replicas on one database"
    )]
    InUse {
        /// The lock file.
        path: PathBuf,
    },
    /// The lock file could not be opened or locked.
    #[error("the lock file {path} cannot be used: {source}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A blocking task did not finish (the runtime is shutting down).
    #[error("the database task did not finish")]
    Task,
}

/// A backend: runs one statement of the shared dialect and returns its rows.
#[async_trait::async_trait]
pub trait Db: Send + Sync {
    /// Runs `sql` with `params` (`$1`, `$2`, …) and returns every row it yields (a `SELECT`
    /// or a statement with `RETURNING`).
    async fn query(&self, sql: &'static str, params: Vec<V>) -> Result<Vec<Row>, StoreError>;

    /// Runs `sql` and returns the number of rows it changed.
    async fn execute(&self, sql: &'static str, params: Vec<V>) -> Result<u64, StoreError>;

    /// `sqlite` or `postgres`, for logs.
    fn kind(&self) -> &'static str;
}

/// The store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Arc<dyn Db>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.db.kind())
    }
}

/// Where the store lives (`OUTBOX_URL`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreTarget {
    /// An SQLite file: one process.
    Sqlite(PathBuf),
    /// A PostgreSQL database (`postgres://…`): any number of replicas.
    Postgres(String),
}

impl StoreTarget {
    /// Reads `OUTBOX_URL`: `sqlite://PATH` or `sqlite:PATH`; unset, `$DATA_DIR/outbox.db`.
    ///
    /// # Errors
    /// A message naming what is not supported.
    pub fn parse(url: Option<&str>, data_dir: &std::path::Path) -> Result<Self, String> {
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

/// Settings the store is opened with.
#[derive(Debug, Clone, Copy)]
pub struct OpenOptions {
    /// How long a delivery cut off by a crash waits before its next attempt: the settle
    /// window, so a create the crash left in Gorgias's hands has time to show in its lists.
    pub settle: std::time::Duration,
}

impl Store {
    /// Opens (or creates) the store and its schema.
    ///
    /// # Errors
    /// When the database cannot be created, opened, locked or reached.
    pub async fn open(target: &StoreTarget, options: OpenOptions) -> Result<Self, StoreError> {
        let db: Arc<dyn Db> = match target {
            StoreTarget::Sqlite(path) => Arc::new(sqlite::Sqlite::open(path, options).await?),
            StoreTarget::Postgres(url) => Arc::new(postgres::Postgres::open(url).await?),
        };
        Ok(Self { db })
    }

    /// Runs a statement that yields rows.
    pub(crate) async fn query(
        &self,
        sql: &'static str,
        params: Vec<V>,
    ) -> Result<Vec<Row>, StoreError> {
        self.db.query(sql, params).await
    }

    /// Runs a statement; the rows it changed.
    pub(crate) async fn execute(
        &self,
        sql: &'static str,
        params: Vec<V>,
    ) -> Result<u64, StoreError> {
        self.db.execute(sql, params).await
    }

    /// Runs a statement that yields at most one row.
    pub(crate) async fn query_opt(
        &self,
        sql: &'static str,
        params: Vec<V>,
    ) -> Result<Option<Row>, StoreError> {
        Ok(self.db.query(sql, params).await?.into_iter().next())
    }

    /// Proves the store can be written (for `/readyz`).
    ///
    /// # Errors
    /// When it cannot.
    pub async fn check_writable(&self) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO heartbeat (id, at) VALUES (1, {now}) \
             ON CONFLICT (id) DO UPDATE SET at = excluded.at",
            vec![],
        )
        .await
        .map(|_| ())
    }
}

/// The schema's tables, in the shared dialect; `{serial}` and `{blob}` are the two types the
/// databases spell differently. Every statement is idempotent: each start runs them all, then
/// adds [`ADDED_COLUMNS`], then creates [`INDEXES`].
pub(crate) const TABLES: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS deliveries (
        seq {serial},
        id TEXT NOT NULL UNIQUE,
        caller TEXT NOT NULL,
        idem_key TEXT,
        fingerprint TEXT NOT NULL,
        request {blob},
        external_id TEXT NOT NULL,
        status TEXT NOT NULL,
        attempts BIGINT NOT NULL DEFAULT 0,
        accepted_at BIGINT NOT NULL,
        delivered_at BIGINT,
        next_attempt_at BIGINT NOT NULL,
        lease_until BIGINT,
        ticket TEXT,
        problem TEXT,
        finished_at BIGINT,
        webhook TEXT,
        webhook_attempts BIGINT NOT NULL DEFAULT 0,
        webhook_next_at BIGINT,
        owner TEXT,
        connection TEXT NOT NULL DEFAULT '',
        trace_parent TEXT,
        attempt_trace TEXT
    )",
    "CREATE TABLE IF NOT EXISTS heartbeat (id BIGINT PRIMARY KEY, at BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS idempotency (
        key TEXT PRIMARY KEY,
        fingerprint TEXT NOT NULL,
        state TEXT NOT NULL,
        token TEXT,
        lease_until BIGINT,
        settle_until BIGINT,
        reconcile BIGINT NOT NULL DEFAULT 0,
        status BIGINT,
        content_type TEXT,
        body TEXT,
        expires_at BIGINT NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS connections (
        id TEXT PRIMARY KEY,
        base_url TEXT NOT NULL,
        subdomain TEXT,
        auth_type TEXT NOT NULL,
        username TEXT,
        secret TEXT NOT NULL,
        refresh_secret TEXT,
        expires_at BIGINT,
        settings TEXT NOT NULL,
        status TEXT NOT NULL,
        last_ok_at BIGINT,
        last_error TEXT,
        last_error_at BIGINT,
        version BIGINT NOT NULL DEFAULT 1,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        refresh_lock_until BIGINT,
        refresh_owner TEXT
    )",
    "CREATE TABLE IF NOT EXISTS oauth_states (
        state TEXT PRIMARY KEY,
        connection_id TEXT NOT NULL,
        base_url TEXT NOT NULL,
        subdomain TEXT,
        expires_at BIGINT NOT NULL
    )",
];

/// The schema's indexes, created after the columns they name exist.
pub(crate) const INDEXES: &[&str] = &[
    "CREATE UNIQUE INDEX IF NOT EXISTS deliveries_by_key ON deliveries(idem_key) \
     WHERE idem_key IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(status, next_attempt_at, seq)",
    "CREATE INDEX IF NOT EXISTS deliveries_webhooks ON deliveries(webhook, webhook_next_at, seq)",
    "CREATE INDEX IF NOT EXISTS idempotency_expiry ON idempotency(expires_at)",
    "CREATE INDEX IF NOT EXISTS deliveries_by_connection ON deliveries(connection, status)",
];

/// Columns added to `deliveries` after its first version, for databases created by it: each
/// start adds the ones missing.
pub(crate) const ADDED_COLUMNS: &[(&str, &str)] = &[
    ("finished_at", "BIGINT"),
    ("webhook", "TEXT"),
    ("webhook_attempts", "BIGINT NOT NULL DEFAULT 0"),
    ("webhook_next_at", "BIGINT"),
    ("owner", "TEXT"),
    ("connection", "TEXT NOT NULL DEFAULT ''"),
    // W3C `traceparent`s: the span that accepted the delivery (each attempt links to it), and
    // the attempt that finished it (its webhook carries that one).
    ("trace_parent", "TEXT"),
    ("attempt_trace", "TEXT"),
];

/// Fills the dialect's tokens for one backend.
pub(crate) fn dialect(sql: &str, now: &str, skip_locked: &str, serial: &str, blob: &str) -> String {
    sql.replace("{now}", now)
        .replace("{skip_locked}", skip_locked)
        .replace("{serial}", serial)
        .replace("{blob}", blob)
}
