//! Lineage at scale on the embedded store: key lookups with 1 M transactions
//! and 10 M business events stored, and the resolver's throughput against
//! the collector's ingest rate (100,000 spans/s).
//!
//! 1. **populate**: every order's business events (portal, ERP, warehouse
//!    and billing traces, as the ingest path extracts them) plus the rows
//!    the resolver derives from them (links, key → trace index,
//!    transactions, transaction keys). The derived rows come from a formula
//!    per order; a sample is checked against what the real `Resolver`
//!    writes for the same events, so lookups read realistic rows.
//! 2. **lookups**: `api::by_key` for random keys of every kind, `api::by_id`,
//!    `api::by_state`.
//! 3. **resolver**: new orders arrive trace by trace, as in the service:
//!    each step inserts one resolve interval's worth of business events
//!    (in the pipeline's batches) and resolves the traces that got some.
//!    Orders are staggered so a step holds portal traces of new orders,
//!    ERP traces of the orders before them, and so on. Lookups run beside
//!    it. The same SQL the resolver issues is then replayed for one step to
//!    show where its time goes.
//! 4. **the service's loop**: `Resolver::run`, fed the same way through its
//!    notifier one step per second, watched through its own metrics.
//!
//! Run: `cargo bench --bench lineage`. Environment: BENCH_TRANSACTIONS
//! (1,000,000), BENCH_LOOKUPS (2000), BENCH_STEP_EVENTS (business events per
//! resolve step, 100,000 = 1 s at 100k spans/s), BENCH_STEPS (steady-state
//! resolve steps, 3), BENCH_STEP_TRACES (the service loop's
//! `lineage.max_traces_per_step`, default 5000), BENCH_REMEMBERED_KEYS
//! (`lineage.remembered_keys`, default 200,000), BENCH_BACKGROUND_LOOKUPS
//! (1: lookups beside the resolver wait their turn on the engine like
//! background work, as before the pages had interactive turns). Figures are
//! in BENCHMARKS.md.

mod common;
use common::{env_or, fresh_engine, now_ns};

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use waybill_lineage::api;
use waybill_lineage::config::Step;
use waybill_lineage::journey::State;
use waybill_lineage::resolve::{id_rows, in_lists, in_sets, key_rows, transaction_id, transaction_row, EVENT_COLUMNS, ID_SET, KEY_SET, TRANSACTION_COLUMNS};
use waybill_lineage::{LineageConfig, Resolver};
use waybill_store::engine::{Engine, EngineQuery};
use waybill_store::sql::quote_string;
use waybill_store::{BizEventRow, EdgeRow, KeyTraceRow, ProgressRow, SchemaTarget, Store, TransactionKeyRow, TransactionRow};

const SEC: i64 = 1_000_000_000;
const MIN: i64 = 60 * SEC;
const HOUR: i64 = 60 * MIN;
const DAY: i64 = 24 * HOUR;

/// The collector's target ingest rate (collector issue).
const TARGET_SPANS_PER_SEC: f64 = 100_000.0;
/// The pipeline writes business events in batches of at most this many rows.
const PIPELINE_BATCH_ROWS: usize = 20_000;
const KINDS: [&str; 4] = ["order", "sales_order", "shipment", "invoice"];

/// A well-mixed 64-bit hash (splitmix64): random-looking ids and choices
/// that the bench can regenerate from an order's number.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// How far an order got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Captured, accepted, shipped (one or two shipments), invoiced.
    Complete,
    /// Shipped, no invoice yet: stuck once the 48 h invoice deadline passes.
    NoInvoice,
    /// The ERP rejected it.
    Rejected,
    /// Never accepted: stuck after 15 minutes.
    CapturedOnly,
}

impl Shape {
    fn of(order: u64) -> Shape {
        match order % 100 {
            3 | 4 => Shape::NoInvoice,
            7 => Shape::Rejected,
            9 => Shape::CapturedOnly,
            _ => Shape::Complete,
        }
    }

    /// How many of the four traces (portal, ERP, warehouse, billing) exist.
    fn stages(self) -> usize {
        match self {
            Shape::Complete => 4,
            Shape::NoInvoice => 3,
            Shape::Rejected => 2,
            Shape::CapturedOnly => 1,
        }
    }
}

type Key = (String, String);

fn key(kind: &str, value: &str) -> Key {
    (kind.to_owned(), value.to_owned())
}

/// One order's business events in its four traces, as the ingest path
/// extracts them from the `biz.*` attributes (presence rows included), and
/// the rows the resolver derives from them.
struct Flow {
    order: u64,
    shape: Shape,
    traces: [String; 4],
    /// Events per trace; traces the order never reached are empty.
    stages: [Vec<BizEventRow>; 4],
    order_key: Key,
    sales_order: Key,
    shipments: Vec<Key>,
    invoice: Key,
}

