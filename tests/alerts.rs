//! SLA alerts end to end: OpenTelemetry SDK traffic breaches each SLI
//! kind of a rules file; a real Alertmanager (Debian's
//! prometheus-alertmanager) receives the alerts and their resolution, a
//! real Prometheus scrapes the SLI series, and a webhook receiver in the
//! test checks retries, signatures, silences and restarts.

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::process::{free_port, text, waybill, which, work_dir, Running};
use common::sdk::{at, keys, log, span, Record, Systems};
use common::service::Service;
use serde_json::Value;

/// Orders captured must be accepted within 1 s; the resolver runs often.
fn config(extra: &str) -> String {
    format!(
        r#"
lineage:
  journeys:
    order:
      - milestone: order.captured
      - milestone: order.accepted
        within: 1s
alerts:
  rules_file: rules.yaml
  repeat_interval: 1h
{extra}"#
    )
}

const INVOICE_FAILURES: &str = r#"
interval: 300ms
rules:
  - name: invoice_failures
    sli: { kind: count, milestone: invoice.posted, outcome: failed }
    window: 1m
    group_by: [system]
    above: 0
    severity: critical
    labels: { team: billing }
    annotations:
      summary: "{{ value }} invoices failed to post in {{ labels.system }}"
      runbook_url: https://runbooks.example.com/invoices
"#;

/// A service whose rules file is `rules`, with `extra` lines under `alerts:`.
async fn start(name: &str, rules: &str, extra: &str) -> Service {
    let dir = work_dir(name);
    std::fs::write(dir.join("rules.yaml"), rules).unwrap();
    std::fs::write(dir.join("waybill.yaml"), config(extra)).unwrap();
    Service::start_in(dir).await
}

async fn failed_invoice(systems: &Systems, invoice: &str) {
    let failing = vec![Record::Span {
        name: "post invoice",
        attributes: keys(&[("biz.key.invoice", invoice), ("biz.milestone", "invoice.posted")]),
        parent: None,
        error: true,
        links: vec![],
        events: vec![],
    }];
    systems.send("billing", failing).await;
}

