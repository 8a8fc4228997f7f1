//! Search and the transaction page as people meet them: a key that finds one
//! transaction leads straight to it, one that finds several lists them; the
//! page shows the journey per system, the key graph, the spans and logs
//! behind each milestone and the alerts that involve it; unknown ids, markup
//! in keys and the JSON twin.

mod common;

use common::now_ns;
use common::pages::rules_file;


use axum::http::StatusCode;
use common::pages::Pages;
use waybill_alerts::AlertsConfig;
use waybill_store::{EdgeRow, LogRow, SpanRow, TransactionKeyRow, TransactionRow};

const SECOND: i64 = 1_000_000_000;
const MINUTE: i64 = 60 * SECOND;
const HOUR: i64 = 60 * MINUTE;

const TRACE_PORTAL: &str = "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1";
const TRACE_ERP: &str = "b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2";
const TRACE_WMS: &str = "c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3";

fn id_of(kind: &str, value: &str) -> String {
    waybill_lineage::resolve::transaction_id(&(kind.to_owned(), value.to_owned()))
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Order PO-1001, captured three days ago at the portal, confirmed by a
/// mailer that sends no trace context, accepted by the ERP two minutes
/// later; the warehouse failed to dispatch it five hours in, so it is
/// failed, and its dispatch (due 24 h after acceptance) is overdue.
fn failed_order(t0: i64) -> TransactionRow {
    let accepted = t0 + 2 * MINUTE;
    TransactionRow {
        id: id_of("order", "PO-1001"),
        root_kind: "order".into(),
        root_value: "PO-1001".into(),
        state: "failed".into(),
        key_kinds: strings(&["order", "sales_order", "shipment", "shipment", "sku"]),
        key_values: strings(&["PO-1001", "SO-9001", "SH-5001", "SH-5002", "SKU-42"]),
        systems: strings(&["portal", "mailer", "middleware", "erp", "warehouse"]),
        milestone_names: strings(&["order.captured", "order.confirmation_sent", "order.accepted", "shipment.dispatched"]),
        milestone_systems: strings(&["portal", "mailer", "erp", "warehouse"]),
        milestone_times_ns: vec![t0, t0 + 30 * SECOND, accepted, t0 + 5 * HOUR],
        milestone_outcomes: strings(&["ok", "ok", "ok", "failed"]),
        // The mailer's log record came without trace context: the resolver
        // gives it a trace id of its own, which the API shows as empty.
        milestone_trace_ids: strings(&[TRACE_PORTAL, "~0000000000000000000000000000beef", TRACE_ERP, TRACE_WMS]),
        milestone_span_ids: strings(&["a100000000000001", "", "b200000000000001", "c300000000000001"]),
        overdue_milestones: strings(&["shipment.dispatched"]),
        overdue_due_ns: vec![accepted + 24 * HOUR],
        next_due_ns: 0,
        started_ns: t0,
        updated_ns: t0 + 5 * HOUR,
        version: 7,
    }
}

/// Order PO-1002 of the same SKU, captured and then stuck: its acceptance
/// is overdue.
fn stuck_order(t0: i64) -> TransactionRow {
    TransactionRow {
        id: id_of("order", "PO-1002"),
        root_kind: "order".into(),
        root_value: "PO-1002".into(),
        state: "stuck".into(),
        key_kinds: strings(&["order", "sales_order", "sku"]),
        key_values: strings(&["PO-1002", "SO-9002", "SKU-42"]),
        systems: strings(&["portal"]),
        milestone_names: strings(&["order.captured"]),
        milestone_systems: strings(&["portal"]),
        milestone_times_ns: vec![t0 + HOUR],
        milestone_outcomes: strings(&["ok"]),
        milestone_trace_ids: strings(&["d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4"]),
        milestone_span_ids: strings(&["d400000000000001"]),
        overdue_milestones: strings(&["order.accepted"]),
        overdue_due_ns: vec![t0 + HOUR + 15 * MINUTE],
        next_due_ns: 0,
        started_ns: t0 + HOUR,
        updated_ns: t0 + HOUR,
        version: 3,
    }
}

fn key_rows(row: &TransactionRow) -> Vec<TransactionKeyRow> {
    row.key_kinds.iter().zip(&row.key_values).map(|(kind, value)| TransactionKeyRow { value: value.clone(), kind: kind.clone(), id: row.id.clone() }).collect()
}

/// Both directions of each link, as the resolver stores them.
fn edges(links: &[(&str, &str, &str, &str)]) -> Vec<EdgeRow> {
    links
        .iter()
        .flat_map(|(kind, value, other_kind, other_value)| {
            [
                EdgeRow { kind: kind.to_string(), value: value.to_string(), down: true, other_kind: other_kind.to_string(), other_value: other_value.to_string() },
                EdgeRow { kind: other_kind.to_string(), value: other_value.to_string(), down: false, other_kind: kind.to_string(), other_value: value.to_string() },
            ]
        })
        .collect()
}

/// A span of `trace`; an error span says the carrier refused.
#[allow(clippy::too_many_arguments)]
fn span(trace: &str, id: &str, parent: &str, service: &str, name: &str, at: i64, duration_ns: u64, error: bool) -> SpanRow {
    SpanRow {
        timestamp_ns: at,
        trace_id: trace.into(),
        span_id: id.into(),
        parent_span_id: parent.into(),
        span_name: name.into(),
        span_kind: if parent.is_empty() { "Server" } else { "Internal" }.into(),
        service_name: service.into(),
        resource_attributes: vec![("service.name".into(), service.into())],
        duration_ns,
        status_code: if error { "Error" } else { "Ok" }.into(),
        status_message: if error { "carrier refused the booking".into() } else { String::new() },
        events_timestamp_ns: vec![],
        events_name: vec![],
        events_attributes: vec![],
        links_trace_id: vec![],
        links_span_id: vec![],
        links_trace_state: vec![],
        links_attributes: vec![],
        ..common::rows::span(0)
    }
}

fn spans(t0: i64) -> Vec<SpanRow> {
    let wms = t0 + 5 * HOUR;
    vec![
        span(TRACE_PORTAL, "a100000000000001", "", "b2b-portal", "POST /orders", t0, 120_000_000, false),
        span(TRACE_PORTAL, "a100000000000002", "a100000000000001", "b2b-portal", "validate order", t0 + 5_000_000, 20_000_000, false),
        span(TRACE_ERP, "b200000000000001", "", "sap-erp", "BAPI_SALESORDER_CREATEFROMDAT2", t0 + 2 * MINUTE, 900_000_000, false),
        span(TRACE_ERP, "b200000000000002", "b200000000000001", "sap-erp", "credit check", t0 + 2 * MINUTE + 100_000_000, 300_000_000, false),
        span(TRACE_WMS, "c300000000000001", "", "warehouse", "wms.shipment.dispatch", wms, 2_000_000_000, true),
        span(TRACE_WMS, "c300000000000002", "c300000000000001", "warehouse", "carrier.book", wms + 200_000_000, 1_500_000_000, true),
        span(TRACE_WMS, "c300000000000003", "c300000000000002", "warehouse", "HTTP POST carrier-api", wms + 250_000_000, 1_000_000_000, true),
    ]
}

fn log(trace: &str, span_id: &str, service: &str, severity: &str, body: &str, at: i64) -> LogRow {
    LogRow { timestamp_ns: at, trace_id: trace.into(), span_id: span_id.into(), severity_text: severity.into(), service_name: service.into(), body: body.into(), ..common::rows::log(0) }
}

fn logs(t0: i64) -> Vec<LogRow> {
    let wms = t0 + 5 * HOUR;
    vec![
        log(TRACE_WMS, "c300000000000002", "warehouse", "ERROR", "carrier API answered 422: no pickup slot for SH-5001", wms + 1_300_000_000),
        log(TRACE_WMS, "c300000000000001", "warehouse", "WARN", "dispatch of SH-5001 and SH-5002 failed, will retry", wms + 1_900_000_000),
        log(TRACE_PORTAL, "a100000000000001", "b2b-portal", "INFO", "order PO-1001 captured", t0 + 1_000_000),
    ]
}

/// The two orders with their keys, key graph, spans and logs.
async fn seed(pages: &Pages, t0: i64) {
    let (failed, stuck) = (failed_order(t0), stuck_order(t0));
    pages.store.insert("transactions", &[failed.clone(), stuck.clone()]).await.unwrap();
    pages.store.insert("transaction_keys", &[key_rows(&failed), key_rows(&stuck)].concat()).await.unwrap();
    let links = edges(&[
        ("order", "PO-1001", "sales_order", "SO-9001"),
        ("sales_order", "SO-9001", "shipment", "SH-5001"),
        ("sales_order", "SO-9001", "shipment", "SH-5002"),
        ("order", "PO-1002", "sales_order", "SO-9002"),
    ]);
    pages.store.insert("biz_edges", &links).await.unwrap();
    pages.store.insert_spans(&spans(t0)).await.unwrap();
    pages.store.insert_logs(&logs(t0)).await.unwrap();
}

async fn start(database: &str) -> (Pages, i64) {
    let pages = Pages::start(database, "").await;
    let t0 = now_ns() - 3 * 24 * HOUR;
    seed(&pages, t0).await;
    (pages, t0)
}

#[tokio::test]
async fn a_key_of_one_transaction_leads_straight_to_it() {
    let (pages, _) = start("t_pages_tx_redirect").await;
    let mut browser = pages.browser();
    let found = browser.get("/search?q=SO-9001").await;
    assert_eq!(found.status, StatusCode::SEE_OTHER, "{}", found.body);
    let location = found.location.clone().unwrap();
    assert_eq!(location, format!("/transactions/{}", id_of("order", "PO-1001")));
    let page = browser.get(&location).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(page.text(".root-value"), "PO-1001");

    // Surrounding spaces do not matter; an empty search goes back home.
    let spaced = browser.get("/search?q=%20SH-5002%20").await;
    assert_eq!(spaced.location.as_deref(), Some(location.as_str()));
    let empty = browser.get("/search?q=").await;
    assert_eq!((empty.status, empty.location.as_deref()), (StatusCode::SEE_OTHER, Some("/")));
    common::drop_database(&pages.store).await;
}

#[tokio::test]
async fn a_key_of_several_transactions_lists_them_and_an_unknown_key_says_what_to_check() {
    let (pages, _) = start("t_pages_tx_search").await;
    let mut browser = pages.browser();
    let page = browser.get("/search?q=SKU-42").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    // Updated last first: the failed order was updated after the stuck one.
    assert_eq!(page.texts("table.search-results td.root"), ["order PO-1001", "order PO-1002"]);
    assert_eq!(page.attrs("table.search-results td.root a", "href"), [format!("/transactions/{}", id_of("order", "PO-1001")), format!("/transactions/{}", id_of("order", "PO-1002"))]);
    assert_eq!(page.texts("table.search-results .badge"), ["failed", "stuck"]);
    assert_eq!(page.attrs("table.search-results .badge", "class"), ["badge state-failed", "badge state-stuck"]);
    assert_eq!(page.texts("table.search-results td.last-milestone"), ["shipment.dispatched (warehouse)", "order.captured (portal)"]);
    assert_eq!(page.texts("table.search-results td.systems")[0], "portal, mailer, middleware, erp, warehouse");
    assert_eq!(page.attrs(".big-search input[name=q]", "value"), ["SKU-42"]);

    let json = browser.get("/api/v1/search?q=SKU-42").await.json();
    assert_eq!(json["query"], "SKU-42");
    let roots: Vec<&str> = json["transactions"].as_array().unwrap().iter().map(|t| t["root"]["value"].as_str().unwrap()).collect();
    assert_eq!(roots, ["PO-1001", "PO-1002"]);

    let none = browser.get("/search?q=PO-9999").await;
    assert_eq!(none.status, StatusCode::OK);
    assert_eq!(none.text(".search-none .searched"), "PO-9999");
    let hints = none.text(".search-none");
    assert!(hints.contains("spelling") && hints.contains("biz.key.<kind>") && hints.contains("resolver"), "{hints}");
    let json = browser.get("/api/v1/search?q=PO-9999").await.json();
    assert_eq!(json["transactions"].as_array().map(Vec::len), Some(0));
    common::drop_database(&pages.store).await;
}

#[tokio::test]
async fn the_transaction_page_shows_the_journey_keys_and_records() {
    let (pages, t0) = start("t_pages_tx_page").await;
    let mut browser = pages.browser();
    let page = browser.get(&format!("/transactions/{}", id_of("order", "PO-1001"))).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);

    // Header: root, state, every key (each a search), times.
    assert_eq!(page.text(".tx-root .badge"), "failed");
    assert!(page.attrs(".tx-root .badge", "class")[0].contains("state-failed"));
    assert_eq!(page.texts(".tx-facts .keys a.key"), ["order PO-1001", "sales_order SO-9001", "shipment SH-5001", "shipment SH-5002", "sku SKU-42"]);
    assert_eq!(page.attrs(".tx-facts .keys a.key", "href")[1], "/search?q=SO-9001");
    assert_eq!(page.text(".tx-facts .elapsed-total"), "5 h 0 min");
    assert_eq!(page.text(".tx-facts .started"), waybill_dashboards::page::time(t0));

    // Swimlanes: one lane per system in journey order, and the awaited step.
    assert_eq!(page.attrs("svg.journey g.lane", "data-system"), ["portal", "mailer", "middleware", "erp", "warehouse", "awaited"]);
    assert_eq!(page.attrs("svg.journey g.milestone", "data-milestone"), ["order.captured", "order.confirmation_sent", "order.accepted", "shipment.dispatched", "shipment.dispatched"]);
    assert_eq!(page.attrs("svg.journey g.milestone.failed", "data-milestone"), ["shipment.dispatched"]);
    assert_eq!(page.texts("svg.journey text.elapsed"), ["+30 s", "+1 min 30 s", "+4 h 58 min"]);
    let overdue = page.text("svg.journey g.milestone.overdue text.due");
    assert_eq!(overdue, format!("overdue since {}", waybill_dashboards::page::time(t0 + 2 * MINUTE + 24 * HOUR)));

    // The same as a table, in time order with the time since the previous.
    assert_eq!(page.texts("table.milestones tr.milestone td.name"), ["order.captured", "order.confirmation_sent", "order.accepted", "shipment.dispatched", "shipment.dispatched"]);
    assert_eq!(page.texts("table.milestones tr.milestone td.elapsed"), ["", "30 s", "1 min 30 s", "4 h 58 min", ""]);
    assert_eq!(page.texts("table.milestones tr.milestone td.system"), ["portal", "mailer", "erp", "warehouse", "awaited"]);
    assert_eq!(page.texts("table.milestones tr.failed td.outcome"), ["failed"]);
    assert_eq!(page.texts("table.milestones tr.overdue td.name"), ["shipment.dispatched"]);
    assert!(page.text("table.milestones tr.overdue td.outcome").starts_with("overdue since"));
    assert!(page.text(".overdue-list").contains("shipment.dispatched"));

    // The key graph: columns by kind, keys linking to their search, the
    // stored links among them (not PO-1002's).
    assert_eq!(page.texts("svg.key-graph text.kind"), ["order", "sales_order", "shipment", "sku"]);
    assert_eq!(page.texts("svg.key-graph a.key text"), ["PO-1001", "SO-9001", "SH-5001", "SH-5002", "SKU-42"]);
    assert_eq!(page.attrs("svg.key-graph a.key.root", "href"), ["/search?q=PO-1001"]);
    let mut drawn: Vec<(String, String)> = page.attrs("svg.key-graph path.edge", "data-from").into_iter().zip(page.attrs("svg.key-graph path.edge", "data-to")).collect();
    drawn.sort();
    assert_eq!(drawn, [("PO-1001", "SO-9001"), ("SO-9001", "SH-5001"), ("SO-9001", "SH-5002")].map(|(a, b)| (a.to_owned(), b.to_owned())));

    // Records: a section per trace naming its milestones, spans in tree
    // order with their depth, errors in red, logs below.
    assert_eq!(page.attrs("section.trace", "data-trace-id"), [TRACE_PORTAL, TRACE_ERP, TRACE_WMS]);
    let wms = format!("#trace-{TRACE_WMS}");
    assert_eq!(page.text(&format!("{wms} .trace-milestones")), "shipment.dispatched");
    assert_eq!(page.attrs(&format!("{wms} svg.waterfall g.span"), "data-span-id"), ["c300000000000001", "c300000000000002", "c300000000000003"]);
    assert_eq!(page.attrs(&format!("{wms} svg.waterfall g.span"), "data-depth"), ["0", "1", "2"]);
    assert_eq!(page.count(&format!("{wms} svg.waterfall g.span.error")), 3);
    assert_eq!(page.texts(&format!("{wms} svg.waterfall text.span-name")), ["warehouse: wms.shipment.dispatch", "warehouse: carrier.book", "warehouse: HTTP POST carrier-api"]);
    assert_eq!(page.texts(&format!("{wms} table.logs td.severity")), ["ERROR", "WARN"]);
    assert!(page.text(&format!("{wms} table.logs td.body")).contains("no pickup slot"));
    let erp = format!("#trace-{TRACE_ERP}");
    assert_eq!(page.text(&format!("{erp} .trace-milestones")), "order.accepted");
    assert_eq!(page.texts(&format!("{erp} svg.waterfall text.span-name")), ["sap-erp: BAPI_SALESORDER_CREATEFROMDAT2", "sap-erp: credit check"]);
    assert_eq!(page.count(&format!("{erp} svg.waterfall g.span.error")), 0);
    assert_eq!(page.count(&format!("{erp} table.logs")), 0);
    assert_eq!(page.texts(&format!("#trace-{TRACE_PORTAL} table.logs td.body")), ["order PO-1001 captured"]);
    let untraced = page.text(".untraced .untraced-milestone");
    assert!(untraced.contains("order.confirmation_sent") && untraced.contains("sent without trace context"), "{untraced}");
    assert_eq!(page.count(".cut"), 0, "nothing is cut for a small transaction");
    common::drop_database(&pages.store).await;
}