impl Flow {
    /// Order number `order`, captured at `t`: portal at t, ERP 2 minutes
    /// later, warehouse after 6 hours, billing after 30 hours.
    fn new(order: u64, t: i64) -> Flow {
        let shape = Shape::of(order);
        let traces: [String; 4] = std::array::from_fn(|stage| {
            let n = order * 4 + stage as u64;
            format!("{:016x}{:016x}", mix(n), mix(n ^ 0x7261_6365_0000_0000))
        });
        let span = |n: u64| format!("{:016x}", mix((order << 4 | n) ^ 0x5350_414e_0000_0000));
        let order_key = key("order", &format!("PO-{}", 1_000_000 + order));
        let sales_order = key("sales_order", &format!("SO-{}", 4_000_000 + order));
        let shipment_count = if order % 3 == 0 { 2 } else { 1 };
        let shipments: Vec<Key> = (1..=shipment_count).map(|n| key("shipment", &format!("SH-{}-{n}", 7_000_000 + order))).collect();
        let invoice = key("invoice", &format!("INV-{}", 9_000_000 + order));

        let record = |stage: usize, record: &str, span_id: String, time: i64, milestone: &str, system: &str, keys: &[&Key]| BizEventRow {
            trace_id: traces[stage].clone(),
            record: record.to_owned(),
            span_id,
            // As the extractor numbers records of one span: span events
            // from 1, log records by a hash of their content.
            record_index: match record {
                "event" => 1,
                "log" => mix(time as u64) as u32,
                _ => 0,
            },
            time_ns: time,
            source_time_ns: time,
            milestone: milestone.to_owned(),
            system: system.to_owned(),
            outcome: if milestone.is_empty() { String::new() } else { "ok".to_owned() },
            key_kinds: keys.iter().map(|k| k.0.clone()).collect(),
            key_values: keys.iter().map(|k| k.1.clone()).collect(),
            linked_trace_ids: Vec::new(),
            source: String::new(),
        };
        let mut stages: [Vec<BizEventRow>; 4] = Default::default();

        // Portal: a gateway span (presence only), the order span, its
        // credit-check span event, sometimes a log line.
        stages[0].push(record(0, "presence", String::new(), t, "", "api-gateway", &[]));
        stages[0].push(record(0, "span", span(0), t + 10_000_000, "order.captured", "b2b-portal", &[&order_key]));
        stages[0].push(record(0, "event", span(0), t + 20_000_000, "credit.checked", "b2b-portal", &[&order_key]));
        if order % 5 == 0 {
            stages[0].push(record(0, "log", span(0), t + 30_000_000, "", "b2b-portal", &[&order_key]));
        }
        // ERP: middleware (presence), the sales order posting; the ERP
        // reports its own (earlier) business time.
        if shape.stages() > 1 {
            stages[1].push(record(1, "presence", String::new(), t + 2 * MIN, "", "integration-middleware", &[]));
            let mut accepted = record(1, "span", span(1), t + 2 * MIN + 10 * SEC, "order.accepted", "sap-erp", &[&order_key, &sales_order]);
            accepted.source_time_ns = t + 2 * MIN + 5 * SEC;
            if shape == Shape::Rejected {
                accepted.outcome = "rejected".into();
            }
            stages[1].push(accepted);
        }
        // Warehouse: pick list for the sales order, a dispatch per shipment
        // (or a label log line for a single one).
        if shape.stages() > 2 {
            let w = t + 6 * HOUR;
            stages[2].push(record(2, "span", span(2), w, "", "warehouse", &[&sales_order]));
            stages[2].push(record(2, "span", span(3), w + SEC, "shipment.dispatched", "warehouse", &[&shipments[0]]));
            match shipments.get(1) {
                Some(second) => stages[2].push(record(2, "span", span(4), w + 2 * SEC, "shipment.dispatched", "warehouse", &[second])),
                None => stages[2].push(record(2, "log", span(3), w + 2 * SEC, "", "warehouse", &[&shipments[0]])),
            }
        }
        // Billing: the ERP gateway (presence), the invoice posting, linked
        // to the warehouse trace it was raised from (an OTLP span link).
        if shape.stages() > 3 {
            let b = t + 30 * HOUR;
            stages[3].push(record(3, "presence", String::new(), b, "", "erp-gateway", &[]));
            let mut posted = record(3, "span", span(5), b + SEC, "invoice.posted", "billing", &[&invoice]);
            posted.linked_trace_ids = vec![traces[2].clone()];
            stages[3].push(posted);
        }
        Flow { order, shape, traces, stages, order_key, sales_order, shipments, invoice }
    }

    fn events(&self) -> impl Iterator<Item = &BizEventRow> {
        self.stages.iter().flatten()
    }

    fn event_count(&self) -> usize {
        self.stages.iter().map(Vec::len).sum()
    }

    /// Links (upstream, downstream) once every trace up to `stage` is resolved.
    fn links(&self, stage: usize) -> Vec<(Key, Key)> {
        let mut links = Vec::new();
        if stage >= 1 && self.shape.stages() > 1 {
            links.push((self.order_key.clone(), self.sales_order.clone()));
        }
        if stage >= 2 && self.shape.stages() > 2 {
            links.extend(self.shipments.iter().map(|s| (self.sales_order.clone(), s.clone())));
        }
        if stage >= 3 && self.shape.stages() > 3 {
            // The invoice links to the warehouse trace's shared keys: the
            // sales order, and the shipment when there is only one.
            links.push((self.sales_order.clone(), self.invoice.clone()));
            if self.shipments.len() == 1 {
                links.push((self.shipments[0].clone(), self.invoice.clone()));
            }
        }
        links
    }

    fn edges(&self) -> Vec<EdgeRow> {
        self.links(3)
            .into_iter()
            .flat_map(|(up, down)| {
                [
                    EdgeRow { kind: up.0.clone(), value: up.1.clone(), down: true, other_kind: down.0.clone(), other_value: down.1.clone() },
                    EdgeRow { kind: down.0, value: down.1, down: false, other_kind: up.0, other_value: up.1 },
                ]
            })
            .collect()
    }

    /// The keys of each trace (its records' own keys and its shared ones).
    fn trace_keys(&self, stage: usize) -> Vec<&Key> {
        match stage {
            0 => vec![&self.order_key],
            1 => vec![&self.order_key, &self.sales_order],
            2 => std::iter::once(&self.sales_order).chain(&self.shipments).collect(),
            _ => vec![&self.invoice],
        }
    }

    fn key_traces(&self) -> Vec<KeyTraceRow> {
        (0..self.shape.stages())
            .flat_map(|stage| {
                self.trace_keys(stage).into_iter().map(move |k| KeyTraceRow {
                    kind: k.0.clone(),
                    value: k.1.clone(),
                    trace_id: self.traces[stage].clone(),
                })
            })
            .collect()
    }

    /// The transaction's keys once every trace up to `stage` is resolved.
    fn closure(&self, stage: usize) -> BTreeSet<Key> {
        let mut keys = BTreeSet::from([self.order_key.clone()]);
        for (up, down) in self.links(stage) {
            keys.insert(up);
            keys.insert(down);
        }
        keys
    }

