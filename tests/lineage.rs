//! Lineage scenarios end to end: the Rust OpenTelemetry SDK, one provider
//! per system, sends each flow over separate traces to a running `waybill
//! serve`; what a user would check is asserted through the JSON API.

mod common;

use std::path::Path;
use std::time::Duration;

use common::process::{text, waybill, work_dir};
use common::sdk::{at, keys, log, span, Record, Systems};
use common::service::Service;
use serde_json::Value;

fn key_values(transaction: &Value) -> Vec<String> {
    transaction["keys"].as_array().unwrap().iter().map(|k| format!("{}={}", k["kind"].as_str().unwrap(), k["value"].as_str().unwrap())).collect()
}

fn milestone_names(transaction: &Value) -> Vec<String> {
    transaction["milestones"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap().to_owned()).collect()
}

fn strings(value: &Value) -> Vec<String> {
    value.as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect()
}

const DEFAULT: &str = "{}\n";

/// The order's whole flow, each system in its own trace: the portal
/// captures PO-100 (a middleware span without business attributes in the
/// same trace), the ERP accepts it as SO-100, the warehouse logs shipment
/// SH-100, billing posts INV-100. Every key finds the same transaction.
async fn send_order_flow(systems: &Systems, n: u32) {
    let (order, sales, shipment, invoice) = (&format!("PO-{n}"), &format!("SO-{n}"), &format!("SH-{n}"), &format!("INV-{n}"));
    let portal = systems.send("portal", vec![span("POST /orders", keys(&[("biz.key.order", order), ("biz.milestone", "order.captured")]))]).await;
    systems
        .send("middleware", vec![Record::Span { name: "route order", attributes: vec![], parent: Some(portal[0].clone()), error: false, links: vec![], events: vec![] }])
        .await;
    systems
        .send("erp", vec![span("allocation wave", keys(&[("biz.key.order", order), ("biz.key.sales_order", sales), ("biz.milestone", "order.accepted")]))])
        .await;
    systems
        .send("wms", vec![log("shipment dispatched", keys(&[("biz.key.sales_order", sales), ("biz.key.shipment", shipment), ("biz.milestone", "shipment.dispatched")]), None)])
        .await;
    systems
        .send("billing", vec![span("post invoice", keys(&[("biz.key.sales_order", sales), ("biz.key.invoice", invoice), ("biz.milestone", "invoice.posted")]))])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_of_an_order_finds_its_whole_lineage_across_systems() {
    let service = Service::start("lineage-translation", DEFAULT).await;
    send_order_flow(&service.systems(), 100).await;

    let transaction = service.transaction("PO-100", 4, "completed").await;
    assert_eq!(transaction["root"], serde_json::json!({"kind": "order", "value": "PO-100"}));
    assert_eq!(key_values(&transaction), ["order=PO-100", "sales_order=SO-100", "shipment=SH-100", "invoice=INV-100"]);
    assert_eq!(milestone_names(&transaction), ["order.captured", "order.accepted", "shipment.dispatched", "invoice.posted"]);
    let systems = strings(&transaction["systems"]);
    for system in ["portal", "middleware", "erp", "wms", "billing"] {
        assert!(systems.contains(&system.to_owned()), "{system} missing from {systems:?}");
    }
    let captured = &transaction["milestones"][0];
    assert_eq!((captured["system"].as_str(), captured["outcome"].as_str()), (Some("portal"), Some("ok")));
    assert_eq!(captured["trace_id"].as_str().unwrap().len(), 32);
    assert!(captured["time"].as_str().unwrap().ends_with('Z'), "{captured}");
    assert_eq!(transaction["overdue"], serde_json::json!([]));

    for key in ["SO-100", "SH-100", "INV-100"] {
        let found = service.transactions_when(key, |found| !found.is_empty()).await;
        assert_eq!(found.len(), 1, "{key}");
        assert_eq!(found[0]["id"], transaction["id"], "{key}");
    }
    let by_kind = service.get("/api/v1/transactions?key=SO-100&kind=invoice").await.1;
    assert_eq!(by_kind["transactions"], serde_json::json!([]), "a kind narrows the lookup");

    let id = transaction["id"].as_str().unwrap();
    let (status, one) = service.get(&format!("/api/v1/transactions/{id}")).await;
    assert_eq!((status, &one), (200, &transaction));
    let (status, missing) = service.get("/api/v1/transactions/0000").await;
    assert_eq!(status, 404);
    assert!(missing["error"].as_str().unwrap().contains("0000"), "{missing}");
    let (status, bad) = service.get("/api/v1/transactions?state=lost").await;
    assert_eq!(status, 400);
    assert!(bad["error"].as_str().unwrap().contains("in_flight"), "{bad}");
    let completed = service.get("/api/v1/transactions?state=completed&limit=10").await.1;
    assert_eq!(completed["transactions"][0]["id"], transaction["id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapping_rules_map_attributes_that_do_not_follow_the_convention() {
    let config = r#"
lineage:
  rules:
    - name: portal-checkout
      match: { service: shop, name: "checkout *" }
      keys: { order: { attribute: shop.order_id } }
      milestone: order.captured
    - name: sap-sales-order
      match: { service: erp-gateway, name: BAPI_SALESORDER_CREATEFROMDAT2, status: ok }
      keys:
        sales_order: { attribute: sap.vbeln }
        order: { attribute: sap.bstkd }
      milestone: order.accepted
"#;
    let service = Service::start("lineage-rules", config).await;
    let systems = service.systems();
    systems.send("shop", vec![span("checkout cart", keys(&[("shop.order_id", "WEB-7")]))]).await;
    let erp = vec![Record::Span {
        name: "BAPI_SALESORDER_CREATEFROMDAT2",
        attributes: keys(&[("sap.vbeln", "0000901"), ("sap.bstkd", "WEB-7")]),
        parent: None,
        error: false,
        links: vec![],
        events: vec![],
    }];
    systems.send("erp-gateway", erp).await;
    // The same call failing is not the rule's (status ok only).
    let failed = vec![Record::Span {
        name: "BAPI_SALESORDER_CREATEFROMDAT2",
        attributes: keys(&[("sap.vbeln", "0000902"), ("sap.bstkd", "WEB-7")]),
        parent: None,
        error: true,
        links: vec![],
        events: vec![],
    }];
    systems.send("erp-gateway", failed).await;

    let transaction = service.transaction("0000901", 2, "in_flight").await;
    assert_eq!(key_values(&transaction), ["order=WEB-7", "sales_order=0000901"]);
    assert_eq!(milestone_names(&transaction), ["order.captured", "order.accepted"]);
    assert_eq!(strings(&transaction["systems"]), ["shop", "erp-gateway"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_order_fans_out_to_two_shipments() {
    let service = Service::start("lineage-split", DEFAULT).await;
    let systems = service.systems();
    systems.send("portal", vec![span("POST /orders", keys(&[("biz.key.order", "PO-200"), ("biz.milestone", "order.captured")]))]).await;
    systems.send("erp", vec![span("accept", keys(&[("biz.key.order", "PO-200"), ("biz.key.sales_order", "SO-200"), ("biz.milestone", "order.accepted")]))]).await;
    // One warehouse trace: the pick for SO-200, then two parcels.
    let pick = systems.send("wms", vec![span("pick", keys(&[("biz.key.sales_order", "SO-200")]))]).await;
    let parcels = vec![
        log("parcel 1 dispatched", keys(&[("biz.key.shipment", "SH-201"), ("biz.milestone", "shipment.dispatched")]), Some(pick[0].clone())),
        log("parcel 2 dispatched", keys(&[("biz.key.shipment", "SH-202"), ("biz.milestone", "shipment.dispatched")]), Some(pick[0].clone())),
    ];
    systems.send("wms", parcels).await;
    // The carrier reports delivery of the second parcel as a span event.
    let delivered = vec![Record::Span {
        name: "carrier webhook",
        attributes: keys(&[("biz.key.shipment", "SH-202")]),
        parent: None,
        error: false,
        links: vec![],
        events: vec![("delivered", keys(&[("biz.milestone", "shipment.delivered")]))],
    }];
    systems.send("carrier", delivered).await;

    // Done once the carrier's event, sent last, has joined.
    let found = service
        .transactions_when("SH-202", |found| {
            found.len() == 1 && found[0]["milestones"].as_array().is_some_and(|m| m.iter().any(|m| m["name"] == "shipment.delivered"))
        })
        .await;
    let transaction = found[0].clone();
    assert_eq!(transaction["state"], "in_flight");
    assert_eq!(key_values(&transaction), ["order=PO-200", "sales_order=SO-200", "shipment=SH-201", "shipment=SH-202"]);
    let milestones = milestone_names(&transaction);
    assert_eq!(milestones.iter().filter(|m| *m == "shipment.dispatched").count(), 2, "{milestones:?}");
    assert!(milestones.contains(&"shipment.delivered".to_owned()), "{milestones:?}");
    assert!(strings(&transaction["systems"]).contains(&"carrier".to_owned()));
    let by_first = service.transactions_when("SH-201", |found| !found.is_empty()).await;
    assert_eq!(by_first[0]["id"], transaction["id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_orders_on_one_invoice_share_it_and_stay_separate() {
    let service = Service::start("lineage-shared-invoice", DEFAULT).await;
    let systems = service.systems();
    for order in ["PO-301", "PO-302"] {
        systems.send("portal", vec![span("POST /orders", keys(&[("biz.key.order", order), ("biz.milestone", "order.captured")]))]).await;
    }
    // The nightly billing run: one trace, one invoice for both orders.
    let run = systems.send("billing", vec![span("invoice run", keys(&[("biz.key.invoice", "INV-300"), ("biz.milestone", "invoice.posted")]))]).await;
    let lines = ["PO-301", "PO-302"].map(|order| log("invoice line", keys(&[("biz.key.order", order)]), Some(run[0].clone())));
    systems.send("billing", lines.into()).await;

    let found = service
        .transactions_when("INV-300", |found| found.len() == 2 && found.iter().all(|t| t["keys"].as_array().unwrap().len() == 2))
        .await;
    let mut roots: Vec<String> = found.iter().map(|t| t["root"]["value"].as_str().unwrap().to_owned()).collect();
    roots.sort();
    assert_eq!(roots, ["PO-301", "PO-302"]);
    for transaction in &found {
        let root = transaction["root"]["value"].as_str().unwrap();
        assert_eq!(key_values(transaction), [format!("order={root}"), "invoice=INV-300".into()]);
        assert_eq!(milestone_names(transaction), ["order.captured", "invoice.posted"]);
    }
    let po301 = service.transactions_when("PO-301", |found| !found.is_empty()).await;
    assert_eq!(po301.len(), 1, "the sibling order is not merged in");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arriving_out_of_order_still_join_in_business_time_order() {
    let service = Service::start("lineage-out-of-order", DEFAULT).await;
    let systems = service.systems();
    // Billing reports first, the order is captured last; source times tell the real order.
    let when = |minutes: i64| at(minutes);
    systems
        .send("billing", vec![span("post invoice", keys(&[("biz.key.sales_order", "SO-400"), ("biz.key.invoice", "INV-400"), ("biz.milestone", "invoice.posted"), ("biz.source_time_unix_nano", &when(-1))]))])
        .await;
    systems
        .send("wms", vec![log("dispatched", keys(&[("biz.key.sales_order", "SO-400"), ("biz.key.shipment", "SH-400"), ("biz.milestone", "shipment.dispatched"), ("biz.source_time_unix_nano", &when(-2))]), None)])
        .await;
    // Nothing is rooted yet: no order key has arrived.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(service.get("/api/v1/transactions?key=INV-400").await.1["transactions"], serde_json::json!([]));
    systems
        .send("erp", vec![span("accept", keys(&[("biz.key.order", "PO-400"), ("biz.key.sales_order", "SO-400"), ("biz.milestone", "order.accepted"), ("biz.source_time_unix_nano", &when(-3))]))])
        .await;
    systems
        .send("portal", vec![span("POST /orders", keys(&[("biz.key.order", "PO-400"), ("biz.milestone", "order.captured"), ("biz.source_time_unix_nano", &when(-4))]))])
        .await;

    let transaction = service.transaction("INV-400", 4, "completed").await;
    assert_eq!(milestone_names(&transaction), ["order.captured", "order.accepted", "shipment.dispatched", "invoice.posted"]);
    assert_eq!(transaction["started"], transaction["milestones"][0]["time"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_resent_by_a_retrying_exporter_counts_once() {
    let service = Service::start("lineage-resend", DEFAULT).await;
    let now = at(0);
    let body = format!(
        r#"{{"resourceSpans":[{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"portal"}}}}]}},
        "scopeSpans":[{{"spans":[{{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"POST /orders",
        "startTimeUnixNano":"{now}","endTimeUnixNano":"{now}","attributes":[
        {{"key":"biz.key.order","value":{{"stringValue":"PO-500"}}}},{{"key":"biz.milestone","value":{{"stringValue":"order.captured"}}}}]}}]}}]}}]}}"#
    );
    for _ in 0..2 {
        let response = common::http(service.otlp, "POST", "/v1/traces", &[("Content-Type", "application/json")], body.as_bytes()).await;
        assert_eq!(response.status, 200, "{}", response.text());
    }
    let transaction = service.transaction("PO-500", 1, "in_flight").await;
    // Once more after the service restarted, when it no longer remembers the request.
    let dir = service.stop().await;
    let service = Service::start_in(dir).await;
    let response = common::http(service.otlp, "POST", "/v1/traces", &[("Content-Type", "application/json")], body.as_bytes()).await;
    assert_eq!(response.status, 200);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let again = service.transaction("PO-500", 1, "in_flight").await;
    assert_eq!(milestone_names(&again), ["order.captured"]);
    assert_eq!(again["id"], transaction["id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_order_and_a_failed_invoice_posting_fail_their_transactions() {
    let service = Service::start("lineage-failures", DEFAULT).await;
    let systems = service.systems();
    systems.send("portal", vec![span("POST /orders", keys(&[("biz.key.order", "PO-601"), ("biz.milestone", "order.captured")]))]).await;
    systems
        .send("erp", vec![span("accept", keys(&[("biz.key.order", "PO-601"), ("biz.key.sales_order", "SO-601"), ("biz.milestone", "order.accepted"), ("biz.outcome", "rejected")]))])
        .await;
    send_order_flow(&systems, 602).await;
    let failing = vec![Record::Span {
        name: "post invoice",
        attributes: keys(&[("biz.key.sales_order", "SO-602"), ("biz.key.invoice", "INV-602B"), ("biz.milestone", "invoice.posted")]),
        parent: None,
        error: true,
        links: vec![],
        events: vec![],
    }];
    // The second invoice of PO-602 fails to post after the first was posted.
    tokio::time::sleep(Duration::from_millis(20)).await;
    systems.send("billing", failing).await;

    let rejected = service.transaction("PO-601", 2, "failed").await;
    assert_eq!(rejected["milestones"][1]["outcome"], "rejected");
    let failed = service.transaction("INV-602B", 5, "failed").await;
    let posted: Vec<&Value> = failed["milestones"].as_array().unwrap().iter().filter(|m| m["name"] == "invoice.posted").collect();
    assert_eq!(posted.len(), 2);
    assert_eq!(posted[1]["outcome"], "failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_not_accepted_in_time_becomes_stuck_as_time_passes() {
    let config = r#"
lineage:
  journeys:
    order:
      - milestone: order.captured
      - milestone: order.accepted
        within: 3s
"#;
    let service = Service::start("lineage-stuck", config).await;
    service.systems().send("portal", vec![span("POST /orders", keys(&[("biz.key.order", "PO-700"), ("biz.milestone", "order.captured")]))]).await;
    let waiting = service.transaction("PO-700", 1, "in_flight").await;
    assert_eq!(waiting["overdue"], serde_json::json!([]));
    // No event arrives; the deadline passing alone makes it stuck.
    let stuck = service.transaction("PO-700", 1, "stuck").await;
    assert_eq!(stuck["overdue"][0]["milestone"], "order.accepted");
    assert!(stuck["overdue"][0]["due"].as_str().unwrap() > stuck["milestones"][0]["time"].as_str().unwrap());
    let listed = service.get("/api/v1/transactions?state=stuck").await.1;
    assert_eq!(listed["transactions"][0]["id"], stuck["id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn span_links_join_a_batch_trace_to_the_orders_it_processed() {
    let service = Service::start("lineage-links", DEFAULT).await;
    let systems = service.systems();
    let portal = systems.send("portal", vec![span("POST /orders", keys(&[("biz.key.order", "PO-800"), ("biz.milestone", "order.captured")]))]).await;
    // The ERP's wave links to the portal request and names only its own number.
    let wave = vec![Record::Span {
        name: "allocation wave",
        attributes: keys(&[("biz.key.sales_order", "SO-800"), ("biz.milestone", "order.accepted")]),
        parent: None,
        error: false,
        links: vec![portal[0].clone()],
        events: vec![],
    }];
    let wave = systems.send("erp", wave).await;
    // A confirmation mailer with no business keys at all, linked to the wave.
    let mailer = vec![Record::Span {
        name: "send confirmation",
        attributes: keys(&[("biz.milestone", "order.confirmed")]),
        parent: None,
        error: false,
        links: vec![wave[0].clone()],
        events: vec![],
    }];
    systems.send("mailer", mailer).await;
    let found = service
        .transactions_when("SO-800", |found| found.len() == 1 && milestone_names(&found[0]).contains(&"order.confirmed".to_owned()))
        .await;
    let transaction = &found[0];
    assert_eq!(key_values(transaction), ["order=PO-800", "sales_order=SO-800"]);
    assert!(strings(&transaction["systems"]).contains(&"mailer".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_after_a_rule_change_recomputes_lineage_from_stored_spans() {
    let service = Service::start("lineage-rebuild", DEFAULT).await;
    let systems = service.systems();
    systems.send("portal", vec![span("POST /orders", keys(&[("biz.key.order", "PO-900"), ("biz.milestone", "order.captured")]))]).await;
    // The ERP names the order in its own attributes, which no rule maps yet.
    systems.send("erp-gateway", vec![span("BAPI_SALESORDER_CREATEFROMDAT2", keys(&[("sap.vbeln", "0000999"), ("sap.bstkd", "PO-900")]))]).await;
    let before = service.transaction("PO-900", 1, "in_flight").await;
    assert_eq!(milestone_names(&before), ["order.captured"]);
    let dir = service.stop().await;

    let rules = r#"
lineage:
  rules:
    - name: sap-sales-order
      match: { service: erp-gateway, name: "BAPI_SALESORDER_*" }
      keys: { sales_order: { attribute: sap.vbeln }, order: { attribute: sap.bstkd } }
      milestone: order.accepted
"#;
    std::fs::write(dir.join("waybill.yaml"), rules).unwrap();
    let explained = waybill(&dir).args(["--config", "waybill.yaml", "lineage", "explain", "missing.json"]).output().unwrap();
    assert!(!explained.status.success() && text(&explained).contains("missing.json"), "{}", text(&explained));
    let rebuilt = waybill(&dir).args(["--config", "waybill.yaml", "lineage", "rebuild", "--since", "1d"]).output().unwrap();
    assert!(rebuilt.status.success(), "{}", text(&rebuilt));
    assert!(text(&rebuilt).contains("resolved"), "progress is reported: {}", text(&rebuilt));

    let service = Service::start_in(dir).await;
    let after = service.transaction("PO-900", 2, "in_flight").await;
    assert_eq!(key_values(&after), ["order=PO-900", "sales_order=0000999"]);
    assert_eq!(milestone_names(&after), ["order.captured", "order.accepted"]);
    assert_eq!(after["id"], before["id"]);
}

#[test]
fn explain_shows_what_each_record_maps_to_and_which_rule_said_so() {
    let dir = work_dir("lineage-explain");
    write_explain_files(&dir);
    let output = waybill(&dir).args(["--config", "waybill.yaml", "lineage", "explain", "erp.json"]).output().unwrap();
    let shown = text(&output);
    assert!(output.status.success(), "{shown}");
    assert!(shown.contains(r#"span "BAPI_SALESORDER_CREATEFROMDAT2" (erp-gateway)"#), "{shown}");
    assert!(shown.contains("keys:        sales_order=0000901"), "{shown}");
    assert!(shown.contains("milestone:   order.accepted (ok)"), "{shown}");
    assert!(shown.contains("rules:       sap-sales-order"), "{shown}");
    assert!(shown.contains(r#"span "GET /health" (erp-gateway): no business key or milestone"#), "{shown}");
    assert!(shown.contains("2 records, 1 business events"), "{shown}");

    let output = waybill(&dir).args(["--config", "waybill.yaml", "lineage", "explain", "waybill.yaml"]).output().unwrap();
    assert!(!output.status.success());
    assert!(text(&output).contains("is not JSON"), "{}", text(&output));
}

fn write_explain_files(dir: &Path) {
    std::fs::write(
        dir.join("waybill.yaml"),
        r#"
lineage:
  rules:
    - name: sap-sales-order
      match: { service: erp-gateway, name: BAPI_SALESORDER_CREATEFROMDAT2, status: ok }
      keys: { sales_order: { attribute: sap.vbeln } }
      milestone: order.accepted
"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("erp.json"),
        r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"erp-gateway"}}]},
        "scopeSpans":[{"spans":[
          {"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"BAPI_SALESORDER_CREATEFROMDAT2",
           "startTimeUnixNano":"1790000000000000000","endTimeUnixNano":"1790000000250000000","status":{"code":1},
           "attributes":[{"key":"sap.vbeln","value":{"stringValue":"0000901"}}]},
          {"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b175","name":"GET /health",
           "startTimeUnixNano":"1790000000000000000","endTimeUnixNano":"1790000000250000000"}]}]}]}"#,
    )
    .unwrap();
}
