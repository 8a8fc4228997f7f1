//! The store against the real embedded ClickHouse engine: migrations, row
//! round trips, retention, restart, and server mode through the HTTP
//! interface with the official client over TCP.

mod common;

use common::rows;
use waybill_store::config::{Compression, ServerConfig};
use waybill_store::http_interface::{self, Access};
use waybill_store::migrate::latest_version;
use waybill_store::schema;
use waybill_store::{LogRow, SpanRow, Store, StoreConfig, StoreMode};

const SPAN_COLUMNS: &str = SpanRow::COLUMNS;
const LOG_COLUMNS: &str = LogRow::COLUMNS;

/// A span whose strings hold what breaks naive encodings: blank lines
/// (which cut chDB's inline insert data), tabs, quotes, NUL and non-ASCII.
fn awkward_span() -> SpanRow {
    let mut span = rows::span(3);
    span.span_id = "00000000ffffffff".into();
    span.status_message = "line one\n\nline three\tquoted 'x' \"y\" \\ \u{0} Zürich 東京".into();
    span.span_attributes.push(("note".into(), "\n\n".into()));
    span.events_timestamp_ns = vec![span.timestamp_ns + 1, span.timestamp_ns + 2];
    span.events_name = vec!["first".into(), "second".into()];
    span.events_attributes = vec![vec![], vec![("k".into(), "v".into())]];
    span
}

fn all_versions() -> Vec<u32> {
    waybill_store::migrate::MIGRATIONS.iter().map(|m| m.version).collect()
}

async fn read_spans(store: &Store) -> Vec<SpanRow> {
    store.fetch_all(&format!("SELECT {SPAN_COLUMNS} FROM otel_traces ORDER BY SpanId")).await.unwrap()
}

#[tokio::test]
async fn migrations_apply_once_and_record_their_version() {
    let store = common::store("t_migrations").await;
    assert_eq!(store.schema_version().await.unwrap(), latest_version());
    let again = store.migrate().await.unwrap();
    assert!(again.applied.is_empty(), "second run applied {:?}", again.applied);
    assert!(again.retention_changed.is_empty());
    let tables: Vec<String> = store
        .fetch_all("SELECT name FROM system.tables WHERE database = 't_migrations' ORDER BY name")
        .await
        .unwrap();
    assert_eq!(
        tables,
        [
            "alert_history",
            "alert_silences",
            "alert_state",
            "biz_edges",
            "biz_events",
            "biz_key_traces",
            "biz_trace_links",
            "biz_trace_links_mv",
            "exception_actions",
            "lineage_progress",
            "otel_logs",
            "otel_traces",
            "otel_traces_trace_id_ts",
            "otel_traces_trace_id_ts_mv",
            "transaction_keys",
            "transactions",
            "waybill_schema_migrations"
        ]
    );
}

#[tokio::test]
async fn the_tables_ingest_writes_merge_wider_and_keep_batches_compact() {
    let store = common::store("t_ingest_settings").await;
    // Each table's engine clause with its settings, as the engine shows it.
    let engine_clauses = || {
        store.fetch_all::<(String, String)>(
            "SELECT name, engine_full FROM system.tables WHERE database = 't_ingest_settings' \
             AND name IN ('otel_traces', 'otel_logs', 'biz_events', 'transactions') ORDER BY name",
        )
    };
    let engines = engine_clauses().await.unwrap();
    assert_eq!(engines.len(), 4);
    for (name, value) in waybill_store::schema::INGEST_TABLE_SETTINGS {
        let setting = format!("{name} = {value}");
        for (table, engine) in &engines {
            // The resolver's tables keep the engine's defaults.
            assert_eq!(engine.contains(&setting), table != "transactions", "{table}: {engine}");
        }
    }
    // A full batch of spans is one compact part.
    let spans: Vec<SpanRow> = (0..20_000).map(rows::span).collect();
    store.insert_spans(&spans).await.unwrap();
    let parts: Vec<(String, u64)> = store
        .fetch_all("SELECT part_type, rows FROM system.parts WHERE database = 't_ingest_settings' AND table = 'otel_traces' AND active")
        .await
        .unwrap();
    assert_eq!(parts, vec![("Compact".to_owned(), 20_000)]);
    // Migrating again changes nothing.
    store.migrate().await.unwrap();
    assert_eq!(engine_clauses().await.unwrap(), engines);
}

