//! From decoded OTLP requests to stored rows: the sink the binary gives the
//! collector. Rows are written as the OpenTelemetry Collector's ClickHouse
//! exporter writes them (span kind and status as `Server` / `Error`, ids as
//! lowercase hex, attribute values as pdata's `AsString`).
//!
//! Today each request is converted and inserted on its own and acknowledged
//! once the insert returns. Batching across requests, a bounded queue with
//! backpressure, and deduplication of retried batches are not built yet.

use std::collections::BTreeMap;
use std::time::Duration;

use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use waybill_collector::{ExportLogsServiceRequest, ExportTraceServiceRequest, Sink, SinkError};
use waybill_store::{LogRow, SpanRow, Store};

/// Writes each accepted request to the store before acknowledging it.
pub struct StoreSink {
    store: Store,
}

impl StoreSink {
    pub fn new(store: Store) -> Self {
        StoreSink { store }
    }
}

const STORE_RETRY_AFTER: Duration = Duration::from_secs(5);

fn unavailable(err: impl std::fmt::Display) -> SinkError {
    SinkError::Unavailable { reason: err.to_string(), retry_after: STORE_RETRY_AFTER }
}

impl Sink for StoreSink {
    async fn accept_traces(&self, request: ExportTraceServiceRequest) -> Result<(), SinkError> {
        let rows = tokio::task::spawn_blocking(move || span_rows(&request)).await.map_err(unavailable)?;
        if rows.is_empty() {
            return Ok(());
        }
        self.store.insert_spans(&rows).await.map_err(unavailable)
    }

    async fn accept_logs(&self, request: ExportLogsServiceRequest) -> Result<(), SinkError> {
        let rows = tokio::task::spawn_blocking(move || log_rows(&request)).await.map_err(unavailable)?;
        if rows.is_empty() {
            return Ok(());
        }
        self.store.insert_logs(&rows).await.map_err(unavailable)
    }
}

/// Lowercase hex of an id; empty when the id is empty or all zero bytes.
fn hex_id(bytes: &[u8]) -> String {
    if bytes.iter().all(|&b| b == 0) {
        return String::new();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The exporter's `SpanKindStr` / pdata `SpanKind.String()`.
fn span_kind(kind: i32) -> &'static str {
    match kind {
        1 => "Internal",
        2 => "Server",
        3 => "Client",
        4 => "Producer",
        5 => "Consumer",
        _ => "Unspecified",
    }
}

fn status_code(code: i32) -> &'static str {
    match code {
        1 => "Ok",
        2 => "Error",
        _ => "Unset",
    }
}

/// pdata's `Value.AsString`: strings as they are, numbers and bools in
/// JSON's spelling, bytes as base64, arrays and maps as JSON.
fn value_string(value: Option<&AnyValue>) -> String {
    use any_value::Value;
    match value.and_then(|v| v.value.as_ref()) {
        None => String::new(),
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => float_string(*d),
        Some(Value::BytesValue(bytes)) => base64(bytes),
        Some(Value::ArrayValue(_)) | Some(Value::KvlistValue(_)) => raw_json(value).to_string(),
        Some(Value::StringValueStrindex(_)) => String::new(),
    }
}

/// A value as pdata's `AsRaw` would marshal it to JSON (map keys sorted).
fn raw_json(value: Option<&AnyValue>) -> serde_json::Value {
    use any_value::Value;
    match value.and_then(|v| v.value.as_ref()) {
        None | Some(Value::StringValueStrindex(_)) => serde_json::Value::Null,
        Some(Value::StringValue(s)) => s.clone().into(),
        Some(Value::BoolValue(b)) => (*b).into(),
        Some(Value::IntValue(i)) => (*i).into(),
        Some(Value::DoubleValue(d)) => serde_json::Number::from_f64(*d).map_or(serde_json::Value::Null, Into::into),
        Some(Value::BytesValue(bytes)) => base64(bytes).into(),
        Some(Value::ArrayValue(array)) => array.values.iter().map(|v| raw_json(Some(v))).collect(),
        Some(Value::KvlistValue(list)) => list
            .values
            .iter()
            .map(|kv| (kv.key.clone(), raw_json(kv.value.as_ref())))
            .collect::<BTreeMap<_, _>>()
            .into_iter()
            .collect(),
    }
}

