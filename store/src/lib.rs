//! Waybill's ClickHouse store: the schema and its migrations, and one client
//! API over either the embedded engine (chDB, in-process, the default) or a
//! ClickHouse server or cluster over HTTP.
//!
//! Both modes use the official `clickhouse` client and the same SQL: in
//! embedded mode the client's connections are in-memory pipes to
//! [`http_interface`] serving the engine (see [`connector`]).

pub mod config;
mod connector;
pub mod engine;
pub mod error;
pub mod http_interface;
pub mod migrate;
pub mod rows;
pub mod schema;
pub mod sql;

use std::time::Duration;

use clickhouse::{Client, RowOwned, RowRead, RowWrite};

pub use config::{StoreConfig, StoreMode};
pub use engine::{Engine, EngineError};
pub use error::StoreError;
pub use rows::{AlertHistoryRow, AlertStateRow, SilenceRow, BizEventRow, EdgeRow, ExceptionActionRow, KeyTraceRow, LogRow, ProgressRow, SpanRow, TransactionKeyRow, TransactionRow};
pub use schema::SchemaTarget;

/// A connection to Waybill's ClickHouse, in either mode.
#[derive(Clone)]
pub struct Store {
    client: Client,
    engine: Option<Engine>,
    target: SchemaTarget,
}

impl Store {
    /// Opens the store described by `config`. In embedded mode this starts
    /// the engine (on a blocking thread); in server mode it only builds the
    /// client: call [`Store::ping`] to check the server answers.
    pub async fn open(config: &StoreConfig) -> Result<Store, StoreError> {
        config.validate()?;
        let target = SchemaTarget {
            database: config.database.clone(),
            cluster: match config.mode {
                StoreMode::Server => config.server.cluster.clone(),
                StoreMode::Embedded => None,
            },
            retention_days: config.retention_days,
        };
        match config.mode {
            StoreMode::Embedded => {
                let library = config.library_path();
                let (path, connections) = (config.embedded.path.clone(), config.embedded.connections);
                let engine = tokio::task::spawn_blocking(move || Engine::open(&library, &path, connections))
                    .await
                    .map_err(|e| StoreError::Task(e.to_string()))??;
                Ok(Store::embedded(engine, target))
            }
            StoreMode::Server => {
                let server = &config.server;
                let compression = match server.compression {
                    config::Compression::Lz4 => clickhouse::Compression::Lz4,
                    config::Compression::None => clickhouse::Compression::None,
                };
                let client = Client::default()
                    .with_url(&server.url)
                    .with_user(&server.user)
                    .with_password(&server.password)
                    .with_compression(compression)
                    .with_database(&target.database);
                Ok(Store { client, engine: None, target })
            }
        }
    }

    /// A store over an engine that is already open.
    pub fn embedded(engine: Engine, target: SchemaTarget) -> Store {
        let router = http_interface::router(engine.clone(), http_interface::Access::ReadWrite);
        let client = connector::InProcessConnector::new(router)
            .client()
            // Compressing bytes that never leave the process only costs CPU.
            .with_compression(clickhouse::Compression::None)
            .with_database(&target.database);
        Store { client, engine: Some(engine), target }
    }

    /// A store over any ClickHouse HTTP endpoint reached by `client`.
    pub fn with_client(client: Client, target: SchemaTarget) -> Store {
        let client = client.with_database(&target.database);
        Store { client, engine: None, target }
    }

    /// The same store for Waybill's pages and JSON API: on the embedded
    /// engine its calls may use the connection kept for them, and go before
    /// background calls waiting for one (`engine::Priority`). A ClickHouse
    /// server has its own scheduling and gets the same requests as before.
    pub fn interactive(&self) -> Store {
        let mut store = self.clone();
        if store.engine.is_some() {
            store.client = store.client.with_header(http_interface::PRIORITY_HEADER, "interactive");
        }
        store
    }

    /// The client, with Waybill's database selected.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The embedded engine, in embedded mode.
    pub fn engine(&self) -> Option<&Engine> {
        self.engine.as_ref()
    }

    pub fn target(&self) -> &SchemaTarget {
        &self.target
    }

    /// Runs a statement that returns no rows.
    pub async fn execute(&self, sql: &str) -> Result<(), StoreError> {
        self.client.query(sql).execute().await.map_err(StoreError::clickhouse(short(sql)))
    }

    /// Runs a query and returns all its rows.
    pub async fn fetch_all<T>(&self, sql: &str) -> Result<Vec<T>, StoreError>
    where
        T: RowOwned + RowRead,
    {
        self.client.query(sql).fetch_all::<T>().await.map_err(StoreError::clickhouse(short(sql)))
    }

    /// Inserts `rows` into `table` as one batch (one INSERT).
    pub async fn insert<T>(&self, table: &str, rows: &[T]) -> Result<(), StoreError>
    where
        T: RowOwned + RowWrite,
    {
        self.insert_once(table, rows, None).await
    }

    /// Inserts `rows` into `table` as one batch, deduplicated by `token`:
    /// repeating the insert with the same token and rows (a retry after an
    /// error whose outcome was unknown) stores the rows once. ClickHouse's
    /// `insert_deduplication_token`, within the table's deduplication window
    /// (migration 2 sets it for single-node tables), dependent materialized
    /// views included.
    pub async fn insert_once<T>(&self, table: &str, rows: &[T], token: Option<&str>) -> Result<(), StoreError>
    where
        T: RowOwned + RowWrite,
    {
        if rows.is_empty() {
            return Ok(());
        }
        let action = || format!("insert into {table}");
        let mut insert = self.client.insert::<T>(table).await.map_err(StoreError::clickhouse(action()))?;
        if let Some(token) = token {
            insert = insert
                .with_setting("insert_deduplication_token", token)
                .with_setting("deduplicate_blocks_in_dependent_materialized_views", "1");
        }
        for row in rows {
            insert.write(row).await.map_err(StoreError::clickhouse(action()))?;
        }
        insert.end().await.map_err(StoreError::clickhouse(action()))
    }

    /// Inserts spans into `otel_traces`.
    pub async fn insert_spans(&self, rows: &[SpanRow]) -> Result<(), StoreError> {
        self.insert(schema::OTEL_TRACES.name, rows).await
    }

    /// Inserts log records into `otel_logs`.
    pub async fn insert_logs(&self, rows: &[LogRow]) -> Result<(), StoreError> {
        self.insert(schema::OTEL_LOGS.name, rows).await
    }

    /// Whether ClickHouse answers `SELECT 1` within `timeout`.
    pub async fn ping(&self, timeout: Duration) -> Result<(), StoreError> {
        let query = self.client.query("SELECT 1").fetch_one::<u8>();
        match tokio::time::timeout(timeout, query).await {
            Ok(result) => result.map(|_| ()).map_err(StoreError::clickhouse("ping")),
            Err(_) => Err(StoreError::Task(format!("ClickHouse did not answer within {timeout:?}"))),
        }
    }

    /// Closes the embedded engine (nothing to do in server mode). Call once
    /// everything accepted has been written.
    pub async fn close(&self) {
        if let Some(engine) = self.engine.clone() {
            let _ = tokio::task::spawn_blocking(move || engine.close()).await;
        }
    }
}

/// The start of a statement, for error messages.
fn short(sql: &str) -> String {
    let line = sql.trim().lines().next().unwrap_or_default();
    let cut: String = line.chars().take(80).collect();
    format!("query `{cut}`")
}