#[tokio::test]
async fn concurrent_migrations_converge_on_one_schema() {
    let engine = common::engine();
    let first = Store::embedded(engine.clone(), common::target("t_concurrent"));
    let second = Store::embedded(engine, common::target("t_concurrent"));
    common::drop_database(&first).await;
    let (a, b) = tokio::join!(first.migrate(), second.migrate());
    a.unwrap();
    b.unwrap();
    let recorded: Vec<u32> = first.fetch_all("SELECT Version FROM waybill_schema_migrations FINAL ORDER BY Version").await.unwrap();
    assert_eq!(recorded, all_versions());
    assert!(first.migrate().await.unwrap().applied.is_empty());
}

/// A store made before `transactions` had its own granule size: the table
/// as an earlier release created it, holding two transactions (one of them
/// written twice).
async fn store_with_transactions_in_default_granules(database: &str) -> Store {
    let store = common::store(database).await;
    let earlier = schema::TableDef { settings: "index_granularity = 8192", ..schema::TRANSACTIONS };
    store.execute("DROP TABLE transactions").await.unwrap();
    store.execute(&store.target().create_storage_table(&earlier, "transactions")).await.unwrap();
    store
        .execute(
            "INSERT INTO transactions (Id, RootKind, RootValue, State, KeyKinds, KeyValues, Version) VALUES \
             ('t1', 'order', 'PO-1', 'in_flight', ['order'], ['PO-1'], 1), \
             ('t1', 'order', 'PO-1', 'completed', ['order', 'invoice'], ['PO-1', 'INV-1'], 2), \
             ('t2', 'order', 'PO-2', 'stuck', ['order'], ['PO-2'], 1)",
        )
        .await
        .unwrap();
    store
}

async fn transactions_engine(store: &Store) -> String {
    let engines: Vec<String> = store
        .fetch_all(&format!("SELECT engine_full FROM system.tables WHERE database = '{}' AND name = 'transactions'", store.target().database))
        .await
        .unwrap();
    engines.into_iter().next().expect("transactions exists")
}

async fn latest_transactions(store: &Store) -> Vec<(String, String, String, u64)> {
    store.fetch_all("SELECT Id, State, arrayStringConcat(KeyValues, ' '), Version FROM transactions FINAL ORDER BY Id").await.unwrap()
}

async fn tables_named_like_transactions(store: &Store) -> Vec<String> {
    store
        .fetch_all(&format!("SELECT name FROM system.tables WHERE database = '{}' AND name LIKE 'transactions%' ORDER BY name", store.target().database))
        .await
        .unwrap()
}

#[tokio::test]
async fn migrating_rebuilds_an_earlier_transactions_table_in_small_granules_keeping_its_rows() {
    let store = store_with_transactions_in_default_granules("t_rebuild_transactions").await;
    assert!(transactions_engine(&store).await.contains("index_granularity = 8192"));
    let before = latest_transactions(&store).await;
    assert_eq!(before.len(), 2);
    // What a run that stopped part way leaves behind.
    store.execute("CREATE TABLE transactions_rebuilt_1_2 (Id String) ENGINE = MergeTree ORDER BY Id").await.unwrap();

    let report = store.migrate().await.unwrap();
    assert_eq!(report.rebuilt, ["transactions"]);
    let engine = transactions_engine(&store).await;
    assert!(engine.contains(schema::TRANSACTIONS_SETTINGS), "{engine}");
    assert_eq!(latest_transactions(&store).await, before);
    // The next run, finding the table current, drops what was left.
    assert_eq!(tables_named_like_transactions(&store).await, ["transactions", "transactions_rebuilt_1_2"]);

    let again = store.migrate().await.unwrap();
    assert!(again.rebuilt.is_empty());
    assert_eq!(latest_transactions(&store).await, before);
    assert_eq!(tables_named_like_transactions(&store).await, ["transactions"]);
}