    fn id(&self) -> String {
        transaction_id(&self.order_key)
    }

    fn transaction_keys(&self) -> Vec<TransactionKeyRow> {
        let id = self.id();
        self.closure(3).into_iter().map(|(kind, value)| TransactionKeyRow { value, kind, id: id.clone() }).collect()
    }

    /// The transaction as the resolver assembles it: every event of the
    /// order belongs to it, in business time order.
    fn transaction(&self, journey: &[Step], now: i64, version: u64) -> TransactionRow {
        let rank = |kind: &str| KINDS.iter().position(|k| *k == kind).unwrap_or(KINDS.len());
        let mut keys: Vec<Key> = self.closure(3).into_iter().collect();
        keys.sort_by(|a, b| (rank(&a.0), &a.0, &a.1).cmp(&(rank(&b.0), &b.0, &b.1)));
        transaction_row(&self.order_key, &keys, self.events().collect(), journey, now, version)
    }

    /// A key of `kind` this order has, if it got that far.
    fn key_of(&self, kind: &str) -> Option<&Key> {
        let closure_has = |k: &Key| self.closure(3).contains(k);
        match kind {
            "order" => Some(&self.order_key),
            "sales_order" => Some(&self.sales_order).filter(|k| closure_has(k)),
            "shipment" => self.shipments.last().filter(|k| closure_has(k)),
            _ => Some(&self.invoice).filter(|k| closure_has(k)),
        }
    }
}

/// Stored orders are captured over the 28 days before `now` minus 2 days,
/// so their business day is over unless they are stuck.
fn stored_flow(order: u64, total: u64, now: i64) -> Flow {
    let t = now - 30 * DAY + (order as i128 * (28 * DAY) as i128 / total.max(1) as i128) as i64;
    Flow::new(order, t)
}

/// The process's peak resident memory so far (engine included).
fn peak_rss() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmHWM:")).unwrap_or("?").trim().to_owned()
}

/// CPU time the calling thread has used so far (Linux schedstat). The
/// direct steps run on the bench's main thread, so this is the resolver's
/// own work (and encoding and decoding its rows), without the engine's.
fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    Duration::from_nanos(stat.split_whitespace().next().and_then(|ns| ns.parse().ok()).unwrap_or(0))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn summary(latencies: &mut [Duration]) -> String {
    latencies.sort();
    format!(
        "n {:>5}  p50 {:>9}  p99 {:>9}  max {:>9}",
        latencies.len(),
        ms(percentile(latencies, 0.5)),
        ms(percentile(latencies, 0.99)),
        ms(*latencies.last().unwrap())
    )
}

/// Inserts `rows` in batches of at most `batch` (one INSERT each).
async fn insert_batched<T>(store: &Store, table: &str, rows: &[T], batch: usize)
where
    T: clickhouse::RowOwned + clickhouse::RowWrite,
{
    for chunk in rows.chunks(batch.max(1)) {
        store.insert(table, chunk).await.unwrap_or_else(|e| panic!("insert into {table}: {e}"));
    }
}

/// Writes the orders `range` with every derived row, as a resolver that had
/// seen all their events would have left them.
async fn write_stored(store: &Store, range: std::ops::Range<u64>, total: u64, journey: &[Step], now: i64) -> usize {
    let flows: Vec<Flow> = range.map(|i| stored_flow(i, total, now)).collect();
    let events: Vec<BizEventRow> = flows.iter().flat_map(|f| f.events().cloned()).collect();
    let edges: Vec<EdgeRow> = flows.iter().flat_map(Flow::edges).collect();
    let key_traces: Vec<KeyTraceRow> = flows.iter().flat_map(Flow::key_traces).collect();
    let keys: Vec<TransactionKeyRow> = flows.iter().flat_map(Flow::transaction_keys).collect();
    let transactions: Vec<TransactionRow> = flows.iter().map(|f| f.transaction(journey, now, 1)).collect();
    store.insert("biz_events", &events).await.unwrap();
    store.insert("biz_edges", &edges).await.unwrap();
    store.insert("biz_key_traces", &key_traces).await.unwrap();
    store.insert("transaction_keys", &keys).await.unwrap();
    store.insert("transactions", &transactions).await.unwrap();
    events.len()
}

