//! The replicated backend: PostgreSQL (`OUTBOX_URL=postgres://…`), shared by any number of
//! replicas. Claims take rows with `FOR UPDATE SKIP LOCKED` and a lease on the database's own
//! clock, so replicas whose clocks disagree still agree on whose lease ran out.
//!
//! **Deadlines.** A database that stops answering (a blackholed primary, a full disk) must
//! not hang accepts, status reads or `/readyz` for minutes and fill the concurrency slots:
//! every connection has a connect timeout, TCP keepalives, `tcp_user_timeout` and a
//! server-side `statement_timeout`, and every operation (pool checkout included) has a
//! client-side deadline of [`OPERATION_DEADLINE`]. Missing it is [`StoreError::Timeout`],
//! which callers answer with 503 `outbox_unavailable`.

use std::time::Duration;

use bytes::BytesMut;
use deadpool_postgres::{Manager, Pool};
use tokio_postgres::NoTls;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use super::{ADDED_COLUMNS, Db, INDEXES, Row, StoreError, TABLES, V, dialect};

/// The database's clock in Unix milliseconds (`clock_timestamp()`: the time of the
/// statement, not of its transaction's start).
const NOW: &str = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT";

/// The longest any one operation may take, pool checkout included.
pub const OPERATION_DEADLINE: Duration = Duration::from_secs(5);

/// Serialises schema creation between replicas starting together (an arbitrary constant).
const SCHEMA_LOCK: i64 = 0x6f75_7462_6f78;

/// A pool of connections to one database.
pub struct Postgres {
    pool: Pool,
}

impl Postgres {
    /// Connects (a small pool, with deadlines) and creates the schema.
    ///
    /// # Errors
    /// When the URL is unusable or the database cannot be reached in time.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let mut config: tokio_postgres::Config = url.parse().map_err(StoreError::Postgres)?;
        let statement_ms = OPERATION_DEADLINE.as_millis();
        // Added to the URL's own `options` (a search_path, say), not in their place.
        let options = match config.get_options() {
            Some(given) if !given.trim().is_empty() => {
                format!("{given} -c statement_timeout={statement_ms}")
            }
            _ => format!("-c statement_timeout={statement_ms}"),
        };
        config
            .connect_timeout(OPERATION_DEADLINE)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(2))
            .keepalives_retries(3)
            .tcp_user_timeout(OPERATION_DEADLINE * 2)
            .options(options);
        let pool = Pool::builder(Manager::new(config, NoTls))
            .max_size(8)
            .wait_timeout(Some(OPERATION_DEADLINE))
            .create_timeout(Some(OPERATION_DEADLINE))
            .recycle_timeout(Some(OPERATION_DEADLINE))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Pool(e.to_string()))?;
        let db = Self { pool };
        deadline(db.create_schema()).await?;
        Ok(db)
    }

    async fn create_schema(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
            .await?;
        for statement in TABLES {
            tx.batch_execute(&translate(statement)).await?;
        }
        for (column, kind) in ADDED_COLUMNS {
            tx.batch_execute(&format!(
                "ALTER TABLE deliveries ADD COLUMN IF NOT EXISTS {column} {kind}"
            ))
            .await?;
        }
        for statement in INDEXES {
            tx.batch_execute(&translate(statement)).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::Pool(e.to_string()))
    }
}

async fn deadline<T>(work: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
    tokio::time::timeout(OPERATION_DEADLINE, work)
        .await
        .map_err(|_| StoreError::Timeout(OPERATION_DEADLINE))?
}

fn translate(sql: &str) -> String {
    dialect(
        sql,
        NOW,
        "FOR UPDATE SKIP LOCKED",
        "BIGSERIAL PRIMARY KEY",
        "BYTEA",
    )
}

impl ToSql for V {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Self::Null => Ok(IsNull::Yes),
            // Columns of the first schema are INTEGER; ours fit them.
            Self::Int(v) if *ty == Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
            Self::Int(v) if *ty == Type::INT2 => i16::try_from(*v)?.to_sql(ty, out),
            Self::Int(v) => v.to_sql(&Type::INT8, out),
            Self::Text(v) => v.as_str().to_sql(ty, out),
            Self::Blob(v) => v.as_slice().to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

fn row(r: &tokio_postgres::Row) -> Result<Row, tokio_postgres::Error> {
    let mut values = Vec::with_capacity(r.len());
    for (i, column) in r.columns().iter().enumerate() {
        let ty = column.type_();
        let v = if *ty == Type::INT8 {
            r.try_get::<_, Option<i64>>(i)?.map(V::Int)
        } else if *ty == Type::INT4 {
            r.try_get::<_, Option<i32>>(i)?.map(|v| V::Int(v.into()))
        } else if *ty == Type::INT2 {
            r.try_get::<_, Option<i16>>(i)?.map(|v| V::Int(v.into()))
        } else if *ty == Type::BOOL {
            r.try_get::<_, Option<bool>>(i)?.map(|v| V::Int(v.into()))
        } else if *ty == Type::BYTEA {
            r.try_get::<_, Option<Vec<u8>>>(i)?.map(V::Blob)
        } else {
            r.try_get::<_, Option<String>>(i)?.map(V::Text)
        };
        values.push(v.unwrap_or(V::Null));
    }
    Ok(Row(values))
}

fn refs(params: &[V]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

#[async_trait::async_trait]
impl Db for Postgres {
    async fn query(&self, sql: &'static str, params: Vec<V>) -> Result<Vec<Row>, StoreError> {
        deadline(async {
            let client = self.client().await?;
            let stmt = client.prepare_cached(&translate(sql)).await?;
            let rows = client.query(&stmt, &refs(&params)).await?;
            Ok(rows.iter().map(row).collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn execute(&self, sql: &'static str, params: Vec<V>) -> Result<u64, StoreError> {
        deadline(async {
            let client = self.client().await?;
            let stmt = client.prepare_cached(&translate(sql)).await?;
            Ok(client.execute(&stmt, &refs(&params)).await?)
        })
        .await
    }

    fn kind(&self) -> &'static str {
        "postgres"
    }
}
