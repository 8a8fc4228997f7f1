//! The store's error type: everything a caller of the store can be told.

use crate::engine::EngineError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid store configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("ClickHouse {action} failed: {source}")]
    ClickHouse {
        action: String,
        #[source]
        source: clickhouse::error::Error,
    },
    #[error(
        "the database schema is at version {found}, newer than this waybill knows ({known}): \
         upgrade waybill before running it against this database"
    )]
    SchemaTooNew { found: u32, known: u32 },
    #[error("the embedded engine task failed: {0}")]
    Task(String),
}

impl StoreError {
    pub(crate) fn clickhouse(action: impl Into<String>) -> impl FnOnce(clickhouse::error::Error) -> StoreError {
        let action = action.into();
        move |source| StoreError::ClickHouse { action, source }
    }
}
