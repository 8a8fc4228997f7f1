//! Every page in a real browser: `waybill serve` with the demo workload
//! (`waybill demo`, sent over OTLP by the OpenTelemetry SDK), each page
//! loaded in headless Chromium (Debian's `chromium`). Checks what a person
//! sees (the journey of a known order, a stuck order on the board and in
//! the exception queue, a rule on the SLA page, the flows, a KPI value),
//! that the browser logs no console errors, and saves a screenshot of each
//! page to target/browser-screenshots/.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::process::{waybill, which, work_dir};
use common::service::Service;
use scraper::{Html, Selector};
use serde_json::Value;

/// A page as Chromium rendered it.
struct Loaded {
    html: Html,
    /// What the page logged to the console, errors included.
    console: Vec<String>,
}

impl Loaded {
    fn texts(&self, css: &str) -> Vec<String> {
        let selector = Selector::parse(css).unwrap();
        self.html.select(&selector).map(|e| e.text().collect::<Vec<_>>().join(" ").split_whitespace().collect::<Vec<_>>().join(" ")).collect()
    }
}

fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().join("browser-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs headless Chromium once on `url` with `action` (`--dump-dom` or
/// `--screenshot=...`): its standard output and what it logged.
fn chromium(url: &str, action: &str, profile: &Path) -> (String, String) {
    let output = std::process::Command::new(which("chromium"))
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1400,1800",
            "--virtual-time-budget=3000",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(action)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .expect("run chromium");
    assert!(output.status.success(), "chromium failed on {url}: {}", String::from_utf8_lossy(&output.stderr));
    (String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned())
}

/// Loads `path` of the service in Chromium, saving a screenshot as `name`.
async fn load(web: u16, path: &str, name: &str) -> Loaded {
    let url = format!("http://127.0.0.1:{web}{path}");
    let profile = work_dir(&format!("browser-profile-{name}"));
    let shot = screenshots().join(format!("{name}.png"));
    let (dom, logged) = tokio::task::spawn_blocking({
        let (url, profile, shot) = (url.clone(), profile.clone(), shot.clone());
        move || {
            let (dom, logged) = chromium(&url, "--dump-dom", &profile);
            chromium(&url, &format!("--screenshot={}", shot.display()), &profile);
            (dom, logged)
        }
    })
    .await
    .unwrap();
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 10_000, "the screenshot of {path} is missing or blank ({size} bytes)");
    let console = logged.lines().filter(|line| line.contains(":CONSOLE")).map(str::to_owned).collect();
    Loaded { html: Html::parse_document(&dom), console }
}

async fn api(web: u16, path: &str) -> Value {
    let response = common::http(std::net::SocketAddr::from(([127, 0, 0, 1], web)), "GET", path, &[], b"").await;
    assert_eq!(response.status, 200, "{path}: {}", response.text());
    serde_json::from_slice(&response.body).unwrap()
}

