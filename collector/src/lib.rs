//! OTLP receivers (gRPC :4317, HTTP :4318): decode, validate, limit,
//! authenticate and apply backpressure. Not built yet: the collector issue
//! fills this crate. It will know nothing of lineage or storage; the binary
//! wires a bounded pipeline from it to the store.
