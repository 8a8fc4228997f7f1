//! The operations board as an operator reads it: counts in flight, stuck
//! and failed by stage and by system, the stuck list oldest first, every
//! filter narrowing both, and the JSON twin with the same numbers.

mod common;

use common::now_ns;

use axum::http::StatusCode;
use common::pages::Pages;
use waybill_store::{TransactionKeyRow, TransactionRow};

const MIN: i64 = 60 * 1_000_000_000;
const HOUR: i64 = 60 * MIN;

fn id(n: u32) -> String {
    format!("{n:032x}")
}

/// A transaction rooted at order `root`, started `started` ago, through
/// `milestones` (name, system, age), with a partner key when given.
struct Tx<'a> {
    n: u32,
    root: &'a str,
    state: &'a str,
    systems: &'a [&'a str],
    milestones: &'a [(&'a str, &'a str, i64, &'a str)],
    overdue: &'a [(&'a str, i64)],
    partner: Option<&'a str>,
    version: u64,
}

fn row(tx: &Tx, now: i64) -> (TransactionRow, Vec<TransactionKeyRow>) {
    let mut kinds = vec!["order".to_owned()];
    let mut values = vec![tx.root.to_owned()];
    if let Some(partner) = tx.partner {
        kinds.push("partner".into());
        values.push(partner.into());
    }
    let started = now - tx.milestones.iter().map(|m| m.2).max().unwrap_or(0);
    let keys = kinds.iter().zip(&values).map(|(k, v)| TransactionKeyRow { value: v.clone(), kind: k.clone(), id: id(tx.n) }).collect();
    let row = TransactionRow {
        id: id(tx.n),
        root_kind: "order".into(),
        root_value: tx.root.into(),
        state: tx.state.into(),
        key_kinds: kinds,
        key_values: values,
        systems: tx.systems.iter().map(|s| s.to_string()).collect(),
        milestone_names: tx.milestones.iter().map(|m| m.0.to_owned()).collect(),
        milestone_systems: tx.milestones.iter().map(|m| m.1.to_owned()).collect(),
        milestone_times_ns: tx.milestones.iter().map(|m| now - m.2).collect(),
        milestone_outcomes: tx.milestones.iter().map(|m| m.3.to_owned()).collect(),
        milestone_trace_ids: tx.milestones.iter().map(|_| "ab".repeat(16)).collect(),
        milestone_span_ids: tx.milestones.iter().enumerate().map(|(i, _)| format!("{:016x}", tx.n as usize * 10 + i)).collect(),
        overdue_milestones: tx.overdue.iter().map(|o| o.0.to_owned()).collect(),
        overdue_due_ns: tx.overdue.iter().map(|o| now - o.1).collect(),
        next_due_ns: 0,
        started_ns: started,
        updated_ns: now - MIN,
        version: tx.version,
    };
    (row, keys)
}

/// Seven transactions: three stuck (due 2 h, 5 h and 10 h ago), one
/// failed, one in flight (stored twice, the newer version counts), one in
/// flight started 10 days ago, one completed.
async fn seed(pages: &Pages, now: i64) {
    let txs = [
        Tx { n: 1, root: "PO-1", state: "stuck", systems: &["portal", "erp"], milestones: &[("order.captured", "portal", 3 * HOUR, "ok"), ("order.accepted", "erp", 170 * MIN, "ok")], overdue: &[("shipment.dispatched", 2 * HOUR)], partner: Some("ACME"), version: 1 },
        Tx {
            n: 2,
            root: "PO-2",
            state: "stuck",
            systems: &["portal", "erp", "warehouse"],
            milestones: &[("order.captured", "portal", 30 * HOUR, "ok"), ("order.accepted", "erp", 29 * HOUR, "ok"), ("shipment.dispatched", "warehouse", 20 * HOUR, "ok")],
            overdue: &[("invoice.posted", 5 * HOUR), ("carrier.delivered", 4 * HOUR)],
            partner: Some("ACME"),
            version: 1,
        },
        Tx { n: 3, root: "PO-3", state: "stuck", systems: &["edi", "erp"], milestones: &[("order.captured", "edi", 11 * HOUR, "ok"), ("order.accepted", "erp", 10 * HOUR + 30 * MIN, "ok")], overdue: &[("shipment.dispatched", 10 * HOUR)], partner: Some("GLOBEX"), version: 1 },
        Tx { n: 4, root: "PO-4", state: "failed", systems: &["portal", "erp"], milestones: &[("order.captured", "portal", 2 * HOUR, "ok"), ("order.accepted", "erp", 100 * MIN, "rejected")], overdue: &[], partner: Some("ACME"), version: 1 },
        Tx { n: 5, root: "PO-5", state: "stuck", systems: &["portal"], milestones: &[("order.captured", "portal", 20 * MIN, "ok")], overdue: &[("order.accepted", 30 * HOUR)], partner: None, version: 1 },
        Tx { n: 5, root: "PO-5", state: "in_flight", systems: &["portal"], milestones: &[("order.captured", "portal", 20 * MIN, "ok")], overdue: &[], partner: None, version: 2 },
        Tx { n: 6, root: "PO-6", state: "in_flight", systems: &["portal"], milestones: &[("order.captured", "portal", 240 * HOUR, "ok")], overdue: &[], partner: None, version: 1 },
        Tx { n: 7, root: "PO-7", state: "completed", systems: &["portal", "erp"], milestones: &[("order.captured", "portal", HOUR, "ok"), ("invoice.posted", "erp", 10 * MIN, "ok")], overdue: &[], partner: None, version: 1 },
    ];
    let (rows, keys): (Vec<_>, Vec<_>) = txs.iter().map(|tx| row(tx, now)).unzip();
    pages.store.insert("transactions", &rows).await.unwrap();
    pages.store.insert("transaction_keys", &keys.concat()).await.unwrap();
}

