//! The executive KPI page as a manager reads it: each KPI for the last
//! seven days against the seven before, computed from transactions,
//! business events, alert history and the exception audit trail, and the
//! JSON twin with the same numbers.

mod common;

use common::{now_ns, rows};

use axum::http::StatusCode;
use common::pages::{Page, Pages};
use waybill_store::{AlertHistoryRow, BizEventRow, ExceptionActionRow, TransactionRow};

const MINUTE_NS: i64 = 60_000_000_000;
const HOUR_NS: i64 = 60 * MINUTE_NS;
const DAY_NS: i64 = 24 * HOUR_NS;

/// A transaction rooted at `root_kind` started `ago_ns` before now.
fn transaction(id: &str, root_kind: &str, state: &str, outcomes: &[&str], ago_ns: i64, version: u64) -> TransactionRow {
    let started = now_ns() - ago_ns;
    TransactionRow {
        id: id.to_owned(),
        root_kind: root_kind.to_owned(),
        root_value: format!("PO-{id}"),
        state: state.to_owned(),
        key_kinds: vec![root_kind.to_owned()],
        key_values: vec![format!("PO-{id}")],
        systems: vec!["portal".into(), "erp".into()],
        milestone_names: outcomes.iter().enumerate().map(|(i, _)| ["order.captured", "order.accepted", "invoice.posted"][i % 3].to_owned()).collect(),
        milestone_systems: outcomes.iter().map(|_| "erp".to_owned()).collect(),
        milestone_times_ns: outcomes.iter().enumerate().map(|(i, _)| started + i as i64 * MINUTE_NS).collect(),
        milestone_outcomes: outcomes.iter().map(|o| o.to_string()).collect(),
        milestone_trace_ids: outcomes.iter().map(|_| "ab".repeat(16)).collect(),
        milestone_span_ids: outcomes.iter().map(|_| "cd".repeat(8)).collect(),
        overdue_milestones: if state == "stuck" { vec!["shipment.dispatched".into()] } else { vec![] },
        overdue_due_ns: if state == "stuck" { vec![started + HOUR_NS] } else { vec![] },
        next_due_ns: 0,
        started_ns: started,
        updated_ns: started + 5 * MINUTE_NS,
        version,
    }
}

/// A business event of `milestone` in the ERP carrying `kind=value`, `ago_ns` before now.
fn event(n: u32, milestone: &str, outcome: &str, kind: &str, value: &str, ago_ns: i64) -> BizEventRow {
    rows::biz_event(n.into(), now_ns() - ago_ns, milestone, "erp", outcome, (kind, value))
}

fn history(event: &str, ago_ns: i64) -> AlertHistoryRow {
    AlertHistoryRow {
        time_ns: now_ns() - ago_ns,
        rule: "invoice_posting_failures".into(),
        group_key: "system=billing".into(),
        labels: vec![("system".into(), "billing".into())],
        event: event.into(),
        value: 3.0,
        receiver: String::new(),
        detail: String::new(),
    }
}

fn action(id: &str, action: &str, ago_ns: i64) -> ExceptionActionRow {
    ExceptionActionRow { time_ns: now_ns() - ago_ns, transaction_id: id.into(), actor: "dana".into(), action: action.into(), ..Default::default() }
}

