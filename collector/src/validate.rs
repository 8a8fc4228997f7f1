//! Record-level validation. Records the specification calls invalid are
//! dropped from the request and reported back as a partial success
//! (`rejected_spans` / `rejected_log_records` with a message); the rest of
//! the request is stored.
//!
//! Invalid: a span whose trace id is not 16 bytes or is all zeros, whose
//! span id is not 8 bytes or is all zeros, or whose parent span id is
//! neither empty nor 8 bytes; a log record whose trace id or span id is
//! present but of the wrong length (OTLP specification, "Data model").

use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};

use crate::{ExportLogsServiceRequest, ExportTraceServiceRequest};

/// What validation removed from a request.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rejected {
    pub count: u64,
    /// The first reason, for the partial-success message.
    pub first_reason: Option<String>,
}

impl Rejected {
    fn note(&mut self, reason: impl FnOnce() -> String) {
        self.count += 1;
        if self.first_reason.is_none() {
            self.first_reason = Some(reason());
        }
    }

    /// The partial-success message, or empty when nothing was rejected.
    pub fn message(&self, what: &str) -> String {
        match &self.first_reason {
            Some(reason) => format!("{} {what} rejected; first: {reason}", self.count),
            None => String::new(),
        }
    }
}

fn id_problem(name: &str, id: &[u8], len: usize, required: bool) -> Option<String> {
    if id.is_empty() && !required {
        return None;
    }
    if id.len() != len {
        return Some(format!("{name} must be {len} bytes, got {}", id.len()));
    }
    if required && id.iter().all(|&b| b == 0) {
        return Some(format!("{name} must not be all zeros"));
    }
    None
}

/// Removes invalid spans from `request`.
pub fn retain_valid_spans(request: &mut ExportTraceServiceRequest) -> Rejected {
    let mut rejected = Rejected::default();
    for resource_spans in &mut request.resource_spans {
        for scope_spans in &mut resource_spans.scope_spans {
            scope_spans.spans.retain(|span| {
                let problem = id_problem("trace_id", &span.trace_id, 16, true)
                    .or_else(|| id_problem("span_id", &span.span_id, 8, true))
                    .or_else(|| id_problem("parent_span_id", &span.parent_span_id, 8, false));
                match problem {
                    Some(problem) => {
                        rejected.note(|| format!("span {:?}: {problem}", span.name));
                        false
                    }
                    None => true,
                }
            });
        }
    }
    rejected
}

/// Removes invalid log records from `request`.
pub fn retain_valid_logs(request: &mut ExportLogsServiceRequest) -> Rejected {
    let mut rejected = Rejected::default();
    for resource_logs in &mut request.resource_logs {
        for scope_logs in &mut resource_logs.scope_logs {
            scope_logs.log_records.retain(|record| {
                let problem = id_problem("trace_id", &record.trace_id, 16, false)
                    .or_else(|| id_problem("span_id", &record.span_id, 8, false));
                match problem {
                    Some(problem) => {
                        rejected.note(|| format!("log record: {problem}"));
                        false
                    }
                    None => true,
                }
            });
        }
    }
    rejected
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    fn span(name: &str, trace_id: Vec<u8>, span_id: Vec<u8>) -> Span {
        Span { name: name.into(), trace_id, span_id, ..Default::default() }
    }

    #[test]
    fn spans_with_bad_ids_are_removed_and_counted() {
        let mut request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![
                        span("ok", vec![1; 16], vec![2; 8]),
                        span("short", vec![1; 5], vec![2; 8]),
                        span("zero", vec![0; 16], vec![2; 8]),
                        Span { parent_span_id: vec![3; 4], ..span("parent", vec![1; 16], vec![2; 8]) },
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let rejected = retain_valid_spans(&mut request);
        assert_eq!(rejected.count, 3);
        assert_eq!(rejected.message("spans"), "3 spans rejected; first: span \"short\": trace_id must be 16 bytes, got 5");
        let kept: Vec<&str> = request.resource_spans[0].scope_spans[0].spans.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(kept, ["ok"]);
    }

    #[test]
    fn log_records_may_omit_ids_but_not_misshape_them() {
        let mut request = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: vec![
                        LogRecord::default(),
                        LogRecord { trace_id: vec![1; 16], span_id: vec![2; 8], ..Default::default() },
                        LogRecord { span_id: vec![2; 3], ..Default::default() },
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let rejected = retain_valid_logs(&mut request);
        assert_eq!(rejected.count, 1);
        assert_eq!(request.resource_logs[0].scope_logs[0].log_records.len(), 2);
        assert_eq!(Rejected::default().message("spans"), "");
    }
}

/// Bounds on attributes, applied to every record, its resource and scope,
/// span events and links.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttributeLimits {
    /// Attributes kept per list; the rest are dropped (and counted).
    pub max_attributes: usize,
    /// Longest string value in bytes; longer ones are cut at a character
    /// boundary (and counted).
    pub max_value_bytes: usize,
}

impl Default for AttributeLimits {
    fn default() -> Self {
        AttributeLimits { max_attributes: 128, max_value_bytes: 8192 }
    }
}

/// What the limits changed in a request.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Truncated {
    pub attributes_dropped: u64,
    pub values_truncated: u64,
}

