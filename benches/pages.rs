//! Page render times over a large embedded store: 1 M transactions (with
//! their keys, key graph edges and a client span per transaction), served
//! by the same app `waybill serve` builds, called in-process.
//!
//! Reports p50 / p95 server time per page: the search result, the
//! transaction page and the board (target p95 < 200 ms), and the others.
//!
//! Run: `cargo bench --bench pages`. Environment: BENCH_TRANSACTIONS
//! (1,000,000), BENCH_REQUESTS (100 per page). Figures are in BENCHMARKS.md.

mod common;
use common::{env_or, fresh_engine, migrated_store, now_ns};

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;
use waybill_alerts::{Alerts, AlertsConfig};
use waybill_dashboards::{Dashboards, DashboardsConfig};

const DAY_NS: i64 = 86_400_000_000_000;

/// Orders over the last week through portal or EDI, ERP, warehouse and
/// billing; a tenth stuck past their invoice deadline, a few failed. Each
/// has an order, sales order, shipment and partner key (40 partners, so a
/// partner key is shared by 25 k transactions).
fn transactions_sql(transactions: usize, now: i64) -> String {
    format!(
        "INSERT INTO transactions ({columns})
         SELECT concat('T-', toString(number)), 'order', concat('PO-', toString(number)),
                multiIf(number % 10 = 0, 'stuck', number % 37 = 0, 'failed', number % 3 = 0, 'in_flight', 'completed') AS state,
                ['order', 'sales_order', 'shipment', 'partner'],
                [concat('PO-', toString(number)), concat('SO-', toString(number)), concat('SH-', toString(number)), concat('PARTNER-', toString(number % 40))],
                [if(number % 4 = 0, 'edi', 'portal'), 'erp', 'wms', 'billing'],
                ['order.captured', 'order.accepted', 'shipment.dispatched'], [if(number % 4 = 0, 'edi', 'portal'), 'erp', 'wms'],
                [(fromUnixTimestamp64Nano({now} - toInt64(cityHash64(number) % (7 * {DAY_NS}))) AS t0),
                 t0 + toIntervalMinute(cityHash64(number, 1) % 30), t0 + toIntervalHour(cityHash64(number, 2) % 20)],
                ['ok', if(number % 37 = 0, 'rejected', 'ok'), 'ok'],
                [lower(hex(sipHash128(number, 1))), lower(hex(sipHash128(number, 2))), ''],
                [lower(hex(sipHash64(number, 1))), lower(hex(sipHash64(number, 2))), ''],
                if(state = 'stuck', ['invoice.posted'], []), if(state = 'stuck', [t0 + toIntervalHour(48)], []),
                toDateTime64(0, 9), t0, t0 + toIntervalHour(20), 1
         FROM numbers({transactions})",
        columns = waybill_lineage::resolve::TRANSACTION_COLUMNS
    )
}

fn keys_sql(transactions: usize) -> String {
    format!(
        "INSERT INTO transaction_keys (Value, Kind, Id)
         SELECT k.1, k.2, Id FROM (
             SELECT concat('T-', toString(number)) AS Id,
                    arrayJoin([(concat('PO-', toString(number)), 'order'), (concat('SO-', toString(number)), 'sales_order'),
                               (concat('SH-', toString(number)), 'shipment'), (concat('PARTNER-', toString(number % 40)), 'partner')]) AS k
             FROM numbers({transactions}))"
    )
}

fn edges_sql(transactions: usize) -> String {
    format!(
        "INSERT INTO biz_edges (Kind, Value, Down, OtherKind, OtherValue)
         SELECT 'order', concat('PO-', toString(number)), true, 'sales_order', concat('SO-', toString(number)) FROM numbers({transactions})
         UNION ALL SELECT 'sales_order', concat('SO-', toString(number)), false, 'order', concat('PO-', toString(number)) FROM numbers({transactions})"
    )
}