/// Waits (up to 10 minutes) until the engine has no merge running in
/// `database`, so the figures see a settled store, and prints its tables.
async fn settle(store: &Store, database: &str) {
    let started = Instant::now();
    loop {
        let merging: Vec<u64> =
            store.fetch_all(&format!("SELECT count() FROM system.merges WHERE database = {}", quote_string(database))).await.unwrap();
        if merging[0] == 0 || started.elapsed() > Duration::from_secs(600) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    #[derive(clickhouse::Row, serde::Deserialize)]
    struct TableSize {
        table: String,
        rows: u64,
        bytes: u64,
        parts: u64,
    }
    let sizes: Vec<TableSize> = store
        .fetch_all(&format!(
            "SELECT table, sum(rows) AS rows, sum(bytes_on_disk) AS bytes, count() AS parts FROM system.parts WHERE database = {} AND active GROUP BY table ORDER BY table",
            quote_string(database)
        ))
        .await
        .unwrap();
    println!("  no merge running after {:.1} s; active parts:", started.elapsed().as_secs_f64());
    for size in sizes {
        println!("    {:<18} {:>11} rows {:>9.1} MB {:>4} parts", size.table, size.rows, size.bytes as f64 / 1e6, size.parts);
    }
}

/// The derived rows in `store`, for comparison (versions zeroed).
async fn derived(store: &Store) -> (BTreeSet<EdgeRow>, BTreeSet<KeyTraceRow>, BTreeSet<TransactionKeyRow>, BTreeMap<String, TransactionRow>) {
    let edges: Vec<EdgeRow> = store.fetch_all("SELECT DISTINCT Kind, Value, Down, OtherKind, OtherValue FROM biz_edges").await.unwrap();
    let key_traces: Vec<KeyTraceRow> = store.fetch_all("SELECT DISTINCT Kind, Value, TraceId FROM biz_key_traces").await.unwrap();
    let keys: Vec<TransactionKeyRow> = store.fetch_all("SELECT DISTINCT Value, Kind, Id FROM transaction_keys").await.unwrap();
    let transactions: Vec<TransactionRow> =
        store.fetch_all(&format!("SELECT {TRANSACTION_COLUMNS} FROM transactions ORDER BY Version DESC LIMIT 1 BY Id")).await.unwrap();
    let transactions = transactions.into_iter().map(|t| (t.id.clone(), TransactionRow { version: 0, ..t })).collect();
    (edges.into_iter().collect(), key_traces.into_iter().collect(), keys.into_iter().collect(), transactions)
}

/// Panics with the first difference between `expected` and `actual`.
fn same<T: std::fmt::Debug + PartialEq>(what: &str, expected: &[T], actual: &[T]) {
    if expected != actual {
        let first = expected.iter().zip(actual).position(|(e, a)| e != a).unwrap_or(expected.len().min(actual.len()));
        panic!(
            "{what}: the generated rows differ from the resolver's ({} expected, {} written); first difference:\nexpected {:#?}\nresolver {:#?}",
            expected.len(),
            actual.len(),
            expected.get(first),
            actual.get(first)
        );
    }
}

/// Resolves the events of `flows` with the real resolver in a database of
/// its own and checks it writes exactly the rows the formula gives.
async fn verify_against_resolver(engine: &Engine, flows: &[Flow], journey: &[Step], now: i64) {
    let target = SchemaTarget { database: "lineage_check".into(), cluster: None, retention_days: 30 };
    let store = Store::embedded(engine.clone(), target);
    store.migrate().await.unwrap();
    let events: Vec<BizEventRow> = flows.iter().flat_map(|f| f.events().cloned()).collect();
    store.insert("biz_events", &events).await.unwrap();
    let traces: BTreeSet<String> = events.iter().map(|e| e.trace_id.clone()).collect();
    let mut resolver = Resolver::new(store.clone(), LineageConfig::default()).unwrap();
    resolver.resolve_traces(&traces, now).await.unwrap();

    let (edges, key_traces, keys, transactions) = derived(&store).await;
    let expected_edges: BTreeSet<EdgeRow> = flows.iter().flat_map(Flow::edges).collect();
    let expected_key_traces: BTreeSet<KeyTraceRow> = flows.iter().flat_map(Flow::key_traces).collect();
    let expected_keys: BTreeSet<TransactionKeyRow> = flows.iter().flat_map(Flow::transaction_keys).collect();
    let expected: Vec<TransactionRow> = flows.iter().map(|f| f.transaction(journey, now, 0)).collect();
    same("biz_edges", &expected_edges.into_iter().collect::<Vec<_>>(), &edges.into_iter().collect::<Vec<_>>());
    same("biz_key_traces", &expected_key_traces.into_iter().collect::<Vec<_>>(), &key_traces.into_iter().collect::<Vec<_>>());
    same("transaction_keys", &expected_keys.into_iter().collect::<Vec<_>>(), &keys.into_iter().collect::<Vec<_>>());
    let mut expected = expected;
    expected.sort_by(|a, b| a.id.cmp(&b.id));
    same("transactions", &expected, &transactions.into_values().collect::<Vec<_>>());
    store.execute("DROP DATABASE lineage_check SYNC").await.unwrap();
}

/// One resolve step: the traces that got events in one interval.
struct ResolveStep {
    /// (block of new orders, trace stage) pairs it carries.
    parts: Vec<(usize, usize)>,
}

impl ResolveStep {
    /// Step `s` of a staggered arrival: stage k of block s - k.
    fn staggered(s: usize, blocks: usize) -> ResolveStep {
        ResolveStep { parts: (0..4).filter(|k| s >= *k && s - k < blocks).map(|k| (s - k, k)).collect() }
    }
}

/// Replays the queries one resolve step issues for `flows` (stage by stage
/// as in `parts`) straight on the engine and prints what each phase costs.
fn replay(engine: &Engine, blocks: &[Vec<Flow>], step: &ResolveStep) {
    let run_as = |sql: &str, format: &str| {
        engine
            .query(EngineQuery { sql, format, database: Some("lineage"), params: &[] })
            .unwrap_or_else(|e| panic!("replay `{}`: {e}", &sql[..80.min(sql.len())]))
    };
    // What the indexes leave of the table for a statement: the last
    // `Granules: selected/total` of its EXPLAIN.
    let granules = |sql: &str| {
        let plan = String::from_utf8_lossy(&run_as(&format!("EXPLAIN indexes = 1 {sql}"), "TabSeparatedRaw").data).into_owned();
        plan.lines().filter_map(|l| l.trim().strip_prefix("Granules: ")).last().unwrap_or("?").to_owned()
    };
    let phase = |name: &str, statements: Vec<String>| {
        let Some(first) = statements.first() else { return };
        let read = granules(first);
        let started = Instant::now();
        let (mut engine_s, mut bytes_out) = (0f64, 0usize);
        for sql in &statements {
            let out = run_as(sql, "RowBinary");
            engine_s += out.elapsed_seconds;
            bytes_out += out.data.len();
        }
        println!(
            "    {name:<40} {:>4} queries {:>7.2} s ({:>6.2} s in the engine) {:>9.1} MB out, granules read by one: {read}",
            statements.len(),
            started.elapsed().as_secs_f64(),
            engine_s,
            bytes_out as f64 / 1e6
        );
    };

    // The resolver reads trace ids and keys from BTreeSets: lists are sorted.
    let mut step_traces: BTreeSet<String> = BTreeSet::new();
    let mut linked: BTreeSet<String> = BTreeSet::new();
    let mut touched_up: BTreeSet<Key> = BTreeSet::new();
    let mut levels: [BTreeSet<Key>; 3] = Default::default();
    let mut closure_keys: BTreeSet<Key> = BTreeSet::new();
    let mut other_traces: BTreeSet<String> = BTreeSet::new();
    for &(block, stage) in &step.parts {
        for flow in blocks[block].iter().filter(|f| !f.stages[stage].is_empty()) {
            step_traces.insert(flow.traces[stage].clone());
            touched_up.extend(flow.trace_keys(stage).into_iter().filter(|k| k.0 != "order").cloned());
            if stage == 3 {
                linked.insert(flow.traces[2].clone());
                touched_up.extend(flow.trace_keys(2).into_iter().cloned());
            }
            levels[0].insert(flow.order_key.clone());
            let closure = flow.closure(stage);
            levels[1].extend(closure.iter().filter(|k| k.0 == "sales_order").cloned());
            levels[2].extend(closure.iter().filter(|k| k.0 == "shipment" || k.0 == "invoice").cloned());
            closure_keys.extend(closure);
            other_traces.extend((0..stage).filter(|s| !flow.stages[*s].is_empty()).map(|s| flow.traces[s].clone()));
        }
    }
    let other_traces: BTreeSet<String> = other_traces.difference(&linked).cloned().collect();
    // The resolver's statements: one per list or set of trace ids or keys.
    let each = |operands: Vec<String>, sql: &dyn Fn(&str) -> String| operands.iter().map(|operand| sql(operand)).collect::<Vec<_>>();
    let traces = |traces: &BTreeSet<String>, sql: &dyn Fn(&str) -> String| each(in_lists(traces), sql);
    let linking = |traces: &BTreeSet<String>, sql: &dyn Fn(&str) -> String| each(in_sets(ID_SET, id_rows(traces)), sql);
    let keys = |keys: &BTreeSet<Key>, sql: &dyn Fn(&str) -> String| each(in_sets(KEY_SET, key_rows(keys)), sql);
    let load = |list: &str| format!("SELECT {EVENT_COLUMNS} FROM biz_events WHERE TraceId IN ({list})");
    let edges = |down: bool| {
        move |set: &str| {
            format!("SELECT DISTINCT Kind, Value, Down, OtherKind, OtherValue FROM biz_edges WHERE (Value, Kind) IN ({set}) AND Down = {down}")
        }
    };
    println!(
        "  where one steady-state step's time goes ({} traces; its queries replayed on the engine, then its inserts through the store):",
        step_traces.len()
    );
    phase("load the step's traces", traces(&step_traces, &load));
    phase(
        "traces linking to them",
        linking(&step_traces, &|set| format!("SELECT DISTINCT TraceId FROM biz_trace_links WHERE LinkedTraceId IN ({set})")),
    );
    phase("load linked traces", traces(&linked, &load));
    phase("edges up to the roots", keys(&touched_up, &edges(false)));
    phase("edges down from the roots (3 levels)", levels.iter().flat_map(|level| keys(level, &edges(true))).collect());
    phase(
        "traces of every key in the closures",
        keys(&closure_keys, &|set| format!("SELECT DISTINCT Kind, Value, TraceId FROM biz_key_traces WHERE (Value, Kind) IN ({set})")),
    );
    phase("load the transactions' other traces", traces(&other_traces, &load));
}

/// Writes again what one resolve step writes for `step` (the links and key
/// index entries of its traces, the keys and a row of every transaction it
/// touches) and prints how long the inserts take. The rows exist already,
/// so the tables do not change.
async fn replay_inserts(store: &Store, blocks: &[Vec<Flow>], step: &ResolveStep, journey: &[Step], now: i64) {
    let (mut edges, mut key_traces, mut keys, mut transactions) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for &(block, stage) in &step.parts {
        for flow in blocks[block].iter().filter(|f| !f.stages[stage].is_empty()) {
            let earlier = if stage == 0 { Vec::new() } else { flow.links(stage - 1) };
            edges.extend(flow.edges().into_iter().filter(|e| {
                let (up, down) = if e.down { (&e.value, &e.other_value) } else { (&e.other_value, &e.value) };
                flow.links(stage).iter().any(|l| &l.0 .1 == up && &l.1 .1 == down) && !earlier.iter().any(|l| &l.0 .1 == up && &l.1 .1 == down)
            }));
            key_traces.extend(flow.key_traces().into_iter().filter(|k| k.trace_id == flow.traces[stage]));
            let id = flow.id();
            keys.extend(flow.closure(stage).into_iter().map(|(kind, value)| TransactionKeyRow { value, kind, id: id.clone() }));
            transactions.push(flow.transaction(journey, now, 0));
        }
    }
    let started = Instant::now();
    store.insert("biz_edges", &edges).await.unwrap();
    store.insert("biz_key_traces", &key_traces).await.unwrap();
    store.insert("transaction_keys", &keys).await.unwrap();
    store.insert("transactions", &transactions).await.unwrap();
    println!(
        "    {:<40} {:>4} inserts {:>7.2} s ({} links, {} key index rows, {} keys, {} transactions)",
        "write the derived rows",
        4,
        started.elapsed().as_secs_f64(),
        edges.len(),
        key_traces.len(),
        keys.len(),
        transactions.len()
    );
}

/// Calls `by_key` for a random stored order every 20 ms, as a user of the
/// pages would (with the pages' interactive turns on the engine, unless
/// BENCH_BACKGROUND_LOOKUPS=1), until the flag is set; returns the latencies.
fn lookups_beside(store: &Store, total: u64, now: i64, seed: u64) -> (Arc<AtomicBool>, tokio::task::JoinHandle<Vec<(Instant, Duration)>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let store = if env_or("BENCH_BACKGROUND_LOOKUPS", 0) == 1 { store.clone() } else { store.interactive() };
    let task = tokio::spawn({
        let (store, stop) = (store, stop.clone());
        async move {
            let mut latencies = Vec::new();
            let mut seed = seed;
            while !stop.load(Ordering::Relaxed) {
                seed += 1;
                let flow = stored_flow(mix(seed) % total, total, now);
                let started = Instant::now();
                api::by_key(&store, &flow.order_key.1, None, None, 50).await.unwrap();
                latencies.push((started, started.elapsed()));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            latencies
        }
    });
    (stop, task)
}

/// A metric of the default registry: a gauge's or counter's value, or a
/// histogram's sample count and sum.
fn metric(name: &str) -> (f64, u64, f64) {
    let families = prometheus::gather();
    let Some(metric) = families.iter().find(|f| f.name() == name).and_then(|f| f.get_metric().first()) else { return (0.0, 0, 0.0) };
    let histogram = metric.get_histogram();
    (metric.get_gauge().get_value() + metric.get_counter().get_value(), histogram.get_sample_count(), histogram.get_sample_sum())
}

/// The service's own loop, `Resolver::run` with the default config, fed as
/// the pipeline feeds it: each second one step's events are inserted in
/// batches and each batch's traces are sent to its notifier. Prints, each
/// second, what arrived and what the loop resolved (its metrics), and then
/// the rate and the lookups after its first step, which reads the key filter.
async fn live_loop(store: &Store, config: &LineageConfig, blocks: &[Vec<Flow>], steps: &[ResolveStep], total: u64, now: i64) {
    // Everything already stored counts as resolved, so the loop's catch-up
    // after start finds nothing to do.
    let progress = ProgressRow { name: "resolver".into(), resolved_before_us: now_ns() / 1000 + 600_000_000, version: now_ns() as u64 };
    store.insert("lineage_progress", &[progress]).await.unwrap();
    waybill_lineage::resolve::register_metrics();
    let resolved_before = metric("waybill_lineage_resolved_events_total").0;
    let (steps_before, seconds_before) = {
        let (_, count, sum) = metric("waybill_lineage_resolve_duration_seconds");
        (count, sum)
    };
    let (notifier, notifications) = tokio::sync::mpsc::unbounded_channel();
    let (shutdown, stopped) = tokio::sync::watch::channel(false);
    // As the service runs it: apart, with a store of its own.
    let own_store = Store::embedded(store.engine().unwrap().clone(), store.target().clone());
    let resolver = Resolver::new(own_store, config.clone()).unwrap();
    let running = resolver.run_apart(notifications, stopped).unwrap();
    let (stop, beside) = lookups_beside(store, total, now, 9_000_000);
    // When the loop's first step ends (it reads the key filter first), and
    // what it had resolved then.
    let first_step = tokio::spawn(async move {
        while metric("waybill_lineage_resolve_duration_seconds").1 == steps_before {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (Instant::now(), metric("waybill_lineage_resolved_events_total").0)
    });

    let started = Instant::now();
    let (mut arrived_events, mut arrived_traces) = (0usize, 0usize);
    for (s, step) in steps.iter().enumerate() {
        let rows: Vec<BizEventRow> =
            step.parts.iter().flat_map(|&(block, stage)| blocks[block].iter().flat_map(move |f| f.stages[stage].iter().cloned())).collect();
        for batch in rows.chunks(PIPELINE_BATCH_ROWS) {
            store.insert("biz_events", batch).await.unwrap();
            let traces: BTreeSet<String> = batch.iter().map(|r| r.trace_id.clone()).collect();
            arrived_traces += traces.len();
            notifier.send(traces.into_iter().collect()).unwrap();
        }
        arrived_events += rows.len();
        tokio::time::sleep_until((started + Duration::from_secs(s as u64 + 1)).into()).await;
        let (pending, _, _) = metric("waybill_lineage_pending_traces");
        let resolved = metric("waybill_lineage_resolved_events_total").0 - resolved_before;
        println!(
            "  {:>3} s: {arrived_events:>7} events in {arrived_traces:>6} traces arrived; {resolved:>7.0} events resolved; {pending:>6.0} traces pending",
            s + 1
        );
    }
    // Then as long again with nothing arriving: the loop's pace on a backlog.
    for s in steps.len()..2 * steps.len() {
        tokio::time::sleep_until((started + Duration::from_secs(s as u64 + 1)).into()).await;
        let (pending, _, _) = metric("waybill_lineage_pending_traces");
        let resolved = metric("waybill_lineage_resolved_events_total").0 - resolved_before;
        println!("  {:>3} s: nothing more arrived;                    {resolved:>7.0} events resolved; {pending:>6.0} traces pending", s + 1);
    }
    let ended = Instant::now();
    let elapsed = (ended - started).as_secs_f64();
    let resolved = metric("waybill_lineage_resolved_events_total").0 - resolved_before;
    let (_, count, sum) = metric("waybill_lineage_resolve_duration_seconds");
    let _ = shutdown.send(true);
    running.await.unwrap();
    stop.store(true, Ordering::Relaxed);
    let beside = beside.await.unwrap();
    let mut all: Vec<Duration> = beside.iter().map(|(_, latency)| *latency).collect();
    println!(
        "  live loop over {elapsed:.0} s: {:.0} events/s arrived, {:.0} events/s resolved ({} steps of up to {} traces, {:.2} s each on average, one per resolve interval)",
        arrived_events as f64 / elapsed,
        resolved / elapsed,
        count - steps_before,
        config.max_traces_per_step,
        (sum - seconds_before) / (count - steps_before).max(1) as f64
    );
    println!("  by_key beside the live loop {}", summary(&mut all));
    let first = if first_step.is_finished() {
        Some(first_step.await.unwrap())
    } else {
        first_step.abort();
        None
    };
    if let Some((first_done, resolved_then)) = first.filter(|(done, _)| *done < ended) {
        let mut after: Vec<Duration> = beside.iter().filter(|(at, _)| *at > first_done).map(|(_, latency)| *latency).collect();
        println!(
            "    its first step (which reads the key filter) ended after {:.1} s; since then it resolved {:.0} events/s; by_key {}",
            (first_done - started).as_secs_f64(),
            (resolved - (resolved_then - resolved_before)) / (ended - first_done).as_secs_f64(),
            summary(&mut after)
        );
    } else {
        println!("    its first step did not end within the window");
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let total = env_or("BENCH_TRANSACTIONS", 1_000_000) as u64;
    let lookups = env_or("BENCH_LOOKUPS", 2000);
    let step_events = env_or("BENCH_STEP_EVENTS", 100_000);
    let steady_steps = env_or("BENCH_STEPS", 3);
    let engine = fresh_engine(std::path::Path::new("target/bench-lineage"));
    let target = SchemaTarget { database: "lineage".into(), cluster: None, retention_days: 30 };
    let store = Store::embedded(engine.clone(), target);
    store.migrate().await.unwrap();
    let defaults = LineageConfig::default();
    let config = LineageConfig {
        max_traces_per_step: env_or("BENCH_STEP_TRACES", defaults.max_traces_per_step),
        remembered_keys: env_or("BENCH_REMEMBERED_KEYS", defaults.remembered_keys),
        ..defaults
    };
    let journey = config.journey("order").unwrap();
    let now = now_ns();

    // 1. Populate.
    println!("populate: {total} orders with their business events and derived rows");
    let started = Instant::now();
    let chunk = 10_000u64;
    let mut events = 0;
    let mut next = 0;
    while next < total {
        let end = (next + chunk).min(total);
        events += write_stored(&store, next..end, total, &journey, now).await;
        next = end;
        if next % 100_000 == 0 || next == total {
            println!("  {next} orders, {events} events, {:.0} s", started.elapsed().as_secs_f64());
        }
    }
    println!(
        "  {total} transactions, {events} business events written in {:.1} s ({:.0} events/s with their derived rows)",
        started.elapsed().as_secs_f64(),
        events as f64 / started.elapsed().as_secs_f64()
    );
    settle(&store, "lineage").await;
    println!("  peak resident memory so far: {}", peak_rss());

    // The formula's rows are what the real resolver writes for the same events.
    let sample: Vec<Flow> =
        (0..200u64).chain((0..200).map(|n| mix(n + 77) % total)).collect::<BTreeSet<_>>().into_iter().map(|i| stored_flow(i, total, now)).collect();
    let started = Instant::now();
    verify_against_resolver(&engine, &sample, &journey, now).await;
    println!(
        "verified: for {} orders ({} events, every shape) the real resolver writes exactly the generated links, key index, keys and transactions ({:.1} s)",
        sample.len(),
        sample.iter().map(Flow::event_count).sum::<usize>(),
        started.elapsed().as_secs_f64()
    );
    let states: Vec<(String, u64)> = store.fetch_all("SELECT State, count() FROM transactions GROUP BY State ORDER BY State").await.unwrap();
    println!("  states: {states:?}");

    // 2. Lookups on the settled store.
    println!("lookups ({lookups} by_key, kinds in turn; {lookups} by_id):");
    let mut by_kind: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
    let mut all = Vec::new();
    let mut seed = 1u64;
    let mut n = 0;
    while n < lookups {
        seed += 1;
        let flow = stored_flow(mix(seed) % total, total, now);
        let kind = KINDS[n % 4];
        let Some((_, value)) = flow.key_of(kind) else { continue };
        let started = Instant::now();
        let found = api::by_key(&store, value, None, None, 50).await.unwrap();
        let took = started.elapsed();
        assert!(found.iter().any(|t| t.id == flow.id()), "by_key({value}) must find order {}", flow.order);
        by_kind.entry(kind).or_default().push(took);
        all.push(took);
        n += 1;
    }
    // The floor every lookup pays: one round trip through the store's
    // in-process HTTP interface and the engine.
    let mut floor = Vec::new();
    for _ in 0..200 {
        let started = Instant::now();
        let _: Vec<u8> = store.fetch_all("SELECT 1").await.unwrap();
        floor.push(started.elapsed());
    }
    println!("  SELECT 1            {}", summary(&mut floor));
    for (kind, latencies) in &mut by_kind {
        println!("  by_key {kind:<12} {}", summary(latencies));
    }
    println!("  by_key {:<12} {}", "(all)", summary(&mut all));
    let mut by_id = Vec::new();
    for n in 0..lookups as u64 {
        let flow = stored_flow(mix(n + 1_000_000) % total, total, now);
        let started = Instant::now();
        let found = api::by_id(&store, &flow.id()).await.unwrap();
        by_id.push(started.elapsed());
        assert!(found.is_some(), "by_id must find order {}", flow.order);
    }
    println!("  by_id  {:<12} {}", "", summary(&mut by_id));
    for state in State::ALL {
        let mut times = Vec::new();
        let mut found = 0;
        for _ in 0..3 {
            let started = Instant::now();
            found = api::by_state(&store, state, 50).await.unwrap().len();
            times.push(started.elapsed());
        }
        times.sort();
        println!("  by_state {:<10} limit 50: {found:>2} found, {} / {} / {} (3 runs)", state.as_str(), ms(times[0]), ms(times[1]), ms(times[2]));
    }

    println!("  peak resident memory so far: {}", peak_rss());

    // 3. The resolver, fed as the pipeline feeds it.
    let flows_per_block = (step_events / 10).max(1);
    let blocks_total = steady_steps + 3;
    let first_new = total;
    let blocks: Vec<Vec<Flow>> = (0..blocks_total)
        .map(|b| {
            let start = first_new + (b * flows_per_block) as u64;
            (start..start + flows_per_block as u64).map(|i| Flow::new(i, now - 31 * HOUR + (i - first_new) as i64 * 1_000_000)).collect()
        })
        .collect();
    let steps: Vec<ResolveStep> = (0..blocks_total + 3).map(|s| ResolveStep::staggered(s, blocks_total)).collect();
    println!(
        "resolver: {} new orders in blocks of {flows_per_block}; step s carries portal traces of block s, ERP of s-1, warehouse of s-2, billing of s-3",
        blocks_total * flows_per_block
    );

    let (stop, beside) = lookups_beside(&store, total, now, 5_000_000);
    let mut resolver = Resolver::new(store.clone(), config.clone()).unwrap();
    let (mut steady_events, mut steady_traces, mut steady_resolve, mut steady_insert) = (0usize, 0usize, Duration::ZERO, Duration::ZERO);
    let (mut steady_steps, mut steady_cpu) = (0u32, Duration::ZERO);
    let mut first_step_done = Instant::now();
    for (s, step) in steps.iter().enumerate() {
        let rows: Vec<BizEventRow> =
            step.parts.iter().flat_map(|&(block, stage)| blocks[block].iter().flat_map(move |f| f.stages[stage].iter().cloned())).collect();
        let started = Instant::now();
        insert_batched(&store, "biz_events", &rows, PIPELINE_BATCH_ROWS).await;
        let insert = started.elapsed();
        let traces: BTreeSet<String> = rows.iter().map(|r| r.trace_id.clone()).collect();
        let started = Instant::now();
        let cpu_before = thread_cpu();
        let resolved = resolver.resolve_traces(&traces, now).await.unwrap();
        let resolve = started.elapsed();
        let cpu = thread_cpu() - cpu_before;
        if s == 0 {
            first_step_done = Instant::now();
        }
        let started = Instant::now();
        let due = resolver.advance_deadlines(now).await.unwrap();
        let deadlines = started.elapsed();
        let steady = step.parts.len() == 4;
        println!(
            "  step {s:>2}{} stages {:?}: {:>6} events {:>6} traces inserted in {:>6.2} s ({:>7.0} events/s); resolved {:>6} events, {:>6} transactions in {:>7.2} s ({:>7.0} events/s, {:>6.0} traces/s; {:.2} s of it on the resolver's thread); deadlines {:>5.2} s ({due} due)",
            if steady { "*" } else { " " },
            step.parts.iter().map(|p| p.1).collect::<Vec<_>>(),
            rows.len(),
            traces.len(),
            insert.as_secs_f64(),
            rows.len() as f64 / insert.as_secs_f64(),
            resolved.events,
            resolved.transactions,
            resolve.as_secs_f64(),
            resolved.events as f64 / resolve.as_secs_f64(),
            traces.len() as f64 / resolve.as_secs_f64(),
            cpu.as_secs_f64(),
            deadlines.as_secs_f64(),
        );
        if steady {
            steady_events += rows.len();
            steady_traces += traces.len();
            steady_resolve += resolve + deadlines;
            steady_insert += insert;
            steady_steps += 1;
            steady_cpu += cpu;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let beside = beside.await.unwrap();
    let mut after_first: Vec<Duration> = beside.iter().filter(|(at, _)| *at > first_step_done).map(|(_, latency)| *latency).collect();
    let mut beside: Vec<Duration> = beside.into_iter().map(|(_, latency)| latency).collect();
    let resolver_rate = steady_events as f64 / steady_resolve.as_secs_f64();
    println!(
        "  steady state (* steps): resolver {:.0} business events/s, {:.0} traces/s (resolve + deadlines); biz_events store insert {:.0} events/s; resolver/insert {:.2}",
        resolver_rate,
        steady_traces as f64 / steady_resolve.as_secs_f64(),
        steady_events as f64 / steady_insert.as_secs_f64(),
        resolver_rate / (steady_events as f64 / steady_insert.as_secs_f64()),
    );
    println!(
        "  a steady step took {:.2} s on the resolver's own thread (its work and its rows' encoding and decoding, not the engine's) of {:.2} s",
        steady_cpu.as_secs_f64() / steady_steps.max(1) as f64,
        steady_resolve.as_secs_f64() / steady_steps.max(1) as f64,
    );
    println!(
        "  against the collector's target of {TARGET_SPANS_PER_SEC:.0} spans/s: the resolver keeps up while at most {:.2} business events arrive per span ({})",
        resolver_rate / TARGET_SPANS_PER_SEC,
        if resolver_rate >= TARGET_SPANS_PER_SEC { "it keeps up even if every span is a business event" } else { "it falls behind if every span is a business event" }
    );
    println!("  by_key beside the resolver  {}", summary(&mut beside));
    println!("    after its first step (which reads the key filter) {}", summary(&mut after_first));
    println!("  peak resident memory so far: {}", peak_rss());

    // Staged resolution ends where resolving everything at once does.
    let checked: Vec<&Flow> = blocks.iter().flatten().step_by(97).collect();
    let ids: Vec<String> = checked.iter().map(|f| quote_string(&f.id())).collect();
    let written: Vec<TransactionRow> = store
        .fetch_all(&format!("SELECT {TRANSACTION_COLUMNS} FROM transactions WHERE Id IN ({}) ORDER BY Version DESC LIMIT 1 BY Id", ids.join(", ")))
        .await
        .unwrap();
    let written: BTreeMap<String, TransactionRow> = written.into_iter().map(|t| (t.id.clone(), TransactionRow { version: 0, ..t })).collect();
    for flow in checked {
        let expected = flow.transaction(&journey, now, 0);
        same("transactions after staged resolution", std::slice::from_ref(&expected), std::slice::from_ref(&written[&expected.id]));
    }
    println!("  checked: staged resolution left the same transactions as the formula (every 97th new order)");

    replay(&engine, &blocks, &steps[3]);
    replay_inserts(&store, &blocks, &steps[3], &journey, now).await;

    // 4. The service's loop at the collector's target rate.
    let first_live = first_new + (blocks_total * flows_per_block) as u64;
    let live_blocks: Vec<Vec<Flow>> = (0..blocks_total)
        .map(|b| {
            let start = first_live + (b * flows_per_block) as u64;
            (start..start + flows_per_block as u64).map(|i| Flow::new(i, now - 31 * HOUR + (i - first_live) as i64 * 1_000_000)).collect()
        })
        .collect();
    println!("the service's resolver loop (Resolver::run, resolve interval {} ms), fed one step per second:", config.resolve_interval_ms);
    live_loop(&store, &config, &live_blocks, &steps, total, now).await;
    println!("peak resident memory of the bench process (engine included): {}", peak_rss());
    store.close().await;
}