#[tokio::test]
async fn the_json_twin_has_the_same_data() {
    let (pages, _) = start("t_pages_tx_json").await;
    let mut browser = pages.browser();
    let id = id_of("order", "PO-1001");
    let detail = browser.get(&format!("/api/v1/transactions/{id}/detail")).await;
    assert_eq!(detail.status, StatusCode::OK, "{}", detail.body);
    assert!(detail.content_type.starts_with("application/json"));
    let json = detail.json();
    let plain = browser.get(&format!("/api/v1/transactions/{id}")).await.json();
    assert_eq!(json["transaction"], plain, "the transaction is the API's");
    assert_eq!(json["transaction"]["milestones"][1]["trace_id"], "");
    let edges: Vec<(String, String)> = json["edges"].as_array().unwrap().iter().map(|e| (e["from"]["value"].as_str().unwrap().to_owned(), e["to"]["value"].as_str().unwrap().to_owned())).collect();
    assert_eq!(edges.len(), 3, "{edges:?}");
    assert!(edges.contains(&("SO-9001".into(), "SH-5002".into())));
    let traces = json["traces"].as_array().unwrap();
    let ids: Vec<&str> = traces.iter().map(|t| t["trace_id"].as_str().unwrap()).collect();
    assert_eq!(ids, [TRACE_PORTAL, TRACE_ERP, TRACE_WMS]);
    let wms = &traces[2];
    assert_eq!(wms["milestones"], serde_json::json!(["shipment.dispatched"]));
    let spans: Vec<(&str, u64, &str)> = wms["spans"].as_array().unwrap().iter().map(|s| (s["span_id"].as_str().unwrap(), s["depth"].as_u64().unwrap(), s["status_code"].as_str().unwrap())).collect();
    assert_eq!(spans, [("c300000000000001", 0, "Error"), ("c300000000000002", 1, "Error"), ("c300000000000003", 2, "Error")]);
    assert_eq!(wms["spans"][0]["duration_ns"], 2_000_000_000u64);
    assert_eq!(wms["logs"].as_array().map(Vec::len), Some(2));
    assert_eq!(wms["logs"][0]["severity"], "ERROR");
    assert_eq!(wms["spans_truncated"], false);
    assert_eq!(json["alerts"], serde_json::json!([]));
    assert_eq!(json["truncated"]["traces_not_shown"], 0);

    let missing = browser.get("/api/v1/transactions/nope/detail").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.json()["error"].as_str().unwrap().contains("no transaction"));
    common::drop_database(&pages.store).await;
}

