//! `waybill demo` end to end: its workload, sent through the OpenTelemetry
//! SDK's OTLP/HTTP exporters to a running `waybill serve`, shows up in the
//! transactions API as lineage joined across systems and traces, with the
//! backdated orders stuck.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::process::{free_port, text, waybill, work_dir};
use common::service::Service;
use serde_json::Value;

const STATES: [&str; 4] = ["in_flight", "stuck", "failed", "completed"];

/// Every transaction the API lists, over all states.
async fn transactions(web: SocketAddr) -> Vec<Value> {
    let mut all = Vec::new();
    for state in STATES {
        let response = common::http(web, "GET", &format!("/api/v1/transactions?state={state}&limit=1000"), &[], b"").await;
        assert_eq!(response.status, 200, "{}", response.text());
        let body: Value = serde_json::from_slice(&response.body).unwrap_or_else(|e| panic!("{e}: {}", response.text()));
        all.extend(body["transactions"].as_array().expect("a transactions array").iter().cloned());
    }
    all
}

fn strings<'a>(transaction: &'a Value, field: &str, member: &str) -> Vec<&'a str> {
    transaction[field].as_array().into_iter().flatten().filter_map(|item| item[member].as_str()).collect()
}

/// An order joined to its ERP sales order and its shipment, each reported
/// by a different system in a different trace (the shipment as a log
/// record), with the middleware span under the portal's request.
fn joined_across_traces(transaction: &Value) -> bool {
    let kinds = strings(transaction, "keys", "kind");
    let systems: Vec<&str> = transaction["systems"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let milestone = |name: &str| transaction["milestones"].as_array().into_iter().flatten().find(|m| m["name"] == name);
    let (Some(captured), Some(accepted), Some(dispatched)) =
        (milestone("order.captured"), milestone("order.accepted"), milestone("shipment.dispatched"))
    else {
        return false;
    };
    ["order", "sales_order", "shipment"].iter().all(|kind| kinds.contains(kind))
        && ["portal", "middleware", "erp", "wms"].iter().all(|system| systems.contains(system))
        && (captured["system"] == "portal" && accepted["system"] == "erp" && dispatched["system"] == "wms")
        && captured["trace_id"] != accepted["trace_id"]
}

/// A backdated order the ERP never accepted, past its 15m deadline.
fn stuck_before_acceptance(transaction: &Value) -> bool {
    transaction["state"] == "stuck"
        && transaction["root"]["kind"] == "order"
        && strings(transaction, "milestones", "name") == ["order.captured"]
        && strings(transaction, "overdue", "milestone") == ["order.accepted"]
}

#[tokio::test]
async fn the_demo_workload_becomes_joined_lineage_and_stuck_orders() {
    let service = Service::start("demo", "{}\n").await;
    let (dir, web, otlp) = (service.dir.clone(), service.http, service.otlp.port());

    let mut demo = waybill(&dir);
    demo.args(["demo", "--endpoint", &format!("http://127.0.0.1:{otlp}"), "--duration", "8s", "--orders-per-second", "5", "--seed", "1"]);
    let output = tokio::task::spawn_blocking(move || demo.output().unwrap()).await.unwrap();
    let said = text(&output);
    assert!(output.status.success(), "the demo failed:\n{said}");
    assert!(said.contains("curl 'http://127.0.0.1:8080/api/v1/transactions?state=stuck'"), "the demo did not say where to look:\n{said}");
    assert!(!said.contains("exports failed"), "{said}");

    let start = Instant::now();
    loop {
        let all = transactions(web).await;
        let joined = all.iter().any(joined_across_traces);
        let stuck = all.iter().any(stuck_before_acceptance);
        if joined && stuck {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "after 60s: joined lineage {joined}, stuck order {stuck}; {} transactions:\n{}\ndemo said:\n{said}",
            all.len(),
            all.iter().take(10).map(Value::to_string).collect::<Vec<_>>().join("\n"),
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[test]
fn the_demo_refuses_an_endpoint_where_nothing_listens() {
    let dir = work_dir("demo-unreachable");
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let output = waybill(&dir).args(["demo", "--endpoint", &endpoint, "--duration", "1s"]).output().unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let said = text(&output);
    assert!(said.contains(&format!("cannot reach Waybill's OTLP/HTTP endpoint {endpoint}")) && said.contains("waybill serve"), "{said}");
}
