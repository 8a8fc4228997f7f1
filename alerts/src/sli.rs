//! Each SLI as one SQL query over the store, returning a value and a sample
//! count per group. Business events are read through [`events`]: one row
//! per record however many copies a resent batch stored, found through the
//! `by_milestone` projection (ordered by milestone and source time) so a
//! rule reads its window, not the table. Windows are in business time (the
//! records' source time), except latency from source time, which counts by
//! arrival.

use std::collections::BTreeMap;
use std::time::Duration;

use clickhouse::Row;
use serde::Deserialize;
use waybill_store::sql::quote_string;
use waybill_store::{Store, StoreError};

use crate::rules::{Rule, Sli};

/// One group's measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    /// Group labels, e.g. `system="erp"`.
    pub group: BTreeMap<String, String>,
    pub value: f64,
    pub samples: u64,
}

#[derive(Debug, Row, Deserialize)]
struct Measured {
    dims: Vec<String>,
    value: f64,
    samples: u64,
}

/// Measures `rule` for the window ending at `now_ns`.
pub async fn measure(store: &Store, rule: &Rule, now_ns: i64) -> Result<Vec<Measurement>, StoreError> {
    let sql = query(rule, now_ns);
    let rows: Vec<Measured> = store.fetch_all(&sql).await?;
    let names: Vec<String> = rule.group_by.iter().map(|d| label_name(d)).collect();
    let mut measurements: Vec<Measurement> = rows
        .into_iter()
        .map(|row| Measurement {
            group: names.iter().cloned().zip(row.dims).collect(),
            value: if row.value.is_finite() { row.value } else { 0.0 },
            samples: row.samples,
        })
        .collect();
    // An ungrouped count over an empty window is a value: zero.
    if measurements.is_empty() && rule.group_by.is_empty() && matches!(rule.sli, Sli::Count { .. } | Sli::Rate { .. } | Sli::Overdue { .. }) {
        measurements.push(Measurement { group: BTreeMap::new(), value: 0.0, samples: 0 });
    }
    Ok(measurements)
}

/// The label a dimension becomes: `key:partner` → `partner`, dots and
/// dashes made underscores (Prometheus and Alertmanager label syntax).
pub fn label_name(dimension: &str) -> String {
    let name = dimension.split_once(':').map_or(dimension, |(_, name)| name);
    let mut label: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    if label.starts_with(|c: char| c.is_ascii_digit()) {
        label.insert(0, '_');
    }
    label
}