#[tokio::test]
async fn an_unknown_id_is_a_404_that_leads_to_search() {
    let pages = Pages::start("t_pages_tx_missing", "").await;
    let mut browser = pages.browser();
    let page = browser.get("/transactions/0123456789abcdef0123456789abcdef").await;
    assert_eq!(page.status, StatusCode::NOT_FOUND);
    assert_eq!(page.text("h1"), "No such transaction");
    assert_eq!(page.text(".not-found .missing-id"), "0123456789abcdef0123456789abcdef");
    assert!(page.attrs(".not-found a", "href").contains(&"/search".to_owned()));
    assert_eq!(page.count(".not-found form[action='/search'] input[name=q]"), 1);
    common::drop_database(&pages.store).await;
}

#[tokio::test]
async fn markup_in_an_order_id_is_shown_as_text() {
    let pages = Pages::start("t_pages_tx_markup", "").await;
    let t0 = now_ns() - 2 * HOUR;
    let evil = "PO-<script>alert(1)</script>";
    let row = TransactionRow {
        id: id_of("order", evil),
        root_kind: "order".into(),
        root_value: evil.into(),
        key_kinds: strings(&["order", "sales_order"]),
        key_values: vec![evil.into(), "SO-\"><img src=x onerror=alert(2)>".into()],
        systems: strings(&["<b>portal</b>"]),
        milestone_names: strings(&["<i>order.captured</i>"]),
        milestone_systems: strings(&["<b>portal</b>"]),
        overdue_milestones: strings(&["<u>order.accepted</u>"]),
        overdue_due_ns: vec![t0 + MINUTE],
        state: "stuck".into(),
        ..stuck_order(t0)
    };
    pages.store.insert("transactions", std::slice::from_ref(&row)).await.unwrap();
    pages.store.insert("transaction_keys", &key_rows(&row)).await.unwrap();
    pages.store.insert("biz_edges", &edges(&[("order", evil, "sales_order", "SO-\"><img src=x onerror=alert(2)>")])).await.unwrap();
    let mut browser = pages.browser();

    let found = browser.get(&format!("/search?q={}", waybill_dashboards::page::url_encode(evil))).await;
    let location = found.location.clone().unwrap_or_else(|| panic!("{}", found.body));
    let page = browser.get(&location).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(page.count("script"), 0, "{}", page.body);
    assert_eq!(page.count("img, b, i, u"), 0, "{}", page.body);
    assert_eq!(page.text(".root-value"), evil);
    assert_eq!(page.text("h1"), format!("order {evil}"));
    assert_eq!(page.texts("svg.key-graph a.key title")[0], format!("order: {evil}"));
    assert_eq!(page.attrs("svg.journey g.lane", "data-system"), ["<b>portal</b>", "awaited"]);
    assert_eq!(page.texts("table.milestones td.name")[0], "<i>order.captured</i>");

    // Not found, the searched key is shown as text too.
    let none = browser.get(&format!("/search?q={}", waybill_dashboards::page::url_encode("<script>x</script>"))).await;
    assert_eq!(none.count("script"), 0);
    assert_eq!(none.text(".searched"), "<script>x</script>");
    common::drop_database(&pages.store).await;
}

