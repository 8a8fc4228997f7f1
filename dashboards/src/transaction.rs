//! Search by any business key and the transaction page: its journey as
//! swimlanes, its key graph, the spans and logs behind each milestone and the
//! alerts that involve it; with their JSON twins.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use clickhouse::Row;
use serde::{Deserialize, Serialize};
use waybill_alerts::notify::AlertView;
use waybill_lineage::api::{self as lineage_api, KeyRef, Transaction};
use waybill_store::sql::quote_string;
use waybill_store::{EdgeRow, StoreError};

use crate::auth::Viewer;
use crate::page::{self, Layout};
use crate::svg::escape;
use crate::Dashboards;

/// Transactions a search lists at most.
const SEARCH_LIMIT: usize = 50;
/// Traces whose records a transaction page shows at most.
const MAX_TRACES: usize = 20;
/// Spans, and log records, a transaction page shows at most.
const MAX_RECORDS: usize = 500;
/// Keys drawn per column of the key graph.
const MAX_KEYS_PER_KIND: usize = 40;
/// Edges read for the key graph at most.
const MAX_EDGES: usize = 5000;
/// Characters of a log body shown.
const MAX_BODY_CHARS: usize = 2000;
const SECOND_NS: i64 = 1_000_000_000;

pub fn routes() -> Router<Dashboards> {
    Router::new()
        .route("/search", get(search_page))
        .route("/api/v1/search", get(search_json))
        .route("/transactions/{id}", get(transaction_page))
        .route("/api/v1/transactions/{id}/detail", get(detail_json))
}

// ---------------------------------------------------------------- search

#[derive(Debug, Deserialize)]
struct SearchQuery {
    #[serde(default)]
    q: String,
}

#[derive(Debug, Serialize)]
struct SearchAnswer {
    query: String,
    transactions: Vec<Transaction>,
}

struct SearchRow {
    href: String,
    root_kind: String,
    root_value: String,
    state: String,
    systems: String,
    last_milestone: String,
    updated: String,
}

#[derive(Template)]
#[template(path = "search.html")]
struct SearchPage {
    layout: Layout,
    query: String,
    rows: Vec<SearchRow>,
    limited: bool,
}

async fn search_page(State(dashboards): State<Dashboards>, Extension(viewer): Extension<Viewer>, Query(query): Query<SearchQuery>) -> Response {
    let q = query.q.trim();
    if q.is_empty() {
        return Redirect::to("/").into_response();
    }
    let found = match lineage_api::by_key(dashboards.store(), q, None, None, SEARCH_LIMIT).await {
        Ok(found) => found,
        Err(err) => return page::store_error(err),
    };
    if let [one] = found.as_slice() {
        return Redirect::to(&transaction_href(&one.id)).into_response();
    }
    let rows = found
        .iter()
        .map(|t| SearchRow {
            href: transaction_href(&t.id),
            root_kind: t.root.kind.clone(),
            root_value: t.root.value.clone(),
            state: t.state.clone(),
            systems: t.systems.join(", "),
            last_milestone: t.milestones.last().map(|m| format!("{} ({})", m.name, m.system)).unwrap_or_default(),
            updated: time_of(&t.updated),
        })
        .collect();
    let layout = Layout::new(format!("Search: {q}"), "search", &viewer);
    page::render(&SearchPage { layout, query: q.to_owned(), rows, limited: found.len() >= SEARCH_LIMIT })
}

async fn search_json(State(dashboards): State<Dashboards>, Query(query): Query<SearchQuery>) -> Response {
    let q = query.q.trim();
    if q.is_empty() {
        return page::json_error(StatusCode::BAD_REQUEST, "give the key to search for: /api/v1/search?q=KEY");
    }
    match lineage_api::by_key(dashboards.store(), q, None, None, SEARCH_LIMIT).await {
        Ok(transactions) => Json(SearchAnswer { query: q.to_owned(), transactions }).into_response(),
        Err(err) => page::json_error(StatusCode::SERVICE_UNAVAILABLE, &format!("the store did not answer: {err}")),
    }
}

fn transaction_href(id: &str) -> String {
    format!("/transactions/{}", page::url_encode(id))
}

fn search_href(value: &str) -> String {
    format!("/search?q={}", page::url_encode(value))
}

/// `2026-11-27 06:12:03` of an RFC 3339 time from the API.
fn time_of(rfc3339: &str) -> String {
    page::parse_time(rfc3339).map(page::time).unwrap_or_else(|| rfc3339.to_owned())
}

// ---------------------------------------------------------------- detail data

/// Everything the transaction page shows, as its JSON twin returns it.
#[derive(Debug, Serialize)]
struct Detail {
    transaction: Transaction,
    /// Links of the key graph among the transaction's keys, downstream.
    edges: Vec<Edge>,
    /// The records of the milestones' traces, in the milestones' time order.
    traces: Vec<TraceRecords>,
    /// Current (pending or firing) alerts whose labels name one of the
    /// transaction's keys or systems.
    alerts: Vec<AlertView>,
    truncated: Truncated,
}

#[derive(Debug, Serialize)]
struct Edge {
    from: KeyRef,
    to: KeyRef,
}