impl AttributeLimits {
    fn apply(&self, attributes: &mut Vec<KeyValue>, truncated: &mut Truncated) {
        if attributes.len() > self.max_attributes {
            truncated.attributes_dropped += (attributes.len() - self.max_attributes) as u64;
            attributes.truncate(self.max_attributes);
        }
        for attribute in attributes.iter_mut() {
            if let Some(value) = attribute.value.as_mut() {
                self.apply_value(value, truncated);
            }
        }
    }

    fn apply_value(&self, value: &mut AnyValue, truncated: &mut Truncated) {
        match value.value.as_mut() {
            Some(any_value::Value::StringValue(text)) if text.len() > self.max_value_bytes => {
                let mut end = self.max_value_bytes;
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                text.truncate(end);
                truncated.values_truncated += 1;
            }
            Some(any_value::Value::ArrayValue(array)) => {
                array.values.iter_mut().for_each(|v| self.apply_value(v, truncated));
            }
            Some(any_value::Value::KvlistValue(list)) => self.apply(&mut list.values, truncated),
            _ => {}
        }
    }

    /// Applies the limits to every attribute list of a trace export.
    pub fn apply_to_spans(&self, request: &mut ExportTraceServiceRequest) -> Truncated {
        let mut truncated = Truncated::default();
        for resource_spans in &mut request.resource_spans {
            if let Some(resource) = resource_spans.resource.as_mut() {
                self.apply(&mut resource.attributes, &mut truncated);
            }
            for scope_spans in &mut resource_spans.scope_spans {
                if let Some(scope) = scope_spans.scope.as_mut() {
                    self.apply(&mut scope.attributes, &mut truncated);
                }
                for span in &mut scope_spans.spans {
                    self.apply(&mut span.attributes, &mut truncated);
                    span.events.iter_mut().for_each(|e| self.apply(&mut e.attributes, &mut truncated));
                    span.links.iter_mut().for_each(|l| self.apply(&mut l.attributes, &mut truncated));
                }
            }
        }
        truncated
    }

    /// Applies the limits to every attribute list of a log export.
    pub fn apply_to_logs(&self, request: &mut ExportLogsServiceRequest) -> Truncated {
        let mut truncated = Truncated::default();
        for resource_logs in &mut request.resource_logs {
            if let Some(resource) = resource_logs.resource.as_mut() {
                self.apply(&mut resource.attributes, &mut truncated);
            }
            for scope_logs in &mut resource_logs.scope_logs {
                if let Some(scope) = scope_logs.scope.as_mut() {
                    self.apply(&mut scope.attributes, &mut truncated);
                }
                scope_logs.log_records.iter_mut().for_each(|r| self.apply(&mut r.attributes, &mut truncated));
            }
        }
        truncated
    }
}

#[cfg(test)]
mod limit_tests {
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    fn text(key: &str, value: &str) -> KeyValue {
        KeyValue { key: key.into(), value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.into())) }), ..Default::default() }
    }

    #[test]
    fn long_values_are_cut_at_a_character_boundary_and_extra_attributes_dropped() {
        let limits = AttributeLimits { max_attributes: 2, max_value_bytes: 2 };
        let span = Span {
            attributes: vec![text("a", "ZürichX"), text("b", "ok"), text("c", "dropped")],
            ..Default::default()
        };
        let mut request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans { spans: vec![span], ..Default::default() }],
                ..Default::default()
            }],
        };
        let truncated = limits.apply_to_spans(&mut request);
        assert_eq!(truncated, Truncated { attributes_dropped: 1, values_truncated: 1 });
        let kept = &request.resource_spans[0].scope_spans[0].spans[0].attributes;
        assert_eq!(kept.len(), 2);
        // "ü" takes bytes 1-2, so a 2-byte cut keeps only "Z".
        assert_eq!(kept[0].value, text("a", "Z").value);
        assert_eq!(kept[1].value, text("b", "ok").value);
    }
}
