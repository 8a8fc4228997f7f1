//! The integration flows page as an integration engineer reads it: which
//! system calls which (from client spans naming their peer and from server
//! spans whose parent is in another service), how often, how fast and how
//! often it fails, and the API routes and versions served.

mod common;

use common::now_ns;

use axum::http::StatusCode;
use common::pages::{Page, Pages};
use waybill_store::SpanRow;

const MINUTE_NS: i64 = 60_000_000_000;

/// A span of `service`, built from the shared realistic row with its
/// business attributes, events and links replaced.
#[allow(clippy::too_many_arguments)]
fn span(trace: u64, id: u64, parent: Option<u64>, service: &str, kind: &str, name: &str, attributes: &[(&str, &str)], error: bool, millis: u64, at_ns: i64) -> SpanRow {
    let mut row = common::rows::span(id);
    row.timestamp_ns = at_ns;
    row.trace_id = format!("{:032x}", 0xf10_0000u64 + trace);
    row.span_id = format!("{:016x}", 0x5000_0000u64 + id);
    row.parent_span_id = parent.map(|p| format!("{:016x}", 0x5000_0000u64 + p)).unwrap_or_default();
    row.service_name = service.to_owned();
    row.resource_attributes = vec![("service.name".into(), service.into())];
    row.span_kind = kind.to_owned();
    row.span_name = name.to_owned();
    row.span_attributes = attributes.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    row.status_code = if error { "Error".into() } else { "Ok".into() };
    row.status_message = if error { "upstream returned 503".into() } else { String::new() };
    row.duration_ns = millis * 1_000_000;
    row.events_timestamp_ns.clear();
    row.events_name.clear();
    row.events_attributes.clear();
    row.links_trace_id.clear();
    row.links_span_id.clear();
    row.links_trace_state.clear();
    row.links_attributes.clear();
    row
}

/// Four orders, ten minutes ago: portal → middleware (a client span naming
/// its peer, and the middleware's server span under it, counted once) →
/// erp (a client span without peer attributes: only the erp server span's
/// parent tells) → tax-saas (a SaaS that sends no spans; one call of four
/// fails); the erp publishes to a queue (`invoices`) that billing consumes
/// in traces of its own, linked to the publish. Plus a call two hours ago,
/// outside the last hour.
fn traffic() -> Vec<SpanRow> {
    let at = now_ns() - 10 * MINUTE_NS;
    let mut rows = Vec::new();
    for t in 0..4u64 {
        let id = t * 10;
        let at = at + t as i64 * 1_000_000_000;
        rows.push(span(t, id, None, "portal", "Server", "POST /api/v2/orders", &[("http.route", "/api/v2/orders"), ("http.request.method", "POST")], false, 900, at));
        rows.push(span(t, id + 1, Some(id), "portal", "Client", "POST", &[("peer.service", "middleware"), ("server.address", "mw.internal")], false, 800, at));
        rows.push(span(t, id + 2, Some(id + 1), "middleware", "Server", "receive order", &[], false, 700, at));
        rows.push(span(t, id + 3, Some(id + 2), "middleware", "Client", "forward order", &[], false, 600, at));
        rows.push(span(
            t,
            id + 4,
            Some(id + 3),
            "erp",
            "Server",
            "POST /sap/sales",
            &[("http.route", "/sap/sales"), ("api.version", "2024-01"), ("url.path", "/sap/v9/sales")],
            false,
            500,
            at,
        ));
        rows.push(span(t, id + 5, Some(id + 4), "erp", "Client", "GET", &[("server.address", "tax-saas.example.com"), ("peer.service", "tax-saas")], t == 3, 500, at));
        // The ERP publishes an invoice request; billing consumes it in a
        // trace of its own, linked to the publish.
        rows.push(span(t, id + 6, Some(id + 4), "erp", "Producer", "invoices publish", &[("messaging.destination.name", "invoices")], false, 20, at));
        let mut consume = span(100 + t, id + 7, None, "billing", "Consumer", "invoices process", &[], false, 300, at);
        consume.links_trace_id = vec![format!("{:032x}", 0xf10_0000u64 + t)];
        consume.links_span_id = vec![format!("{:016x}", 0x5000_0000u64 + id + 6)];
        consume.links_trace_state = vec![String::new()];
        consume.links_attributes = vec![vec![]];
        rows.push(consume);
    }
    let old = now_ns() - 120 * MINUTE_NS;
    rows.push(span(9, 90, None, "portal", "Client", "upload", &[("server.address", "legacy-ftp")], false, 50, old));
    rows
}

/// The edges table as rows of (from, to, calls, errors).
fn edge_rows(page: &Page) -> Vec<(String, String, String, String)> {
    let from = page.texts("table.edges tr.edge td.from");
    let to = page.texts("table.edges tr.edge td.to");
    let calls = page.texts("table.edges tr.edge td.calls");
    let errors = page.texts("table.edges tr.edge td.errors");
    let mut rows: Vec<_> = (0..from.len()).map(|i| (from[i].clone(), to[i].clone(), calls[i].clone(), errors[i].clone())).collect();
    rows.sort();
    rows
}

fn node_x(page: &Page, name: &str) -> f64 {
    let xs = page.attrs(&format!("svg.flow-map g.node[data-name=\"{name}\"] rect"), "x");
    assert_eq!(xs.len(), 1, "one box for {name} in:\n{}", page.body);
    xs[0].parse().unwrap()
}