#[derive(Debug, Serialize)]
struct Truncated {
    /// Traces of milestones not shown (beyond the first 20).
    traces_not_shown: usize,
    /// Some keys are left out of the key graph.
    graph: bool,
}

#[derive(Debug, Serialize)]
struct TraceRecords {
    trace_id: String,
    /// The milestones this trace reported.
    milestones: Vec<String>,
    /// In tree order (each span after its parent), with its depth.
    spans: Vec<SpanLine>,
    logs: Vec<LogLine>,
    spans_truncated: bool,
    logs_truncated: bool,
}

#[derive(Debug, Clone, Serialize)]
struct SpanLine {
    start: String,
    #[serde(skip)]
    start_ns: i64,
    span_id: String,
    parent_span_id: String,
    depth: usize,
    name: String,
    kind: String,
    service: String,
    duration_ns: u64,
    status_code: String,
    status_message: String,
}

impl SpanLine {
    fn is_error(&self) -> bool {
        self.status_code.eq_ignore_ascii_case("error") || self.status_code == "STATUS_CODE_ERROR"
    }
}

#[derive(Debug, Serialize)]
struct LogLine {
    time: String,
    #[serde(skip)]
    time_ns: i64,
    span_id: String,
    severity: String,
    service: String,
    body: String,
}

#[derive(Debug, Row, Deserialize)]
struct TraceRange {
    #[serde(rename = "TraceId")]
    trace_id: String,
    #[serde(rename = "Start")]
    start_s: i64,
    #[serde(rename = "End")]
    end_s: i64,
}

#[derive(Debug, Row, Deserialize)]
struct SpanRecord {
    #[serde(rename = "Timestamp")]
    timestamp_ns: i64,
    #[serde(rename = "TraceId")]
    trace_id: String,
    #[serde(rename = "SpanId")]
    span_id: String,
    #[serde(rename = "ParentSpanId")]
    parent_span_id: String,
    #[serde(rename = "SpanName")]
    span_name: String,
    #[serde(rename = "SpanKind")]
    span_kind: String,
    #[serde(rename = "ServiceName")]
    service_name: String,
    #[serde(rename = "Duration")]
    duration_ns: u64,
    #[serde(rename = "StatusCode")]
    status_code: String,
    #[serde(rename = "StatusMessage")]
    status_message: String,
}

#[derive(Debug, Row, Deserialize)]
struct LogRecord {
    #[serde(rename = "Timestamp")]
    timestamp_ns: i64,
    #[serde(rename = "TraceId")]
    trace_id: String,
    #[serde(rename = "SpanId")]
    span_id: String,
    #[serde(rename = "SeverityText")]
    severity_text: String,
    #[serde(rename = "ServiceName")]
    service_name: String,
    #[serde(rename = "Body")]
    body: String,
}

/// The transaction `id` with its edges, records and alerts; `None` when
/// there is no such transaction.
async fn detail(dashboards: &Dashboards, id: &str) -> Result<Option<Detail>, StoreError> {
    let Some(transaction) = lineage_api::by_id(dashboards.store(), id).await? else {
        return Ok(None);
    };
    let (graph_keys, graph_cut) = graph_keys(&transaction);
    let traces = trace_ids(&transaction);
    let shown: Vec<String> = traces.iter().take(MAX_TRACES).cloned().collect();
    let (edges, ranges) = tokio::join!(edges(dashboards, &graph_keys), trace_ranges(dashboards, &shown));
    let (edges, ranges) = (edges?, ranges?);
    let (spans, logs) = tokio::join!(spans(dashboards, &shown, &ranges), logs(dashboards, &transaction, &shown, &ranges));
    let (mut spans, mut logs) = (spans?, logs?);
    let per_trace = per_trace_cap(shown.len());
    let traces_records = shown
        .iter()
        .map(|trace_id| {
            let trace_spans = spans.remove(trace_id).unwrap_or_default();
            let trace_logs = logs.remove(trace_id).unwrap_or_default();
            let spans_truncated = trace_spans.len() > per_trace;
            let logs_truncated = trace_logs.len() > per_trace;
            TraceRecords {
                trace_id: trace_id.clone(),
                milestones: transaction.milestones.iter().filter(|m| &m.trace_id == trace_id).map(|m| m.name.clone()).collect(),
                spans: tree_order(trace_spans.into_iter().take(per_trace).collect()),
                logs: trace_logs.into_iter().take(per_trace).collect(),
                spans_truncated,
                logs_truncated,
            }
        })
        .collect();
    let alerts = alerts_of(dashboards, &transaction);
    Ok(Some(Detail {
        edges,
        traces: traces_records,
        alerts,
        truncated: Truncated { traces_not_shown: traces.len().saturating_sub(MAX_TRACES), graph: graph_cut },
        transaction,
    }))
}

/// Records per trace, so that 20 traces together stay within the bound.
fn per_trace_cap(traces: usize) -> usize {
    MAX_RECORDS / traces.max(1)
}

/// The distinct trace ids of the milestones, in time order.
fn trace_ids(transaction: &Transaction) -> Vec<String> {
    let mut seen = HashSet::new();
    transaction.milestones.iter().filter(|m| !m.trace_id.is_empty() && seen.insert(m.trace_id.clone())).map(|m| m.trace_id.clone()).collect()
}

