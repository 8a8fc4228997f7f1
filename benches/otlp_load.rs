//! OTLP/HTTP load against a running `waybill serve` on the embedded store:
//! sustained spans/s end to end (acknowledged, so stored), its ratio to the
//! raw engine insert rate of the same rows (the spans and the business rows
//! the service writes for them) measured in the same run before and after
//! the load, and the service's resident memory (engine included) under
//! overload, with how much of it its own heap was.
//!
//! Run: `cargo bench --bench otlp_load`. Environment: BENCH_SECONDS (20),
//! BENCH_CONNECTIONS (32), BENCH_OVERLOAD_CONNECTIONS (400), BENCH_BATCHES
//! (distinct requests of 512 spans, 1200), BENCH_SPANS_PER_SERVICE (1: each
//! trace has one span per service; N: an entry span and N - 1 plain child
//! spans, such as database calls, per service), BENCH_BUSINESS_EVERY (1:
//! every entry span is a business record, with keys and a milestone; N: one
//! entry span in N, the others plain spans of the same flow),
//! BENCH_LOOKUP_PAUSE_MS (50: an order lookup through the JSON API after
//! each pause of this long, beside the load; 0: none), BENCH_PACED_SPANS
//! (0: none; N: first a phase of requests of their own sent at N spans/s,
//! which shows whether lineage keeps up with ingest at that rate). Figures
//! are in BENCHMARKS.md.

mod common;
use common::{env_or, fresh_engine, migrated_store};

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::Event;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use waybill_collector::ExportTraceServiceRequest;
use waybill_store::engine::EngineQuery;

const SPANS_PER_REQUEST: usize = 512;

fn text(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue { key: key.into(), value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.into())) }), ..Default::default() }
}

/// Request `batch`: 512 spans of an order-to-invoice flow across four
/// services, ids unique per span. In each trace every service has an entry
/// span (a server span with an event) and `per_service - 1` plain child
/// spans (database and HTTP client calls); one entry span in
/// `business_every` carries business keys and a milestone.
fn request(batch: u64, now_ns: u64, business_every: u64, per_service: usize) -> ExportTraceServiceRequest {
    let services = ["b2b-portal", "sap-erp", "warehouse", "billing"];
    let names = ["POST /orders", "erp.sales_order.post", "wms.shipment.dispatch", "invoice.post"];
    let children = ["SELECT orders", "INSERT order_lines", "GET /pricing/{sku}", "SELECT stock"];
    let traces = (SPANS_PER_REQUEST / (4 * per_service)) as u64;
    let resource_spans = (0..4)
        .map(|service| {
            let spans = (0..traces)
                .flat_map(|t| (0..per_service).map(move |child| (t, child)))
                .map(|(t, child)| {
                    let trace = batch * traces + t;
                    // Entry spans are numbered as if each trace had one span per service.
                    let entry = trace * 4 + service as u64;
                    let id = batch * SPANS_PER_REQUEST as u64 + t * (4 * per_service) as u64 + (service * per_service + child) as u64;
                    let start = now_ns + id * 1_000;
                    let span_id = |n: u64| (n + 1).to_be_bytes().to_vec();
                    let entry_id = id - child as u64;
                    let mut span = Span {
                        trace_id: (u128::from(trace) + 1).to_be_bytes().to_vec(),
                        span_id: span_id(id),
                        start_time_unix_nano: start,
                        end_time_unix_nano: start + 1_500_000,
                        status: Some(Status { code: 1, message: String::new() }),
                        ..Default::default()
                    };
                    if child > 0 {
                        span.parent_span_id = span_id(entry_id);
                        span.name = children[(child - 1) % children.len()].into();
                        span.kind = 3;
                        span.attributes =
                            vec![text("db.system", "postgresql"), text("server.address", format!("db-{}.internal", service % 3))];
                        return span;
                    }
                    // A service's entry span is the child of the previous service's.
                    if service > 0 {
                        span.parent_span_id = span_id(entry_id - per_service as u64);
                    }
                    span.name = names[service].into();
                    span.kind = 2;
                    span.attributes = if entry % business_every == 0 {
                        vec![
                            text("biz.key.order", format!("PO-{trace}")),
                            text("biz.key.sales_order", format!("SO-{trace}")),
                            text("biz.milestone", "order.accepted"),
                            text("http.request.method", "POST"),
                        ]
                    } else {
                        vec![
                            text("http.route", "/api/v2/orders/{id}"),
                            text("peer.service", "sap-erp"),
                            text("net.peer.name", format!("erp-{}.internal", entry % 3)),
                            text("http.request.method", "POST"),
                        ]
                    };
                    span.events = vec![Event {
                        time_unix_nano: start + 500,
                        name: "credit.checked".into(),
                        attributes: vec![text("biz.outcome", "ok")],
                        ..Default::default()
                    }];
                    span
                })
                .collect();
            ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![
                        text("service.name", services[service]),
                        text("deployment.environment", "production"),
                        text("host.name", format!("node-{}", service % 3)),
                    ],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope { name: "waybill.loadgen".into(), version: "1.0.0".into(), ..Default::default() }),
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }
        })
        .collect();
    ExportTraceServiceRequest { resource_spans }
}

