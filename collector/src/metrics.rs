//! The collector's Prometheus metrics, in the process's default registry.
//! Labels come from small fixed sets: signal, protocol, refusal reason.

use std::sync::LazyLock;

use prometheus::{register_int_counter_vec, IntCounterVec};

/// Records stored and acknowledged, by signal (`traces`, `logs`) and protocol (`grpc`, `http`).
pub static ACCEPTED_RECORDS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "waybill_collector_accepted_records_total",
        "Spans and log records acknowledged to exporters after being stored",
        &["signal", "protocol"]
    )
    .expect("metric registers once")
});

/// Records of resent requests, acknowledged without being stored again.
pub static RESENT_RECORDS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "waybill_collector_resent_records_total",
        "Spans and log records in resends of stored requests, acknowledged without being stored twice",
        &["signal", "protocol"]
    )
    .expect("metric registers once")
});

/// Requests refused, by signal, protocol and reason.
pub static REFUSED_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "waybill_collector_refused_requests_total",
        "OTLP requests refused, by reason: decode, content_type, encoding, too_large, unauthenticated, unsupported (gRPC), busy, unavailable",
        &["signal", "protocol", "reason"]
    )
    .expect("metric registers once")
});

/// Records in refused requests, by signal, protocol and reason (0 when the body did not decode).
pub static REFUSED_RECORDS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "waybill_collector_refused_records_total",
        "Spans and log records in decoded requests that were not stored: invalid, busy or unavailable",
        &["signal", "protocol", "reason"]
    )
    .expect("metric registers once")
});

/// Attributes dropped or values cut by the attribute limits.
pub static TRUNCATED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "waybill_collector_truncated_attributes_total",
        "Attributes changed by the limits: kind=dropped (over the count limit) or kind=shortened (value over the length limit)",
        &["signal", "protocol", "kind"]
    )
    .expect("metric registers once")
});

/// Counts what the attribute limits changed.
pub(crate) fn truncated(signal: &str, protocol: &str, truncated: &crate::validate::Truncated) {
    if truncated.attributes_dropped > 0 {
        TRUNCATED.with_label_values(&[signal, protocol, "dropped"]).inc_by(truncated.attributes_dropped);
    }
    if truncated.values_truncated > 0 {
        TRUNCATED.with_label_values(&[signal, protocol, "shortened"]).inc_by(truncated.values_truncated);
    }
}

/// Counts a refusal of `records` records.
pub(crate) fn refused(signal: &str, protocol: &str, reason: &str, records: u64) {
    REFUSED_REQUESTS.with_label_values(&[signal, protocol, reason]).inc();
    if records > 0 {
        REFUSED_RECORDS.with_label_values(&[signal, protocol, reason]).inc_by(records);
    }
}

/// Counts records dropped as invalid (reported to the client as partial success).
pub(crate) fn invalid(signal: &str, protocol: &str, records: u64) {
    if records > 0 {
        REFUSED_RECORDS.with_label_values(&[signal, protocol, "invalid"]).inc_by(records);
    }
}

/// Makes every collector metric visible from the start, at zero.
pub fn register() {
    LazyLock::force(&ACCEPTED_RECORDS);
    LazyLock::force(&RESENT_RECORDS);
    LazyLock::force(&REFUSED_REQUESTS);
    LazyLock::force(&REFUSED_RECORDS);
    LazyLock::force(&TRUNCATED);
}


pub(crate) fn sink_reason(err: &crate::SinkError) -> &'static str {
    match err {
        crate::SinkError::Busy { .. } => "busy",
        crate::SinkError::Unavailable { .. } => "unavailable",
    }
}
