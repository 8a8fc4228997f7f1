//! Where receivers hand decoded requests. A sink acknowledges a request only
//! once its records are durable, so an exporter's success means stored.

use std::future::Future;
use std::time::Duration;

use crate::{ExportLogsServiceRequest, ExportTraceServiceRequest};

/// Why a sink could not take a request; both are worth a client's retry.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SinkError {
    /// The pipeline is full: retry after the given time (HTTP 429).
    #[error("the pipeline is full; retry in {}s", retry_after.as_secs())]
    Busy { retry_after: Duration },
    /// The store cannot be reached or refused the write (HTTP 503).
    #[error("the store is unavailable ({reason}); retry in {}s", retry_after.as_secs())]
    Unavailable { reason: String, retry_after: Duration },
}

/// How a sink took a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Its records are now stored.
    Stored,
    /// A copy was stored before (a client's resend); nothing was added.
    AlreadyStored,
}

/// Takes decoded OTLP requests and makes them durable. `source` names the
/// sending system (see [`crate::auth`]); empty when tokens are off.
pub trait Sink: Send + Sync + 'static {
    fn accept_traces(
        &self,
        request: ExportTraceServiceRequest,
        source: String,
    ) -> impl Future<Output = Result<Accepted, SinkError>> + Send;
    fn accept_logs(
        &self,
        request: ExportLogsServiceRequest,
        source: String,
    ) -> impl Future<Output = Result<Accepted, SinkError>> + Send;
}
