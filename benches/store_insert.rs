//! Insert rate of `otel_traces` rows through the store API against the raw
//! engine insert rate of the same rows, in one run, on one engine.
//!
//! raw:      pre-encoded RowBinary loaded with `INSERT ... FROM INFILE`
//!           straight through the engine's C API (no Rust encoding, no HTTP);
//! store:    `Store::insert_spans` in embedded mode (RowBinary encoding by the
//!           clickhouse client, in-process HTTP, spool file, same INSERT);
//! server:   the same store code in server mode over loopback TCP with LZ4,
//!           against the HTTP interface (what CI uses as a stand-in server).
//!
//! Run: `cargo bench --bench store_insert` (env BENCH_ROWS, BENCH_BATCH,
//! BENCH_RUNS). Figures are written down in BENCHMARKS.md.

mod common;
use common::{env_or, fresh_engine};

#[path = "../tests/common/rows.rs"]
mod rows;

use std::time::Instant;

use waybill_store::engine::EngineQuery;
use waybill_store::http_interface::{self, Access};
use waybill_store::{SchemaTarget, SpanRow, Store, StoreConfig, StoreMode};

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let total = env_or("BENCH_ROWS", 200_000);
    let batch = env_or("BENCH_BATCH", 20_000);
    let runs = env_or("BENCH_RUNS", 5);
    let dir = std::path::PathBuf::from("target/bench-data");
    let engine = fresh_engine(&dir);
    let target = SchemaTarget { database: "bench".into(), cluster: None, retention_days: 30 };
    let store = Store::embedded(engine.clone(), target.clone());
    store.migrate().await.unwrap();

    let spans: Vec<SpanRow> = (0..total as u64).map(rows::span).collect();
    let batches: Vec<&[SpanRow]> = spans.chunks(batch).collect();

    // The same rows as RowBinary, encoded once by the engine itself.
    store.insert_spans(&spans).await.unwrap();
    let raw_file = std::fs::canonicalize(&dir).unwrap().join("raw-spans.rowbinary");
    let columns = "Timestamp, TraceId, SpanId, ParentSpanId, TraceState, SpanName, SpanKind, ServiceName, \
        ResourceAttributes, ScopeName, ScopeVersion, SpanAttributes, Duration, StatusCode, StatusMessage, \
        `Events.Timestamp`, `Events.Name`, `Events.Attributes`, `Links.TraceId`, `Links.SpanId`, \
        `Links.TraceState`, `Links.Attributes`, WaybillSource";
    let mut raw_batches = Vec::new();
    for (i, chunk) in batches.iter().enumerate() {
        let first = &chunk[0].span_id;
        let last = &chunk[chunk.len() - 1].span_id;
        let data = engine
            .query(EngineQuery {
                sql: &format!(
                    "SELECT {columns} FROM bench.otel_traces WHERE SpanId BETWEEN '{first}' AND '{last}' ORDER BY SpanId"
                ),
                format: "RowBinary",
                database: None,
                params: &[],
            })
            .unwrap()
            .data;
        let path = raw_file.with_extension(format!("{i}"));
        std::fs::write(&path, data).unwrap();
        raw_batches.push(path);
    }

    // Server mode: the HTTP interface on a loopback port, the store's client with LZ4.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = http_interface::router(engine.clone(), Access::ReadWrite);
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let mut server_config = StoreConfig { mode: StoreMode::Server, database: "bench".into(), ..StoreConfig::default() };
    server_config.server.url = format!("http://{addr}");
    let server = Store::open(&server_config).await.unwrap();

    let truncate = || async { store.execute("TRUNCATE TABLE otel_traces").await.unwrap() };
    let (mut raw_rates, mut store_rates, mut server_rates, mut ratios) = (vec![], vec![], vec![], vec![]);
    for run in 0..runs {
        truncate().await;
        let start = Instant::now();
        for path in &raw_batches {
            let engine = engine.clone();
            let sql = format!("INSERT INTO bench.otel_traces ({columns}) FROM INFILE '{}' FORMAT RowBinary", path.display());
            tokio::task::spawn_blocking(move || {
                engine.query(EngineQuery { sql: &sql, format: "TabSeparated", database: None, params: &[] }).unwrap()
            })
            .await
            .unwrap();
        }
        let raw = total as f64 / start.elapsed().as_secs_f64();

        truncate().await;
        let start = Instant::now();
        for chunk in &batches {
            store.insert_spans(chunk).await.unwrap();
        }
        let ours = total as f64 / start.elapsed().as_secs_f64();

        truncate().await;
        let start = Instant::now();
        for chunk in &batches {
            server.insert_spans(chunk).await.unwrap();
        }
        let over_tcp = total as f64 / start.elapsed().as_secs_f64();

        let count: u64 = store.client().query("SELECT count() FROM otel_traces").fetch_one().await.unwrap();
        assert_eq!(count as usize, total, "every row must land");
        println!(
            "run {run}: raw {raw:>9.0} rows/s | store {ours:>9.0} rows/s (ratio {:.2}) | server mode over TCP+LZ4 {over_tcp:>9.0} rows/s (ratio {:.2})",
            ours / raw,
            over_tcp / raw
        );
        raw_rates.push(raw);
        store_rates.push(ours);
        server_rates.push(over_tcp);
        ratios.push(ours / raw);
    }
    println!(
        "median of {runs} runs, {total} rows in batches of {batch}: raw {:.0} rows/s, store {:.0} rows/s, server mode {:.0} rows/s, store/raw ratio {:.2}",
        median(&mut raw_rates),
        median(&mut store_rates),
        median(&mut server_rates),
        median(&mut ratios)
    );
    store.close().await;
}
