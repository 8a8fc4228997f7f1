//! SLIs on the real engine: every kind of rule, measured together in the
//! shared scans the evaluator runs, gives each rule the value computed here
//! from the stored rows themselves, and the same value it gets alone.

mod common;

use common::now_ns;

use std::collections::BTreeMap;

use clickhouse::Row;
use serde::Serialize;
use waybill_alerts::rules::{Rule, RulesFile, Sli};
use waybill_alerts::sli::{measure, measure_all, Measurement};
use waybill_store::{SpanRow, TransactionRow};

const SECOND: i64 = 1_000_000_000;
const MINUTE: i64 = 60 * SECOND;

/// A business event with its arrival time.
#[derive(Debug, Clone, Row, Serialize)]
struct Event {
    #[serde(rename = "TraceId")]
    trace_id: String,
    #[serde(rename = "Record")]
    record: String,
    #[serde(rename = "SpanId")]
    span_id: String,
    #[serde(rename = "RecordIndex")]
    record_index: u32,
    #[serde(rename = "Time")]
    time_ns: i64,
    #[serde(rename = "SourceTime")]
    source_time_ns: i64,
    #[serde(rename = "Milestone")]
    milestone: String,
    #[serde(rename = "System")]
    system: String,
    #[serde(rename = "Outcome")]
    outcome: String,
    #[serde(rename = "KeyKinds")]
    key_kinds: Vec<String>,
    #[serde(rename = "KeyValues")]
    key_values: Vec<String>,
    #[serde(rename = "LinkedTraceIds")]
    linked_trace_ids: Vec<String>,
    #[serde(rename = "Source")]
    source: String,
    /// `Ingested` is kept to the microsecond.
    #[serde(rename = "Ingested")]
    ingested_us: i64,
}

impl Event {
    fn ingested_ns(&self) -> i64 {
        self.ingested_us * 1000
    }

    fn key(&self, kind: &str) -> String {
        self.key_kinds.iter().position(|k| k == kind).map(|i| self.key_values[i].clone()).unwrap_or_default()
    }
}

/// Orders' milestones over the last three hours from two systems, some
/// failed, arriving up to 50 s late; inventory changes and their
/// publication paired by SKU.
fn events(now: i64) -> Vec<Event> {
    let mut events = Vec::new();
    for i in 0..900i64 {
        let milestone = ["order.captured", "order.accepted", "invoice.posted"][(i % 3) as usize];
        let source_time = now - (i * 37 * SECOND) % (180 * MINUTE) - SECOND;
        events.push(Event {
            trace_id: format!("{:032x}", i / 3),
            record: "span".into(),
            span_id: format!("{:016x}", i),
            record_index: 0,
            time_ns: source_time,
            source_time_ns: source_time,
            milestone: milestone.into(),
            system: if i % 5 == 0 { "wms" } else { "erp" }.into(),
            outcome: if i % 7 == 0 { "failed" } else { "ok" }.into(),
            key_kinds: vec!["order".into(), "partner".into()],
            key_values: vec![format!("PO-{}", i / 3), format!("PARTNER-{}", i % 4)],
            linked_trace_ids: vec![],
            source: "erp-gateway".into(),
            ingested_us: (source_time + (i % 50) * SECOND + 500_000_000) / 1000,
        });
    }
    // The last five SKUs were published over two hours after they
    // changed: too late to pair within a one-hour window.
    for j in 0..205i64 {
        let (changed, published) = match j {
            0..200 => {
                let changed = now - (j * 53 * SECOND) % (170 * MINUTE) - 2 * MINUTE;
                (changed, changed + (10 + j % 40) * SECOND)
            }
            _ => (now - 150 * MINUTE - j * SECOND, now - 20 * MINUTE),
        };
        for (milestone, at) in [("inventory.changed", changed), ("inventory.published", published)] {
            events.push(Event {
                trace_id: format!("{:032x}", 10_000 + j),
                record: "span".into(),
                span_id: format!("{:016x}", 10_000 + j * 2 + i64::from(milestone == "inventory.published")),
                record_index: 0,
                time_ns: at,
                source_time_ns: at,
                milestone: milestone.into(),
                system: if milestone == "inventory.changed" { "wms" } else { "portal" }.into(),
                outcome: "ok".into(),
                key_kinds: vec!["sku".into()],
                key_values: vec![if j < 200 { format!("SKU-{}", j % 60) } else { format!("SKU-LATE-{j}") }],
                linked_trace_ids: vec![],
                source: "inventory-sync".into(),
                ingested_us: (at + SECOND) / 1000,
            });
        }
    }
    events
}