/// Go's JSON float spelling (ES6 number to string), as pdata uses it.
fn float_string(f: f64) -> String {
    if !f.is_finite() {
        let go = if f.is_nan() { "NaN" } else if f > 0.0 { "+Inf" } else { "-Inf" };
        return format!("json: unsupported value: {go}");
    }
    let abs = f.abs();
    if abs != 0.0 && !(1e-6..1e21).contains(&abs) {
        let text = format!("{f:e}");
        // Rust writes 1e21 and 1e-7; Go writes 1e+21 and 1e-7.
        match text.split_once('e') {
            Some((mantissa, exponent)) if !exponent.starts_with('-') => format!("{mantissa}e+{exponent}"),
            _ => text,
        }
    } else {
        format!("{f}")
    }
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, &b)| acc | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn attributes(list: &[KeyValue]) -> Vec<(String, String)> {
    list.iter().map(|kv| (kv.key.clone(), value_string(kv.value.as_ref()))).collect()
}

/// `service.name` of a resource, when it is a string.
fn service_name(attributes: &[KeyValue]) -> String {
    attributes
        .iter()
        .find(|kv| kv.key == "service.name")
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

fn nanos(unix_nano: u64) -> i64 {
    i64::try_from(unix_nano).unwrap_or(i64::MAX)
}

/// One row per span.
pub fn span_rows(request: &ExportTraceServiceRequest) -> Vec<SpanRow> {
    let mut rows = Vec::new();
    for resource_spans in &request.resource_spans {
        let resource = resource_spans.resource.as_ref().map(|r| r.attributes.as_slice()).unwrap_or_default();
        let resource_attributes = attributes(resource);
        let service = service_name(resource);
        for scope_spans in &resource_spans.scope_spans {
            let (scope_name, scope_version) = scope_spans
                .scope
                .as_ref()
                .map(|s| (s.name.clone(), s.version.clone()))
                .unwrap_or_default();
            for span in &scope_spans.spans {
                let status = span.status.as_ref();
                rows.push(SpanRow {
                    timestamp_ns: nanos(span.start_time_unix_nano),
                    trace_id: hex_id(&span.trace_id),
                    span_id: hex_id(&span.span_id),
                    parent_span_id: hex_id(&span.parent_span_id),
                    trace_state: span.trace_state.clone(),
                    span_name: span.name.clone(),
                    span_kind: span_kind(span.kind).to_owned(),
                    service_name: service.clone(),
                    resource_attributes: resource_attributes.clone(),
                    scope_name: scope_name.clone(),
                    scope_version: scope_version.clone(),
                    span_attributes: attributes(&span.attributes),
                    duration_ns: span.end_time_unix_nano.saturating_sub(span.start_time_unix_nano),
                    status_code: status_code(status.map_or(0, |s| s.code)).to_owned(),
                    status_message: status.map(|s| s.message.clone()).unwrap_or_default(),
                    events_timestamp_ns: span.events.iter().map(|e| nanos(e.time_unix_nano)).collect(),
                    events_name: span.events.iter().map(|e| e.name.clone()).collect(),
                    events_attributes: span.events.iter().map(|e| attributes(&e.attributes)).collect(),
                    links_trace_id: span.links.iter().map(|l| hex_id(&l.trace_id)).collect(),
                    links_span_id: span.links.iter().map(|l| hex_id(&l.span_id)).collect(),
                    links_trace_state: span.links.iter().map(|l| l.trace_state.clone()).collect(),
                    links_attributes: span.links.iter().map(|l| attributes(&l.attributes)).collect(),
                });
            }
        }
    }
    rows
}

/// One row per log record; the observed time stands in for a missing time.
pub fn log_rows(request: &ExportLogsServiceRequest) -> Vec<LogRow> {
    let mut rows = Vec::new();
    for resource_logs in &request.resource_logs {
        let resource = resource_logs.resource.as_ref().map(|r| r.attributes.as_slice()).unwrap_or_default();
        let resource_attributes = attributes(resource);
        let service = service_name(resource);
        for scope_logs in &resource_logs.scope_logs {
            let scope = scope_logs.scope.as_ref();
            for record in &scope_logs.log_records {
                let time = if record.time_unix_nano == 0 { record.observed_time_unix_nano } else { record.time_unix_nano };
                rows.push(LogRow {
                    timestamp_ns: nanos(time),
                    trace_id: hex_id(&record.trace_id),
                    span_id: hex_id(&record.span_id),
                    trace_flags: (record.flags & 0xff) as u8,
                    severity_text: record.severity_text.clone(),
                    severity_number: u8::try_from(record.severity_number).unwrap_or(0),
                    service_name: service.clone(),
                    body: value_string(record.body.as_ref()),
                    resource_schema_url: resource_logs.schema_url.clone(),
                    resource_attributes: resource_attributes.clone(),
                    scope_schema_url: scope_logs.schema_url.clone(),
                    scope_name: scope.map(|s| s.name.clone()).unwrap_or_default(),
                    scope_version: scope.map(|s| s.version.clone()).unwrap_or_default(),
                    scope_attributes: scope.map(|s| attributes(&s.attributes)).unwrap_or_default(),
                    log_attributes: attributes(&record.attributes),
                });
            }
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{ArrayValue as Array, KeyValueList};

    fn any(value: any_value::Value) -> AnyValue {
        AnyValue { value: Some(value) }
    }

    #[test]
    fn values_are_spelled_as_pdata_as_string() {
        use any_value::Value::*;
        assert_eq!(value_string(Some(&any(StringValue("PO-1001".into())))), "PO-1001");
        assert_eq!(value_string(Some(&any(IntValue(-42)))), "-42");
        assert_eq!(value_string(Some(&any(BoolValue(true)))), "true");
        assert_eq!(value_string(Some(&any(DoubleValue(1.5)))), "1.5");
        assert_eq!(value_string(Some(&any(DoubleValue(100.0)))), "100");
        assert_eq!(value_string(Some(&any(DoubleValue(1e21)))), "1e+21");
        assert_eq!(value_string(Some(&any(DoubleValue(1e-7)))), "1e-7");
        assert_eq!(value_string(Some(&any(DoubleValue(f64::NAN)))), "json: unsupported value: NaN");
        assert_eq!(value_string(Some(&any(BytesValue(b"any carnal pleas".to_vec())))), "YW55IGNhcm5hbCBwbGVhcw==");
        assert_eq!(value_string(Some(&any(BytesValue(b"ab".to_vec())))), "YWI=");
        let array = Array { values: vec![any(IntValue(1)), any(StringValue("x".into()))] };
        assert_eq!(value_string(Some(&any(ArrayValue(array)))), r#"[1,"x"]"#);
        let map = KeyValueList {
            values: vec![
                KeyValue { key: "z".into(), value: Some(any(BoolValue(false))), ..Default::default() },
                KeyValue { key: "a".into(), value: Some(any(DoubleValue(2.5))), ..Default::default() },
            ],
        };
        assert_eq!(value_string(Some(&any(KvlistValue(map)))), r#"{"a":2.5,"z":false}"#);
        assert_eq!(value_string(None), "");
    }

    #[test]
    fn ids_are_lowercase_hex_and_empty_when_zero() {
        assert_eq!(hex_id(&[0xAB, 0x01]), "ab01");
        assert_eq!(hex_id(&[0; 8]), "");
        assert_eq!(hex_id(&[]), "");
        assert_eq!(span_kind(2), "Server");
        assert_eq!(status_code(2), "Error");
    }
}
