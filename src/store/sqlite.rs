//! The embedded backend: one SQLite file (`$DATA_DIR/outbox.db`), owned by one process.
//!
//! - **One owner.** An exclusive lock on `outbox.db.lock`, held for the process's life and
//!   released by the OS when it dies, makes a second process on the same file refuse to start.
//!   Without it, the second would requeue the first's deliveries in progress and both would
//!   create their tickets.
//! - **Durable before the answer.** WAL with `synchronous=FULL`: each commit is fsynced before
//!   the statement returns, so an accepted request survives a power loss, not only a crash.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::Connection;
use rusqlite::types::{ToSqlOutput, ValueRef};

use super::{ADDED_COLUMNS, Db, INDEXES, OpenOptions, Row, StoreError, TABLES, V, dialect};

/// The database's clock in Unix milliseconds.
const NOW: &str = "CAST(unixepoch('subsec') * 1000 AS INTEGER)";

/// One SQLite database, its connection and the lock that makes it ours.
pub struct Sqlite {
    conn: Arc<Mutex<Connection>>,
    /// Held (locked) for as long as this value lives; the OS drops the lock with the process.
    _lock: std::fs::File,
}

impl Sqlite {
    /// Opens `path`, taking its lock, creating its directory and schema, and requeueing the
    /// deliveries a previous life of this process left in progress.
    ///
    /// # Errors
    /// [`StoreError::InUse`] when another process holds the file; others when it cannot be
    /// created or opened.
    pub async fn open(path: &Path, options: OpenOptions) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Directory {
                path: dir.to_owned(),
                source,
            })?;
        }
        let lock = take_lock(path)?;
        let path = path.to_owned();
        let conn = tokio::task::spawn_blocking(move || prepare(&path, options))
            .await
            .map_err(|_| StoreError::Task)??;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            _lock: lock,
        })
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || f(&mut lock(&conn)).map_err(StoreError::from))
            .await
            .map_err(|_| StoreError::Task)?
    }
}

/// The lock file beside the database, locked exclusively without waiting.
fn take_lock(db: &Path) -> Result<std::fs::File, StoreError> {
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    let path = PathBuf::from(name);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| StoreError::Lock {
            path: path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::InUse { path }),
        Err(std::fs::TryLockError::Error(source)) => Err(StoreError::Lock { path, source }),
    }
}

fn prepare(path: &Path, options: OpenOptions) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: the commit that accepts a request is on disk before the 202 (NORMAL survives a
    // process crash but not a power loss).
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.busy_timeout(Duration::from_secs(5))?;
    for statement in TABLES {
        conn.execute_batch(&translate(statement))?;
    }
    let existing: Vec<String> = {
        let mut stmt = conn.prepare("SELECT name FROM pragma_table_info('deliveries')")?;
        stmt.query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?
    };
    for (column, kind) in ADDED_COLUMNS {
        if !existing.iter().any(|c| c == column) {
            conn.execute_batch(&format!(
                "ALTER TABLE deliveries ADD COLUMN {column} {kind}"
            ))?;
        }
    }
    for statement in INDEXES {
        conn.execute_batch(&translate(statement))?;
    }
    // One process owns this file (the lock says so), so a delivery still marked in progress
    // was cut off by this process's previous life. Its create may be in Gorgias's hands: it
    // is due again once the settle window has passed since that life ended (at the latest
    // when its lease ran out), and that attempt looks the ticket up first.
    conn.execute(
        &translate(
            "UPDATE deliveries SET status = 'queued', \
             next_attempt_at = MIN({now}, COALESCE(lease_until, {now})) + $1, \
             lease_until = NULL, owner = NULL WHERE status = 'delivering'",
        ),
        [i64::try_from(options.settle.as_millis()).unwrap_or(i64::MAX)],
    )?;
    Ok(conn)
}

