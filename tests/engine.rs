//! The embedded engine's connections, on the real engine. In a test binary
//! of its own: the process's engine serves only this test, so the calls
//! counted below are the test's own.

mod common;

use std::time::Duration;

use waybill_store::engine::{EngineQuery, Priority, DEFAULT_CONNECTIONS};
use waybill_store::Engine;

/// A background call that runs for about `seconds` (one row per block,
/// half a second each), marked so `system.processes` can count it.
fn long_call(engine: Engine, seconds: usize) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let sql = format!("SELECT 'waybill-long-call', sum(sleepEachRow(0.5)) FROM numbers({}) SETTINGS max_block_size = 1", seconds * 2);
        let output = engine.query_as(Priority::Background, EngineQuery { sql: &sql, format: "TSV", database: None, params: &[] }).unwrap();
        String::from_utf8(output.data).unwrap()
    })
}

/// Long calls running now, counted by an interactive call.
fn long_calls_running(engine: &Engine) -> usize {
    let sql = "SELECT count() FROM system.processes WHERE query LIKE '%waybill-long-call%' AND query NOT LIKE '%system.processes%'";
    let output = engine.query_as(Priority::Interactive, EngineQuery { sql, format: "TSV", database: None, params: &[] }).unwrap();
    String::from_utf8(output.data).unwrap().trim().parse().unwrap()
}

#[test]
fn pages_query_beside_long_background_calls_which_leave_them_a_connection() {
    let engine = common::engine();
    // One connection is kept for pages; background calls get the rest.
    let background = DEFAULT_CONNECTIONS - 1;
    let long: Vec<_> = (0..DEFAULT_CONNECTIONS).map(|_| long_call(engine.clone(), 3)).collect();
    // Every interactive call below runs while the long calls run: one on
    // each background connection, the last waiting for one. With one call
    // at a time a page would see none running.
    let mut counts = Vec::new();
    while counts.len() < 200 && !counts.contains(&background) {
        counts.push(long_calls_running(&engine));
        std::thread::sleep(Duration::from_millis(20));
    }
    for _ in 0..10 {
        counts.push(long_calls_running(&engine));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(counts.iter().max(), Some(&background), "long background calls a page's calls saw running: {counts:?}");
    for call in long {
        assert!(call.join().unwrap().starts_with("waybill-long-call\t0"));
    }
    assert_eq!(long_calls_running(&engine), 0);
    engine.close();
}