#[tokio::test]
async fn the_map_shows_who_calls_whom_how_often_and_how_badly() {
    let pages = Pages::start("t_pages_flows_map", "").await;
    pages.store.insert_spans(&traffic()).await.unwrap();
    let mut browser = pages.browser();

    let page = browser.get("/flows?window=1h").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(page.text("nav a.current"), "Flows");
    assert_eq!(page.count(".empty-state"), 0);

    let mut nodes = page.attrs("svg.flow-map g.node", "data-name");
    nodes.sort();
    assert_eq!(nodes, ["billing", "erp", "invoices", "middleware", "portal", "tax-saas"], "the call two hours ago is outside the window");
    let mut external = page.attrs("svg.flow-map g.node.external", "data-name");
    external.sort();
    assert_eq!(external, ["invoices", "tax-saas"], "the SaaS and the queue send no spans of their own");
    let (portal, middleware, erp, tax) = (node_x(&page, "portal"), node_x(&page, "middleware"), node_x(&page, "erp"), node_x(&page, "tax-saas"));
    assert!(portal < middleware && middleware < erp && erp < tax, "columns follow the calls: {portal} {middleware} {erp} {tax}");

    assert_eq!(
        edge_rows(&page),
        [
            ("erp".into(), "billing".into(), "4".into(), "0.0%".into()),
            ("erp".into(), "invoices".into(), "4".into(), "0.0%".into()),
            ("erp".into(), "tax-saas".into(), "4".into(), "25.0%".into()),
            ("middleware".into(), "erp".into(), "4".into(), "0.0%".into()),
            ("portal".into(), "middleware".into(), "4".into(), "0.0%".into()),
        ],
        "each call counted once, whichever side saw it; a consumer linked to a publish is called by its publisher"
    );
    assert_eq!(page.texts("table.edges tr.bad td.to"), ["tax-saas"]);
    assert_eq!(page.attrs("svg.flow-map g.edge.bad", "data-to"), ["tax-saas"], "an edge failing above 5 % is red on the map");
    let label = page.text("svg.flow-map g.edge.bad text");
    assert!(label.contains("p95 500 ms") && label.contains("25.0% err"), "{label}");
    assert_eq!(page.text("table.edges tr.bad td.p95"), "500 ms");

    // Routes and versions: http.route, api.version, a /v2/ segment, or none.
    let services = page.texts("table.routes tr.route td.service");
    let routes = page.texts("table.routes tr.route td.route-name");
    let versions = page.texts("table.routes tr.route td.version");
    let calls = page.texts("table.routes tr.route td.calls");
    let row = |service: &str| {
        let i = services.iter().position(|s| s == service).unwrap_or_else(|| panic!("no route of {service} in:\n{}", page.body));
        (routes[i].as_str(), versions[i].as_str(), calls[i].as_str())
    };
    assert_eq!(row("portal"), ("/api/v2/orders", "v2", "4"));
    assert_eq!(row("erp"), ("/sap/sales", "2024-01", "4"), "api.version wins over the path");
    assert_eq!(row("middleware"), ("receive order", "—", "4"), "without http.route the span name, and no version");

    // A longer window reaches the old call.
    let page = browser.get("/flows?window=6h").await;
    assert!(page.attrs("svg.flow-map g.node", "data-name").contains(&"legacy-ftp".to_owned()), "{}", page.body);

    common::drop_database(&pages.store).await;
}

#[tokio::test]
async fn the_json_twin_has_the_same_numbers() {
    let pages = Pages::start("t_pages_flows_json", "").await;
    pages.store.insert_spans(&traffic()).await.unwrap();
    let mut browser = pages.browser();

    let page = browser.get("/api/v1/flows?window=1h").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let json = page.json();
    assert_eq!(json["window"], "1h");
    let names: Vec<&str> = json["nodes"].as_array().unwrap().iter().map(|n| n["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 6, "{json}");
    let edges = json["edges"].as_array().unwrap();
    assert_eq!(edges.len(), 5, "{json}");
    let tax = edges.iter().find(|e| e["to"] == "tax-saas").expect("the tax call");
    assert_eq!(tax["from"], "erp");
    assert_eq!(tax["calls"], 4);
    assert_eq!(tax["error_share"], 0.25);
    assert!((tax["rate_per_second"].as_f64().unwrap() - 4.0 / 3600.0).abs() < 1e-9, "{tax}");
    assert!((tax["p95_seconds"].as_f64().unwrap() - 0.5).abs() < 0.01, "{tax}");
    let erp = json["routes"].as_array().unwrap().iter().find(|r| r["service"] == "erp").expect("the erp route");
    assert_eq!((erp["route"].as_str(), erp["version"].as_str(), erp["calls"].as_u64()), (Some("/sap/sales"), Some("2024-01"), Some(4)));

    assert_eq!(browser.get("/api/v1/flows?window=2w").await.status, StatusCode::BAD_REQUEST);
    common::drop_database(&pages.store).await;
}

#[tokio::test]
async fn an_empty_window_says_how_to_get_a_map() {
    let pages = Pages::start("t_pages_flows_empty", "").await;
    let mut browser = pages.browser();
    let page = browser.get("/flows").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let empty = page.text(".empty-state");
    assert!(empty.contains("4317") && empty.contains("waybill demo") && empty.contains("1h"), "{empty}");
    assert_eq!(page.count("svg.flow-map"), 0);
    assert_eq!(page.attrs("select[name=window] option[selected]", "value"), ["1h"]);

    let page = browser.get("/flows?window=forever").await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST);
    assert!(page.body.contains("15m, 1h, 6h, 24h, 7d"), "{}", page.body);
    common::drop_database(&pages.store).await;
}