/// Waybill's alerts once `done` holds for them (30 s at most).
async fn alerts_when(service: &Service, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let (status, body) = service.get("/api/v1/alerts").await;
        assert_eq!(status, 200, "{body}");
        let alerts = body["alerts"].as_array().cloned().unwrap_or_default();
        if done(&alerts) {
            return alerts;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "alerts never got there; last: {alerts:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn firing<'a>(alerts: &'a [Value], rule: &str) -> Option<&'a Value> {
    alerts.iter().find(|a| a["rule"] == rule && a["state"] == "firing")
}

/// A real Alertmanager on a loopback port.
async fn alertmanager(name: &str) -> (Running, SocketAddr) {
    let dir = work_dir(name);
    std::fs::write(dir.join("alertmanager.yml"), "route:\n  receiver: nobody\nreceivers:\n  - name: nobody\n").unwrap();
    let port = free_port();
    let child = std::process::Command::new(which("prometheus-alertmanager"))
        .arg(format!("--config.file={}", dir.join("alertmanager.yml").display()))
        .arg(format!("--storage.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    common::process::wait_for_status(port, "/-/ready", 200, Duration::from_secs(30)).await;
    (Running(child), addr)
}

/// Alertmanager's active alerts once `done` holds for them.
async fn alertmanager_alerts_when(addr: SocketAddr, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let response = common::http(addr, "GET", "/api/v2/alerts", &[], b"").await;
        let alerts: Vec<Value> = serde_json::from_slice(&response.body).unwrap_or_default();
        if done(&alerts) {
            return alerts;
        }
        assert!(start.elapsed() < Duration::from_secs(40), "Alertmanager never got there; last: {alerts:#?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_sli_kind_fires_on_breaching_traffic_and_alertmanager_sees_it_fire_and_resolve() {
    let (_alertmanager, am) = alertmanager("alerts-am").await;
    let rules = r#"
interval: 300ms
rules:
  - name: order_acceptance
    sli: { kind: ratio, numerator: order.accepted, denominator: order.captured }
    window: 1h
    below: 0.9
    min_samples: 2
  - name: inventory_latency
    sli: { kind: latency, from: inventory.changed, to: inventory.published, key: sku, quantile: 0.95 }
    window: 1h
    above: 60
  - name: invoice_failures
    sli: { kind: count, milestone: invoice.posted, outcome: failed }
    window: 6s
    above: 0
    severity: critical
    annotations: { summary: "{{ value }} invoices failed" }
  - name: overdue_orders
    sli: { kind: overdue }
    window: 0s
    group_by: [milestone]
    above: 0
  - name: billing_errors
    sli: { kind: error_rate, span_kind: Internal }
    window: 1h
    group_by: [system]
    above: 0.5
"#;
    let service = start("alerts-slis", rules, &format!("  alertmanager_url: http://{am}\n")).await;
    let systems = service.systems();
    // Two orders captured, one accepted: acceptance 0.5; the other is overdue.
    for order in ["PO-A1", "PO-A2"] {
        systems.send("portal", vec![span("POST /orders", keys(&[("biz.key.order", order), ("biz.milestone", "order.captured")]))]).await;
    }
    systems.send("erp", vec![span("accept", keys(&[("biz.key.order", "PO-A1"), ("biz.milestone", "order.accepted")]))]).await;
    // A stock change reaches the portal five minutes after it happened.
    systems.send("inventory", vec![log("stock changed", keys(&[("biz.key.sku", "SKU-9"), ("biz.milestone", "inventory.changed"), ("biz.source_time_unix_nano", &at(-5))]), None)]).await;
    systems.send("portal", vec![log("stock published", keys(&[("biz.key.sku", "SKU-9"), ("biz.milestone", "inventory.published")]), None)]).await;
    failed_invoice(&systems, "INV-A1").await;

    let alerts = alerts_when(&service, |alerts| {
        ["order_acceptance", "inventory_latency", "invoice_failures", "overdue_orders", "billing_errors"].iter().all(|rule| firing(alerts, rule).is_some())
    })
    .await;
    assert_eq!(firing(&alerts, "order_acceptance").unwrap()["value"], 0.5);
    let latency = firing(&alerts, "inventory_latency").unwrap()["value"].as_f64().unwrap();
    assert!((290.0..=310.0).contains(&latency), "{latency}");
    let overdue = firing(&alerts, "overdue_orders").unwrap();
    assert_eq!((overdue["value"].as_f64(), overdue["labels"]["milestone"].as_str()), (Some(1.0), Some("order.accepted")));
    assert_eq!(firing(&alerts, "billing_errors").unwrap()["labels"]["system"], "billing");
    let invoices = firing(&alerts, "invoice_failures").unwrap();
    assert_eq!(invoices["annotations"]["summary"], "1 invoices failed");
    assert_eq!((invoices["severity"].as_str(), invoices["labels"]["alertname"].as_str()), (Some("critical"), Some("invoice_failures")));

    let received = alertmanager_alerts_when(am, |alerts| alerts.iter().any(|a| a["labels"]["alertname"] == "invoice_failures")).await;
    let alert = received.iter().find(|a| a["labels"]["alertname"] == "invoice_failures").unwrap();
    assert_eq!(alert["labels"]["severity"], "critical");
    assert_eq!(alert["annotations"]["summary"], "1 invoices failed");
    assert!(alert["generatorURL"].as_str().unwrap().contains("/api/v1/alerts?rule=invoice_failures"), "{alert}");

    // The failure leaves the 6 s window: Waybill resolves, and so does Alertmanager.
    alerts_when(&service, |alerts| firing(alerts, "invoice_failures").is_none()).await;
    alertmanager_alerts_when(am, |alerts| !alerts.iter().any(|a| a["labels"]["alertname"] == "invoice_failures")).await;
    let still = alertmanager_alerts_when(am, |alerts| !alerts.is_empty()).await;
    assert!(still.iter().any(|a| a["labels"]["alertname"] == "order_acceptance"), "the others keep firing: {still:#?}");
}

/// What the test's webhook receiver saw: every attempt, and the bodies it accepted.
#[derive(Default)]
struct Receiver {
    attempts: usize,
    fail_first: usize,
    accepted: Vec<(HeaderMap, Vec<u8>)>,
}

async fn receive(State(receiver): State<Arc<Mutex<Receiver>>>, headers: HeaderMap, body: axum::body::Bytes) -> StatusCode {
    let mut receiver = receiver.lock().unwrap();
    receiver.attempts += 1;
    if receiver.attempts <= receiver.fail_first {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    receiver.accepted.push((headers, body.to_vec()));
    StatusCode::OK
}

async fn webhook_receiver(fail_first: usize) -> (Arc<Mutex<Receiver>>, SocketAddr) {
    let receiver = Arc::new(Mutex::new(Receiver { fail_first, ..Default::default() }));
    let router = axum::Router::new().route("/hook", axum::routing::post(receive)).with_state(receiver.clone());
    (receiver, common::serve(router).await)
}

fn webhook(addr: SocketAddr) -> String {
    format!("  webhooks:\n    - name: ops\n      url: http://{addr}/hook\n      secret: hook-secret-0123\n")
}

async fn accepted_when(receiver: &Arc<Mutex<Receiver>>, count: usize) -> Vec<(HeaderMap, Vec<u8>)> {
    let start = Instant::now();
    loop {
        let accepted = receiver.lock().unwrap().accepted.clone();
        if accepted.len() >= count {
            return accepted;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "the webhook got {} deliveries, expected {count}", accepted.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_failing_three_times_gets_the_alert_once_signed_and_a_restart_does_not_repeat_it() {
    let (receiver, addr) = webhook_receiver(3).await;
    let service = start("alerts-webhook", INVOICE_FAILURES, &webhook(addr)).await;
    failed_invoice(&service.systems(), "INV-W1").await;

    let accepted = accepted_when(&receiver, 1).await;
    assert_eq!(receiver.lock().unwrap().attempts, 4, "three failures, then the delivery");
    let (headers, body) = &accepted[0];
    let signature = headers.get("x-waybill-signature").unwrap().to_str().unwrap();
    assert_eq!(signature, waybill_alerts::notify::signature("hook-secret-0123", body));
    let payload: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(payload["status"], "firing");
    assert_eq!(payload["alerts"][0]["rule"], "invoice_failures");
    assert_eq!(payload["alerts"][0]["labels"]["system"], "billing");
    assert_eq!(payload["alerts"][0]["annotations"]["summary"], "1 invoices failed to post in billing");
    let metrics = common::http(service.http, "GET", "/metrics", &[], b"").await.text();
    assert!(metrics.contains(r#"waybill_alerts_deliveries_total{outcome="delivered",receiver="ops"} 1"#), "{metrics}");

    // A restart keeps the alert firing and does not tell the webhook again.
    let dir = service.stop().await;
    let service = Service::start_in(dir).await;
    alerts_when(&service, |alerts| firing(alerts, "invoice_failures").is_some()).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(receiver.lock().unwrap().accepted.len(), 1, "no second notification after the restart");
    assert!(firing(&service.get("/api/v1/alerts").await.1["alerts"].as_array().unwrap().clone(), "invoice_failures").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silenced_alert_is_not_delivered_until_the_silence_expires() {
    let (receiver, addr) = webhook_receiver(0).await;
    let service = start("alerts-silence", INVOICE_FAILURES, &webhook(addr)).await;
    let silence = serde_json::json!({"matchers": {"alertname": "invoice_failures", "team": "billing"}, "duration": "1h", "created_by": "sre", "comment": "maintenance"});
    let created = common::http(service.http, "POST", "/api/v1/silences", &[("Content-Type", "application/json")], silence.to_string().as_bytes()).await;
    assert_eq!(created.status, 201, "{}", created.text());
    let created: Value = serde_json::from_slice(&created.body).unwrap();
    let bad = common::http(service.http, "POST", "/api/v1/silences", &[("Content-Type", "application/json")], br#"{"matchers": {}}"#).await;
    assert_eq!(bad.status, 400, "{}", bad.text());

    failed_invoice(&service.systems(), "INV-S1").await;
    alerts_when(&service, |alerts| firing(alerts, "invoice_failures").is_some()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.lock().unwrap().attempts, 0, "a silenced alert is not delivered");
    let listed = service.get("/api/v1/silences").await.1;
    assert_eq!(listed["silences"][0]["id"], created["id"]);

    let id = created["id"].as_str().unwrap();
    let expired = common::http(service.http, "DELETE", &format!("/api/v1/silences/{id}"), &[], b"").await;
    assert_eq!(expired.status, 200, "{}", expired.text());
    let accepted = accepted_when(&receiver, 1).await;
    let payload: Value = serde_json::from_slice(&accepted[0].1).unwrap();
    assert_eq!(payload["alerts"][0]["rule"], "invoice_failures");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_rules_file_is_refused_with_its_line_and_the_old_rules_stay() {
    let service = start("alerts-reload", INVOICE_FAILURES, "").await;
    let rules = service.get("/api/v1/rules").await.1;
    assert_eq!(rules["rules"][0]["name"], "invoice_failures");
    assert_eq!(rules["reload_error"], Value::Null);

    std::fs::write(service.dir.join("rules.yaml"), INVOICE_FAILURES.replace("above: 0", "abvoe: 0")).unwrap();
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(service.running.0.id() as i32, libc::SIGHUP) };
    let start = Instant::now();
    let rules = loop {
        let rules = service.get("/api/v1/rules").await.1;
        if !rules["reload_error"].is_null() {
            break rules;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "the bad file was never noticed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let error = rules["reload_error"].as_str().unwrap();
    assert!(error.contains("rules.yaml: line 8 column 5") && error.contains("abvoe"), "{error}");
    assert_eq!(rules["rules"][0]["name"], "invoice_failures", "the previous rules stay");
    failed_invoice(&service.systems(), "INV-R1").await;
    alerts_when(&service, |alerts| firing(alerts, "invoice_failures").is_some()).await;

    // At start the same file is refused outright, with the same message.
    let checked = waybill(&service.dir).args(["--config", "waybill.yaml", "check-config"]).output().unwrap();
    assert!(!checked.status.success());
    assert!(text(&checked).contains("alerts.rules_file: rules.yaml: line 8 column 5"), "{}", text(&checked));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_every_rules_sli_per_group() {
    let service = start("alerts-prometheus", INVOICE_FAILURES, "").await;
    failed_invoice(&service.systems(), "INV-P1").await;
    alerts_when(&service, |alerts| firing(alerts, "invoice_failures").is_some()).await;

    let (_prometheus, api) = common::process::prometheus("alerts-prometheus-server", &service.http.to_string());
    common::process::wait_for_prometheus(api, r#"waybill_sli_value{job="waybill",rule="invoice_failures",system="billing"}"#, "1").await;
}