/// The numbers of a counts table: name → (in flight, stuck, failed).
fn table(page: &common::pages::Page, css: &str) -> Vec<(String, [u64; 3])> {
    let names = page.texts(&format!("{css} tbody tr td:first-child"));
    let number = |class: &str| page.texts(&format!("{css} tbody tr td.{class}")).into_iter().map(|t| t.parse::<u64>().unwrap()).collect::<Vec<_>>();
    let (a, b, c) = (number("in_flight"), number("stuck"), number("failed"));
    names.into_iter().enumerate().map(|(i, name)| (name, [a[i], b[i], c[i]])).collect()
}

fn tiles(page: &common::pages::Page) -> Vec<String> {
    page.texts(".board-tiles .tile")
}

#[tokio::test]
async fn the_board_counts_by_stage_and_system_and_lists_the_stuck_oldest_first() {
    let pages = Pages::start("t_pages_board_counts", "").await;
    let now = now_ns();
    seed(&pages, now).await;
    let mut browser = pages.browser();

    let page = browser.get("/board").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(page.text("nav a.current"), "Board");
    // PO-5's newer version is in flight; PO-6 started before the last 7
    // days; PO-7 is completed.
    assert_eq!(tiles(&page), ["1 in flight", "3 stuck", "1 failed"]);
    let stages = table(&page, "table.by-stage");
    assert!(stages.contains(&("order.accepted".to_owned(), [0, 2, 1])), "{stages:?}");
    assert!(stages.contains(&("shipment.dispatched".to_owned(), [0, 1, 0])), "{stages:?}");
    assert!(stages.contains(&("order.captured".to_owned(), [1, 0, 0])), "{stages:?}");
    assert_eq!(stages[0].0, "order.accepted", "the busiest stage first: {stages:?}");
    let systems = table(&page, "table.by-system");
    assert!(systems.contains(&("erp".to_owned(), [0, 3, 1])), "{systems:?}");
    assert!(systems.contains(&("portal".to_owned(), [1, 2, 1])), "{systems:?}");
    assert!(systems.contains(&("warehouse".to_owned(), [0, 1, 0])), "{systems:?}");

    assert_eq!(page.texts("table.stuck td.root a"), ["PO-3", "PO-2", "PO-1"]);
    assert_eq!(page.attrs("table.stuck td.root a", "href"), [format!("/transactions/{}", id(3)), format!("/transactions/{}", id(2)), format!("/transactions/{}", id(1))]);
    assert_eq!(page.texts("table.stuck td.overdue"), ["shipment.dispatched", "invoice.posted", "shipment.dispatched"]);
    let overdue_for = page.texts("table.stuck td.overdue-for");
    assert!(overdue_for[0].starts_with("10 h") && overdue_for[1].starts_with("5 h") && overdue_for[2].starts_with("2 h"), "{overdue_for:?}");
    assert_eq!(page.texts("table.stuck td.systems")[1], "portal → erp → warehouse");
    // The filters offer what the data has.
    assert!(page.texts("select[name=channel] option").contains(&"edi".to_owned()));
    assert_eq!(page.texts("select[name=partner] option"), ["any", "ACME", "GLOBEX"]);

    let json = browser.get("/api/v1/board").await.json();
    assert_eq!(json["totals"], serde_json::json!({"in_flight": 1, "stuck": 3, "failed": 1}));
    let stuck: Vec<&str> = json["stuck"].as_array().unwrap().iter().map(|s| s["root"]["value"].as_str().unwrap()).collect();
    assert_eq!(stuck, ["PO-3", "PO-2", "PO-1"]);
    assert_eq!(json["stuck"][0]["id"], id(3));
    assert_eq!(json["stuck"][0]["overdue_milestone"], "shipment.dispatched");
    assert_eq!(json["by_stage"][0], serde_json::json!({"stage": "order.accepted", "in_flight": 0, "stuck": 2, "failed": 1}));
    common::drop_database(&pages.store).await;
}