/// Polls `path` until `done` holds (90 s at most).
async fn api_when(web: u16, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let body = api(web, path).await;
        if done(&body) {
            return body;
        }
        assert!(start.elapsed() < Duration::from_secs(90), "{path} never got there; last: {body:#}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

const RULES: &str = "
interval: 1s
rules:
  - name: order_acceptance
    sli: { kind: ratio, numerator: order.accepted, denominator: order.captured }
    window: 1h
    below: 0.95
    severity: critical
    annotations: { runbook_url: https://runbooks.example.com/waybill/order-acceptance }
  - name: overdue_orders
    sli: { kind: overdue }
    window: 0s
    above: 0
";

#[tokio::test]
async fn every_page_shows_the_demo_workload_in_a_real_browser_without_console_errors() {
    let dir = work_dir("browser");
    std::fs::write(dir.join("rules.yaml"), RULES).unwrap();
    std::fs::write(dir.join("waybill.yaml"), "alerts:\n  rules_file: rules.yaml\n").unwrap();
    let service = Service::start_in(dir.clone()).await;
    let (web, otlp) = (service.http.port(), service.otlp.port());

    // Before any data: the start page tells a newcomer what to do.
    let empty = load(web, "/", "start-empty").await;
    assert!(empty.texts(".empty-state").concat().contains("waybill demo"), "no empty state");

    let mut demo = waybill(&dir);
    demo.args(["demo", "--endpoint", &format!("http://127.0.0.1:{otlp}"), "--duration", "12s", "--orders-per-second", "4", "--seed", "7"]);
    let output = tokio::task::spawn_blocking(move || demo.output().unwrap()).await.unwrap();
    assert!(output.status.success(), "the demo failed: {}", common::process::text(&output));

    // A stuck order (the demo backdates a few past their deadline), and an
    // order that went through capture, acceptance and shipment.
    let stuck = api_when(web, "/api/v1/transactions?state=stuck", |b| b["transactions"].as_array().is_some_and(|t| !t.is_empty())).await;
    let stuck_order = stuck["transactions"][0]["root"]["value"].as_str().unwrap().to_owned();
    let completed = api_when(web, "/api/v1/transactions?state=completed&limit=100", |b| {
        b["transactions"].as_array().is_some_and(|t| t.iter().any(|t| t["milestones"].as_array().is_some_and(|m| m.len() >= 3)))
    })
    .await;
    let journey = completed["transactions"].as_array().unwrap().iter().find(|t| t["milestones"].as_array().unwrap().len() >= 3).unwrap().clone();
    let order = journey["root"]["value"].as_str().unwrap().to_owned();
    let sales_order = journey["keys"].as_array().unwrap().iter().find(|k| k["kind"] == "sales_order").unwrap()["value"].as_str().unwrap().to_owned();

    let mut console = Vec::new();
    let mut check = |page: &str, loaded: &Loaded| console.extend(loaded.console.iter().map(|line| format!("{page}: {line}")));

    let home = load(web, "/", "start").await;
    check("/", &home);
    let stuck_tile = home.texts(".tile.state-stuck .count");
    assert!(stuck_tile.first().and_then(|c| c.parse::<u64>().ok()).is_some_and(|n| n >= 1), "start page stuck count: {stuck_tile:?}");

    // Searching the sales order opens the order's journey.
    let page = load(web, &format!("/search?q={sales_order}"), "transaction").await;
    check("/transactions", &page);
    assert_eq!(page.texts(".tx-root .root-value"), [order.clone()], "the searched sales order opens its order");
    let milestones = page.texts("table.milestones tr.milestone td.name");
    assert!(
        milestones.starts_with(&["order.captured".to_owned(), "order.accepted".to_owned()]),
        "journey of {order} in time order: {milestones:?}"
    );
    let systems = page.texts("table.milestones tr.milestone td.system");
    assert!(systems.contains(&"portal".to_owned()) && systems.contains(&"erp".to_owned()), "{systems:?}");
    assert!(!page.texts(".journey-chart svg").is_empty(), "the journey chart is drawn");

    let board = load(web, "/board", "board").await;
    check("/board", &board);
    assert!(board.texts(BOARD_STUCK_ROWS).iter().any(|row| row.contains(&stuck_order)), "{stuck_order} on the board: {:?}", board.texts(BOARD_STUCK_ROWS));

    let exceptions = load(web, "/exceptions", "exceptions").await;
    check("/exceptions", &exceptions);
    assert!(exceptions.texts(EXCEPTION_ROWS).iter().any(|row| row.contains(&stuck_order)), "{stuck_order} in the exception queue");

    // The stuck order as a work item: its overdue step and what an
    // operator can do (sign-in is off, so everyone may).
    let stuck_id = stuck["transactions"][0]["id"].as_str().unwrap().to_owned();
    let item = load(web, &format!("/exceptions/{stuck_id}"), "exception").await;
    check("/exceptions/ID", &item);
    assert!(item.texts(".step").concat().contains("order.accepted"), "the overdue step: {:?}", item.texts(".step"));
    for action in ["acknowledge", "assign", "comment", "resolve"] {
        assert_eq!(item.texts(&format!("form.action-{action} button")).len(), 1, "the {action} button");
    }

    let sla = api_when(web, "/api/v1/sla", |b| b["rules"].as_array().is_some_and(|r| r.iter().any(|r| r["state"] == "firing"))).await;
    assert!(sla["rules"].as_array().unwrap().iter().any(|r| r["name"] == "overdue_orders" && r["state"] == "firing"), "{sla:#}");
    let sla_page = load(web, "/sla", "sla").await;
    check("/sla", &sla_page);
    assert!(sla_page.texts("#rule-overdue_orders .rule-state").concat().contains("firing"), "{:?}", sla_page.texts("#rule-overdue_orders"));

    let flows = load(web, "/flows", "flows").await;
    check("/flows", &flows);
    let nodes = flows.texts(FLOW_NODES);
    for system in ["portal", "middleware", "erp"] {
        assert!(nodes.iter().any(|n| n.contains(system)), "{system} on the flow map: {nodes:?}");
    }

    let kpis = load(web, "/kpis?period=1d", "kpis").await;
    check("/kpis", &kpis);
    let invoice = kpis.texts(KPI_INVOICE_VALUE);
    assert!(invoice.first().is_some_and(|v| v.ends_with('%')), "invoice posting success: {invoice:?}");

    assert!(console.is_empty(), "the browser logged:\n{}", console.join("\n"));
}

/// Each stuck order's row on the board, the queue's work items, the flow
/// map's systems and the invoice KPI's value.
const FLOW_NODES: &str = ".flow-map-panel svg g.node text";
const KPI_INVOICE_VALUE: &str = "#kpi-invoice_posting_success .figures .value";
const BOARD_STUCK_ROWS: &str = ".stuck-panel table.stuck tbody tr";
const EXCEPTION_ROWS: &str = "table.exceptions tr.exception";