/// This period is the last seven days; the previous one the seven before.
async fn seed(pages: &Pages) {
    let (this, before) = (2 * DAY_NS, 9 * DAY_NS);
    pages
        .store
        .insert(
            "transactions",
            &[
                // This period: 3 of 5 orders are exceptions.
                transaction("a1", "order", "completed", &["ok", "ok", "ok"], this, 1),
                transaction("a2", "order", "failed", &["ok", "failed"], this, 1),
                transaction("a3", "order", "stuck", &["ok"], this + HOUR_NS, 1),
                transaction("a4", "order", "in_flight", &["ok", "rejected"], 3 * DAY_NS, 1),
                // Failed first, completed by a later version: not an exception.
                transaction("a5", "order", "failed", &["failed"], 3 * DAY_NS, 1),
                transaction("a5", "order", "completed", &["ok", "ok", "ok"], 3 * DAY_NS, 2),
                // Not an order: not counted.
                transaction("s1", "shipment", "failed", &["failed"], this, 1),
                // Previous period: 1 of 4.
                transaction("b1", "order", "failed", &["failed"], before, 1),
                transaction("b2", "order", "completed", &["ok"], before, 1),
                transaction("b3", "order", "completed", &["ok"], before, 1),
                transaction("b4", "order", "completed", &["ok"], 10 * DAY_NS, 1),
            ],
        )
        .await
        .unwrap();

    let mut events = Vec::new();
    let mut n = 0;
    let mut push = |milestone: &str, outcome: &str, kind: &str, value: &str, ago: i64| {
        n += 1;
        events.push(event(n, milestone, outcome, kind, value, ago));
    };
    // Inventory: this period 60 s, 120 s and 300 s from change to publication; before, 600 s.
    for (sku, latency) in [("SKU-1", 60), ("SKU-2", 120), ("SKU-3", 300)] {
        push("inventory.changed", "ok", "sku", sku, this);
        push("inventory.published", "ok", "sku", sku, this - latency * 1_000_000_000);
    }
    push("inventory.changed", "ok", "sku", "SKU-9", before);
    push("inventory.published", "ok", "sku", "SKU-9", before - 600 * 1_000_000_000);
    // Shipments: this period 3 of 4 seen by the carrier within 4 h (one
    // only after 6 h), one dispatched an hour ago still waiting; before, 1 of 2.
    for (shipment, delivered_after) in [("SH-1", Some(HOUR_NS)), ("SH-2", Some(2 * HOUR_NS)), ("SH-3", Some(30 * MINUTE_NS)), ("SH-4", Some(6 * HOUR_NS))] {
        push("shipment.dispatched", "ok", "shipment", shipment, this);
        if let Some(after) = delivered_after {
            push("shipment.delivered", "ok", "shipment", shipment, this - after);
        }
    }
    push("shipment.dispatched", "ok", "shipment", "SH-5", HOUR_NS);
    push("shipment.dispatched", "ok", "shipment", "SH-8", before);
    push("shipment.delivered", "ok", "shipment", "SH-8", before - HOUR_NS);
    push("shipment.dispatched", "ok", "shipment", "SH-9", before);
    // Invoices: this period 4 of 5 posted; before, 2 of 2.
    for (invoice, outcome) in [("IN-1", "ok"), ("IN-2", "ok"), ("IN-3", ""), ("IN-4", "ok"), ("IN-5", "failed")] {
        push("invoice.posted", outcome, "invoice", invoice, this);
    }
    push("invoice.posted", "ok", "invoice", "IN-8", before);
    push("invoice.posted", "ok", "invoice", "IN-9", before);
    // A retrying exporter stored the failed invoice twice: read once.
    let copy = events.iter().find(|e| e.key_values == ["IN-5"]).unwrap().clone();
    events.push(copy);
    pages.store.insert("biz_events", &events).await.unwrap();

    pages
        .store
        .insert(
            "alert_history",
            &[
                history("firing", this),
                history("firing", 3 * DAY_NS),
                history("firing", HOUR_NS),
                history("resolved", HOUR_NS / 2),
                history("delivered", HOUR_NS),
                history("firing", before),
            ],
        )
        .await
        .unwrap();
    pages
        .store
        .insert("exception_actions", &[action("a2", "resolve", this), action("a3", "resolve", DAY_NS), action("a3", "comment", DAY_NS), action("b1", "resolve", 20 * DAY_NS)])
        .await
        .unwrap();
}

/// (value, previous) of a KPI as shown.
fn shown(page: &Page, name: &str) -> (String, String) {
    (page.text(&format!("#kpi-{name} .value")), page.text(&format!("#kpi-{name} .previous")))
}

fn change_class(page: &Page, name: &str) -> String {
    page.attrs(&format!("#kpi-{name} .change"), "class").into_iter().next().unwrap_or_else(|| panic!("no change shown for {name}:\n{}", page.body))
}

