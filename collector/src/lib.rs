//! OTLP receivers: decode, validate and limit what OpenTelemetry exporters
//! send, and hand each decoded request to a [`Sink`]. The collector knows
//! nothing of lineage or storage; the binary supplies the sink.
//!
//! Today: OTLP/gRPC (traces, logs; gzip) and OTLP/HTTP (`/v1/traces`,
//! `/v1/logs`; protobuf and JSON; gzip and zstd), body limits, and the spec's status
//! codes, partial success for invalid records, attribute count and length
//! limits, per-source bearer tokens, a memory budget for requests in flight
//! (refused as busy when full), Prometheus metrics.

pub mod admission;
pub mod auth;
pub mod grpc;
pub mod http;
pub mod metrics;
mod signal;
pub mod sink;
pub mod validate;
pub mod work;

pub use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
pub use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
pub use sink::{Accepted, Sink, SinkError};