/// Orders captured and accepted (every fifth rejected); every fourth stuck
/// past its invoice deadline, every eighth also past its dispatch. Every
/// sixth was stored first as stuck and then as completed: only the newer
/// version counts.
fn transactions(now: i64) -> Vec<TransactionRow> {
    let mut rows = Vec::new();
    for n in 0..60i64 {
        let captured = now - n * 3 * MINUTE - SECOND;
        let stuck = n % 4 == 0;
        let overdue: Vec<String> = match (stuck, n % 8 == 0) {
            (false, _) => vec![],
            (true, false) => vec!["invoice.posted".into()],
            (true, true) => vec!["invoice.posted".into(), "shipment.dispatched".into()],
        };
        let row = TransactionRow {
            id: format!("T-{n}"),
            root_kind: "order".into(),
            root_value: format!("PO-{n}"),
            state: if stuck { "stuck" } else { "completed" }.into(),
            key_kinds: vec!["order".into(), "partner".into()],
            key_values: vec![format!("PO-{n}"), format!("PARTNER-{}", n % 3)],
            systems: vec![if n % 2 == 0 { "portal" } else { "edi" }.into(), "erp".into()],
            milestone_names: vec!["order.captured".into(), "order.accepted".into()],
            milestone_systems: vec![if n % 2 == 0 { "portal" } else { "edi" }.into(), "erp".into()],
            milestone_times_ns: vec![captured, captured + MINUTE],
            milestone_outcomes: vec!["ok".into(), if n % 5 == 0 { "rejected" } else { "ok" }.into()],
            milestone_trace_ids: vec![String::new(); 2],
            milestone_span_ids: vec![String::new(); 2],
            overdue_due_ns: vec![captured; overdue.len()],
            overdue_milestones: overdue,
            next_due_ns: 0,
            started_ns: captured,
            updated_ns: captured + MINUTE,
            version: 2,
        };
        if n % 6 == 0 && !stuck {
            let older = TransactionRow {
                state: "stuck".into(),
                overdue_milestones: vec!["invoice.posted".into()],
                overdue_due_ns: vec![captured],
                version: 1,
                ..row.clone()
            };
            rows.push(older);
        }
        rows.push(row);
    }
    rows
}

/// Client calls from two services to three peers over the last three
/// hours, every sixth failing; a few server spans that do not count.
fn spans(now: i64) -> Vec<SpanRow> {
    (0..300u64)
        .map(|i| {
            let mut span = common::rows::span(i);
            span.timestamp_ns = now - (i as i64 * 31 * SECOND) % (180 * MINUTE) - SECOND;
            span.span_kind = if i % 10 == 9 { "Server" } else { "Client" }.into();
            span.service_name = if i % 2 == 0 { "erp" } else { "portal" }.into();
            span.span_attributes = vec![("peer.service".into(), ["tax-saas", "carrier", "wms"][(i % 3) as usize].into())];
            span.status_code = if i % 6 == 0 { "Error" } else { "Ok" }.into();
            span
        })
        .collect()
}

const RULES: &str = "
rules:
  - { name: captured_1h, sli: { kind: count, milestone: order.captured }, window: 1h, above: 1 }
  - { name: captured_3h_by_system_partner, sli: { kind: count, milestone: order.captured }, window: 3h, group_by: [system, key:partner], above: 1 }
  - { name: failed_invoices_by_system, sli: { kind: count, milestone: invoice.posted, outcome: failed }, window: 3h, group_by: [system], above: 1 }
  - { name: accepted_rate_by_partner, sli: { kind: rate, milestone: order.accepted }, window: 10m, group_by: [key:partner], below: 1 }
  - { name: nothing_captured_lately, sli: { kind: count, milestone: order.captured }, window: 1s, above: 1 }
  - { name: arrival_p90_by_system, sli: { kind: latency, from: source_time, to: order.accepted, quantile: 0.9 }, window: 1h, group_by: [system], above: 1 }
  - { name: arrival_median, sli: { kind: latency, from: source_time, to: order.accepted, quantile: 0.5 }, window: 3h, above: 1 }
  - { name: sync_p95, sli: { kind: latency, from: inventory.changed, to: inventory.published, key: sku, quantile: 0.95 }, window: 1h, above: 1 }
  - { name: sync_median_by_system, sli: { kind: latency, from: inventory.changed, to: inventory.published, key: sku, quantile: 0.5 }, window: 3h, group_by: [system], above: 1 }
  - { name: acceptance_by_system, sli: { kind: ratio, numerator: order.accepted, denominator: order.captured }, window: 1h, group_by: [system], below: 1 }
  - { name: acceptance_by_partner, sli: { kind: ratio, numerator: order.accepted, denominator: order.captured }, window: 3h, group_by: [key:partner], below: 1 }
  - { name: overdue, sli: { kind: overdue }, window: 0s, above: 1 }
  - { name: overdue_by_milestone_partner, sli: { kind: overdue }, window: 0s, group_by: [milestone, key:partner], above: 1 }
  - { name: overdue_dispatch, sli: { kind: overdue, milestone: shipment.dispatched }, window: 0s, above: 1 }
  - { name: call_errors, sli: { kind: error_rate }, window: 1h, above: 1 }
  - { name: call_errors_by_peer, sli: { kind: error_rate }, window: 3h, group_by: [attribute:peer.service], above: 1 }