#[tokio::test]
async fn the_alerts_that_involve_a_transaction_are_linked() {
    let database = "t_pages_tx_alerts";
    let rules = "rules:\n  - { name: stuck_orders, sli: { kind: overdue }, window: 0s, group_by: [key:order], above: 0 }\n";
    let config = AlertsConfig { rules_file: Some(rules_file(database, rules)), ..AlertsConfig::default() };
    let pages = Pages::start_with(database, "", config).await;
    let t0 = now_ns() - 3 * 24 * HOUR;
    seed(&pages, t0).await;
    pages.alerts.evaluate(now_ns()).await.unwrap();
    let mut browser = pages.browser();

    let stuck = browser.get(&format!("/transactions/{}", id_of("order", "PO-1002"))).await;
    assert_eq!(stuck.status, StatusCode::OK, "{}", stuck.body);
    assert_eq!(stuck.attrs(".tx-alerts li.alert a", "href"), ["/sla#rule-stuck_orders"]);
    assert!(stuck.text(".tx-alerts li.alert").contains("PO-1002"));
    let json = browser.get(&format!("/api/v1/transactions/{}/detail", id_of("order", "PO-1002"))).await.json();
    assert_eq!(json["alerts"][0]["rule"], "stuck_orders");

    // The failed order is not stuck: no alert names it.
    let failed = browser.get(&format!("/transactions/{}", id_of("order", "PO-1001"))).await;
    assert_eq!(failed.count(".tx-alerts"), 0);
    common::drop_database(&pages.store).await;
}