/// The kinds of the transaction's keys, root kind first, then in the order
/// the keys list them (downstream).
fn kinds(transaction: &Transaction) -> Vec<String> {
    let mut kinds = vec![transaction.root.kind.clone()];
    for key in &transaction.keys {
        if !kinds.contains(&key.kind) {
            kinds.push(key.kind.clone());
        }
    }
    kinds
}

/// The keys the key graph draws (at most [`MAX_KEYS_PER_KIND`] of a kind,
/// the root always), and whether some were left out.
fn graph_keys(transaction: &Transaction) -> (Vec<KeyRef>, bool) {
    let mut per_kind: HashMap<&str, usize> = HashMap::new();
    let mut keys = vec![transaction.root.clone()];
    per_kind.insert(&transaction.root.kind, 1);
    let mut cut = false;
    for key in &transaction.keys {
        if *key == transaction.root {
            continue;
        }
        let count = per_kind.entry(&key.kind).or_default();
        if *count >= MAX_KEYS_PER_KIND {
            cut = true;
            continue;
        }
        *count += 1;
        keys.push(key.clone());
    }
    (keys, cut)
}

/// Downstream edges among `keys`, read by `biz_edges`' sort key (Value first).
async fn edges(dashboards: &Dashboards, keys: &[KeyRef]) -> Result<Vec<Edge>, StoreError> {
    if keys.len() < 2 {
        return Ok(Vec::new());
    }
    let values: BTreeSet<&str> = keys.iter().map(|k| k.value.as_str()).collect();
    let list = values.iter().map(|v| quote_string(v)).collect::<Vec<_>>().join(", ");
    let sql = format!(
        "SELECT DISTINCT Kind, Value, Down, OtherKind, OtherValue FROM biz_edges \
         WHERE Value IN ({list}) AND Down AND OtherValue IN ({list}) ORDER BY Kind, Value, OtherKind, OtherValue LIMIT {MAX_EDGES}"
    );
    let rows: Vec<EdgeRow> = dashboards.store().fetch_all(&sql).await?;
    let set: HashSet<(&str, &str)> = keys.iter().map(|k| (k.kind.as_str(), k.value.as_str())).collect();
    Ok(rows
        .into_iter()
        .filter(|e| e.down && set.contains(&(e.kind.as_str(), e.value.as_str())) && set.contains(&(e.other_kind.as_str(), e.other_value.as_str())))
        .map(|e| Edge { from: KeyRef { kind: e.kind, value: e.value }, to: KeyRef { kind: e.other_kind, value: e.other_value } })
        .collect())
}

/// First and last second of each trace, from the trace id time-range table
/// (as the ClickHouse exporter's readers narrow `Timestamp` with it).
async fn trace_ranges(dashboards: &Dashboards, traces: &[String]) -> Result<HashMap<String, (i64, i64)>, StoreError> {
    if traces.is_empty() {
        return Ok(HashMap::new());
    }
    let list = traces.iter().map(|t| quote_string(t)).collect::<Vec<_>>().join(", ");
    let sql = format!(
        "SELECT TraceId, toInt64(toUnixTimestamp(min(Start))) AS Start, toInt64(toUnixTimestamp(max(End))) AS End \
         FROM otel_traces_trace_id_ts WHERE TraceId IN ({list}) GROUP BY TraceId"
    );
    let rows: Vec<TraceRange> = dashboards.store().fetch_all(&sql).await?;
    Ok(rows.into_iter().map(|r| (r.trace_id, (r.start_s, r.end_s))).collect())
}

/// The spans of `traces` (those with a known time range), per trace in
/// time order, one more than the per-trace bound to tell when cut.
async fn spans(dashboards: &Dashboards, traces: &[String], ranges: &HashMap<String, (i64, i64)>) -> Result<HashMap<String, Vec<SpanLine>>, StoreError> {
    let conditions: Vec<String> = traces
        .iter()
        .filter_map(|t| ranges.get(t).map(|(start, end)| (t, start, end)))
        .map(|(t, start, end)| format!("(TraceId = {} AND Timestamp >= toDateTime64({start}, 9) AND Timestamp < toDateTime64({}, 9))", quote_string(t), end + 1))
        .collect();
    if conditions.is_empty() {
        return Ok(HashMap::new());
    }
    let sql = per_trace_sql(
        "Timestamp, TraceId, SpanId, ParentSpanId, SpanName, SpanKind, ServiceName, Duration, StatusCode, StatusMessage FROM otel_traces",
        &conditions,
        "TraceId, Timestamp, SpanId",
        traces.len(),
    );
    let rows: Vec<SpanRecord> = dashboards.store().fetch_all(&sql).await?;
    Ok(by_trace(rows, |r| {
        let line = SpanLine {
            start: lineage_api::rfc3339(r.timestamp_ns),
            start_ns: r.timestamp_ns,
            span_id: r.span_id,
            parent_span_id: r.parent_span_id,
            depth: 0,
            name: r.span_name,
            kind: r.span_kind,
            service: r.service_name,
            duration_ns: r.duration_ns,
            status_code: r.status_code,
            status_message: r.status_message,
        };
        (r.trace_id, line)
    }))
}