#[tokio::test]
async fn a_rebuild_that_fails_keeps_the_table_and_leaves_no_copy() {
    let store = store_with_transactions_in_default_granules("t_rebuild_fails").await;
    let before = latest_transactions(&store).await;
    // A column the copy does not have: copying every column fails.
    store.execute("ALTER TABLE transactions ADD COLUMN Note String").await.unwrap();
    let err = store.migrate().await.unwrap_err().to_string();
    assert!(err.contains("transactions_rebuilt_"), "the error names the copy step: {err}");
    assert!(transactions_engine(&store).await.contains("index_granularity = 8192"));
    assert_eq!(latest_transactions(&store).await, before);
    assert_eq!(tables_named_like_transactions(&store).await, ["transactions"]);
}

#[tokio::test]
async fn two_processes_rebuilding_transactions_at_once_converge() {
    let first = store_with_transactions_in_default_granules("t_rebuild_concurrent").await;
    let before = latest_transactions(&first).await;
    let second = Store::embedded(common::engine(), common::target("t_rebuild_concurrent"));
    let (a, b) = tokio::join!(first.migrate(), second.migrate());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(!a.rebuilt.is_empty() || !b.rebuilt.is_empty());
    assert!(transactions_engine(&first).await.contains(schema::TRANSACTIONS_SETTINGS));
    assert_eq!(latest_transactions(&first).await, before);
    first.migrate().await.unwrap();
    assert_eq!(tables_named_like_transactions(&first).await, ["transactions"]);
}

#[tokio::test]
async fn spans_round_trip_with_every_column() {
    let store = common::store("t_span_round_trip").await;
    let written: Vec<SpanRow> = (0..200).map(rows::span).chain([awkward_span()]).collect();
    store.insert_spans(&written).await.unwrap();
    let mut expected = written.clone();
    expected.sort_by(|a, b| a.span_id.cmp(&b.span_id));
    assert_eq!(read_spans(&store).await, expected);
    // The materialized view filled the trace id lookup table.
    let traces: Vec<u64> = store.fetch_all("SELECT count() FROM otel_traces_trace_id_ts FINAL").await.unwrap();
    assert_eq!(traces, [50]);
}

#[tokio::test]
async fn logs_round_trip_and_get_their_time_column() {
    let store = common::store("t_log_round_trip").await;
    let written: Vec<LogRow> = (0..50).map(rows::log).collect();
    store.insert_logs(&written).await.unwrap();
    let read: Vec<LogRow> =
        store.fetch_all(&format!("SELECT {LOG_COLUMNS} FROM otel_logs ORDER BY Timestamp")).await.unwrap();
    assert_eq!(read, written);
    let mismatched: Vec<u64> = store
        .fetch_all("SELECT countIf(TimestampTime != toDateTime(Timestamp)) FROM otel_logs")
        .await
        .unwrap();
    assert_eq!(mismatched, [0]);
}

