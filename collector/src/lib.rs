//! OTLP receivers: decode, validate and limit what OpenTelemetry exporters
//! send, and hand each decoded request to a [`Sink`]. The collector knows
//! nothing of lineage or storage; the binary supplies the sink.
//!
//! Today: OTLP/HTTP (`/v1/traces`, `/v1/logs`) with protobuf and JSON bodies,
//! gzip, body limits, and the spec's status codes. Not yet: gRPC, zstd,
//! partial success for invalid records, per-source tokens, metrics.

pub mod http;
pub mod sink;

pub use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
pub use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
pub use sink::{Sink, SinkError};
