//! OTLP/gRPC receiver, per the OTLP specification ("OTLP/gRPC"):
//! `TraceService/Export` and `LogsService/Export`, gzip accepted. Other
//! services, metrics among them, answer UNIMPLEMENTED. A busy pipeline
//! answers RESOURCE_EXHAUSTED and an unavailable store UNAVAILABLE, both with
//! a `google.rpc.RetryInfo`: the specification makes RESOURCE_EXHAUSTED
//! retryable only when RetryInfo says so, and exporters drop data otherwise.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{LogsService, LogsServiceServer};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use tokio::net::TcpListener;
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status};

use crate::admission::Admission;
use crate::auth::Sources;
use crate::signal::{self, Signal};
use crate::validate::AttributeLimits;
use crate::metrics;
use crate::sink::{Sink, SinkError};
use crate::{ExportLogsServiceRequest, ExportTraceServiceRequest};

struct Receiver<S> {
    sink: Arc<S>,
    limits: AttributeLimits,
    sources: Sources,
    admission: Admission,
}

impl<S> Receiver<S> {
    /// The request's source from its `authorization` metadata.
    fn identify<T>(&self, request: &Request<T>, signal: &str) -> Result<String, Status> {
        let authorization = request.metadata().get("authorization").and_then(|v| v.to_str().ok());
        self.sources.identify(authorization).ok_or_else(|| {
            metrics::refused(signal, "grpc", "unauthenticated", 0);
            Status::unauthenticated("a valid bearer token is required: send metadata authorization: Bearer <token>")
        })
    }
}

fn status_from(err: SinkError) -> Status {
    use tonic_types::{ErrorDetails, StatusExt};
    let (code, retry_after) = match &err {
        SinkError::Busy { retry_after } => (tonic::Code::ResourceExhausted, *retry_after),
        SinkError::Unavailable { retry_after, .. } => (tonic::Code::Unavailable, *retry_after),
    };
    Status::with_error_details(code, err.to_string(), ErrorDetails::with_retry_info(Some(retry_after)))
}

impl<S: Sink> Receiver<S> {
    async fn export<T: Signal>(&self, request: Request<T>) -> Result<Response<T::Response>, Status> {
        let source = self.identify(&request, T::NAME)?;
        // tonic has decoded the message already; from here on (rows, queue,
        // store) its memory counts against the budget.
        let _admitted = self.admission.admit(request.get_ref().encoded_len()).await.map_err(|err| {
            metrics::refused(T::NAME, "grpc", metrics::sink_reason(&err), 0);
            status_from(err)
        })?;
        signal::export(self.sink.as_ref(), request.into_inner(), source, &self.limits, "grpc")
            .await
            .map(Response::new)
            .map_err(status_from)
    }
}

#[tonic::async_trait]
impl<S: Sink> TraceService for Receiver<S> {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        Receiver::export(self, request).await
    }
}

#[tonic::async_trait]
impl<S: Sink> LogsService for Receiver<S> {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        Receiver::export(self, request).await
    }
}

/// Serves OTLP/gRPC on `listener` until `shutdown` resolves, then finishes
/// the requests in flight. `max_message_bytes` bounds a decoded (and
/// decompressed) request; tonic refuses larger ones with OUT_OF_RANGE. Each
/// decoded request takes its size from `admission` until it is answered.
pub async fn serve<S: Sink>(
    listener: TcpListener,
    sink: Arc<S>,
    max_message_bytes: usize,
    limits: AttributeLimits,
    sources: Sources,
    admission: Admission,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let traces = TraceServiceServer::new(Receiver { sink: sink.clone(), limits, sources: sources.clone(), admission: admission.clone() })
        .accept_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(max_message_bytes);
    let logs = LogsServiceServer::new(Receiver { sink, limits, sources, admission })
        .accept_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(max_message_bytes);
    tonic::transport::Server::builder()
        .layer(tower::layer::layer_fn(CountCodecRefusals))
        .add_service(traces)
        .add_service(logs)
        .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(listener), shutdown)
        .await
}

/// Counts the refusals tonic makes before a request reaches a receiver:
/// undecodable messages (INTERNAL), oversize ones (OUT_OF_RANGE), and
/// unsupported compression or services (UNIMPLEMENTED). The receivers' own
/// refusals use other codes and are counted where they are made.
#[derive(Clone)]
struct CountCodecRefusals<S>(S);

impl<S, B, R> tower::Service<axum::http::Request<B>> for CountCodecRefusals<S>
where
    S: tower::Service<axum::http::Request<B>, Response = axum::http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: axum::http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        let signal = if path.starts_with("/opentelemetry.proto.collector.trace.") {
            "traces"
        } else if path.starts_with("/opentelemetry.proto.collector.logs.") {
            "logs"
        } else if path.starts_with("/opentelemetry.proto.collector.metrics.") {
            "metrics"
        } else {
            "other"
        };
        let response = self.0.call(request);
        Box::pin(async move {
            let response = response.await?;
            if let Some(reason) = codec_refusal(response.headers()) {
                metrics::refused(signal, "grpc", reason, 0);
            }
            Ok(response)
        })
    }
}

/// The refusal reason of a trailers-only response tonic made itself.
fn codec_refusal(headers: &axum::http::HeaderMap) -> Option<&'static str> {
    let code: i32 = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    match tonic::Code::from_i32(code) {
        tonic::Code::Internal => Some("decode"),
        tonic::Code::OutOfRange => Some("too_large"),
        tonic::Code::Unimplemented => Some("unsupported"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tonic_types::StatusExt;

    use super::*;

    #[test]
    fn refusals_carry_retry_info_so_exporters_retry() {
        let busy = status_from(SinkError::Busy { retry_after: Duration::from_secs(1) });
        assert_eq!(busy.code(), tonic::Code::ResourceExhausted);
        assert_eq!(busy.get_details_retry_info().and_then(|r| r.retry_delay), Some(Duration::from_secs(1)));
        let down = status_from(SinkError::Unavailable { reason: "store".into(), retry_after: Duration::from_secs(5) });
        assert_eq!(down.code(), tonic::Code::Unavailable);
        assert_eq!(down.get_details_retry_info().and_then(|r| r.retry_delay), Some(Duration::from_secs(5)));
    }
}