/// A client span per milestone trace: the portal's call and the ERP's.
fn spans_sql(transactions: usize, now: i64) -> String {
    format!(
        "INSERT INTO otel_traces (Timestamp, TraceId, SpanId, SpanName, SpanKind, ServiceName, SpanAttributes, Duration, StatusCode)
         SELECT fromUnixTimestamp64Nano({now} - toInt64(cityHash64(intDiv(number, 2)) % (7 * {DAY_NS}))),
                lower(hex(sipHash128(intDiv(number, 2), number % 2 + 1))), lower(hex(sipHash64(intDiv(number, 2), number % 2 + 1))),
                ['POST /orders', 'erp.sales_order.post'][number % 2 + 1], ['Server', 'Client'][number % 2 + 1], ['portal', 'erp'][number % 2 + 1],
                map('peer.service', ['middleware', 'wms'][number % 2 + 1], 'http.route', '/v2/orders'), 25000000,
                if(cityHash64(number) % 100 = 0, 'Error', 'Ok')
         FROM numbers({})",
        transactions * 2
    )
}

struct Timing {
    page: &'static str,
    samples: Vec<Duration>,
}

impl Timing {
    fn quantile(&self, q: f64) -> Duration {
        let mut sorted = self.samples.clone();
        sorted.sort();
        sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
    }
}

async fn time_page(app: &axum::Router, page: &'static str, paths: impl Iterator<Item = String>) -> Timing {
    let mut samples = Vec::new();
    for path in paths {
        let started = Instant::now();
        let response = app.clone().oneshot(Request::get(&path).body(Body::empty()).unwrap()).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        samples.push(started.elapsed());
        assert!(status == StatusCode::OK || status == StatusCode::SEE_OTHER, "{path}: {status}\n{}", String::from_utf8_lossy(&body));
    }
    Timing { page, samples }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let transactions = env_or("BENCH_TRANSACTIONS", 1_000_000);
    let requests = env_or("BENCH_REQUESTS", 100);

    let engine = fresh_engine(std::path::Path::new("target/bench-pages/engine"));
    let store = migrated_store(&engine, "bench").await;

    let now = now_ns();
    let started = Instant::now();
    store.execute(&transactions_sql(transactions, now)).await.unwrap();
    store.execute(&keys_sql(transactions)).await.unwrap();
    store.execute(&edges_sql(transactions)).await.unwrap();
    store.execute(&spans_sql(transactions, now)).await.unwrap();
    println!("populated {transactions} transactions, their keys, edges and {} spans in {:.1} s", transactions * 2, started.elapsed().as_secs_f64());

    let alerts = Alerts::new(store.clone(), AlertsConfig::default()).unwrap();
    let dashboards = Dashboards::new(store.clone(), alerts, DashboardsConfig::default()).unwrap();
    let app = dashboards.app();
    // A deterministic spread of transactions to look up.
    let pick = move |i: usize| (i * 7919 + 13) % transactions;

    let timings = vec![
        time_page(&app, "search result (/search?q=SO-n)", (0..requests).map(|i| format!("/search?q=SO-{}", pick(i)))).await,
        time_page(&app, "search, a key of 25 k transactions (PARTNER-n)", (0..requests.min(20)).map(|i| format!("/search?q=PARTNER-{}", i % 40))).await,
        time_page(&app, "transaction page (/transactions/T-n)", (0..requests).map(|i| format!("/transactions/T-{}", pick(i)))).await,
        time_page(&app, "board (/board)", (0..requests).map(|_| "/board".to_owned())).await,
        time_page(&app, "board, one partner (/board?partner=...)", (0..requests).map(|i| format!("/board?partner=PARTNER-{}", i % 40))).await,
        time_page(&app, "start page (/)", (0..requests.min(20)).map(|_| "/".to_owned())).await,
        time_page(&app, "exceptions (/exceptions)", (0..requests.min(20)).map(|_| "/exceptions".to_owned())).await,
        time_page(&app, "SLA (/sla)", (0..requests.min(20)).map(|_| "/sla".to_owned())).await,
        time_page(&app, "flows (/flows)", (0..requests.min(20)).map(|_| "/flows".to_owned())).await,
        time_page(&app, "KPIs (/kpis)", (0..requests.min(20)).map(|_| "/kpis".to_owned())).await,
    ];
    println!("{:<44} {:>8} {:>10} {:>10}", "page", "requests", "p50", "p95");
    for timing in &timings {
        println!(
            "{:<44} {:>8} {:>8.1} ms {:>8.1} ms",
            timing.page,
            timing.samples.len(),
            timing.quantile(0.5).as_secs_f64() * 1000.0,
            timing.quantile(0.95).as_secs_f64() * 1000.0
        );
    }
    store.close().await;
}