/// The SQL of `rule` for the window ending at `now_ns`: columns `group`
/// (an array of the group's values), `value`, `samples`.
pub fn query(rule: &Rule, now_ns: i64) -> String {
    let start = format!("fromUnixTimestamp64Nano({})", now_ns - nanos(rule.window));
    let now = format!("fromUnixTimestamp64Nano({now_ns})");
    let seconds = rule.window.as_secs_f64().max(0.001);
    match &rule.sli {
        Sli::Ratio { numerator, denominator } => {
            let (num, den) = (quote_string(numerator), quote_string(denominator));
            let group = groups(rule, |d| transaction_dimension(d, Some(&den)));
            format!(
                "SELECT {group} AS dims, countIf(arrayExists((n, o) -> n = {num} AND o NOT IN ('failed', 'rejected'), MilestoneNames, MilestoneOutcomes)) / count() AS value, count() AS samples \
                 FROM transactions FINAL \
                 WHERE arrayExists((n, t, o) -> n = {den} AND t >= {start} AND t <= {now} AND o NOT IN ('failed', 'rejected'), MilestoneNames, MilestoneTimes, MilestoneOutcomes) \
                 GROUP BY dims"
            )
        }
        Sli::Latency { from, to, key, quantile } => {
            let to_milestone = quote_string(to);
            let group = groups(rule, |d| event_dimension(d, "b."));
            match key {
                None => format!(
                    "SELECT {group} AS dims, quantile({quantile})((toUnixTimestamp64Micro(Ingested) - toUnixTimestamp64Micro(SourceTime)) / 1e6) AS value, count() AS samples \
                     FROM {} AS b GROUP BY dims",
                    // Arrival lags source time by the latency measured; a day bounds the read.
                    events(&format!("Milestone = {to_milestone} AND SourceTime >= {start} - toIntervalDay(1) AND Ingested >= {start} AND Ingested <= {now}"))
                ),
                Some(kind) => {
                    let kind = quote_string(kind);
                    let paired_from = format!("{start} - toIntervalSecond({})", rule.window.as_secs().max(1));
                    format!(
                        "SELECT {group} AS dims, quantile({quantile})((toUnixTimestamp64Nano(b.SourceTime) - toUnixTimestamp64Nano(a.SourceTime)) / 1e9) AS value, count() AS samples \
                         FROM (SELECT *, KeyValues[indexOf(KeyKinds, {kind})] AS pair FROM {to_events}) AS b \
                         ASOF JOIN (SELECT KeyValues[indexOf(KeyKinds, {kind})] AS pair, SourceTime FROM {from_events}) AS a \
                         ON b.pair = a.pair AND b.SourceTime >= a.SourceTime \
                         GROUP BY dims",
                        to_events = events(&format!("Milestone = {to_milestone} AND SourceTime >= {start} AND SourceTime <= {now} AND has(KeyKinds, {kind})")),
                        from_events = events(&format!(
                            "Milestone = {} AND SourceTime >= {paired_from} AND SourceTime <= {now} AND has(KeyKinds, {kind})",
                            quote_string(from)
                        )),
                    )
                }
            }
        }
        Sli::Count { milestone, outcome } | Sli::Rate { milestone, outcome } => {
            let outcome = outcome.as_ref().map(|o| format!(" AND Outcome = {}", quote_string(o))).unwrap_or_default();
            let value = if matches!(rule.sli, Sli::Rate { .. }) { format!("count() / {seconds}") } else { "count()".to_owned() };
            let group = groups(rule, |d| event_dimension(d, ""));
            let rows = events(&format!("Milestone = {}{outcome} AND SourceTime >= {start} AND SourceTime <= {now}", quote_string(milestone)));
            format!("SELECT {group} AS dims, toFloat64({value}) AS value, count() AS samples FROM {rows} GROUP BY dims")
        }
        Sli::Overdue { milestone } => {
            let by_milestone = rule.group_by.iter().any(|d| d == "milestone");
            let array_join = if by_milestone { " ARRAY JOIN OverdueMilestones AS overdue_milestone" } else { "" };
            let filter = match milestone {
                Some(m) if by_milestone => format!(" AND overdue_milestone = {}", quote_string(m)),
                Some(m) => format!(" AND has(OverdueMilestones, {})", quote_string(m)),
                None => String::new(),
            };
            let group = groups(rule, |d| if d == "milestone" { "overdue_milestone".to_owned() } else { transaction_dimension(d, None) });
            format!(
                "SELECT {group} AS dims, toFloat64(count()) AS value, count() AS samples FROM transactions FINAL{array_join} \
                 WHERE State = 'stuck'{filter} GROUP BY dims"
            )
        }
        Sli::ErrorRate { span_kind } => {
            let kind = quote_string(span_kind.as_deref().unwrap_or("Client"));
            let group = groups(rule, |d| match d.strip_prefix("attribute:") {
                Some(name) => format!("SpanAttributes[{}]", quote_string(name)),
                None => "ServiceName".to_owned(),
            });
            format!(
                "SELECT {group} AS dims, countIf(StatusCode = 'Error') / count() AS value, count() AS samples FROM otel_traces \
                 WHERE SpanKind = {kind} AND Timestamp >= {start} AND Timestamp <= {now} GROUP BY dims"
            )
        }
    }
}

/// The business events matching `condition`, one row per record: copies
/// stored by a resent batch share the table's sorting key and are read
/// once. Only the columns of the `by_milestone` projection are read, so
/// ClickHouse can answer from it.
fn events(condition: &str) -> String {
    format!(
        "(SELECT TraceId, Record, SpanId, RecordIndex, SourceTime, Milestone, System, Outcome, KeyKinds, KeyValues, Source, Ingested \
         FROM biz_events WHERE {condition} LIMIT 1 BY TraceId, Record, SpanId, RecordIndex, Milestone, System)"
    )
}

/// `[expr, ...]` of the group dimensions, as strings.
fn groups(rule: &Rule, expression: impl Fn(&str) -> String) -> String {
    let parts: Vec<String> = rule.group_by.iter().map(|d| format!("toString({})", expression(d))).collect();
    format!("[{}]::Array(String)", parts.join(", "))
}

/// A dimension of a business event (`prefix`: the table alias).
fn event_dimension(dimension: &str, prefix: &str) -> String {
    match dimension.strip_prefix("key:") {
        Some(kind) => format!("{prefix}KeyValues[indexOf({prefix}KeyKinds, {})]", quote_string(kind)),
        None => match dimension {
            "system" => format!("{prefix}System"),
            "source" => format!("{prefix}Source"),
            _ => format!("{prefix}Milestone"),
        },
    }
}

/// A dimension of a transaction; `system` is the system of `milestone`.
fn transaction_dimension(dimension: &str, milestone: Option<&str>) -> String {
    match dimension.strip_prefix("key:") {
        Some(kind) => format!("KeyValues[indexOf(KeyKinds, {})]", quote_string(kind)),
        None => match milestone {
            Some(m) => format!("MilestoneSystems[indexOf(MilestoneNames, {m})]"),
            None => "Systems[1]".to_owned(),
        },
    }
}

fn nanos(duration: Duration) -> i64 {
    i64::try_from(duration.as_nanos()).unwrap_or(i64::MAX)
}