/// Runs `sql` on `engine`; its output as RowBinary.
fn run(engine: &waybill_store::Engine, sql: &str) -> Vec<u8> {
    engine.query(EngineQuery { sql, format: "RowBinary", database: None, params: &[] }).unwrap().data
}

/// The rows the service writes for the load, as the engine's own RowBinary:
/// span files of 20,000 rows each, and the business rows in as many files
/// of equal size (in trace order, so not exactly each span file's own).
struct RawRows {
    spans: usize,
    span_files: Vec<std::path::PathBuf>,
    business_files: Vec<std::path::PathBuf>,
}

/// Writes `spans` and `business` as RowBinary files under `files`, through
/// an engine in `dir`.
async fn raw_rows(dir: &std::path::Path, files: &std::path::Path, spans: &[waybill_store::SpanRow], business: &[waybill_store::BizEventRow]) -> RawRows {
    let engine = fresh_engine(dir);
    let store = migrated_store(&engine, "raw").await;
    store.insert(waybill_store::schema::OTEL_TRACES.name, spans).await.unwrap();
    store.insert(waybill_store::schema::BIZ_EVENTS.name, business).await.unwrap();
    let chunks = spans.len().div_ceil(20_000);
    // SELECT * and INSERT without a column list both mean every stored column.
    let dump = |table: &str, order: &str, per_chunk: usize| -> Vec<std::path::PathBuf> {
        (0..chunks)
            .map(|i| {
                let sql = format!("SELECT * FROM raw.{table} ORDER BY {order} LIMIT {per_chunk} OFFSET {}", i * per_chunk);
                let data = run(&engine, &sql);
                let path = std::fs::canonicalize(files).unwrap().join(format!("{table}-{i}.rowbinary"));
                std::fs::write(&path, data).unwrap();
                path
            })
            .collect()
    };
    let span_files = dump("otel_traces", "SpanId", 20_000);
    let business_files = dump("biz_events", "TraceId, SpanId", business.len().div_ceil(chunks.max(1)).max(1));
    store.close().await;
    RawRows { spans: spans.len(), span_files, business_files }
}

/// Raw engine insert rates of `rows` on a fresh engine in `dir`, spans per
/// second: of the span rows alone, and of the same rows the service writes
/// for them (a file of business rows before each file of spans, as the
/// pipeline's writer inserts a batch), loaded with INSERT ... FROM INFILE.
async fn raw_engine_rates(dir: &std::path::Path, rows: &RawRows) -> (f64, f64) {
    let engine = fresh_engine(dir);
    let store = migrated_store(&engine, "raw").await;
    // Each insert has a token of its own, as the writer's batches do, so a
    // file loaded again is not skipped as a resend.
    let load = |table: &str, path: &std::path::Path, pass: &str| {
        let sql = format!(
            "INSERT INTO raw.{table} FROM INFILE '{}' SETTINGS insert_deduplication_token = '{pass}-{}' FORMAT RowBinary",
            path.display(),
            path.display()
        );
        run(&engine, &sql);
    };
    let start = Instant::now();
    for path in &rows.span_files {
        load("otel_traces", path, "alone");
    }
    let spans_alone = rows.spans as f64 / start.elapsed().as_secs_f64();
    run(&engine, "TRUNCATE TABLE raw.otel_traces");
    let start = Instant::now();
    for (span_file, business_file) in rows.span_files.iter().zip(&rows.business_files) {
        load("biz_events", business_file, "same");
        load("otel_traces", span_file, "same");
    }
    let same_rows = rows.spans as f64 / start.elapsed().as_secs_f64();
    store.close().await;
    (spans_alone, same_rows)
}