#[tokio::test]
async fn every_filter_narrows_the_counts_and_the_stuck_list() {
    let pages = Pages::start("t_pages_board_filters", "").await;
    let now = now_ns();
    seed(&pages, now).await;
    let mut browser = pages.browser();

    // Channel: the first system. Partner: the partner key.
    let page = browser.get("/board?channel=portal&partner=ACME").await;
    assert_eq!(tiles(&page), ["0 in flight", "2 stuck", "1 failed"]);
    assert_eq!(page.texts("table.stuck td.root a"), ["PO-2", "PO-1"]);
    assert_eq!(page.attrs("select[name=partner] option[selected]", "value"), ["ACME"]);

    let page = browser.get("/board?channel=edi").await;
    assert_eq!(tiles(&page), ["0 in flight", "1 stuck", "0 failed"]);
    assert_eq!(page.texts("table.stuck td.root a"), ["PO-3"]);

    // System: any system the transaction passed through.
    let page = browser.get("/board?system=warehouse").await;
    assert_eq!(tiles(&page), ["0 in flight", "1 stuck", "0 failed"]);
    assert_eq!(table(&page, "table.by-system").len(), 3, "portal, erp and warehouse of PO-2");

    // State: failed only; no stuck list.
    let page = browser.get("/board?state=failed").await;
    assert_eq!(tiles(&page), ["0 in flight", "0 stuck", "1 failed"]);
    assert_eq!(page.count("table.stuck"), 0);
    assert_eq!(page.count(".stuck-panel"), 0);

    // Time range: from 12 days ago takes in PO-6; to 4 hours ago leaves
    // out those started later (PO-1, PO-4, PO-5).
    let from = humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_nanos((now - 288 * HOUR) as u64)).to_string();
    let to = humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_nanos((now - 4 * HOUR) as u64)).to_string();
    let page = browser.get(&format!("/board?from={}", common::encode(&from[..16]))).await;
    assert_eq!(tiles(&page), ["2 in flight", "3 stuck", "1 failed"]);
    let page = browser.get(&format!("/board?from={}&to={}", common::encode(&from[..16]), common::encode(&to[..16]))).await;
    assert_eq!(tiles(&page), ["1 in flight", "2 stuck", "0 failed"]);
    assert_eq!(page.texts("table.stuck td.root a"), ["PO-3", "PO-2"]);
    let json = browser.get(&format!("/api/v1/board?from={}&to={}", common::encode(&from), common::encode(&to))).await.json();
    assert_eq!(json["totals"], serde_json::json!({"in_flight": 1, "stuck": 2, "failed": 0}));

    // A partner nobody has: an empty board that says so.
    let page = browser.get("/board?partner=NOBODY%27%20OR%201%3D1").await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(tiles(&page), ["0 in flight", "0 stuck", "0 failed"]);
    assert!(page.text(".empty-state").contains("matches the filters"), "{}", page.body);

    let page = browser.get("/board?state=done").await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST);
    assert!(page.text(".error-message").contains("in_flight, stuck or failed"));
    let page = browser.get("/api/v1/board?from=yesterday").await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST);
    assert!(page.json()["error"].as_str().unwrap().contains("from"));
    common::drop_database(&pages.store).await;
}

#[tokio::test]
async fn an_empty_board_says_how_to_get_data() {
    let pages = Pages::start("t_pages_board_empty", "").await;
    let mut browser = pages.browser();
    let page = browser.get("/board").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let empty = page.text(".empty-state");
    assert!(empty.contains("4317") && empty.contains("waybill demo"), "{empty}");
    assert_eq!(page.text(".empty-stuck"), "No stuck transaction matches the filters.");
    common::drop_database(&pages.store).await;
}