#[tokio::test]
async fn retention_is_a_ttl_that_follows_the_config() {
    let store = common::store("t_retention").await;
    let engine_full = |table: &'static str| {
        let store = store.clone();
        async move {
            let rows: Vec<String> = store
                .fetch_all(&format!(
                    "SELECT engine_full FROM system.tables WHERE database = 't_retention' AND name = '{table}'"
                ))
                .await
                .unwrap();
            rows.into_iter().next().unwrap()
        }
    };
    assert!(engine_full("otel_traces").await.contains("TTL toDateTime(Timestamp) + toIntervalDay(30)"));
    assert!(engine_full("otel_logs").await.contains("TTL TimestampTime + toIntervalDay(30)"));

    let mut target = store.target().clone();
    target.retention_days = 3;
    let shorter = Store::embedded(common::engine(), target);
    let report = shorter.migrate().await.unwrap();
    assert_eq!(report.retention_changed, ["otel_traces", "otel_traces_trace_id_ts", "otel_logs"]);
    assert!(engine_full("otel_traces").await.contains("TTL toDateTime(Timestamp) + toIntervalDay(3)"));
    assert!(shorter.migrate().await.unwrap().retention_changed.is_empty());
}

#[tokio::test]
async fn queries_on_missing_tables_report_clickhouse_errors() {
    let store = common::store("t_errors").await;
    let err = store.execute("SELECT * FROM no_such_table").await.unwrap_err().to_string();
    assert!(err.contains("UNKNOWN_TABLE") && err.contains("no_such_table"), "{err}");
    // The store keeps working after a failed query.
    assert_eq!(store.schema_version().await.unwrap(), latest_version());
}

/// A retried insert (same token, same rows) is stored once, in the table
/// and in the trace id view fed from it; a new token stores again.
#[tokio::test]
async fn inserts_retried_with_the_same_token_are_stored_once() {
    let store = common::store("t_dedup").await;
    let spans: Vec<SpanRow> = (0..100).map(rows::span).collect();
    store.insert_once("otel_traces", &spans, Some("batch-1")).await.unwrap();
    store.insert_once("otel_traces", &spans, Some("batch-1")).await.unwrap();
    let counts: Vec<(u64, Option<u64>)> = store
        .fetch_all("SELECT count(), (SELECT count() FROM otel_traces_trace_id_ts) FROM otel_traces")
        .await
        .unwrap();
    assert_eq!(counts, [(100, Some(25))]);
    store.insert_once("otel_traces", &spans, Some("batch-2")).await.unwrap();
    let count: Vec<u64> = store.fetch_all("SELECT count() FROM otel_traces").await.unwrap();
    assert_eq!(count, [200]);
}

