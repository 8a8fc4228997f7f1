//! The systems of a distributor as OpenTelemetry SDKs (the Rust
//! `opentelemetry-otlp` exporter), one resource per system.

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry::trace::{Link, SpanContext, Status, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{LogExporter, Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;

/// The systems of a distributor, each an OpenTelemetry SDK with its own
/// resource, exporting OTLP/HTTP protobuf as it is sent (simple processors).
pub struct Systems {
    pub endpoint: String,
}

/// What one system records.
pub enum Record<'a> {
    /// A span in a new trace, or in `parent`'s trace; `error` sets status ERROR.
    Span { name: &'a str, attributes: Vec<KeyValue>, parent: Option<SpanContext>, error: bool, links: Vec<SpanContext>, events: Vec<(&'a str, Vec<KeyValue>)> },
    /// A log record, inside `parent`'s span if given.
    Log { body: &'a str, attributes: Vec<KeyValue>, parent: Option<SpanContext> },
}

pub fn span<'a>(name: &'a str, attributes: Vec<KeyValue>) -> Record<'a> {
    Record::Span { name, attributes, parent: None, error: false, links: Vec::new(), events: Vec::new() }
}

pub fn log<'a>(body: &'a str, attributes: Vec<KeyValue>, parent: Option<SpanContext>) -> Record<'a> {
    Record::Log { body, attributes, parent }
}

pub fn keys(pairs: &[(&str, &str)]) -> Vec<KeyValue> {
    pairs.iter().map(|(k, v)| KeyValue::new(k.to_string(), v.to_string())).collect()
}

/// Nanoseconds since the epoch, `minutes` from now.
pub fn at(minutes: i64) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as i64;
    (now + minutes * 60_000_000_000).to_string()
}

impl Systems {
    /// `system` records `records` in order, each exported before the next;
    /// returns the span context of each span (an invalid one for logs).
    pub async fn send(&self, system: &str, records: Vec<Record<'static>>) -> Vec<SpanContext> {
        let endpoint = self.endpoint.clone();
        let system = system.to_owned();
        tokio::task::spawn_blocking(move || {
            let resource = Resource::builder().with_service_name(system.clone()).build();
            let spans = SpanExporter::builder().with_http().with_protocol(Protocol::HttpBinary).with_endpoint(format!("{endpoint}/v1/traces")).build().unwrap();
            let logs = LogExporter::builder().with_http().with_protocol(Protocol::HttpBinary).with_endpoint(format!("{endpoint}/v1/logs")).build().unwrap();
            let tracer_provider = SdkTracerProvider::builder().with_simple_exporter(spans).with_resource(resource.clone()).build();
            let logger_provider = SdkLoggerProvider::builder().with_simple_exporter(logs).with_resource(resource).build();
            let tracer = tracer_provider.tracer(system.clone());
            let logger = logger_provider.logger(system.clone());
            let mut contexts = Vec::new();
            for record in records {
                match record {
                    Record::Span { name, attributes, parent, error, links, events } => {
                        let parent_cx = parent.map_or_else(Context::new, |p| Context::new().with_remote_span_context(p));
                        let builder = tracer
                            .span_builder(name)
                            .with_attributes(attributes)
                            .with_links(links.into_iter().map(Link::with_context).collect());
                        let span = tracer.build_with_context(builder, &parent_cx);
                        let cx = parent_cx.with_span(span);
                        let span = cx.span();
                        for (event, attributes) in events {
                            span.add_event(event, attributes);
                        }
                        if error {
                            span.set_status(Status::error("failed"));
                        }
                        contexts.push(span.span_context().clone());
                        span.end();
                    }
                    Record::Log { body, attributes, parent } => {
                        let mut record = logger.create_log_record();
                        record.set_severity_number(Severity::Info);
                        record.set_body(AnyValue::from(body.to_owned()));
                        for attribute in attributes {
                            record.add_attribute(attribute.key.to_string(), attribute.value.to_string());
                        }
                        if let Some(parent) = &parent {
                            record.set_trace_context(parent.trace_id(), parent.span_id(), Some(parent.trace_flags()));
                        }
                        logger.emit(record);
                        contexts.push(SpanContext::empty_context());
                    }
                }
            }
            tracer_provider.shutdown().unwrap();
            logger_provider.shutdown().unwrap();
            contexts
        })
        .await
        .unwrap()
    }
}

