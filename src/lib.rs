//! The `waybill` service as a library: config, the ingest pipeline and the
//! `serve` wiring, used by the binary in `main.rs` and by benchmarks.

pub mod config;
pub mod demo;
pub mod lineage;
pub mod pipeline;
pub mod serve;
pub mod telemetry;