";

/// What `rule` measures over these rows, computed the plain way.
fn expected(rule: &Rule, now: i64, events: &[Event], transactions: &[TransactionRow], spans: &[SpanRow]) -> Vec<Measurement> {
    let start = now - rule.window.as_nanos() as i64;
    let mut groups: BTreeMap<Vec<String>, Vec<f64>> = BTreeMap::new();
    let event_dimension = |e: &Event, d: &str| match d.strip_prefix("key:") {
        Some(kind) => e.key(kind),
        None if d == "system" => e.system.clone(),
        None => e.milestone.clone(),
    };
    let transaction_key = |t: &TransactionRow, kind: &str| t.key_values[t.key_kinds.iter().position(|k| k == kind).unwrap()].clone();
    // Each sample is a value: 1/0 for shares, a latency, or 1 for counts.
    match &rule.sli {
        Sli::Count { milestone, outcome } | Sli::Rate { milestone, outcome } => {
            for e in events.iter().filter(|e| &e.milestone == milestone && e.source_time_ns >= start && e.source_time_ns <= now) {
                if outcome.as_ref().is_none_or(|o| o == &e.outcome) {
                    groups.entry(rule.group_by.iter().map(|d| event_dimension(e, d)).collect()).or_default().push(1.0);
                }
            }
        }
        Sli::Latency { to, key: None, .. } => {
            for e in events.iter().filter(|e| &e.milestone == to && e.ingested_ns() >= start && e.ingested_ns() <= now) {
                let latency = (e.ingested_ns() - e.source_time_ns) as f64 / 1e9;
                groups.entry(rule.group_by.iter().map(|d| event_dimension(e, d)).collect()).or_default().push(latency);
            }
        }
        Sli::Latency { from, to, key: Some(kind), .. } => {
            let window = rule.window.as_nanos() as i64;
            for b in events.iter().filter(|e| &e.milestone == to && e.source_time_ns >= start && e.source_time_ns <= now) {
                let a = events
                    .iter()
                    .filter(|a| &a.milestone == from && a.key(kind) == b.key(kind) && a.source_time_ns <= b.source_time_ns)
                    .max_by_key(|a| a.source_time_ns);
                if let Some(a) = a.filter(|a| a.source_time_ns >= start - window) {
                    let latency = (b.source_time_ns - a.source_time_ns) as f64 / 1e9;
                    groups.entry(rule.group_by.iter().map(|d| event_dimension(b, d)).collect()).or_default().push(latency);
                }
            }
        }
        Sli::Ratio { numerator, denominator } => {
            for t in transactions.iter().filter(|t| t.version == 2) {
                let reached = |name: &str, in_window: bool| {
                    (0..t.milestone_names.len()).any(|i| {
                        t.milestone_names[i] == name
                            && t.milestone_outcomes[i] != "rejected"
                            && (!in_window || (t.milestone_times_ns[i] >= start && t.milestone_times_ns[i] <= now))
                    })
                };
                if reached(denominator, true) {
                    let group = rule
                        .group_by
                        .iter()
                        .map(|d| match d.strip_prefix("key:") {
                            Some(kind) => transaction_key(t, kind),
                            None => t.milestone_systems[t.milestone_names.iter().position(|n| n == denominator).unwrap()].clone(),
                        })
                        .collect();
                    groups.entry(group).or_default().push(if reached(numerator, false) { 1.0 } else { 0.0 });
                }
            }
        }
        Sli::Overdue { milestone } => {
            for t in transactions.iter().filter(|t| t.version == 2 && t.state == "stuck") {
                let overdue = t.overdue_milestones.iter().filter(|m| milestone.as_ref().is_none_or(|only| only == *m));
                if rule.group_by.iter().any(|d| d == "milestone") {
                    for m in overdue {
                        let group = rule.group_by.iter().map(|d| if d == "milestone" { m.clone() } else { transaction_key(t, &d[4..]) }).collect();
                        groups.entry(group).or_default().push(1.0);
                    }
                } else if overdue.count() > 0 {
                    groups.entry(Vec::new()).or_default().push(1.0);
                }
            }
        }
        Sli::ErrorRate { .. } => {
            for s in spans.iter().filter(|s| s.span_kind == "Client" && s.timestamp_ns >= start && s.timestamp_ns <= now) {
                let group = rule
                    .group_by
                    .iter()
                    .map(|d| match d.strip_prefix("attribute:") {
                        Some(name) => s.span_attributes.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).unwrap_or_default(),
                        None => s.service_name.clone(),
                    })
                    .collect();
                groups.entry(group).or_default().push(if s.status_code == "Error" { 1.0 } else { 0.0 });
            }
        }
    }
    if groups.is_empty() && rule.group_by.is_empty() && matches!(rule.sli, Sli::Count { .. } | Sli::Rate { .. } | Sli::Overdue { .. }) {
        groups.insert(Vec::new(), Vec::new());
    }
    let names: Vec<String> = rule.group_by.iter().map(|d| waybill_alerts::sli::label_name(d)).collect();
    let mut measurements: Vec<Measurement> = groups
        .into_iter()
        .map(|(key, mut samples)| {
            let value = match &rule.sli {
                Sli::Count { .. } | Sli::Overdue { .. } => samples.len() as f64,
                Sli::Rate { .. } => samples.len() as f64 / rule.window.as_secs_f64(),
                Sli::Ratio { .. } | Sli::ErrorRate { .. } => samples.iter().sum::<f64>() / samples.len() as f64,
                Sli::Latency { quantile, .. } => {
                    samples.sort_by(f64::total_cmp);
                    let rank = ((quantile * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
                    samples[rank - 1]
                }
            };
            Measurement { group: names.iter().cloned().zip(key).collect(), value, samples: samples.len() as u64 }
        })
        .collect();
    measurements.sort_by(|a, b| a.group.cmp(&b.group));
    measurements
}

/// Equal groups and samples; values equal, latencies within 1 %.
fn assert_same(rule: &Rule, got: &[Measurement], want: &[Measurement]) {
    let groups = |ms: &[Measurement]| ms.iter().map(|m| (m.group.clone(), m.samples)).collect::<Vec<_>>();
    assert_eq!(groups(got), groups(want), "rule {}: groups and samples", rule.name);
    let tolerance = if matches!(rule.sli, Sli::Latency { .. }) { 0.01 } else { 1e-9 };
    for (g, w) in got.iter().zip(want) {
        assert!((g.value - w.value).abs() <= tolerance * w.value.abs().max(1e-9), "rule {} group {:?}: {} measured, {} expected", rule.name, g.group, g.value, w.value);
    }
}

#[tokio::test]
async fn every_sli_kind_measured_together_matches_the_rows_and_each_rule_alone() {
    let store = common::store("t_alert_slis").await;
    let now = now_ns();
    let (events, transactions, spans) = (events(now), transactions(now), spans(now));
    store.insert("biz_events", &events).await.unwrap();
    // A retrying exporter stored the first fifty records twice.
    store.insert("biz_events", &events[..50]).await.unwrap();
    store.insert("transactions", &transactions).await.unwrap();
    store.insert_spans(&spans).await.unwrap();

    let rules = RulesFile::parse(RULES, "test").unwrap().rules;
    let together = measure_all(&store, &rules, now).await;
    for (rule, measured) in rules.iter().zip(together) {
        let measured = measured.unwrap_or_else(|e| panic!("rule {}: {e}", rule.name));
        let want = expected(rule, now, &events, &transactions, &spans);
        assert!(want.iter().any(|m| m.samples > 0) || rule.name == "nothing_captured_lately", "rule {} has data to measure", rule.name);
        assert_same(rule, &measured, &want);
        let alone = measure(&store, rule, now).await.unwrap();
        assert_eq!(alone, measured, "rule {} alone", rule.name);
    }
    common::drop_database(&store).await;
}
