//! What the benchmarks share: settings from the environment, the clock and
//! a fresh embedded store.

#![allow(dead_code)]

use std::path::Path;

use waybill_store::engine::Engine;
use waybill_store::{SchemaTarget, Store};

/// The number in environment variable `name`, else `default`.
pub fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Nanoseconds since the epoch, now.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64
}

/// The embedded engine over an empty `dir`: whatever an earlier run left
/// there is removed first. `WAYBILL_STORE__EMBEDDED__CONNECTIONS` sets its
/// connections, as for the service.
pub fn fresh_engine(dir: &Path) -> Engine {
    let _ = std::fs::remove_dir_all(dir);
    let library = std::env::var_os("WAYBILL_STORE__EMBEDDED__LIBRARY").map(Into::into).unwrap_or_else(waybill_store::engine::default_library_path);
    let connections = std::env::var("WAYBILL_STORE__EMBEDDED__CONNECTIONS")
        .map(|n| n.parse().expect("WAYBILL_STORE__EMBEDDED__CONNECTIONS is a number"))
        .unwrap_or(waybill_store::engine::DEFAULT_CONNECTIONS);
    Engine::open(&library, dir, connections).expect("open the embedded engine (run scripts/fetch-engine.sh)")
}

/// A migrated store in database `database` of `engine`.
pub async fn migrated_store(engine: &Engine, database: &str) -> Store {
    let store = Store::embedded(engine.clone(), SchemaTarget { database: database.into(), cluster: None, retention_days: 30 });
    store.migrate().await.unwrap();
    store
}