/// The log records of `traces`, read within each trace's time range
/// (widened by five minutes), or for a trace without spans around its
/// milestones (an hour either side).
async fn logs(
    dashboards: &Dashboards,
    transaction: &Transaction,
    traces: &[String],
    ranges: &HashMap<String, (i64, i64)>,
) -> Result<HashMap<String, Vec<LogLine>>, StoreError> {
    let conditions: Vec<String> = traces
        .iter()
        .filter_map(|t| {
            let (start, end) = match ranges.get(t) {
                Some((start, end)) => (start - 300, end + 300),
                None => {
                    let times: Vec<i64> = transaction.milestones.iter().filter(|m| &m.trace_id == t).filter_map(|m| page::parse_time(&m.time)).collect();
                    let (min, max) = (times.iter().min()?, times.iter().max()?);
                    (min / SECOND_NS - 3600, max / SECOND_NS + 3600)
                }
            };
            Some(format!("(TraceId = {} AND TimestampTime >= toDateTime({start}) AND TimestampTime <= toDateTime({end}))", quote_string(t)))
        })
        .collect();
    if conditions.is_empty() {
        return Ok(HashMap::new());
    }
    let sql = per_trace_sql(
        &format!("Timestamp, TraceId, SpanId, SeverityText, ServiceName, substringUTF8(Body, 1, {MAX_BODY_CHARS}) AS Body FROM otel_logs"),
        &conditions,
        "TraceId, Timestamp",
        traces.len(),
    );
    let rows: Vec<LogRecord> = dashboards.store().fetch_all(&sql).await?;
    Ok(by_trace(rows, |r| {
        let line = LogLine {
            time: lineage_api::rfc3339(r.timestamp_ns),
            time_ns: r.timestamp_ns,
            span_id: r.span_id,
            severity: r.severity_text,
            service: r.service_name,
            body: r.body,
        };
        (r.trace_id, line)
    }))
}

/// `rows` as lines grouped by trace id, in their order.
fn by_trace<R, L>(rows: Vec<R>, line: impl Fn(R) -> (String, L)) -> HashMap<String, Vec<L>> {
    let mut out: HashMap<String, Vec<L>> = HashMap::new();
    for row in rows {
        let (trace, line) = line(row);
        out.entry(trace).or_default().push(line);
    }
    out
}

/// `SELECT {what} WHERE` any of the per-trace `conditions`, in `order`, at
/// most one row more per trace than the per-trace bound (to tell when a
/// trace was cut).
fn per_trace_sql(what: &str, conditions: &[String], order: &str, traces: usize) -> String {
    let cap = per_trace_cap(traces) + 1;
    format!("SELECT {what} WHERE {} ORDER BY {order} LIMIT {cap} BY TraceId LIMIT {}", conditions.join(" OR "), cap * traces)
}

/// `spans` (in time order) with each after its parent, children by start,
/// and their depth; spans whose parent is missing start a tree of their own.
fn tree_order(spans: Vec<SpanLine>) -> Vec<SpanLine> {
    let ids: HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let mut children: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut roots = Vec::new();
    for (i, span) in spans.iter().enumerate() {
        if !span.parent_span_id.is_empty() && span.parent_span_id != span.span_id && ids.contains(span.parent_span_id.as_str()) {
            children.entry(span.parent_span_id.as_str()).or_default().push(i);
        } else {
            roots.push(i);
        }
    }
    let mut order: Vec<(usize, usize)> = Vec::with_capacity(spans.len());
    let mut visited = vec![false; spans.len()];
    let mut stack: Vec<(usize, usize)> = roots.into_iter().rev().map(|i| (i, 0)).collect();
    while let Some((i, depth)) = stack.pop() {
        if std::mem::replace(&mut visited[i], true) {
            continue;
        }
        order.push((i, depth));
        if let Some(kids) = children.get(spans[i].span_id.as_str()) {
            stack.extend(kids.iter().rev().map(|&k| (k, depth + 1)));
        }
    }
    // Spans in a parent cycle are never reached from a root: keep them flat.
    order.extend((0..spans.len()).filter(|&i| !visited[i]).map(|i| (i, 0)));
    let mut slots: Vec<Option<SpanLine>> = spans.into_iter().map(Some).collect();
    order
        .into_iter()
        .filter_map(|(i, depth)| {
            slots[i].take().map(|mut s| {
                s.depth = depth;
                s
            })
        })
        .collect()
}

/// Current alerts whose label values name a key or system of `transaction`.
fn alerts_of(dashboards: &Dashboards, transaction: &Transaction) -> Vec<AlertView> {
    let mut names: HashSet<&str> = transaction.keys.iter().map(|k| k.value.as_str()).collect();
    names.insert(&transaction.root.value);
    names.extend(transaction.systems.iter().map(String::as_str));
    let mut alerts: Vec<AlertView> = dashboards
        .alerts()
        .alerts()
        .into_iter()
        .filter(|a| a.state == "firing" || a.state == "pending")
        .filter(|a| a.labels.values().any(|v| names.contains(v.as_str())))
        .collect();
    alerts.sort_by(|a, b| (&a.rule, &a.labels).cmp(&(&b.rule, &b.labels)));
    alerts
}

