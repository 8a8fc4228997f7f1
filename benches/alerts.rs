//! Alert evaluation at scale on the embedded store: 100 rules (every SLI
//! kind, grouped and not) over 10 M business events, 1 M transactions and
//! 1 M client spans, evaluated as the service does every 15 s.
//!
//! Reports each cycle's duration and the CPU the process (engine included)
//! spent in it, as a share of one core over the 15 s interval.
//!
//! Run: `cargo bench --bench alerts`. Environment: BENCH_EVENTS (10,000,000),
//! BENCH_TRANSACTIONS (1,000,000), BENCH_RULES (100), BENCH_CYCLES (5).
//! Figures are in BENCHMARKS.md.

mod common;
use common::{env_or, fresh_engine, migrated_store, now_ns};

use std::time::{Duration, Instant};

use waybill_alerts::rules::Sli;
use waybill_alerts::{Alerts, AlertsConfig};

const INTERVAL: Duration = Duration::from_secs(15);
const DAY_NS: i64 = 86_400_000_000_000;

/// User plus system CPU time of this process so far.
fn cpu_time() -> Duration {
    // SAFETY: getrusage fills the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let time = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// 10 M business events over the last day: orders' milestones (captured,
/// accepted, dispatched, posted) with ~2 % failures, and inventory changes
/// and their publication paired by SKU, across six systems. Each arrived
/// up to 2 s after its record's time, as if ingested over the day.
fn events_sql(events: usize, now: i64) -> String {
    format!(
        "INSERT INTO biz_events (TraceId, Record, SpanId, RecordIndex, Time, SourceTime, Milestone, System, Outcome, KeyKinds, KeyValues, LinkedTraceIds, Source, Ingested)
         SELECT lower(hex(cityHash64(intDiv(number, 3)))), 'span', lower(hex(cityHash64(number, 1))), 0,
                fromUnixTimestamp64Nano({now} - toInt64(cityHash64(number, 2) % {DAY_NS})) AS t,
                t - toIntervalSecond(cityHash64(number, 3) % 600),
                ['order.captured', 'order.accepted', 'shipment.dispatched', 'invoice.posted', 'inventory.changed', 'inventory.published'][number % 6 + 1] AS m,
                ['portal', 'erp', 'wms', 'billing', 'inventory', 'portal'][number % 6 + 1],
                if(cityHash64(number, 4) % 50 = 0, 'failed', 'ok'),
                if(m LIKE 'inventory.%', ['sku'], ['order', 'partner']),
                if(m LIKE 'inventory.%', [concat('SKU-', toString(intDiv(number, 6) % 20000))],
                   [concat('PO-', toString(intDiv(number, 6))), concat('PARTNER-', toString(cityHash64(intDiv(number, 6)) % 40))]),
                [], '', t + toIntervalMillisecond(cityHash64(number, 5) % 2000)
         FROM numbers({events})"
    )
}

/// 1 M transactions: their milestones, a tenth stuck past a deadline, a
/// few failed.
fn transactions_sql(transactions: usize, now: i64) -> String {
    format!(
        "INSERT INTO transactions ({columns})
         SELECT hex(sipHash128(number)), 'order', concat('PO-', toString(number)),
                multiIf(number % 10 = 0, 'stuck', number % 37 = 0, 'failed', number % 3 = 0, 'in_flight', 'completed') AS state,
                ['order', 'sales_order', 'partner'], [concat('PO-', toString(number)), concat('SO-', toString(number)), concat('PARTNER-', toString(number % 40))],
                ['portal', 'erp', 'wms', 'billing'],
                ['order.captured', 'order.accepted', 'shipment.dispatched'], ['portal', 'erp', 'wms'],
                [(fromUnixTimestamp64Nano({now} - toInt64(cityHash64(number) % {DAY_NS})) AS t0),
                 t0 + toIntervalMinute(cityHash64(number, 1) % 30), t0 + toIntervalHour(cityHash64(number, 2) % 20)],
                ['ok', if(number % 37 = 0, 'rejected', 'ok'), 'ok'], ['', '', ''], ['', '', ''],
                if(state = 'stuck', ['invoice.posted'], []), if(state = 'stuck', [t0 + toIntervalHour(48)], []),
                toDateTime64(0, 9), t0, t0 + toIntervalHour(20), 1
         FROM numbers({transactions})",
        columns = waybill_lineage::resolve::TRANSACTION_COLUMNS
    )
}

/// 1 M client spans between the systems, ~1 % failing.
fn spans_sql(spans: usize, now: i64) -> String {
    format!(
        "INSERT INTO otel_traces (Timestamp, TraceId, SpanId, SpanName, SpanKind, ServiceName, SpanAttributes, Duration, StatusCode)
         SELECT fromUnixTimestamp64Nano({now} - toInt64(cityHash64(number) % {DAY_NS})), lower(hex(sipHash128(number))), lower(hex(cityHash64(number, 1))),
                'POST /api', 'Client', ['portal', 'middleware', 'erp', 'wms', 'billing'][number % 5 + 1],
                map('peer.service', ['erp', 'wms', 'carrier', 'tax-saas'][number % 4 + 1]), 1000000,
                if(cityHash64(number, 2) % 100 = 0, 'Error', 'Ok')
         FROM numbers({spans})"
    )
}

/// `count` rules cycling through every SLI kind, windows and groupings.
fn rules_yaml(count: usize) -> String {
    let windows = ["5m", "15m", "1h", "6h"];
    let milestones = ["order.captured", "order.accepted", "shipment.dispatched", "invoice.posted"];
    let mut yaml = String::from("interval: 15s\nrules:\n");
    for i in 0..count {
        let window = windows[i % windows.len()];
        let milestone = milestones[i % milestones.len()];
        let (sli, group, threshold) = match i % 10 {
            0 | 1 => ("{ kind: ratio, numerator: order.accepted, denominator: order.captured }".to_owned(), if i % 20 == 0 { "[system]" } else { "[key:partner]" }, "below: 0.99"),
            2 => ("{ kind: latency, from: inventory.changed, to: inventory.published, key: sku, quantile: 0.95 }".to_owned(), "[]", "above: 300"),
            3 => (format!("{{ kind: latency, from: source_time, to: {milestone} }}"), "[system]", "above: 600"),
            4 | 5 => (format!("{{ kind: count, milestone: {milestone}, outcome: failed }}"), "[system]", "above: 10"),
            6 => (format!("{{ kind: rate, milestone: {milestone} }}"), "[key:partner]", "below: 0.01"),
            7 => ("{ kind: overdue }".to_owned(), "[milestone]", "above: 100"),
            8 => ("{ kind: error_rate }".to_owned(), "[system]", "above: 0.005"),
            _ => ("{ kind: error_rate }".to_owned(), "[attribute:peer.service]", "above: 0.005"),
        };
        yaml.push_str(&format!("  - name: rule_{i:03}\n    sli: {sli}\n    window: {window}\n    group_by: {group}\n    {threshold}\n    min_samples: 10\n"));
    }
    yaml
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let events = env_or("BENCH_EVENTS", 10_000_000);
    let transactions = env_or("BENCH_TRANSACTIONS", 1_000_000);
    let rules = env_or("BENCH_RULES", 100);
    let cycles = env_or("BENCH_CYCLES", 5);

    let dir = std::path::PathBuf::from("target/bench-alerts");
    let engine = fresh_engine(&dir.join("engine"));
    let store = migrated_store(&engine, "bench").await;

    let now = now_ns();
    let started = Instant::now();
    store.execute(&events_sql(events, now)).await.unwrap();
    store.execute(&transactions_sql(transactions, now)).await.unwrap();
    store.execute(&spans_sql(transactions, now)).await.unwrap();
    store.execute("OPTIMIZE TABLE biz_events FINAL").await.unwrap();
    println!("populated {events} business events, {transactions} transactions and {transactions} client spans in {:.1} s", started.elapsed().as_secs_f64());

    let rules_file = dir.join("rules.yaml");
    std::fs::write(&rules_file, rules_yaml(rules)).unwrap();
    let config = AlertsConfig { rules_file: Some(rules_file), ..AlertsConfig::default() };
    let alerts = Alerts::new(store.clone(), config).expect("the generated rules validate");

    println!("{rules} rules, one evaluation cycle each run (the service runs one every {} s):", INTERVAL.as_secs());
    let mut durations = Vec::new();
    let mut cpu_shares = Vec::new();
    for cycle in 1..=cycles {
        let (wall, cpu) = (Instant::now(), cpu_time());
        alerts.evaluate(now_ns()).await.unwrap();
        let (wall, cpu) = (wall.elapsed(), cpu_time() - cpu);
        let share = cpu.as_secs_f64() / INTERVAL.as_secs_f64();
        let firing = alerts.alerts().iter().filter(|a| a.state == "firing").count();
        let unhealthy: Vec<String> = alerts.rules().0.into_iter().filter(|r| r.health != "ok").map(|r| format!("{}: {}", r.rule.name, r.health)).collect();
        assert!(unhealthy.is_empty(), "rules failed to evaluate: {unhealthy:?}");
        println!(
            "  cycle {cycle}: {:.2} s wall, {:.2} s CPU = {:.1} % of one core over the interval, {firing} alerts firing",
            wall.as_secs_f64(),
            cpu.as_secs_f64(),
            share * 100.0
        );
        durations.push(wall.as_secs_f64());
        cpu_shares.push(share);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!(
        "mean cycle {:.2} s (max {:.2} s) of a {} s interval; mean CPU {:.1} % of one core",
        mean(&durations),
        durations.iter().cloned().fold(0.0, f64::max),
        INTERVAL.as_secs(),
        mean(&cpu_shares) * 100.0
    );
    // What each kind of rule costs: all the rules of that kind measured
    // together, as the cycle does.
    println!("the rules of each kind alone:");
    let file = waybill_alerts::rules::RulesFile::parse(&rules_yaml(rules), "bench").unwrap();
    let kind_of = |sli: &Sli| match sli {
        Sli::Ratio { .. } => "ratio",
        Sli::Latency { key: Some(_), .. } => "latency by key",
        Sli::Latency { key: None, .. } => "latency from source time",
        Sli::Count { .. } => "count",
        Sli::Rate { .. } => "rate",
        Sli::Overdue { .. } => "overdue",
        Sli::ErrorRate { .. } => "error_rate",
    };
    for kind in ["ratio", "latency by key", "latency from source time", "count", "rate", "overdue", "error_rate"] {
        let of_kind: Vec<_> = file.rules.iter().filter(|r| kind_of(&r.sli) == kind).cloned().collect();
        let started = Instant::now();
        let measured = waybill_alerts::sli::measure_all(&store, &of_kind, now_ns()).await;
        let groups: usize = measured.into_iter().map(|m| m.unwrap().len()).sum();
        println!("  {kind:<26} {:>3} rules {:>7.1} ms, {groups} groups", of_kind.len(), started.elapsed().as_secs_f64() * 1000.0);
    }
    store.close().await;
}