/// Server mode, exactly as against a ClickHouse server: the store's client
/// with LZ4 over TCP to the HTTP interface serving the embedded engine.
#[tokio::test]
async fn server_mode_works_through_the_http_interface() {
    let addr = common::serve(http_interface::router(common::engine(), Access::ReadWrite)).await;
    let config = StoreConfig {
        mode: StoreMode::Server,
        database: "t_server_mode".into(),
        server: ServerConfig { url: format!("http://{addr}"), compression: Compression::Lz4, ..ServerConfig::default() },
        ..StoreConfig::default()
    };
    let store = Store::open(&config).await.unwrap();
    common::drop_database(&store).await;
    assert_eq!(store.migrate().await.unwrap().applied, all_versions());
    let written: Vec<SpanRow> = (0..3000).map(rows::span).chain([awkward_span()]).collect();
    store.insert_spans(&written).await.unwrap();
    let mut expected = written;
    expected.sort_by(|a, b| a.span_id.cmp(&b.span_id));
    assert_eq!(read_spans(&store).await, expected);

    let err = store.execute("SELECT * FROM no_such_table").await.unwrap_err().to_string();
    assert!(err.contains("Code: 60") && err.contains("UNKNOWN_TABLE"), "{err}");

    // The raw protocol: status, exception header and summary as ClickHouse sends them.
    let missing = common::http(addr, "POST", "/?database=t_server_mode", &[], b"SELECT * FROM nope").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.header("X-ClickHouse-Exception-Code"), Some("60"));
    let syntax = common::http(addr, "POST", "/", &[], b"SELEC 1").await;
    assert_eq!((syntax.status, syntax.header("X-ClickHouse-Exception-Code")), (400, Some("62")));
    let insert = common::http(
        addr,
        "POST",
        &format!("/?database=t_server_mode&query={}", common::encode("INSERT INTO waybill_schema_migrations (Version, Name) FORMAT TSV")),
        &[],
        b"90\tfrom tsv\n",
    )
    .await;
    assert_eq!(insert.status, 200, "{}", insert.text());
    assert!(insert.header("X-ClickHouse-Summary").unwrap().contains("\"written_rows\":\"1\""));
    let json = common::http(addr, "GET", &format!("/?query={}&default_format=JSONEachRow", common::encode("SELECT 1 AS x")), &[], b"").await;
    assert_eq!((json.status, json.text().as_str()), (200, "{\"x\":1}\n"));
    assert_eq!(json.header("Content-Type"), Some("application/json; charset=UTF-8"));
    let get_write = common::http(addr, "GET", &format!("/?query={}", common::encode("DROP DATABASE t_server_mode")), &[], b"").await;
    assert_eq!(get_write.status, 403, "GET must be read-only as in ClickHouse");
    let params = common::http(addr, "POST", "/?param_n=41", &[], b"SELECT {n:UInt8} + 1").await;
    assert_eq!(params.text(), "42\n");
    // The query parameter and the body join with a line break, as in ClickHouse.
    let joined = common::http(addr, "POST", &format!("/?query={}", common::encode("SELECT 1 AS x")), &[], b"FORMAT JSONEachRow").await;
    assert_eq!(joined.text(), "{\"x\":1}\n");
    let split_rows = common::http(
        addr,
        "POST",
        &format!(
            "/?database=t_server_mode&query={}",
            common::encode("INSERT INTO waybill_schema_migrations (Version, Name) SETTINGS max_insert_threads = 1 FORMAT TSV\n91\tinline")
        ),
        &[],
        b"92\tbody\n",
    )
    .await;
    assert_eq!(split_rows.status, 200, "{}", split_rows.text());
    let names = common::http(
        addr,
        "POST",
        "/?database=t_server_mode",
        &[],
        b"SELECT Name FROM waybill_schema_migrations WHERE Version >= 90 ORDER BY Version",
    )
    .await;
    assert_eq!(names.text(), "from tsv\ninline\nbody\n");
}

/// Restart: a second process opens the same data directory and finds the rows.
#[tokio::test]
async fn data_survives_an_engine_restart() {
    if let Ok(dir) = std::env::var("WAYBILL_TEST_RESTART_DIR") {
        return restart_child(&dir).await;
    }
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let run = |step: &str| {
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["data_survives_an_engine_restart", "--exact", "--nocapture", "--test-threads=1"])
            .env("WAYBILL_TEST_RESTART_DIR", &dir)
            .env("WAYBILL_TEST_RESTART_STEP", step)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(output.status.success(), "{step} failed: {stdout}{}", String::from_utf8_lossy(&output.stderr));
        stdout
    };
    let wrote = run("write");
    assert!(wrote.contains("restart-step write rows=120"), "{wrote}");
    let read = run("read");
    assert!(read.contains("restart-step read rows=120"), "{read}");
}

async fn restart_child(dir: &str) {
    let step = std::env::var("WAYBILL_TEST_RESTART_STEP").unwrap();
    let config = StoreConfig {
        database: "t_restart".into(),
        embedded: waybill_store::config::EmbeddedConfig { path: dir.into(), library: Some(common::library()), ..Default::default() },
        ..StoreConfig::default()
    };
    let store = Store::open(&config).await.unwrap();
    store.migrate().await.unwrap();
    if step == "write" {
        store.insert_spans(&(0..120).map(rows::span).collect::<Vec<_>>()).await.unwrap();
    }
    let count: u64 = store.client().query("SELECT count() FROM otel_traces").fetch_one().await.unwrap();
    println!("restart-step {step} rows={count}");
    store.close().await;
}
