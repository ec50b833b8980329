//! The embedded backend: one SQLite file (`$DATA_DIR/outbox.db`), owned by one process.
//!
//! - **One owner.** An exclusive lock on `outbox.db.lock`, held for the process's life and
//!   released by the OS when it dies, makes a second process on the same file refuse to start.
//!   Without it, the second would requeue the first's deliveries in progress and both would
//!   create their tickets.
//! - **Durable before the answer.** WAL with `synchronous=FULL`: each commit is fsynced before
//!   the statement returns, so an accepted request survives a power loss, not only a crash.
//! - **Group commit.** One thread owns the connection. Statements that arrive while it is busy
//!   are run together in one transaction (each in a savepoint of its own, so one failing
//!   changes nothing for the others) and answered after its one commit: under load, one fsync
//!   serves many requests instead of one each (`scripts/bench --exactly-once`).

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use rusqlite::Connection;
use rusqlite::types::{ToSqlOutput, ValueRef};

use super::{ADDED_COLUMNS, Db, INDEXES, OpenOptions, Row, StoreError, TABLES, V, dialect};

/// The database's clock in Unix milliseconds.
const NOW: &str = "CAST(unixepoch('subsec') * 1000 AS INTEGER)";

/// One SQLite database: the thread that owns its connection, and the lock that makes it ours.
pub struct Sqlite {
    jobs: mpsc::Sender<Job>,
    /// Held (locked) for as long as this value lives; the OS drops the lock with the process.
    _lock: std::fs::File,
}

/// The most statements one transaction carries.
const BATCH_MAX: usize = 128;

/// One statement for the connection's thread, and where its outcome goes.
struct Job {
    sql: &'static str,
    params: Vec<V>,
    rows: bool,
    reply: tokio::sync::oneshot::Sender<Result<Outcome, StoreError>>,
}

enum Outcome {
    Rows(Vec<Row>),
    Changed(u64),
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
        let (jobs, queue) = mpsc::channel();
        std::thread::Builder::new()
            .name("sqlite".into())
            .spawn(move || serve(conn, &queue))
            .map_err(|_| StoreError::Task)?;
        Ok(Self { jobs, _lock: lock })
    }

    async fn run(
        &self,
        sql: &'static str,
        params: Vec<V>,
        rows: bool,
    ) -> Result<Outcome, StoreError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Job {
                sql,
                params,
                rows,
                reply,
            })
            .map_err(|_| StoreError::Task)?;
        answer.await.map_err(|_| StoreError::Task)?
    }
}

/// The connection's thread: runs what is queued, a batch per transaction, until the store is
/// dropped.
fn serve(mut conn: Connection, queue: &mpsc::Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH_MAX {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if batch.len() == 1 {
            // Alone: its own statement is its transaction.
            for job in batch {
                let outcome = one(&conn, job.sql, &job.params, job.rows);
                let _ = job.reply.send(outcome);
            }
            continue;
        }
        let outcomes = together(&mut conn, &batch);
        for (job, outcome) in batch.into_iter().zip(outcomes) {
            let _ = job.reply.send(outcome);
        }
    }
}

/// Runs `batch` in one transaction, each statement in a savepoint: the outcomes, answered only
/// once the commit is on disk (a failed commit fails them all).
fn together(conn: &mut Connection, batch: &[Job]) -> Vec<Result<Outcome, StoreError>> {
    let tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => return batch.iter().map(|_| Err(clone_err(&e))).collect(),
    };
    let mut outcomes = Vec::with_capacity(batch.len());
    for job in batch {
        let outcome = match tx.execute_batch("SAVEPOINT job") {
            Err(e) => Err(StoreError::from(e)),
            Ok(()) => {
                let outcome = one(&tx, job.sql, &job.params, job.rows);
                let end = if outcome.is_ok() {
                    "RELEASE job"
                } else {
                    "ROLLBACK TO job; RELEASE job"
                };
                match tx.execute_batch(end) {
                    Ok(()) => outcome,
                    Err(e) => Err(StoreError::from(e)),
                }
            }
        };
        outcomes.push(outcome);
    }
    match tx.commit() {
        Ok(()) => outcomes,
        Err(e) => batch.iter().map(|_| Err(clone_err(&e))).collect(),
    }
}

/// The same failure again, for each statement of a batch it ended.
fn clone_err(e: &rusqlite::Error) -> StoreError {
    StoreError::Batch(e.to_string())
}

/// Runs one statement.
fn one(
    conn: &Connection,
    sql: &'static str,
    params: &[V],
    rows: bool,
) -> Result<Outcome, StoreError> {
    let mut stmt = conn.prepare_cached(&translate(sql))?;
    if rows {
        let columns = stmt.column_count();
        let found = stmt
            .query_map(rusqlite::params_from_iter(params.iter()), |r| {
                row(r, columns)
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(Outcome::Rows(found))
    } else {
        let n = stmt.execute(rusqlite::params_from_iter(params.iter()))?;
        Ok(Outcome::Changed(u64::try_from(n).unwrap_or(u64::MAX)))
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
    // Every statement of the store stays prepared (the default keeps 16).
    conn.set_prepared_statement_cache_capacity(64);
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
        match self.run(sql, params, true).await? {
            Outcome::Rows(rows) => Ok(rows),
            Outcome::Changed(_) => Ok(Vec::new()),
        }
    }

    async fn execute(&self, sql: &'static str, params: Vec<V>) -> Result<u64, StoreError> {
        match self.run(sql, params, false).await? {
            Outcome::Changed(n) => Ok(n),
            Outcome::Rows(rows) => Ok(u64::try_from(rows.len()).unwrap_or(u64::MAX)),
        }
    }

    fn kind(&self) -> &'static str {
        "sqlite"
    }
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn statements_grouped_into_one_commit_keep_their_own_outcomes() {
        let dir = std::env::temp_dir().join(format!("store-{}", uuid::Uuid::new_v4()));
        let db = std::sync::Arc::new(
            Sqlite::open(
                &dir.join("outbox.db"),
                OpenOptions {
                    settle: Duration::from_secs(1),
                },
            )
            .await
            .unwrap(),
        );
        let mut set = tokio::task::JoinSet::new();
        for i in 0..200_i64 {
            let db = db.clone();
            set.spawn(async move {
                if i == 100 {
                    // Refused by the primary key: only this one fails.
                    let _ = db
                        .execute("INSERT INTO heartbeat (id, at) VALUES (1000, 0)", vec![])
                        .await;
                    db.execute("INSERT INTO heartbeat (id, at) VALUES (1000, 0)", vec![])
                        .await
                        .map(|_| ())
                } else {
                    db.execute(
                        "INSERT INTO heartbeat (id, at) VALUES ($1, {now})",
                        vec![V::Int(2000 + i)],
                    )
                    .await
                    .map(|_| ())
                }
            });
        }
        let outcomes = set.join_all().await;
        assert_eq!(outcomes.iter().filter(|o| o.is_err()).count(), 1);
        let count = db
            .query("SELECT COUNT(*) FROM heartbeat", vec![])
            .await
            .unwrap()
            .remove(0)
            .int(0);
        assert_eq!(count, 200, "199 inserts and the first of the two alike");
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
