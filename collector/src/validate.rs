//! Record-level validation. Records the specification calls invalid are
//! dropped from the request and reported back as a partial success
//! (`rejected_spans` / `rejected_log_records` with a message); the rest of
//! the request is stored.
//!
//! Invalid: a span whose trace id is not 16 bytes or is all zeros, whose
//! span id is not 8 bytes or is all zeros, or whose parent span id is
//! neither empty nor 8 bytes; a log record whose trace id or span id is
//! present but of the wrong length (OTLP specification, "Data model").

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