/// The shared dialect in SQLite's words: `?N` for `$N`, and its clock, types and locking.
fn translate(sql: &str) -> String {
    let filled = dialect(sql, NOW, "", "INTEGER PRIMARY KEY AUTOINCREMENT", "BLOB");
    let mut out = String::with_capacity(filled.len());
    let mut chars = filled.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

impl rusqlite::ToSql for V {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Self::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Self::Int(v) => ToSqlOutput::Borrowed(ValueRef::Integer(*v)),
            Self::Text(v) => ToSqlOutput::Borrowed(ValueRef::Text(v.as_bytes())),
            Self::Blob(v) => ToSqlOutput::Borrowed(ValueRef::Blob(v)),
        })
    }
}

fn row(r: &rusqlite::Row<'_>, columns: usize) -> rusqlite::Result<Row> {
    let mut values = Vec::with_capacity(columns);
    for i in 0..columns {
        values.push(match r.get_ref(i)? {
            ValueRef::Null => V::Null,
            ValueRef::Integer(v) => V::Int(v),
            // Never written by us; read as the nearest integer rather than failing the row.
            #[allow(clippy::cast_possible_truncation)]
            ValueRef::Real(v) => V::Int(v as i64),
            ValueRef::Text(v) => V::Text(String::from_utf8_lossy(v).into_owned()),
            ValueRef::Blob(v) => V::Blob(v.to_vec()),
        });
    }
    Ok(Row(values))
}

#[async_trait::async_trait]
impl Db for Sqlite {
    async fn query(&self, sql: &'static str, params: Vec<V>) -> Result<Vec<Row>, StoreError> {
        self.run(move |conn| {
            let mut stmt = conn.prepare_cached(&translate(sql))?;
            let columns = stmt.column_count();
            let rows = stmt.query_map(rusqlite::params_from_iter(params.iter()), |r| {
                row(r, columns)
            })?;
            rows.collect()
        })
        .await
    }

    async fn execute(&self, sql: &'static str, params: Vec<V>) -> Result<u64, StoreError> {
        self.run(move |conn| {
            let mut stmt = conn.prepare_cached(&translate(sql))?;
            let n = stmt.execute(rusqlite::params_from_iter(params.iter()))?;
            Ok(u64::try_from(n).unwrap_or(u64::MAX))
        })
        .await
    }

    fn kind(&self) -> &'static str {
        "sqlite"
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

    #[test]
    fn placeholders_and_tokens_become_sqlite() {
        assert_eq!(
            translate("SELECT $1, $12, '$x' FROM t WHERE a < {now} {skip_locked}"),
            format!("SELECT ?1, ?12, '$x' FROM t WHERE a < {NOW} ")
        );
    }

    #[tokio::test]
    async fn a_second_owner_of_one_file_is_refused_until_the_first_is_gone() {
        let dir = std::env::temp_dir().join(format!("store-{}", uuid::Uuid::new_v4()));
        let path = dir.join("outbox.db");
        let options = OpenOptions {
            settle: Duration::from_secs(1),
        };
        let first = Sqlite::open(&path, options).await.unwrap();
        let Err(err) = Sqlite::open(&path, options).await else {
            panic!("a second owner was let in")
        };
        assert!(matches!(err, StoreError::InUse { .. }), "{err}");
        assert!(err.to_string().contains("outbox.db.lock"), "{err}");
        assert!(err.to_string().contains("PostgreSQL"), "{err}");
        drop(first);
        Sqlite::open(&path, options).await.unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn commits_are_fsynced() {
        let dir = std::env::temp_dir().join(format!("store-{}", uuid::Uuid::new_v4()));
        let db = Sqlite::open(
            &dir.join("outbox.db"),
            OpenOptions {
                settle: Duration::from_secs(1),
            },
        )
        .await
        .unwrap();
        let sync = db
            .query("PRAGMA synchronous", vec![])
            .await
            .unwrap()
            .remove(0)
            .int(0);
        assert_eq!(sync, 2, "FULL");
        let now = db
            .query("SELECT {now}", vec![])
            .await
            .unwrap()
            .remove(0)
            .int(0);
        let ours = i64::try_from(crate::outbox::now_ms()).unwrap();
        assert!((now - ours).abs() < 5_000, "{now} vs {ours}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
