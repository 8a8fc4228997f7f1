//! Row types of the OpenTelemetry tables, in the column order and types of
//! `schema::OTEL_TRACES` and `schema::OTEL_LOGS`. Timestamps are nanoseconds
//! since the Unix epoch (`DateTime64(9)`); maps are key/value pairs.

use clickhouse::Row;
use serde::{Deserialize, Serialize};

/// One span in `otel_traces`, with its events and links as the Nested
/// columns `Events.*` and `Links.*`.
#[derive(Debug, Clone, PartialEq, Default, Row, Serialize, Deserialize)]
pub struct SpanRow {
    #[serde(rename = "Timestamp")]
    pub timestamp_ns: i64,
    #[serde(rename = "TraceId")]
    pub trace_id: String,
    #[serde(rename = "SpanId")]
    pub span_id: String,
    #[serde(rename = "ParentSpanId")]
    pub parent_span_id: String,
    #[serde(rename = "TraceState")]
    pub trace_state: String,
    #[serde(rename = "SpanName")]
    pub span_name: String,
    #[serde(rename = "SpanKind")]
    pub span_kind: String,
    #[serde(rename = "ServiceName")]
    pub service_name: String,
    #[serde(rename = "ResourceAttributes")]
    pub resource_attributes: Vec<(String, String)>,
    #[serde(rename = "ScopeName")]
    pub scope_name: String,
    #[serde(rename = "ScopeVersion")]
    pub scope_version: String,
    #[serde(rename = "SpanAttributes")]
    pub span_attributes: Vec<(String, String)>,
    #[serde(rename = "Duration")]
    pub duration_ns: u64,
    #[serde(rename = "StatusCode")]
    pub status_code: String,
    #[serde(rename = "StatusMessage")]
    pub status_message: String,
    #[serde(rename = "Events.Timestamp")]
    pub events_timestamp_ns: Vec<i64>,
    #[serde(rename = "Events.Name")]
    pub events_name: Vec<String>,
    #[serde(rename = "Events.Attributes")]
    pub events_attributes: Vec<Vec<(String, String)>>,
    #[serde(rename = "Links.TraceId")]
    pub links_trace_id: Vec<String>,
    #[serde(rename = "Links.SpanId")]
    pub links_span_id: Vec<String>,
    #[serde(rename = "Links.TraceState")]
    pub links_trace_state: Vec<String>,
    #[serde(rename = "Links.Attributes")]
    pub links_attributes: Vec<Vec<(String, String)>>,
    /// The sending system, from its token (Waybill's own column).
    #[serde(rename = "WaybillSource")]
    pub source: String,
}

impl SpanRow {
    /// The columns of `otel_traces` in this struct's field order, for SELECTs.
    pub const COLUMNS: &'static str = "Timestamp, TraceId, SpanId, ParentSpanId, TraceState, SpanName, SpanKind, ServiceName, \
        ResourceAttributes, ScopeName, ScopeVersion, SpanAttributes, Duration, StatusCode, StatusMessage, \
        `Events.Timestamp`, `Events.Name`, `Events.Attributes`, `Links.TraceId`, `Links.SpanId`, \
        `Links.TraceState`, `Links.Attributes`, WaybillSource";
}

/// One log record in `otel_logs` (`TimestampTime` is filled by its DEFAULT).
#[derive(Debug, Clone, PartialEq, Default, Row, Serialize, Deserialize)]
pub struct LogRow {
    #[serde(rename = "Timestamp")]
    pub timestamp_ns: i64,
    #[serde(rename = "TraceId")]
    pub trace_id: String,
    #[serde(rename = "SpanId")]
    pub span_id: String,
    #[serde(rename = "TraceFlags")]
    pub trace_flags: u8,
    #[serde(rename = "SeverityText")]
    pub severity_text: String,
    #[serde(rename = "SeverityNumber")]
    pub severity_number: u8,
    #[serde(rename = "ServiceName")]
    pub service_name: String,
    #[serde(rename = "Body")]
    pub body: String,
    #[serde(rename = "ResourceSchemaUrl")]
    pub resource_schema_url: String,
    #[serde(rename = "ResourceAttributes")]
    pub resource_attributes: Vec<(String, String)>,
    #[serde(rename = "ScopeSchemaUrl")]
    pub scope_schema_url: String,
    #[serde(rename = "ScopeName")]
    pub scope_name: String,
    #[serde(rename = "ScopeVersion")]
    pub scope_version: String,
    #[serde(rename = "ScopeAttributes")]
    pub scope_attributes: Vec<(String, String)>,
    #[serde(rename = "LogAttributes")]
    pub log_attributes: Vec<(String, String)>,
    /// The sending system, from its token (Waybill's own column).
    #[serde(rename = "WaybillSource")]
    pub source: String,
}