// ---------------------------------------------------------------- the page

struct KeyLink {
    kind: String,
    value: String,
    href: String,
    root: bool,
}

#[derive(Clone)]
struct MilestoneLine {
    time: String,
    system: String,
    name: String,
    outcome: String,
    failed: bool,
    elapsed: String,
    trace_id: String,
}

struct OverdueLine {
    milestone: String,
    due: String,
    late_by: String,
}

struct TraceView {
    trace_id: String,
    milestones: String,
    waterfall: String,
    span_count: usize,
    spans_truncated: bool,
    logs: Vec<LogView>,
    logs_truncated: bool,
}

struct LogView {
    time: String,
    severity: String,
    service: String,
    body: String,
}

struct AlertLine {
    rule: String,
    state: String,
    severity: String,
    labels: String,
    since: String,
}

#[derive(Template)]
#[template(path = "transaction.html")]
struct TransactionPage {
    layout: Layout,
    id: String,
    root_kind: String,
    root_value: String,
    state: String,
    keys: Vec<KeyLink>,
    systems: String,
    started: String,
    updated: String,
    elapsed: String,
    open_for: String,
    journey: String,
    milestones: Vec<MilestoneLine>,
    overdue: Vec<OverdueLine>,
    graph: String,
    graph_truncated: bool,
    traces: Vec<TraceView>,
    traces_not_shown: usize,
    untraced: Vec<MilestoneLine>,
    alerts: Vec<AlertLine>,
    json_href: String,
}

#[derive(Template)]
#[template(path = "transaction_missing.html")]
struct MissingPage {
    layout: Layout,
    id: String,
}

async fn transaction_page(State(dashboards): State<Dashboards>, Extension(viewer): Extension<Viewer>, Path(id): Path<String>) -> Response {
    match detail(&dashboards, &id).await {
        Ok(Some(detail)) => page::render(&page_of(detail, viewer, page::now_ns())),
        Ok(None) => {
            let mut response = page::render(&MissingPage { layout: Layout::new("No such transaction", "search", &viewer), id });
            *response.status_mut() = StatusCode::NOT_FOUND;
            response
        }
        Err(err) => page::store_error(err),
    }
}

async fn detail_json(State(dashboards): State<Dashboards>, Path(id): Path<String>) -> Response {
    match detail(&dashboards, &id).await {
        Ok(Some(detail)) => Json(detail).into_response(),
        Ok(None) => page::json_error(StatusCode::NOT_FOUND, &format!("no transaction with id {id:?}")),
        Err(err) => page::json_error(StatusCode::SERVICE_UNAVAILABLE, &format!("the store did not answer: {err}")),
    }
}

fn page_of(detail: Detail, viewer: Viewer, now_ns: i64) -> TransactionPage {
    let t = &detail.transaction;
    let started_ns = page::parse_time(&t.started).unwrap_or_default();
    let updated_ns = page::parse_time(&t.updated).unwrap_or_default();
    let open = !matches!(t.state.as_str(), "completed" | "failed");
    let mut previous: Option<i64> = None;
    let milestones: Vec<MilestoneLine> = t
        .milestones
        .iter()
        .map(|m| {
            let ns = page::parse_time(&m.time).unwrap_or_default();
            let elapsed = previous.map(|p| page::duration((ns - p) as f64 / 1e9)).unwrap_or_default();
            previous = Some(ns);
            MilestoneLine {
                time: page::time(ns),
                system: m.system.clone(),
                name: m.name.clone(),
                outcome: m.outcome.clone(),
                failed: is_failed(&m.outcome),
                elapsed,
                trace_id: m.trace_id.clone(),
            }
        })
        .collect();
    let overdue = t
        .overdue
        .iter()
        .map(|o| {
            let due = page::parse_time(&o.due).unwrap_or_default();
            OverdueLine { milestone: o.milestone.clone(), due: page::time(due), late_by: page::duration((now_ns - due) as f64 / 1e9) }
        })
        .collect();
    let untraced = milestones
        .iter()
        .filter(|m| m.trace_id.is_empty())
        .map(|m| MilestoneLine { elapsed: String::new(), ..m.clone() })
        .collect();
    let traces = detail
        .traces
        .iter()
        .map(|trace| TraceView {
            trace_id: trace.trace_id.clone(),
            milestones: trace.milestones.join(", "),
            waterfall: waterfall_svg(&trace.spans),
            span_count: trace.spans.len(),
            spans_truncated: trace.spans_truncated,
            logs: trace
                .logs
                .iter()
                .map(|l| LogView { time: page::time(l.time_ns), severity: l.severity.clone(), service: l.service.clone(), body: l.body.clone() })
                .collect(),
            logs_truncated: trace.logs_truncated,
        })
        .collect();
    let alerts = detail
        .alerts
        .iter()
        .map(|a| AlertLine {
            rule: a.rule.clone(),
            state: a.state.clone(),
            severity: a.severity.clone(),
            labels: a.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", "),
            since: time_of(&a.since),
        })
        .collect();
    let (graph_keys, _) = graph_keys(t);
    TransactionPage {
        layout: Layout::new(format!("{} {}", t.root.kind, t.root.value), "search", &viewer),
        id: t.id.clone(),
        root_kind: t.root.kind.clone(),
        root_value: t.root.value.clone(),
        state: t.state.clone(),
        keys: t.keys.iter().map(|k| KeyLink { kind: k.kind.clone(), value: k.value.clone(), href: search_href(&k.value), root: *k == t.root }).collect(),
        systems: t.systems.join(" → "),
        started: page::time(started_ns),
        updated: page::time(updated_ns),
        elapsed: page::duration((updated_ns - started_ns) as f64 / 1e9),
        open_for: if open { page::duration((now_ns - started_ns) as f64 / 1e9) } else { String::new() },
        journey: journey_svg(t),
        milestones,
        overdue,
        graph: graph_svg(t, &graph_keys, &detail.edges),
        graph_truncated: detail.truncated.graph,
        traces,
        traces_not_shown: detail.truncated.traces_not_shown,
        untraced,
        alerts,
        json_href: format!("/api/v1/transactions/{}/detail", page::url_encode(&t.id)),
    }
}

