//! What every protocol does with a decoded export request, per signal:
//! drop invalid records, apply the attribute limits, count, hand it to the
//! sink, and build the response with its partial success.

use std::future::Future;

use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsPartialSuccess, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTracePartialSuccess, ExportTraceServiceResponse};
use prost::Message;

use crate::sink::{Accepted, Sink, SinkError};
use crate::validate::{self, AttributeLimits, Rejected, Truncated};
use crate::{metrics, ExportLogsServiceRequest, ExportTraceServiceRequest};

/// An OTLP export request of one signal.
pub(crate) trait Signal: Message + Default + serde::de::DeserializeOwned + Send + 'static {
    /// The metrics label: `traces` or `logs`.
    const NAME: &'static str;
    type Response: Message + serde::Serialize + Send + 'static;

    fn retain_valid(&mut self) -> Rejected;
    fn limit(&mut self, limits: &AttributeLimits) -> Truncated;
    fn records(&self) -> u64;
    fn response(rejected: &Rejected) -> Self::Response;
    fn accept<S: Sink>(self, sink: &S, source: String) -> impl Future<Output = Result<Accepted, SinkError>> + Send;
}

impl Signal for ExportTraceServiceRequest {
    const NAME: &'static str = "traces";
    type Response = ExportTraceServiceResponse;

    fn retain_valid(&mut self) -> Rejected {
        validate::retain_valid_spans(self)
    }
    fn limit(&mut self, limits: &AttributeLimits) -> Truncated {
        limits.apply_to_spans(self)
    }
    fn records(&self) -> u64 {
        self.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len() as u64).sum()
    }
    fn response(rejected: &Rejected) -> Self::Response {
        let partial_success = (rejected.count > 0).then(|| ExportTracePartialSuccess {
            rejected_spans: rejected.count as i64,
            error_message: rejected.message("spans"),
        });
        ExportTraceServiceResponse { partial_success }
    }
    fn accept<S: Sink>(self, sink: &S, source: String) -> impl Future<Output = Result<Accepted, SinkError>> + Send {
        sink.accept_traces(self, source)
    }
}

impl Signal for ExportLogsServiceRequest {
    const NAME: &'static str = "logs";
    type Response = ExportLogsServiceResponse;

    fn retain_valid(&mut self) -> Rejected {
        validate::retain_valid_logs(self)
    }
    fn limit(&mut self, limits: &AttributeLimits) -> Truncated {
        limits.apply_to_logs(self)
    }
    fn records(&self) -> u64 {
        self.resource_logs.iter().flat_map(|r| &r.scope_logs).map(|s| s.log_records.len() as u64).sum()
    }
    fn response(rejected: &Rejected) -> Self::Response {
        let partial_success = (rejected.count > 0).then(|| ExportLogsPartialSuccess {
            rejected_log_records: rejected.count as i64,
            error_message: rejected.message("log records"),
        });
        ExportLogsServiceResponse { partial_success }
    }
    fn accept<S: Sink>(self, sink: &S, source: String) -> impl Future<Output = Result<Accepted, SinkError>> + Send {
        sink.accept_logs(self, source)
    }
}

/// Validates, limits and stores `request` for `protocol`, counting every
/// step (the sink's refusals included). Returns the response or the refusal.
pub(crate) async fn export<T: Signal, S: Sink>(
    sink: &S,
    mut request: T,
    source: String,
    limits: &AttributeLimits,
    protocol: &str,
) -> Result<T::Response, SinkError> {
    let rejected = request.retain_valid();
    metrics::invalid(T::NAME, protocol, rejected.count);
    metrics::truncated(T::NAME, protocol, &request.limit(limits));
    let records = request.records();
    match request.accept(sink, source).await {
        Ok(accepted) => {
            let counter = match accepted {
                Accepted::Stored => &metrics::ACCEPTED_RECORDS,
                Accepted::AlreadyStored => &metrics::RESENT_RECORDS,
            };
            counter.with_label_values(&[T::NAME, protocol]).inc_by(records);
            Ok(T::response(&rejected))
        }
        Err(err) => {
            metrics::refused(T::NAME, protocol, metrics::sink_reason(&err), records);
            Err(err)
        }
    }
}
