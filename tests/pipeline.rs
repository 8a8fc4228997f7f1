//! The ingest pipeline against the embedded engine: a batch is closed by
//! its row or byte bound without waiting out the linger, an exporter that
//! sends one request at a time does not wait for it, and every request is
//! stored once however often it is sent.

mod common;

use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use waybill::pipeline::{Pipeline, PipelineConfig};
use waybill_collector::{Accepted, Sink, SinkError};
use waybill_lineage::{Extractor, LineageConfig};

/// A request with `spans` spans of service `portal`.
fn request(first: u8, spans: u8) -> ExportTraceServiceRequest {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let spans = (first..first + spans)
        .map(|i| Span {
            trace_id: vec![i; 16],
            span_id: vec![i; 8],
            name: format!("span {i}"),
            start_time_unix_nano: now,
            end_time_unix_nano: now + 1_000,
            ..Default::default()
        })
        .collect();
    let service = KeyValue {
        key: "service.name".into(),
        key_strindex: 0,
        value: Some(AnyValue { value: Some(any_value::Value::StringValue("portal".into())) }),
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource { attributes: vec![service], ..Default::default() }),
            scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
            ..Default::default()
        }],
    }
}

fn start(store: &waybill_store::Store, config: PipelineConfig) -> (std::sync::Arc<Pipeline>, tokio::task::JoinHandle<()>) {
    Pipeline::start(store.clone(), config, Extractor::new(&LineageConfig::default()), None)
}

/// Sends `requests` requests of 3 spans, one at a time, while the writer
/// could linger far longer than the test waits: each must be acknowledged
/// without waiting out the linger (else the test fails with `waited`).
async fn sent_one_at_a_time_without_waiting_out_the_linger(database: &str, config: PipelineConfig, requests: u8, waited: &str) {
    let store = common::store(database).await;
    let (pipeline, writer) = start(&store, config);
    for first in (0..requests).map(|i| i * 10 + 1) {
        tokio::time::timeout(Duration::from_secs(60), pipeline.accept_traces(request(first, 3), "test".into()))
            .await
            .expect(waited)
            .unwrap();
    }
    let count: Vec<u64> = store.fetch_all("SELECT count() FROM otel_traces").await.unwrap();
    assert_eq!(count, [u64::from(requests) * 3]);
    drop(pipeline);
    writer.await.unwrap();
    common::drop_database(&store).await;
}

const LINGER: Duration = Duration::from_secs(600);
const BOUND_WAITED: &str = "the batch waited for its linger instead of closing at its bound";

#[tokio::test]
async fn a_batch_closes_at_its_byte_bound() {
    let config = PipelineConfig { max_batch_bytes: 1, flush_interval: LINGER, adaptive_flush: false, ..PipelineConfig::default() };
    sent_one_at_a_time_without_waiting_out_the_linger("t_pipeline_bytes", config, 2, BOUND_WAITED).await;
}

#[tokio::test]
async fn a_batch_closes_at_its_row_bound() {
    let config = PipelineConfig { max_batch_rows: 3, flush_interval: LINGER, adaptive_flush: false, ..PipelineConfig::default() };
    sent_one_at_a_time_without_waiting_out_the_linger("t_pipeline_rows", config, 2, BOUND_WAITED).await;
}

/// An exporter that waits for each answer before sending again gains
/// nothing from a linger. Alone, none of its requests is queued during a
/// write, so the adaptive linger never grows and each request is written
/// at once, although the linger could reach 600 s.
#[tokio::test]
async fn an_exporter_sending_one_request_at_a_time_does_not_wait_for_the_linger() {
    let config = PipelineConfig { flush_interval: LINGER, ..PipelineConfig::default() };
    sent_one_at_a_time_without_waiting_out_the_linger("t_pipeline_lone", config, 10, "a lone exporter's request waited for the linger").await;
}

/// Below both bounds, requests queued during a fixed linger share one batch.
#[tokio::test]
async fn requests_within_the_linger_share_a_batch() {
    let store = common::store("t_pipeline_linger").await;
    let config = PipelineConfig { flush_interval: Duration::from_millis(1500), adaptive_flush: false, ..PipelineConfig::default() };
    let (pipeline, writer) = start(&store, config);
    let (a, b) = tokio::join!(
        pipeline.accept_traces(request(1, 2), "test".into()),
        pipeline.accept_traces(request(20, 2), "test".into())
    );
    a.unwrap();
    b.unwrap();
    // One INSERT wrote all four rows: they share one part.
    let parts: Vec<(u64, u64)> = store
        .fetch_all("SELECT count(), sum(rows) FROM system.parts WHERE database = currentDatabase() AND table = 'otel_traces' AND active")
        .await
        .unwrap();
    assert_eq!(parts, [(1, 4)]);
    drop(pipeline);
    writer.await.unwrap();
    common::drop_database(&store).await;
}