/// Resident memory of `pid` in bytes.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The value of series `name` (labels included) in a Prometheus exposition.
fn sample(exposition: &str, name: &str) -> Option<f64> {
    exposition.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok())
}

/// The service's largest resident memory that `/metrics` reported in a
/// phase (its gauges refresh every 2 s), and how much of it was Waybill's
/// own heap then; the rest is the engine's and the program's.
#[derive(Clone, Copy, Default)]
struct MemoryPeak {
    resident: f64,
    heap: f64,
}

/// Reads the two memory gauges of `/metrics` every 0.5 s into `peak`.
fn sample_memory_gauges(http: u16, peak: Arc<std::sync::Mutex<MemoryPeak>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let answer = get(http, "/metrics").await.map(|(_, answer)| answer).unwrap_or_default();
            let gauges = (sample(&answer, "waybill_resident_memory_bytes"), sample(&answer, "waybill_heap_in_use_bytes"));
            if let (Some(resident), Some(heap)) = gauges {
                let mut peak = peak.lock().unwrap();
                if resident > peak.resident {
                    *peak = MemoryPeak { resident, heap };
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
}

/// The phase's memory peak, as printed after its line, and a fresh start for the next.
fn take_memory_peak(peak: &std::sync::Mutex<MemoryPeak>) -> String {
    let taken = std::mem::take(&mut *peak.lock().unwrap());
    format!(
        "  /metrics at its largest resident figure: {:.0} MB resident, of which {:.0} MB Waybill's heap in use (the rest the engine's and the program's)",
        taken.resident / 1e6,
        taken.heap / 1e6
    )
}

/// What the service's `/metrics` say so far.
#[derive(Clone, Copy, Default)]
struct Progress {
    /// Business events resolved, and traces waiting for the resolver.
    resolved: f64,
    pending: f64,
    /// The writer's batches and the records in them.
    batches: f64,
    rows: f64,
    /// Seconds in INSERTs into otel_traces and biz_events, and in resolve steps.
    span_inserts: f64,
    business_inserts: f64,
    resolve_steps: f64,
    steps: f64,
    /// CPU seconds of the whole service process (engine included).
    cpu: f64,
}

/// CPU seconds `pid` has used, all its threads (utime + stime in
/// /proc/PID/stat, in Linux's USER_HZ of 100 per second).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|t| t.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

async fn service_progress(http: u16, pid: u32) -> Progress {
    let answer = get(http, "/metrics").await.map(|(_, answer)| answer).unwrap_or_default();
    // A labelled series appears with its first observation.
    let value = |name: &str| sample(&answer, name).unwrap_or(0.0);
    Progress {
        resolved: value("waybill_lineage_resolved_events_total"),
        pending: value("waybill_lineage_pending_traces"),
        batches: value("waybill_pipeline_batch_records_count"),
        rows: value("waybill_pipeline_batch_records_sum"),
        span_inserts: value("waybill_store_insert_duration_seconds_sum{table=\"otel_traces\"}"),
        business_inserts: value("waybill_store_insert_duration_seconds_sum{table=\"biz_events\"}"),
        resolve_steps: value("waybill_lineage_resolve_duration_seconds_sum"),
        steps: value("waybill_lineage_resolve_duration_seconds_count"),
        cpu: cpu_seconds(pid),
    }
}

/// Prints what the service did in a phase of `elapsed` that ended at `now`
/// and began at `before`, in which it acknowledged `spans`.
fn print_progress(before: Progress, now: Progress, elapsed: Duration, spans: u64) {
    println!(
        "  after it: resolver {:.0} business events resolved, {:.0} traces waiting; writer {:.0} batches of {:.0} rows on average",
        now.resolved,
        now.pending,
        now.batches - before.batches,
        (now.rows - before.rows) / (now.batches - before.batches)
    );
    println!(
        "  of its {:.1} s: {:.1} s inserting spans, {:.1} s inserting business rows, {:.1} s in {:.0} resolve steps",
        elapsed.as_secs_f64(),
        now.span_inserts - before.span_inserts,
        now.business_inserts - before.business_inserts,
        now.resolve_steps - before.resolve_steps,
        now.steps - before.steps
    );
    // CPU per span is steadier than spans/s while the machine's speed drifts.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "  the service used {:.1} s of CPU (of {:.1} s on {cores} cores): {:.1} µs per span acknowledged, resolver included",
        now.cpu - before.cpu,
        cores as f64 * elapsed.as_secs_f64(),
        (now.cpu - before.cpu) * 1e6 / spans.max(1) as f64
    );
}

/// Order lookups through the JSON API beside a load phase.
struct Lookups {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<Duration>>,
}

impl Lookups {
    /// Looks up one of orders `PO-0` .. `PO-{orders - 1}` after each
    /// `pause`, as people on the pages would, until finished; none if
    /// `pause` is zero.
    fn start(http: u16, orders: u64, pause: Duration) -> Lookups {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut latencies = Vec::new();
                let mut n: u64 = 0;
                while !pause.is_zero() && !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let order = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) % orders.max(1);
                    let started = Instant::now();
                    let status = get(http, &format!("/api/v1/transactions?key=PO-{order}")).await.map(|(status, _)| status);
                    assert_eq!(status.ok(), Some(200), "lookup of PO-{order}");
                    latencies.push(started.elapsed());
                    tokio::time::sleep(pause).await;
                }
                latencies
            }
        });
        Lookups { stop, task }
    }

    /// Stops the lookups; their latencies, to print.
    async fn finish(self) -> String {
        self.stop.store(true, Ordering::Relaxed);
        let mut latencies = self.task.await.unwrap();
        if latencies.is_empty() {
            return "  no order lookups beside it (BENCH_LOOKUP_PAUSE_MS=0)".to_owned();
        }
        latencies.sort();
        let ms = |d: Option<&Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
        let at = |q: f64| ms(latencies.get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1))));
        format!(
            "  {} order lookups beside it (GET /api/v1/transactions?key=...): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            latencies.len(),
            at(0.5),
            at(0.99),
            ms(latencies.last())
        )
    }
}