#[tokio::test]
async fn each_kpi_reads_against_the_period_before() {
    let pages = Pages::start("t_pages_kpis_values", "").await;
    seed(&pages).await;
    let mut browser = pages.browser();

    let page = browser.get("/kpis?period=7d").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(page.text("nav a.current"), "KPIs");
    assert_eq!(page.count(".empty-state"), 0);
    assert!(page.text(".print-hint").contains("Print"));
    assert_eq!(page.attrs("select[name=period] option[selected]", "value"), ["7d"]);

    assert_eq!(shown(&page, "order_exception_rate"), ("60.0%".into(), "25.0%".into()));
    assert_eq!(page.text("#kpi-order_exception_rate .change"), "▲ +35.0 pp (worse)");
    assert_eq!(change_class(&page, "order_exception_rate"), "change bad");

    // Latencies come from a histogram: within 1 % of 300 s and 600 s.
    let json = browser.get("/api/v1/kpis?period=7d").await.json();
    let kpi = |name: &str| json["kpis"].as_array().unwrap().iter().find(|k| k["name"] == name).unwrap_or_else(|| panic!("no {name} in {json}")).clone();
    let latency = kpi("inventory_sync_latency_p95");
    let (value, previous) = (latency["value"].as_f64().unwrap(), latency["previous"].as_f64().unwrap());
    assert!((value - 300.0).abs() <= 3.0 && (previous - 600.0).abs() <= 6.0, "{latency}");
    assert_eq!(latency["unit"], "seconds");
    let duration = waybill_dashboards::page::duration;
    assert_eq!(shown(&page, "inventory_sync_latency_p95"), (duration(value), duration(previous)));
    assert_eq!(change_class(&page, "inventory_sync_latency_p95"), "change good");

    assert_eq!(shown(&page, "shipment_visibility"), ("75.0%".into(), "50.0%".into()));
    assert_eq!(change_class(&page, "shipment_visibility"), "change good");
    assert_eq!(shown(&page, "invoice_posting_success"), ("80.0%".into(), "100.0%".into()));
    assert_eq!(page.text("#kpi-invoice_posting_success .change"), "▼ -20.0 pp (worse)");
    assert_eq!(shown(&page, "integration_incidents"), ("3".into(), "1".into()));
    assert_eq!(change_class(&page, "integration_incidents"), "change bad");
    assert_eq!(shown(&page, "manual_exceptions_handled"), ("2".into(), "0".into()));
    assert_eq!(change_class(&page, "manual_exceptions_handled"), "change neutral");

    // Each KPI has its chart of both periods and its trend.
    assert_eq!(page.count(".kpi svg.bars"), 6);
    assert_eq!(page.count(".kpi .trend svg.sparkline"), 6);

    // The JSON twin: the same numbers, with a trend of one point per day.
    assert_eq!(json["period"], "7d");
    assert!(json["from"].as_str().unwrap() < json["to"].as_str().unwrap(), "{json}");
    for (name, value, previous) in [
        ("order_exception_rate", 0.6, 0.25),
        ("shipment_visibility", 0.75, 0.5),
        ("invoice_posting_success", 0.8, 1.0),
        ("integration_incidents", 3.0, 1.0),
        ("manual_exceptions_handled", 2.0, 0.0),
    ] {
        let kpi = kpi(name);
        assert_eq!((kpi["value"].as_f64(), kpi["previous"].as_f64()), (Some(value), Some(previous)), "{kpi}");
        assert_eq!(kpi["trend"].as_array().unwrap().len(), 7, "{kpi}");
    }
    let incidents: f64 = kpi("integration_incidents")["trend"].as_array().unwrap().iter().filter_map(|v| v.as_f64()).sum();
    assert_eq!(incidents, 3.0);
    let orders = kpi("order_exception_rate");
    let days_with_orders = orders["trend"].as_array().unwrap().iter().filter(|v| !v.is_null()).count();
    assert_eq!(days_with_orders, 2, "orders started on two days of the period: {orders}");

    // One day: only what happened in the last 24 hours, against the day before.
    let day = browser.get("/api/v1/kpis?period=1d").await.json();
    let incidents = day["kpis"].as_array().unwrap().iter().find(|k| k["name"] == "integration_incidents").unwrap();
    assert_eq!((incidents["value"].as_f64(), incidents["previous"].as_f64()), (Some(1.0), Some(0.0)), "{incidents}");
    assert_eq!(incidents["trend"].as_array().unwrap().len(), 24);

    common::drop_database(&pages.store).await;
}

#[tokio::test]
async fn no_data_reads_as_no_data() {
    let pages = Pages::start("t_pages_kpis_empty", "").await;
    let mut browser = pages.browser();
    let page = browser.get("/kpis").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let empty = page.text(".empty-state");
    assert!(empty.contains("4317") && empty.contains("waybill demo"), "{empty}");
    assert_eq!(shown(&page, "order_exception_rate"), ("no data".into(), "no data".into()));
    assert_eq!(shown(&page, "inventory_sync_latency_p95"), ("no data".into(), "no data".into()));
    assert_eq!(shown(&page, "integration_incidents"), ("0".into(), "0".into()));
    assert_eq!(page.count("#kpi-order_exception_rate .change"), 0);

    // A store without the exception audit trail: that KPI only is unknown.
    pages.store.execute("DROP TABLE exception_actions").await.unwrap();
    let page = browser.get("/kpis?period=30d").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(shown(&page, "manual_exceptions_handled"), ("—".into(), "—".into()));
    let json = browser.get("/api/v1/kpis?period=30d").await.json();
    let handled = json["kpis"].as_array().unwrap().iter().find(|k| k["name"] == "manual_exceptions_handled").unwrap();
    assert_eq!((handled["available"].as_bool(), handled["value"].is_null()), (Some(false), true), "{handled}");

    assert_eq!(browser.get("/kpis?period=2d").await.status, StatusCode::BAD_REQUEST);
    assert_eq!(browser.get("/api/v1/kpis?period=2d").await.status, StatusCode::BAD_REQUEST);
    common::drop_database(&pages.store).await;
}