impl LogRow {
    /// The columns of `otel_logs` in this struct's field order, for SELECTs.
    pub const COLUMNS: &'static str = "Timestamp, TraceId, SpanId, TraceFlags, SeverityText, SeverityNumber, ServiceName, Body, \
        ResourceSchemaUrl, ResourceAttributes, ScopeSchemaUrl, ScopeName, ScopeVersion, ScopeAttributes, LogAttributes, WaybillSource";
}

/// One row of `biz_events` (`Ingested` is filled by its DEFAULT).
#[derive(Debug, Clone, PartialEq, Eq, Default, Row, Serialize, Deserialize)]
pub struct BizEventRow {
    #[serde(rename = "TraceId")]
    pub trace_id: String,
    /// `span`, `event` (a span event), `log`, or `presence` (a system seen in the trace).
    #[serde(rename = "Record")]
    pub record: String,
    #[serde(rename = "SpanId")]
    pub span_id: String,
    /// The span event's position in its span (from 1); for a log record a
    /// hash of its time, body and attributes; 0 for a span.
    #[serde(rename = "RecordIndex")]
    pub record_index: u32,
    #[serde(rename = "Time")]
    pub time_ns: i64,
    /// When the source system says the business event happened.
    #[serde(rename = "SourceTime")]
    pub source_time_ns: i64,
    #[serde(rename = "Milestone")]
    pub milestone: String,
    #[serde(rename = "System")]
    pub system: String,
    #[serde(rename = "Outcome")]
    pub outcome: String,
    #[serde(rename = "KeyKinds")]
    pub key_kinds: Vec<String>,
    #[serde(rename = "KeyValues")]
    pub key_values: Vec<String>,
    #[serde(rename = "LinkedTraceIds")]
    pub linked_trace_ids: Vec<String>,
    #[serde(rename = "Source")]
    pub source: String,
}

/// One direction of an edge of the key graph (`biz_edges`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Row, Serialize, Deserialize)]
pub struct EdgeRow {
    #[serde(rename = "Kind")]
    pub kind: String,
    #[serde(rename = "Value")]
    pub value: String,
    /// Towards later kinds (order → invoice); false: towards earlier ones.
    #[serde(rename = "Down")]
    pub down: bool,
    #[serde(rename = "OtherKind")]
    pub other_kind: String,
    #[serde(rename = "OtherValue")]
    pub other_value: String,
}

/// A key and a trace it belongs to (`biz_key_traces`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Row, Serialize, Deserialize)]
pub struct KeyTraceRow {
    #[serde(rename = "Kind")]
    pub kind: String,
    #[serde(rename = "Value")]
    pub value: String,
    #[serde(rename = "TraceId")]
    pub trace_id: String,
}

/// One version of a business transaction (`transactions`). Milestones and
/// overdue milestones are parallel arrays.
#[derive(Debug, Clone, PartialEq, Eq, Default, Row, Serialize, Deserialize)]
pub struct TransactionRow {
    #[serde(rename = "Id")]
    pub id: String,
    #[serde(rename = "RootKind")]
    pub root_kind: String,
    #[serde(rename = "RootValue")]
    pub root_value: String,
    #[serde(rename = "State")]
    pub state: String,
    #[serde(rename = "KeyKinds")]
    pub key_kinds: Vec<String>,
    #[serde(rename = "KeyValues")]
    pub key_values: Vec<String>,
    #[serde(rename = "Systems")]
    pub systems: Vec<String>,
    #[serde(rename = "MilestoneNames")]
    pub milestone_names: Vec<String>,
    #[serde(rename = "MilestoneSystems")]
    pub milestone_systems: Vec<String>,
    #[serde(rename = "MilestoneTimes")]
    pub milestone_times_ns: Vec<i64>,
    #[serde(rename = "MilestoneOutcomes")]
    pub milestone_outcomes: Vec<String>,
    #[serde(rename = "MilestoneTraceIds")]
    pub milestone_trace_ids: Vec<String>,
    #[serde(rename = "MilestoneSpanIds")]
    pub milestone_span_ids: Vec<String>,
    #[serde(rename = "OverdueMilestones")]
    pub overdue_milestones: Vec<String>,
    #[serde(rename = "OverdueDue")]
    pub overdue_due_ns: Vec<i64>,
    /// When the state changes next by time alone (a deadline); 0: never.
    #[serde(rename = "NextDue")]
    pub next_due_ns: i64,
    #[serde(rename = "Started")]
    pub started_ns: i64,
    #[serde(rename = "Updated")]
    pub updated_ns: i64,
    #[serde(rename = "Version")]
    pub version: u64,
}