/// A GET on the service's web port: the status and the whole answer.
async fn get(http: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", http)).await?;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok((status, answer))
}

/// Totals of one load phase.
#[derive(Default)]
struct Totals {
    acked_spans: AtomicU64,
    busy: AtomicU64,
    other: AtomicU64,
}

/// One request and its answer on a keep-alive connection; the status.
async fn exchange(stream: &mut BufReader<tokio::net::TcpStream>, addr: SocketAddr, body: &[u8]) -> std::io::Result<u16> {
    let head = format!(
        "POST /v1/traces HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.get_mut().write_all(head.as_bytes()).await?;
    stream.get_mut().write_all(body).await?;
    let mut status_line = String::new();
    stream.read_line(&mut status_line).await?;
    let status: u16 = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if stream.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut answer = vec![0u8; length];
    stream.read_exact(&mut answer).await?;
    Ok(status)
}

/// Sends `bodies` over `connections` keep-alive connections until they run
/// out or `seconds` pass; with `pace`, request `i` not before `i * pace`
/// from the start. On 429 a connection waits `busy_wait` and resends.
async fn load(
    addr: SocketAddr,
    bodies: Arc<Vec<Vec<u8>>>,
    connections: usize,
    seconds: u64,
    busy_wait: Duration,
    pace: Option<Duration>,
) -> (Arc<Totals>, Duration) {
    let next = Arc::new(AtomicUsize::new(0));
    let totals = Arc::new(Totals::default());
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let (bodies, next, totals) = (bodies.clone(), next.clone(), totals.clone());
            tokio::spawn(async move {
                let mut stream = None;
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= bodies.len() || Instant::now() > deadline {
                        return;
                    }
                    if let Some(pace) = pace {
                        tokio::time::sleep_until((start + pace * index as u32).into()).await;
                    }
                    loop {
                        if stream.is_none() {
                            match tokio::net::TcpStream::connect(addr).await {
                                Ok(connected) => stream = Some(BufReader::new(connected)),
                                Err(_) => {
                                    totals.other.fetch_add(1, Ordering::Relaxed);
                                    tokio::time::sleep(busy_wait).await;
                                    continue;
                                }
                            }
                        }
                        let connection = stream.as_mut().expect("connected above");
                        match exchange(connection, addr, &bodies[index]).await {
                            Ok(200) => {
                                totals.acked_spans.fetch_add(SPANS_PER_REQUEST as u64, Ordering::Relaxed);
                                break;
                            }
                            Ok(429) => {
                                totals.busy.fetch_add(1, Ordering::Relaxed);
                                if Instant::now() > deadline {
                                    return;
                                }
                                tokio::time::sleep(busy_wait).await;
                            }
                            Ok(_) => {
                                totals.other.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                            Err(_) => {
                                // The connection broke: count it and resend on a new one.
                                totals.other.fetch_add(1, Ordering::Relaxed);
                                stream = None;
                                if Instant::now() > deadline {
                                    return;
                                }
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    (totals, start.elapsed())
}

/// Sends `bodies` at `spans_per_s` and prints whether the resolver kept up:
/// the traces waiting for it during the phase, and how long after it the
/// resolver had resolved every business event that arrived. Each request
/// carries `business` business events.
#[allow(clippy::too_many_arguments)]
async fn paced_phase(
    http: u16,
    pid: u32,
    addr: SocketAddr,
    bodies: Arc<Vec<Vec<u8>>>,
    connections: usize,
    seconds: u64,
    spans_per_s: u64,
    business: usize,
) {
    let most_waiting = Arc::new(AtomicU64::new(0));
    let watcher = tokio::spawn({
        let most_waiting = most_waiting.clone();
        async move {
            loop {
                most_waiting.fetch_max(service_progress(http, pid).await.pending as u64, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    });
    let before = service_progress(http, pid).await;
    let pace = Duration::from_secs_f64(SPANS_PER_REQUEST as f64 / spans_per_s as f64);
    let (totals, elapsed) = load(addr, bodies, connections, seconds, Duration::from_millis(20), Some(pace)).await;
    let after = service_progress(http, pid).await;
    watcher.abort();
    let acked = totals.acked_spans.load(Ordering::Relaxed);
    let arrived = (acked / SPANS_PER_REQUEST as u64) as f64 * business as f64;
    println!(
        "paced at {spans_per_s} spans/s, {connections} connections: {acked} spans acknowledged in {:.1} s = {:.0} spans/s, {:.0} business events/s; 429: {}, other errors: {}",
        elapsed.as_secs_f64(),
        acked as f64 / elapsed.as_secs_f64(),
        arrived / elapsed.as_secs_f64(),
        totals.busy.load(Ordering::Relaxed),
        totals.other.load(Ordering::Relaxed)
    );
    // Caught up once no trace waits and the resolver has resolved at least
    // what arrived (a trace's notification follows its write).
    let drained = Instant::now();
    let caught_up = loop {
        let now = service_progress(http, pid).await;
        if now.pending == 0.0 && now.resolved - before.resolved >= arrived {
            break Some(drained.elapsed());
        }
        if drained.elapsed() > Duration::from_secs(300) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    println!(
        "  resolver: {:.0} business events/s resolved during the phase; traces waiting at most {}, {:.0} at its end; {}",
        (after.resolved - before.resolved) / elapsed.as_secs_f64(),
        most_waiting.load(Ordering::Relaxed).max(after.pending as u64),
        after.pending,
        caught_up.map_or("still behind 300 s after it".to_owned(), |after| format!("caught up {:.1} s after it", after.as_secs_f64()))
    );
    print_progress(before, after, elapsed, acked);
}

/// Kills the service if the benchmark stops early, so no server is left behind.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: signalling our own child process; harmless once it has exited.
        unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let seconds = env_or("BENCH_SECONDS", 20) as u64;
    let connections = env_or("BENCH_CONNECTIONS", 32);
    let overload_connections = env_or("BENCH_OVERLOAD_CONNECTIONS", 400);
    let batches = env_or("BENCH_BATCHES", 1200);
    let lookup_pause = Duration::from_millis(env_or("BENCH_LOOKUP_PAUSE_MS", 50) as u64);
    let root = std::path::PathBuf::from("target/bench-otlp");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("raw")).unwrap();
    std::fs::create_dir_all(root.join("service")).unwrap();

    let now_ns = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    print!("encoding {batches} requests of {SPANS_PER_REQUEST} spans ... ");
    std::io::stdout().flush().unwrap();
    let business_every = env_or("BENCH_BUSINESS_EVERY", 1).max(1) as u64;
    let per_service = env_or("BENCH_SPANS_PER_SERVICE", 1).clamp(1, SPANS_PER_REQUEST / 4);
    assert_eq!(SPANS_PER_REQUEST % (4 * per_service), 0, "BENCH_SPANS_PER_SERVICE must divide {}", SPANS_PER_REQUEST / 4);
    let requests: Vec<ExportTraceServiceRequest> = (0..batches as u64).map(|b| request(b, now_ns, business_every, per_service)).collect();
    let bodies: Arc<Vec<Vec<u8>>> = Arc::new(requests.iter().map(|r| r.encode_to_vec()).collect());
    println!("{:.0} MB", bodies.iter().map(Vec::len).sum::<usize>() as f64 / 1e6);

    // The rows the service writes, converted and mapped by the same code.
    let extractor = waybill_lineage::Extractor::new(&waybill_lineage::LineageConfig::default());
    let (rows, business): (Vec<_>, Vec<_>) = requests
        .iter()
        .map(|r| {
            let rows = waybill::pipeline::span_rows(r, "");
            let business = extractor.spans(&rows);
            (rows, business)
        })
        .unzip();
    let (rows, business): (Vec<_>, Vec<_>) = (rows.concat(), business.concat());
    drop(requests);
    std::fs::create_dir_all(root.join("raw-rows")).unwrap();
    // The paced phase's requests come after the others, so their traces are new.
    let paced_spans = env_or("BENCH_PACED_SPANS", 0) as u64;
    let paced_requests = (paced_spans * seconds).div_ceil(SPANS_PER_REQUEST as u64);
    let paced: Vec<ExportTraceServiceRequest> =
        (0..paced_requests).map(|b| request(batches as u64 + b, now_ns, business_every, per_service)).collect();
    let paced_business = paced.first().map_or(0, |r| extractor.spans(&waybill::pipeline::span_rows(r, "")).len());
    let paced: Arc<Vec<Vec<u8>>> = Arc::new(paced.iter().map(|r| r.encode_to_vec()).collect());
    let raw_rows = raw_rows(&root.join("raw"), &root.join("raw-rows"), &rows, &business).await;
    let business_rows = business.len();
    drop((rows, business));
    // The machine's speed drifts, so the engine is measured before and after
    // the load, and the service is compared with the mean.
    let (raw_spans, raw_before) = raw_engine_rates(&root.join("raw"), &raw_rows).await;
    println!(
        "raw engine insert rate, before the load: {raw_spans:.0} spans/s of span rows alone, {raw_before:.0} spans/s with their {business_rows} business rows"
    );

    let port = |()| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (http, otlp, grpc) = (port(()), port(()), port(()));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_waybill"))
        .arg("serve")
        .current_dir(root.join("service"))
        .env("WAYBILL_HTTP__LISTEN", format!("127.0.0.1:{http}"))
        .env("WAYBILL_OTLP__HTTP_LISTEN", format!("127.0.0.1:{otlp}"))
        .env("WAYBILL_OTLP__GRPC_LISTEN", format!("127.0.0.1:{grpc}"))
        .env("WAYBILL_LOG__LEVEL", "error")
        .spawn()
        .unwrap();
    let pid = child.id();
    let _stop_on_panic = KillOnDrop(pid);
    let ready = Instant::now();
    loop {
        if matches!(get(http, "/readyz").await, Ok((200, _))) {
            break;
        }
        assert!(ready.elapsed() < Duration::from_secs(60), "waybill did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let peak = Arc::new(AtomicU64::new(0));
    let sampler = tokio::spawn({
        let peak = peak.clone();
        async move {
            loop {
                peak.fetch_max(rss_bytes(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    let gauges = Arc::new(std::sync::Mutex::new(MemoryPeak::default()));
    let gauge_sampler = sample_memory_gauges(http, gauges.clone());
    let addr = SocketAddr::from(([127, 0, 0, 1], otlp));
    let half = bodies.len() / 2;
    let sustained = Arc::new(bodies[..half].to_vec());
    let overload = Arc::new(bodies[half..].to_vec());
    drop(bodies);

    if paced_spans > 0 {
        paced_phase(http, pid, addr, paced, connections, seconds, paced_spans, paced_business).await;
        println!("{}", take_memory_peak(&gauges));
    }

    // Lookups ask for orders of the phase's first requests, then for
    // orders the sustained phase stored.
    let orders_per_request = (SPANS_PER_REQUEST / (4 * per_service)) as u64;
    let started = service_progress(http, pid).await;
    let lookups = Lookups::start(http, 32 * orders_per_request, lookup_pause);
    let (totals, elapsed) = load(addr, sustained, connections, seconds, Duration::from_millis(20), None).await;
    let sustained_lookups = lookups.finish().await;
    let rate = totals.acked_spans.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64();
    println!(
        "sustained, {connections} connections: {} spans acknowledged in {:.1} s = {rate:.0} spans/s; 429: {}, other errors: {}; peak RSS {:.0} MB",
        totals.acked_spans.load(Ordering::Relaxed),
        elapsed.as_secs_f64(),
        totals.busy.load(Ordering::Relaxed),
        totals.other.load(Ordering::Relaxed),
        peak.load(Ordering::Relaxed) as f64 / 1e6
    );
    println!("{}", take_memory_peak(&gauges));
    let after_sustained = service_progress(http, pid).await;
    print_progress(started, after_sustained, elapsed, totals.acked_spans.load(Ordering::Relaxed));
    println!("{sustained_lookups}");

    peak.store(0, Ordering::Relaxed);
    let lookups = Lookups::start(http, half as u64 * orders_per_request, lookup_pause);
    let (totals, elapsed) = load(addr, overload, overload_connections, seconds, Duration::from_millis(1), None).await;
    let overload_lookups = lookups.finish().await;
    let overload_rate = totals.acked_spans.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64();
    println!(
        "overload, {overload_connections} connections resending at once on 429: {overload_rate:.0} spans/s acknowledged; 429 answers: {}; other errors: {}; peak RSS {:.0} MB",
        totals.busy.load(Ordering::Relaxed),
        totals.other.load(Ordering::Relaxed),
        peak.load(Ordering::Relaxed) as f64 / 1e6
    );
    println!("{}", take_memory_peak(&gauges));
    print_progress(after_sustained, service_progress(http, pid).await, elapsed, totals.acked_spans.load(Ordering::Relaxed));
    println!("{overload_lookups}");
    sampler.abort();
    gauge_sampler.abort();
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "waybill exited with {status}");

    let (raw_spans, raw_after) = raw_engine_rates(&root.join("raw"), &raw_rows).await;
    println!("raw engine insert rate, after the load: {raw_spans:.0} spans/s of span rows alone, {raw_after:.0} spans/s with their business rows");
    let raw = (raw_before + raw_after) / 2.0;
    println!(
        "ratio to the raw rate of the same rows (mean {raw:.0} spans/s): sustained {:.2}, overload {:.2}",
        rate / raw,
        overload_rate / raw
    );
}
