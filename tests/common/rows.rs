//! Realistic OpenTelemetry rows for tests and benchmarks: an ERP posting
//! span with business keys, an event and a link, and a warehouse log record.

#![allow(dead_code)]

use waybill_store::{BizEventRow, LogRow, SpanRow};

/// An hour ago, fixed for the process: recent enough that retention keeps
/// the rows, stable so expected rows can be rebuilt.
pub fn base_ns() -> i64 {
    static BASE: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *BASE.get_or_init(|| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
        now.as_nanos() as i64 - 3_600_000_000_000
    })
}

fn pairs(items: &[(&str, String)]) -> Vec<(String, String)> {
    items.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

/// Span number `i`: distinct ids and keys, every column filled.
pub fn span(i: u64) -> SpanRow {
    let base_ns = base_ns() + (i as i64) * 1_000_003;
    SpanRow {
        timestamp_ns: base_ns,
        trace_id: format!("{:032x}", 0xabc0_0000_0000u64 + i / 4),
        span_id: format!("{:016x}", 0x1000_0000u64 + i),
        parent_span_id: if i % 4 == 0 { String::new() } else { format!("{:016x}", 0x1000_0000u64 + i - 1) },
        trace_state: if i % 7 == 0 { "vendor=erp".into() } else { String::new() },
        span_name: ["POST /orders", "erp.sales_order.post", "wms.shipment.dispatch", "invoice.post"][(i % 4) as usize].into(),
        span_kind: ["Server", "Internal", "Client", "Consumer"][(i % 4) as usize].into(),
        service_name: ["b2b-portal", "sap-erp", "warehouse", "billing"][(i % 4) as usize].into(),
        resource_attributes: pairs(&[
            ("service.name", ["b2b-portal", "sap-erp", "warehouse", "billing"][(i % 4) as usize].into()),
            ("deployment.environment", "production".into()),
            ("host.name", format!("node-{}", i % 3)),
        ]),
        scope_name: "waybill.tests".into(),
        scope_version: "1.0.0".into(),
        span_attributes: pairs(&[
            ("biz.key.order", format!("PO-{}", 1000 + i / 4)),
            ("biz.key.sales_order", format!("SO-{}", 9000 + i / 4)),
            ("biz.milestone", "order.accepted".into()),
            ("http.request.method", "POST".into()),
        ]),
        duration_ns: 1_500_000 + i * 37,
        status_code: if i % 50 == 0 { "Error".into() } else { "Ok".into() },
        status_message: if i % 50 == 0 { "credit check failed".into() } else { String::new() },
        events_timestamp_ns: vec![base_ns + 500],
        events_name: vec!["credit.checked".into()],
        events_attributes: vec![pairs(&[("biz.outcome", "ok".into())])],
        links_trace_id: if i % 4 == 1 { vec![format!("{:032x}", 0xdef0_0000u64 + i)] } else { vec![] },
        links_span_id: if i % 4 == 1 { vec![format!("{:016x}", 0x2000_0000u64 + i)] } else { vec![] },
        links_trace_state: if i % 4 == 1 { vec![String::new()] } else { vec![] },
        links_attributes: if i % 4 == 1 { vec![pairs(&[("link.kind", "follows".into())])] } else { vec![] },
        source: ["portal-gateway", "sap-erp"][(i % 2) as usize].into(),
    }
}

/// Log record number `i`.
pub fn log(i: u64) -> LogRow {
    LogRow {
        timestamp_ns: base_ns() + (i as i64) * 999_983,
        trace_id: format!("{:032x}", 0xabc0_0000_0000u64 + i / 4),
        span_id: format!("{:016x}", 0x1000_0000u64 + i),
        trace_flags: 1,
        severity_text: "INFO".into(),
        severity_number: 9,
        service_name: "warehouse".into(),
        body: format!("shipment SH-{} dispatched for order PO-{}", 5000 + i, 1000 + i / 4),
        resource_schema_url: "https://opentelemetry.io/schemas/1.26.0".into(),
        resource_attributes: pairs(&[("service.name", "warehouse".into())]),
        scope_schema_url: String::new(),
        scope_name: "wms".into(),
        scope_version: "2.3".into(),
        scope_attributes: pairs(&[("team", "logistics".into())]),
        log_attributes: pairs(&[("biz.key.shipment", format!("SH-{}", 5000 + i)), ("biz.milestone", "shipment.dispatched".into())]),
        source: "warehouse".into(),
    }
}

/// Business event number `n` (distinct trace and span ids): `milestone`
/// with `outcome` in `system` at `at_ns`, carrying one key.
pub fn biz_event(n: u64, at_ns: i64, milestone: &str, system: &str, outcome: &str, (kind, value): (&str, &str)) -> BizEventRow {
    BizEventRow {
        trace_id: format!("{:032x}", 0xb12_0000 + n),
        record: "span".into(),
        span_id: format!("{:016x}", 0x77_0000 + n),
        record_index: 0,
        time_ns: at_ns,
        source_time_ns: at_ns,
        milestone: milestone.into(),
        system: system.into(),
        outcome: outcome.into(),
        key_kinds: vec![kind.into()],
        key_values: vec![value.into()],
        linked_trace_ids: vec![],
        source: system.into(),
    }
}