/// A key of a transaction (`transaction_keys`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Row, Serialize, Deserialize)]
pub struct TransactionKeyRow {
    #[serde(rename = "Value")]
    pub value: String,
    #[serde(rename = "Kind")]
    pub kind: String,
    #[serde(rename = "Id")]
    pub id: String,
}

/// The resolver's progress (`lineage_progress`).
#[derive(Debug, Clone, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct ProgressRow {
    #[serde(rename = "Name")]
    pub name: String,
    /// Microseconds since the epoch (`DateTime64(6)`).
    #[serde(rename = "ResolvedBefore")]
    pub resolved_before_us: i64,
    #[serde(rename = "Version")]
    pub version: u64,
}

/// One version of an alert's state (`alert_state`).
#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
pub struct AlertStateRow {
    #[serde(rename = "Rule")]
    pub rule: String,
    #[serde(rename = "GroupKey")]
    pub group_key: String,
    #[serde(rename = "Labels")]
    pub labels: Vec<(String, String)>,
    #[serde(rename = "State")]
    pub state: String,
    #[serde(rename = "Since")]
    pub since_ns: i64,
    #[serde(rename = "FiredAt")]
    pub fired_at_ns: i64,
    #[serde(rename = "LastNotified")]
    pub last_notified_ns: i64,
    #[serde(rename = "Value")]
    pub value: f64,
    #[serde(rename = "Samples")]
    pub samples: u64,
    #[serde(rename = "Version")]
    pub version: u64,
}

/// An alert transition or delivery outcome (`alert_history`).
#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
pub struct AlertHistoryRow {
    #[serde(rename = "Time")]
    pub time_ns: i64,
    #[serde(rename = "Rule")]
    pub rule: String,
    #[serde(rename = "GroupKey")]
    pub group_key: String,
    #[serde(rename = "Labels")]
    pub labels: Vec<(String, String)>,
    /// `pending`, `firing`, `resolved`, `cleared`, `delivered`, `delivery_failed`.
    #[serde(rename = "Event")]
    pub event: String,
    #[serde(rename = "Value")]
    pub value: f64,
    #[serde(rename = "Receiver")]
    pub receiver: String,
    #[serde(rename = "Detail")]
    pub detail: String,
}

/// One version of a silence (`alert_silences`).
#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
pub struct SilenceRow {
    #[serde(rename = "Id")]
    pub id: String,
    #[serde(rename = "Matchers")]
    pub matchers: Vec<(String, String)>,
    #[serde(rename = "StartsAt")]
    pub starts_at_ns: i64,
    #[serde(rename = "EndsAt")]
    pub ends_at_ns: i64,
    #[serde(rename = "CreatedBy")]
    pub created_by: String,
    #[serde(rename = "Comment")]
    pub comment: String,
    #[serde(rename = "Version")]
    pub version: u64,
}

/// One entry of the exception queue's audit trail (`exception_actions`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Row, Serialize, Deserialize)]
pub struct ExceptionActionRow {
    #[serde(rename = "Time")]
    pub time_ns: i64,
    #[serde(rename = "TransactionId")]
    pub transaction_id: String,
    #[serde(rename = "Actor")]
    pub actor: String,
    /// `acknowledge`, `assign`, `comment`, `resolve` or `replay`.
    #[serde(rename = "Action")]
    pub action: String,
    #[serde(rename = "Assignee")]
    pub assignee: String,
    #[serde(rename = "Comment")]
    pub comment: String,
    /// A replay's `Idempotency-Key`.
    #[serde(rename = "ReplayKey")]
    pub replay_key: String,
    /// A replay's outcome: `delivered` or `failed`.
    #[serde(rename = "Outcome")]
    pub outcome: String,
    #[serde(rename = "Detail")]
    pub detail: String,
}