fn is_failed(outcome: &str) -> bool {
    matches!(outcome, "failed" | "rejected")
}

/// `text` cut to `chars` characters, with an ellipsis when cut.
fn clip(text: &str, chars: usize) -> String {
    if text.chars().count() <= chars {
        text.to_owned()
    } else {
        let mut out: String = text.chars().take(chars.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

// ---------------------------------------------------------------- SVG

const LANE_LABEL: f64 = 150.0;
const LANE_HEIGHT: f64 = 64.0;
const LANE_TOP: f64 = 26.0;
const PLOT_WIDTH: f64 = 760.0;
/// Markers closer than this are pushed apart, so names stay readable.
const MIN_GAP: f64 = 135.0;

/// One lane per system (in journey order), milestones placed by time, the
/// time between consecutive milestones written between them, failures in
/// red, overdue milestones hollow at their due time in an "awaited" lane.
fn journey_svg(t: &Transaction) -> String {
    let mut lanes: Vec<String> = t.systems.clone();
    for m in &t.milestones {
        if !lanes.contains(&m.system) {
            lanes.push(m.system.clone());
        }
    }
    let awaited_lane = lanes.len();
    if !t.overdue.is_empty() {
        lanes.push("awaited".to_owned());
    }
    if lanes.is_empty() {
        lanes.push(String::new());
    }
    // Events in time order: milestones, then overdue steps at their due time.
    struct Point {
        ns: i64,
        lane: usize,
        overdue: bool,
        index: usize,
    }
    let mut points: Vec<Point> = t
        .milestones
        .iter()
        .enumerate()
        .map(|(index, m)| Point { ns: page::parse_time(&m.time).unwrap_or_default(), lane: lanes.iter().position(|l| *l == m.system).unwrap_or(0), overdue: false, index })
        .collect();
    points.extend(t.overdue.iter().enumerate().map(|(index, o)| Point { ns: page::parse_time(&o.due).unwrap_or_default(), lane: awaited_lane, overdue: true, index }));
    points.sort_by_key(|p| (p.ns, p.overdue));
    let (first, last) = (points.first().map_or(0, |p| p.ns), points.last().map_or(0, |p| p.ns));
    let span = (last - first).max(1) as f64;
    let mut xs: Vec<f64> = Vec::with_capacity(points.len());
    for p in &points {
        let linear = LANE_LABEL + 40.0 + (p.ns - first) as f64 / span * PLOT_WIDTH;
        let x = match xs.last() {
            Some(prev) => linear.max(prev + MIN_GAP),
            None => linear,
        };
        xs.push(x);
    }
    let width = xs.last().map_or(LANE_LABEL + PLOT_WIDTH + 80.0, |x| (x + 120.0).max(LANE_LABEL + PLOT_WIDTH + 80.0));
    let height = LANE_TOP + LANE_HEIGHT * lanes.len() as f64 + 8.0;
    let lane_y = |lane: usize| LANE_TOP + LANE_HEIGHT * lane as f64 + LANE_HEIGHT / 2.0;
    let mut svg = format!(
        r#"<svg class="journey" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" role="img" aria-label="journey of {}">"#,
        escape(&format!("{} {}", t.root.kind, t.root.value))
    );
    for (i, lane) in lanes.iter().enumerate() {
        let y = LANE_TOP + LANE_HEIGHT * i as f64;
        let class = if !t.overdue.is_empty() && i == awaited_lane { "lane awaited" } else { "lane" };
        let _ = write!(
            svg,
            r#"<g class="{class}" data-system="{name}"><rect x="0" y="{y:.0}" width="{width:.0}" height="{LANE_HEIGHT:.0}" class="lane-bg lane-{parity}"/><text x="8" y="{ty:.0}" class="lane-name">{label}</text></g>"#,
            name = escape(lane),
            parity = i % 2,
            ty = y + LANE_HEIGHT / 2.0 + 4.0,
            label = escape(&clip(lane, 20)),
        );
    }
    if let (Some(p), Some(x)) = (points.first(), xs.first()) {
        let _ = write!(svg, r#"<text x="{x:.0}" y="14" class="axis">{}</text>"#, escape(&page::time(p.ns)));
    }
    // The path through the milestones, with the elapsed time between each pair.
    let mut previous: Option<(f64, f64, i64)> = None;
    for (p, x) in points.iter().zip(&xs) {
        let y = lane_y(p.lane);
        if let Some((px, py, pns)) = previous {
            let class = if p.overdue { "step overdue" } else { "step" };
            let _ = write!(svg, r#"<line x1="{px:.1}" y1="{py:.1}" x2="{x:.1}" y2="{y:.1}" class="{class}"/>"#);
            if !p.overdue {
                let _ = write!(
                    svg,
                    r#"<text x="{mx:.1}" y="{my:.1}" class="elapsed" text-anchor="middle">{}</text>"#,
                    escape(&format!("+{}", page::duration((p.ns - pns) as f64 / 1e9))),
                    mx = (px + x) / 2.0,
                    // Below a level line; above the middle of a slanted one,
                    // clear of the names written above each marker.
                    my = if (py - y).abs() < 1.0 { y + 16.0 } else { (py + y) / 2.0 - 6.0 },
                );
            }
        }
        if !p.overdue {
            previous = Some((*x, y, p.ns));
        }
    }
    for (p, x) in points.iter().zip(&xs) {
        let y = lane_y(p.lane);
        if p.overdue {
            let o = &t.overdue[p.index];
            let _ = write!(
                svg,
                r#"<g class="milestone overdue" data-milestone="{name}"><title>{name} overdue since {due}</title><circle cx="{x:.1}" cy="{y:.1}" r="7"/><text x="{x:.1}" y="{ny:.1}" text-anchor="middle" class="name">{label}</text><text x="{x:.1}" y="{dy:.1}" text-anchor="middle" class="due">overdue since {due}</text></g>"#,
                name = escape(&o.milestone),
                due = escape(&page::time(p.ns)),
                label = escape(&clip(&o.milestone, 22)),
                ny = y - 12.0,
                dy = y + 20.0,
            );
        } else {
            let m = &t.milestones[p.index];
            let class = if is_failed(&m.outcome) { "milestone failed" } else { "milestone ok" };
            let _ = write!(
                svg,
                r#"<g class="{class}" data-milestone="{name}"><title>{name} · {system} · {outcome} · {time}</title><circle cx="{x:.1}" cy="{y:.1}" r="6"/><text x="{x:.1}" y="{ny:.1}" text-anchor="middle" class="name">{label}</text></g>"#,
                name = escape(&m.name),
                system = escape(&m.system),
                outcome = escape(&m.outcome),
                time = escape(&page::time(p.ns)),
                label = escape(&clip(&m.name, 22)),
                ny = y - 12.0,
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

const KEY_COLUMN: f64 = 210.0;
const KEY_BOX_WIDTH: f64 = 170.0;
const KEY_ROW: f64 = 36.0;
const KEY_TOP: f64 = 28.0;

/// The key graph: a column per kind (root kind first), each key a link to
/// its search, edges between linked keys.
fn graph_svg(t: &Transaction, keys: &[KeyRef], edges: &[Edge]) -> String {
    let kinds = kinds(t);
    let mut columns: BTreeMap<usize, Vec<&KeyRef>> = BTreeMap::new();
    for key in keys {
        let column = kinds.iter().position(|k| *k == key.kind).unwrap_or(0);
        columns.entry(column).or_default().push(key);
    }
    let mut place: HashMap<(&str, &str), (f64, f64)> = HashMap::new();
    for (column, column_keys) in &columns {
        for (row, key) in column_keys.iter().enumerate() {
            place.insert((key.kind.as_str(), key.value.as_str()), (8.0 + KEY_COLUMN * *column as f64, KEY_TOP + KEY_ROW * row as f64));
        }
    }
    let rows = columns.values().map(Vec::len).max().unwrap_or(1);
    let width = 16.0 + KEY_COLUMN * kinds.len() as f64;
    let height = KEY_TOP + KEY_ROW * rows as f64 + 4.0;
    let mut svg = format!(r#"<svg class="key-graph" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" role="img" aria-label="key graph">"#);
    for (i, kind) in kinds.iter().enumerate() {
        let _ = write!(svg, r#"<text x="{x:.0}" y="16" class="kind">{}</text>"#, escape(kind), x = 8.0 + KEY_COLUMN * i as f64);
    }
    for edge in edges {
        let (Some(&(fx, fy)), Some(&(tx, ty))) = (place.get(&(edge.from.kind.as_str(), edge.from.value.as_str())), place.get(&(edge.to.kind.as_str(), edge.to.value.as_str())))
        else {
            continue;
        };
        let ((ax, ay), (bx, by)) = if fx <= tx { ((fx + KEY_BOX_WIDTH, fy + 13.0), (tx, ty + 13.0)) } else { ((tx + KEY_BOX_WIDTH, ty + 13.0), (fx, fy + 13.0)) };
        let mid = (ax + bx) / 2.0;
        let _ = write!(
            svg,
            r#"<path class="edge" data-from="{from}" data-to="{to}" d="M{ax:.1},{ay:.1} C{mid:.1},{ay:.1} {mid:.1},{by:.1} {bx:.1},{by:.1}"/>"#,
            from = escape(&edge.from.value),
            to = escape(&edge.to.value),
        );
    }
    for key in keys {
        let Some(&(x, y)) = place.get(&(key.kind.as_str(), key.value.as_str())) else { continue };
        let class = if *key == t.root { "key root" } else { "key" };
        let _ = write!(
            svg,
            r#"<a href="{href}" class="{class}" data-kind="{kind}"><title>{kind}: {value}</title><rect x="{x:.1}" y="{y:.1}" width="{KEY_BOX_WIDTH:.0}" height="26" rx="4"/><text x="{tx:.1}" y="{ty:.1}">{label}</text></a>"#,
            href = escape(&search_href(&key.value)),
            kind = escape(&key.kind),
            value = escape(&key.value),
            label = escape(&clip(&key.value, 24)),
            tx = x + 8.0,
            ty = y + 17.0,
        );
    }
    svg.push_str("</svg>");
    svg
}

const WATERFALL_WIDTH: f64 = 980.0;
const WATERFALL_LABEL: f64 = 340.0;
const WATERFALL_ROW: f64 = 20.0;

/// A trace waterfall: a bar per span, offset by its start, as wide as it
/// lasted, indented by depth; errors in red.
fn waterfall_svg(spans: &[SpanLine]) -> String {
    if spans.is_empty() {
        return String::new();
    }
    let start = spans.iter().map(|s| s.start_ns).min().unwrap_or_default();
    let end = spans.iter().map(|s| s.start_ns + s.duration_ns as i64).max().unwrap_or(start);
    let total = (end - start).max(1) as f64;
    let plot = WATERFALL_WIDTH - WATERFALL_LABEL - 90.0;
    let height = WATERFALL_ROW * spans.len() as f64 + 4.0;
    let mut svg = format!(r#"<svg class="waterfall" width="{WATERFALL_WIDTH:.0}" height="{height:.0}" viewBox="0 0 {WATERFALL_WIDTH:.0} {height:.0}" role="img" aria-label="trace waterfall">"#);
    for (i, span) in spans.iter().enumerate() {
        let y = 2.0 + WATERFALL_ROW * i as f64;
        let x = WATERFALL_LABEL + (span.start_ns - start) as f64 / total * plot;
        let w = (span.duration_ns as f64 / total * plot).max(1.5);
        let indent = 4.0 + 12.0 * span.depth.min(12) as f64;
        let class = if span.is_error() { "span error" } else { "span" };
        let duration = page::duration(span.duration_ns as f64 / 1e9);
        let label = format!("{}: {}", span.service, span.name);
        let status = if span.status_message.is_empty() { span.status_code.clone() } else { format!("{} ({})", span.status_code, span.status_message) };
        let _ = write!(
            svg,
            r#"<g class="{class}" data-span-id="{id}" data-depth="{depth}"><title>{title}</title><text x="{indent:.0}" y="{ty:.1}" class="span-name">{label}</text><rect x="{x:.1}" y="{ry:.1}" width="{w:.1}" height="{rh:.0}" rx="2"/><text x="{dx:.1}" y="{ty:.1}" class="duration">{duration}</text></g>"#,
            id = escape(&span.span_id),
            depth = span.depth,
            title = escape(&format!("{label} · {} · {duration} · {status}", span.kind)),
            label = escape(&clip(&label, ((WATERFALL_LABEL - indent) / 6.8) as usize)),
            ty = y + 13.0,
            ry = y + 3.0,
            rh = WATERFALL_ROW - 6.0,
            dx = x + w + 4.0,
            duration = escape(&duration),
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(id: &str, parent: &str, start_ns: i64) -> SpanLine {
        SpanLine {
            start: String::new(),
            start_ns,
            span_id: id.into(),
            parent_span_id: parent.into(),
            depth: 0,
            name: format!("op {id}"),
            kind: "Internal".into(),
            service: "erp".into(),
            duration_ns: 1_000,
            status_code: "Ok".into(),
            status_message: String::new(),
        }
    }

    #[test]
    fn spans_follow_their_parents_with_depth() {
        let spans = vec![span("a", "", 0), span("c", "b", 20), span("b", "a", 10), span("d", "a", 30), span("x", "gone", 5)];
        let ordered: Vec<(String, usize)> = tree_order(spans).into_iter().map(|s| (s.span_id, s.depth)).collect();
        let expected: Vec<(String, usize)> = [("a", 0), ("b", 1), ("c", 2), ("d", 1), ("x", 0)].iter().map(|(i, d)| (i.to_string(), *d)).collect();
        assert_eq!(ordered, expected);
    }

    #[test]
    fn a_parent_cycle_keeps_every_span() {
        let spans = vec![span("a", "b", 0), span("b", "a", 1)];
        assert_eq!(tree_order(spans).len(), 2);
    }

    #[test]
    fn markup_in_span_names_is_escaped() {
        let mut s = span("a", "", 0);
        s.name = "<script>alert(1)</script>".into();
        let svg = waterfall_svg(&[s]);
        assert!(!svg.contains("<script>") && svg.contains("&lt;script&gt;"), "{svg}");
    }

    #[test]
    fn long_text_is_clipped() {
        assert_eq!(clip("abcdef", 4), "abc…");
        assert_eq!(clip("abc", 4), "abc");
    }
}