/// With two writers, every request of a burst is stored exactly once, and
/// both writers end once the pipeline is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_store_a_burst_exactly_once() {
    let store = common::store("t_pipeline_writers").await;
    let (pipeline, writer) = start(&store, PipelineConfig { writers: 2, max_batch_rows: 4, ..PipelineConfig::default() });
    let sends = (0..40u8).map(|i| {
        let pipeline = pipeline.clone();
        tokio::spawn(async move { pipeline.accept_traces(request(i * 2 + 1, 2), "test".into()).await })
    });
    for send in sends.collect::<Vec<_>>() {
        assert_eq!(send.await.unwrap().unwrap(), Accepted::Stored);
    }
    let rows: Vec<(u64, u64)> = store.fetch_all("SELECT count(), uniqExact(SpanId) FROM otel_traces").await.unwrap();
    assert_eq!(rows, [(80, 80)]);
    drop(pipeline);
    tokio::time::timeout(Duration::from_secs(60), writer).await.expect("both writers end once the pipeline is dropped").unwrap();
    common::drop_database(&store).await;
}

/// A resend of a stored request is acknowledged as such and adds no rows.
#[tokio::test]
async fn a_resend_of_a_stored_request_is_not_stored_again() {
    let store = common::store("t_pipeline_resend").await;
    let (pipeline, writer) = start(&store, PipelineConfig::default());
    let sent = request(1, 2);
    assert_eq!(pipeline.accept_traces(sent.clone(), "erp".into()).await.unwrap(), Accepted::Stored);
    assert_eq!(pipeline.accept_traces(sent.clone(), "erp".into()).await.unwrap(), Accepted::AlreadyStored);
    // The same records from another source are another request.
    assert_eq!(pipeline.accept_traces(sent, "wms".into()).await.unwrap(), Accepted::Stored);
    let count: Vec<u64> = store.fetch_all("SELECT count() FROM otel_traces").await.unwrap();
    assert_eq!(count, [4]);
    drop(pipeline);
    writer.await.unwrap();
    common::drop_database(&store).await;
}

/// `request` with an order key on every span, so each span is also a
/// business event.
fn business_request(first: u8, spans: u8) -> ExportTraceServiceRequest {
    let mut request = request(first, spans);
    for span in &mut request.resource_spans[0].scope_spans[0].spans {
        let order = format!("PO-{}", span.span_id[0]);
        span.attributes.push(KeyValue {
            key: "biz.key.order".into(),
            key_strindex: 0,
            value: Some(AnyValue { value: Some(any_value::Value::StringValue(order)) }),
        });
    }
    request
}

async fn spans_and_business_events(store: &waybill_store::Store) -> (u64, u64) {
    let count = |table: &str| format!("SELECT count() FROM {table}");
    let spans: Vec<u64> = store.fetch_all(&count("otel_traces")).await.unwrap();
    let business: Vec<u64> = store.fetch_all(&count("biz_events")).await.unwrap();
    (spans[0], business[0])
}

/// Spans and business events are written side by side. When the engine
/// takes a batch's spans but refuses its business events, the client is
/// told to retry, and the resend writes only the business events: nothing
/// is lost and no span is stored twice.
#[tokio::test]
async fn a_resend_after_refused_business_events_stores_them_without_doubling_its_spans() {
    let store = common::store("t_pipeline_partial").await;
    store.execute("ALTER TABLE biz_events ADD CONSTRAINT refuse_for_the_test CHECK Milestone = 'never'").await.unwrap();
    let (pipeline, writer) = start(&store, PipelineConfig { retry_for: Duration::from_millis(300), ..PipelineConfig::default() });
    let sent = business_request(1, 3);
    let refused = pipeline.accept_traces(sent.clone(), "erp".into()).await;
    assert!(matches!(refused, Err(SinkError::Unavailable { .. })), "the client is told to retry: {refused:?}");
    assert_eq!(spans_and_business_events(&store).await, (3, 0), "the spans went in beside the refused business events");

    store.execute("ALTER TABLE biz_events DROP CONSTRAINT refuse_for_the_test").await.unwrap();
    assert_eq!(pipeline.accept_traces(sent.clone(), "erp".into()).await.unwrap(), Accepted::Stored);
    assert_eq!(spans_and_business_events(&store).await, (3, 3), "the resend added the business events and no span");
    assert_eq!(pipeline.accept_traces(sent, "erp".into()).await.unwrap(), Accepted::AlreadyStored);
    drop(pipeline);
    writer.await.unwrap();
    common::drop_database(&store).await;
}
