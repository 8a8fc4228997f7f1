//! The exception queue (`/exceptions`): failed and stuck transactions as
//! work items with an audit trail (acknowledge, assign, comment, resolve)
//! and the replay of a failed step to the system's configured endpoint.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use clickhouse::Row;
use serde::{Deserialize, Serialize};
use waybill_lineage::api::{latest_row, rfc3339, Transaction};
use waybill_store::sql::quote_string;
use waybill_store::{ExceptionActionRow, StoreError, TransactionRow};

use crate::auth::Viewer;
use crate::config::Role;
use crate::page::{self, Layout};
use crate::Dashboards;

/// At most this many work items are listed.
const QUEUE_LIMIT: usize = 100;
/// At most this many audit entries are shown for one item.
const TRAIL_LIMIT: usize = 1000;
/// A replay started this recently is not started again without confirmation.
const REPLAY_GUARD_NS: i64 = 60 * 1_000_000_000;
const ACTIONS: [&str; 5] = ["acknowledge", "assign", "comment", "resolve", "replay"];
const STATUSES: [&str; 6] = ["unresolved", "open", "acknowledged", "assigned", "resolved", "all"];
const MAX_NAME: usize = 200;
const MAX_TEXT: usize = 4000;

pub fn routes() -> Router<Dashboards> {
    Router::new()
        .route("/exceptions", get(queue_page))
        .route("/exceptions/{id}", get(item_page))
        .route("/exceptions/{id}/{action}", post(act_page))
        .route("/api/v1/exceptions", get(queue_json))
        .route("/api/v1/exceptions/{id}", get(item_json))
        .route("/api/v1/exceptions/{id}/{action}", post(act_json))
}

// ---------------------------------------------------------------------------
// Work items: the problem of a transaction and its status.

/// What went wrong: the failed step, or the milestone that is overdue.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    /// `failed` or `overdue`.
    pub kind: &'static str,
    /// The milestone that failed (or was rejected), or is overdue.
    pub milestone: String,
    /// The system that failed it; for an overdue milestone, the system of
    /// the last milestone reached (where the transaction waits).
    pub system: String,
    /// `failed`, `rejected` or `overdue`.
    pub outcome: String,
    /// When it failed, or when it was due.
    #[serde(rename = "since", serialize_with = "ser_time")]
    pub since_ns: i64,
    /// What a replay re-sends: the failed event itself, or for an overdue
    /// milestone the last milestone reached.
    pub payload: Option<Payload>,
}

/// The reference to a step's payload: the record that reported it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Payload {
    pub milestone: String,
    pub system: String,
    pub trace_id: String,
    pub span_id: String,
    #[serde(rename = "time", serialize_with = "ser_time")]
    pub time_ns: i64,
}

fn ser_time<S: serde::Serializer>(ns: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*ns))
}

fn is_failure(outcome: &str) -> bool {
    matches!(outcome, "failed" | "rejected")
}

/// The problem of a failed or stuck transaction; `None` for any other.
///
/// Mirrors [`SINCE`]: a failed transaction's step is the latest failing
/// milestone whose latest event failed; a stuck one's the overdue milestone
/// due first.
pub fn step_of(row: &TransactionRow) -> Option<Step> {
    let milestones = waybill_lineage::resolve::milestones_of(row);
    let payload_of = |i: usize| {
        let m = &milestones[i];
        Payload {
            milestone: m.name.clone(),
            system: m.system.clone(),
            trace_id: if m.trace_id.starts_with(waybill_lineage::extract::OWN_TRACE_PREFIX) { String::new() } else { m.trace_id.clone() },
            span_id: m.span_id.clone(),
            time_ns: m.time_ns,
        }
    };
    match row.state.as_str() {
        "failed" => {
            let failing = (0..milestones.len())
                .filter(|&i| is_failure(&milestones[i].outcome) && !milestones[i + 1..].iter().any(|later| later.name == milestones[i].name))
                .max_by_key(|&i| (milestones[i].time_ns, i))?;
            let m = &milestones[failing];
            Some(Step { kind: "failed", milestone: m.name.clone(), system: m.system.clone(), outcome: m.outcome.clone(), since_ns: m.time_ns, payload: Some(payload_of(failing)) })
        }
        "stuck" => {
            let (milestone, due) = row.overdue_milestones.iter().zip(&row.overdue_due_ns).min_by_key(|(_, due)| **due)?;
            let last = (0..milestones.len()).max_by_key(|&i| (milestones[i].time_ns, i));
            let payload = last.map(payload_of);
            Some(Step {
                kind: "overdue",
                milestone: milestone.clone(),
                system: payload.as_ref().map(|p| p.system.clone()).unwrap_or_default(),
                outcome: "overdue".to_owned(),
                since_ns: *due,
                payload,
            })
        }
        _ => None,
    }
}

/// When the current problem began (the SQL twin of [`step_of`]'s
/// `since_ns`), for the queue's order and status filter: actions before it
/// were about an earlier problem. The status counts actions from the
/// earlier of it and the row's update time, so a source clock ahead of
/// ours does not hide the actions taken since.
const SINCE: &str = "if(State = 'failed', \
     if(fail_index = 0, Updated, MilestoneTimes[fail_index]), \
     if(empty(OverdueDue), Updated, arrayMin(OverdueDue)))";
const FAIL_INDEX: &str = "arrayReverseSort(i -> (MilestoneTimes[i], i), arrayFilter(i -> MilestoneOutcomes[i] IN ('failed', 'rejected') \
     AND NOT has(arraySlice(MilestoneNames, i + 1), MilestoneNames[i]), arrayEnumerate(MilestoneNames)))[1]";

/// A work item's status from its audit trail: the last acknowledge, assign
/// or resolve since the problem began decides; none is `open`.
pub fn status_of<'a>(trail: impl IntoIterator<Item = &'a ExceptionActionRow>, since_ns: i64) -> (&'static str, String) {
    let last = trail
        .into_iter()
        .filter(|a| a.time_ns >= since_ns && matches!(a.action.as_str(), "acknowledge" | "assign" | "resolve"))
        .max_by_key(|a| a.time_ns);
    match last {
        None => ("open", String::new()),
        Some(a) if a.action == "resolve" => ("resolved", String::new()),
        Some(a) if a.action == "assign" => ("assigned", a.assignee.clone()),
        Some(_) => ("acknowledged", String::new()),
    }
}

/// `assigned to NAME`, `open`, ...
fn status_label(status: &str, assignee: &str) -> String {
    if status == "assigned" {
        format!("assigned to {assignee}")
    } else {
        status.to_owned()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct KeyRef {
    pub kind: String,
    pub value: String,
}

/// A work item as the queue and its JSON twin show it.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    pub id: String,
    pub root: KeyRef,
    /// The transaction's state: `failed` or `stuck` (else it recovered).
    pub state: String,
    pub step: Option<Step>,
    /// `open`, `acknowledged`, `assigned`, `resolved`; `recovered` when the
    /// transaction is no longer failed or stuck.
    pub status: &'static str,
    pub assignee: String,
    pub systems: Vec<String>,
    #[serde(rename = "updated", serialize_with = "ser_time")]
    pub updated_ns: i64,
}

impl Item {
    fn since_for_status(step: &Option<Step>, updated_ns: i64) -> i64 {
        step.as_ref().map_or(updated_ns, |s| s.since_ns.min(updated_ns))
    }
}

/// One row of the queue query: the transaction's columns, then the
/// acknowledge/assign/resolve actions on it.
#[derive(Debug, Row, Deserialize)]
struct QueueRow {
    id: String,
    root_kind: String,
    root_value: String,
    state: String,
    systems: Vec<String>,
    milestone_names: Vec<String>,
    milestone_systems: Vec<String>,
    milestone_times_ns: Vec<i64>,
    milestone_outcomes: Vec<String>,
    milestone_trace_ids: Vec<String>,
    milestone_span_ids: Vec<String>,
    overdue_milestones: Vec<String>,
    overdue_due_ns: Vec<i64>,
    updated_ns: i64,
    acts: Vec<(i64, String, String)>,
}

/// The condition on the queue's computed `status` for a status filter.
fn status_condition(filter: &str) -> &'static str {
    match filter {
        "open" => "status = 'open'",
        "acknowledged" => "status = 'acknowledged'",
        "assigned" => "status = 'assigned'",
        "resolved" => "status = 'resolved'",
        "all" => "1",
        _ => "status != 'resolved'",
    }
}

/// Failed and stuck transactions with the status `filter`, newest problem
/// first. The status is computed in SQL as [`status_of`] does, so the
/// filter applies before the limit.
async fn queue(dashboards: &Dashboards, filter: &str) -> Result<Vec<Item>, StoreError> {
    let sql = format!(
        "SELECT id, root_kind, root_value, state, systems, milestone_names, milestone_systems, milestone_times_ns, milestone_outcomes, \
           milestone_trace_ids, milestone_span_ids, overdue_milestones, overdue_due_ns, updated_ns, acts \
         FROM ( \
           SELECT p.*, a.Acts AS acts, \
             arraySort(x -> tupleElement(x, 1), arrayFilter(x -> tupleElement(x, 1) >= least(p.since_ns, p.updated_ns), a.Acts)) AS live, \
             if(empty(live), 'open', multiIf(tupleElement(live[-1], 2) = 'resolve', 'resolved', tupleElement(live[-1], 2) = 'assign', 'assigned', 'acknowledged')) AS status \
           FROM ( \
             SELECT Id AS id, RootKind AS root_kind, RootValue AS root_value, State AS state, Systems AS systems, \
               MilestoneNames AS milestone_names, MilestoneSystems AS milestone_systems, MilestoneTimes AS milestone_times_ns, \
               MilestoneOutcomes AS milestone_outcomes, MilestoneTraceIds AS milestone_trace_ids, MilestoneSpanIds AS milestone_span_ids, \
               OverdueMilestones AS overdue_milestones, OverdueDue AS overdue_due_ns, Updated AS updated_ns, \
               {FAIL_INDEX} AS fail_index, {SINCE} AS since_ns \
             FROM transactions FINAL WHERE State IN ('failed', 'stuck') \
           ) AS p \
           LEFT JOIN ( \
             SELECT TransactionId, groupArray((Time, Action, Assignee)) AS Acts FROM exception_actions \
             WHERE Action IN ('acknowledge', 'assign', 'resolve') GROUP BY TransactionId \
           ) AS a ON a.TransactionId = p.id \
           WHERE {} \
           ORDER BY p.since_ns DESC, p.id LIMIT {QUEUE_LIMIT} \
         )",
        status_condition(filter)
    );
    let rows: Vec<QueueRow> = dashboards.store().fetch_all(&sql).await?;
    Ok(rows.into_iter().map(item_of_queue_row).collect())
}

fn item_of_queue_row(row: QueueRow) -> Item {
    let acts: Vec<ExceptionActionRow> = row
        .acts
        .iter()
        .map(|(time_ns, action, assignee)| ExceptionActionRow { time_ns: *time_ns, action: action.clone(), assignee: assignee.clone(), ..Default::default() })
        .collect();
    let tx = TransactionRow {
        id: row.id,
        root_kind: row.root_kind,
        root_value: row.root_value,
        state: row.state,
        systems: row.systems,
        milestone_names: row.milestone_names,
        milestone_systems: row.milestone_systems,
        milestone_times_ns: row.milestone_times_ns,
        milestone_outcomes: row.milestone_outcomes,
        milestone_trace_ids: row.milestone_trace_ids,
        milestone_span_ids: row.milestone_span_ids,
        overdue_milestones: row.overdue_milestones,
        overdue_due_ns: row.overdue_due_ns,
        updated_ns: row.updated_ns,
        ..Default::default()
    };
    item_of(&tx, &acts)
}

fn item_of(tx: &TransactionRow, trail: &[ExceptionActionRow]) -> Item {
    let step = step_of(tx);
    let (status, assignee) = if step.is_some() { status_of(trail, Item::since_for_status(&step, tx.updated_ns)) } else { ("recovered", String::new()) };
    Item {
        id: tx.id.clone(),
        root: KeyRef { kind: tx.root_kind.clone(), value: tx.root_value.clone() },
        state: tx.state.clone(),
        step,
        status,
        assignee,
        systems: tx.systems.clone(),
        updated_ns: tx.updated_ns,
    }
}

async fn transaction_row(dashboards: &Dashboards, id: &str) -> Result<Option<TransactionRow>, StoreError> {
    latest_row(dashboards.store(), id).await
}

/// The audit trail of one transaction, oldest first.
async fn trail(dashboards: &Dashboards, id: &str) -> Result<Vec<ExceptionActionRow>, StoreError> {
    dashboards
        .store()
        .fetch_all(&format!(
            "SELECT Time, TransactionId, Actor, Action, Assignee, Comment, ReplayKey, Outcome, Detail FROM exception_actions \
             WHERE TransactionId = {} ORDER BY Time DESC LIMIT {TRAIL_LIMIT}",
            quote_string(id)
        ))
        .await
        .map(|mut rows: Vec<ExceptionActionRow>| {
            rows.reverse();
            rows
        })
}

// ---------------------------------------------------------------------------
// The queue page and its JSON twin.

#[derive(Debug, Default, Deserialize)]
pub struct QueueQuery {
    #[serde(default)]
    status: String,
}

impl QueueQuery {
    fn filter(&self) -> Result<&'static str, String> {
        let wanted = self.status.trim();
        if wanted.is_empty() {
            return Ok("unresolved");
        }
        STATUSES.iter().copied().find(|s| *s == wanted).ok_or_else(|| format!("status {wanted:?} is not one of {}", STATUSES.join(", ")))
    }
}

pub struct QueueLine {
    pub id: String,
    pub root: String,
    pub root_kind: String,
    pub problem: &'static str,
    pub step: String,
    pub since: String,
    pub ago: String,
    pub status: &'static str,
    pub status_label: String,
    pub systems: String,
}

pub struct StatusOption {
    pub value: &'static str,
    pub label: &'static str,
    pub selected: bool,
}

#[derive(Template)]
#[template(path = "exceptions.html")]
struct QueuePage {
    layout: Layout,
    filter: &'static str,
    statuses: Vec<StatusOption>,
    items: Vec<QueueLine>,
    limit: usize,
}

fn step_text(step: &Option<Step>) -> String {
    match step {
        Some(step) if step.kind == "failed" => format!("{} {} at {}", step.milestone, step.outcome, step.system),
        Some(step) if step.system.is_empty() => format!("{} overdue", step.milestone),
        Some(step) => format!("{} overdue (waiting at {})", step.milestone, step.system),
        None => String::new(),
    }
}

async fn queue_page(State(dashboards): State<Dashboards>, Extension(viewer): Extension<Viewer>, Query(query): Query<QueueQuery>) -> Response {
    let filter = match query.filter() {
        Ok(filter) => filter,
        Err(message) => return page::error_page(StatusCode::BAD_REQUEST, &message),
    };
    let items = match queue(&dashboards, filter).await {
        Ok(items) => items,
        Err(err) => return page::store_error(err),
    };
    let now_ns = page::now_ns();
    let items = items
        .into_iter()
        .map(|item| {
            let since_ns = item.step.as_ref().map_or(item.updated_ns, |s| s.since_ns);
            QueueLine {
                problem: if item.state == "failed" { "failed" } else { "stuck" },
                step: step_text(&item.step),
                since: page::time(since_ns),
                ago: page::duration((now_ns - since_ns) as f64 / 1e9),
                status: item.status,
                status_label: status_label(item.status, &item.assignee),
                systems: item.systems.join(" → "),
                root: item.root.value,
                root_kind: item.root.kind,
                id: item.id,
            }
        })
        .collect();
    let statuses = STATUSES.iter().map(|&value| StatusOption { value, label: if value == "unresolved" { "not resolved" } else { value }, selected: value == filter }).collect();
    page::render(&QueuePage { layout: Layout::new("Exceptions", "exceptions", &viewer), filter, statuses, items, limit: QUEUE_LIMIT })
}

#[derive(Serialize)]
struct QueueJson {
    status: &'static str,
    items: Vec<Item>,
}

async fn queue_json(State(dashboards): State<Dashboards>, Query(query): Query<QueueQuery>) -> Response {
    let filter = match query.filter() {
        Ok(filter) => filter,
        Err(message) => return page::json_error(StatusCode::BAD_REQUEST, &message),
    };
    match queue(&dashboards, filter).await {
        Ok(items) => Json(QueueJson { status: filter, items }).into_response(),
        Err(err) => unavailable(err),
    }
}

fn unavailable(err: StoreError) -> Response {
    page::json_error(StatusCode::SERVICE_UNAVAILABLE, &format!("the store did not answer: {err}"))
}

// ---------------------------------------------------------------------------
// One work item.

/// An audit entry as the JSON twin shows it.
#[derive(Debug, Clone, Serialize)]
pub struct TrailEntry {
    pub time: String,
    pub actor: String,
    pub action: String,
    pub assignee: String,
    pub comment: String,
    pub replay_key: String,
    pub outcome: String,
    pub detail: String,
}

impl From<&ExceptionActionRow> for TrailEntry {
    fn from(row: &ExceptionActionRow) -> Self {
        TrailEntry {
            time: rfc3339(row.time_ns),
            actor: row.actor.clone(),
            action: row.action.clone(),
            assignee: row.assignee.clone(),
            comment: row.comment.clone(),
            replay_key: row.replay_key.clone(),
            outcome: row.outcome.clone(),
            detail: row.detail.clone(),
        }
    }
}

/// Whether and where a work item's step can be replayed.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayInfo {
    /// The system a replay goes to (the payload's system).
    pub system: String,
    /// The config key that names its endpoint.
    pub config_key: String,
    pub configured: bool,
    /// Replays of this step so far (the next confirmed one is this + 1).
    pub attempts: u32,
    /// The latest attempt: when, by whom, how it went.
    pub last: Option<TrailEntry>,
}

#[derive(Serialize)]
struct ItemJson {
    item: Item,
    transaction: Transaction,
    replay: Option<ReplayInfo>,
    trail: Vec<TrailEntry>,
}

struct Loaded {
    tx: TransactionRow,
    item: Item,
    trail: Vec<ExceptionActionRow>,
    replay: Option<ReplayInfo>,
}

async fn load_item(dashboards: &Dashboards, id: &str) -> Result<Option<Loaded>, StoreError> {
    let Some(tx) = transaction_row(dashboards, id).await? else { return Ok(None) };
    let trail = trail(dashboards, id).await?;
    let item = item_of(&tx, &trail);
    let replay = item.step.as_ref().and_then(|s| s.payload.as_ref()).map(|payload| {
        let attempts = attempts_so_far(&trail, &tx.id, payload);
        let last = (attempts > 0).then(|| idempotency_key(&tx.id, payload, attempts)).and_then(|key| trail.iter().rev().find(|a| a.action == "replay" && a.replay_key == key)).map(TrailEntry::from);
        ReplayInfo {
            config_key: format!("dashboards.replay.{}", payload.system),
            configured: dashboards.config().replay.contains_key(&payload.system),
            system: payload.system.clone(),
            attempts,
            last,
        }
    });
    Ok(Some(Loaded { tx, item, trail, replay }))
}

pub struct TrailLine {
    pub time: String,
    pub actor: String,
    pub action: String,
    pub what: String,
    pub outcome: String,
    pub key: String,
}

pub struct MilestoneLine {
    pub name: String,
    pub system: String,
    pub time: String,
    pub outcome: String,
    pub is_step: bool,
}

#[derive(Template)]
#[template(path = "exception.html")]
struct ItemPage {
    layout: Layout,
    id: String,
    root: String,
    root_kind: String,
    state: String,
    status: &'static str,
    status_label: String,
    keys: Vec<String>,
    systems: String,
    started: String,
    updated: String,
    has_step: bool,
    step_kind: &'static str,
    step_text: String,
    step_since: String,
    step_ago: String,
    payload: String,
    milestones: Vec<MilestoneLine>,
    trail: Vec<TrailLine>,
    can_act: bool,
    notice: String,
    refusal: String,
    /// Replay: the button shows when the payload's system has a target.
    can_replay: bool,
    replay_missing: String,
    replay_attempts: u32,
    replay_next: u32,
    replay_last: String,
}

fn trail_line(row: &ExceptionActionRow) -> TrailLine {
    let what = match row.action.as_str() {
        "assign" => format!("assigned to {}", row.assignee),
        "resolve" if row.comment.is_empty() => "resolved".to_owned(),
        "resolve" => format!("resolved: {}", row.comment),
        "comment" => row.comment.clone(),
        "acknowledge" => "acknowledged".to_owned(),
        "replay" if row.comment.is_empty() => row.detail.clone(),
        "replay" => format!("{} — {}", row.detail, row.comment),
        _ => row.detail.clone(),
    };
    TrailLine { time: page::time(row.time_ns), actor: row.actor.clone(), action: row.action.clone(), what, outcome: row.outcome.clone(), key: row.replay_key.clone() }
}

fn replay_last_text(last: &Option<TrailEntry>, trail: &[ExceptionActionRow]) -> String {
    let Some(last) = last else { return String::new() };
    let started = trail.iter().find(|a| a.action == "replay" && a.replay_key == last.replay_key && a.outcome == "started");
    let (time, actor) = started.map_or_else(|| (page::time(page::parse_time(&last.time).unwrap_or_default()), last.actor.clone()), |s| (page::time(s.time_ns), s.actor.clone()));
    let outcome = match last.outcome.as_str() {
        "started" => "still being sent".to_owned(),
        "delivered" => "delivered".to_owned(),
        _ => format!("failed: {}", last.detail),
    };
    format!("replayed at {time} by {actor}: {outcome}")
}

fn item_page_of(viewer: &Viewer, loaded: &Loaded, notice: String, refusal: String) -> ItemPage {
    let Loaded { tx, item, trail, replay } = loaded;
    let now_ns = page::now_ns();
    let step = item.step.as_ref();
    let step_span = step.and_then(|s| s.payload.as_ref()).map(|p| p.span_id.clone()).unwrap_or_default();
    let milestones = waybill_lineage::resolve::milestones_of(tx)
        .into_iter()
        .map(|m| MilestoneLine {
            is_step: step.is_some_and(|s| s.kind == "failed") && !step_span.is_empty() && m.span_id == step_span && step.is_some_and(|s| s.milestone == m.name),
            time: page::time(m.time_ns),
            name: m.name,
            system: m.system,
            outcome: m.outcome,
        })
        .collect();
    let payload = step.and_then(|s| s.payload.as_ref()).map_or_else(String::new, |p| {
        let trace = if p.trace_id.is_empty() { "no trace".to_owned() } else { format!("trace {}", p.trace_id) };
        format!("{} at {} ({trace}, span {})", p.milestone, p.system, p.span_id)
    });
    ItemPage {
        layout: Layout::new(format!("Exception: {} {}", tx.root_kind, tx.root_value), "exceptions", viewer),
        id: tx.id.clone(),
        root: tx.root_value.clone(),
        root_kind: tx.root_kind.clone(),
        state: tx.state.clone(),
        status: item.status,
        status_label: status_label(item.status, &item.assignee),
        keys: tx.key_kinds.iter().zip(&tx.key_values).map(|(k, v)| format!("{k} {v}")).collect(),
        systems: tx.systems.join(" → "),
        started: page::time(tx.started_ns),
        updated: page::time(tx.updated_ns),
        has_step: step.is_some(),
        step_kind: step.map_or("", |s| s.kind),
        step_text: step_text(&item.step),
        step_since: step.map(|s| page::time(s.since_ns)).unwrap_or_default(),
        step_ago: step.map(|s| page::duration((now_ns - s.since_ns) as f64 / 1e9)).unwrap_or_default(),
        payload,
        milestones,
        trail: trail.iter().rev().map(trail_line).collect(),
        can_act: viewer.can(Role::Operator),
        notice,
        refusal,
        can_replay: replay.as_ref().is_some_and(|r| r.configured),
        replay_missing: replay.as_ref().filter(|r| !r.configured).map(|r| format!("{}.url", r.config_key)).unwrap_or_default(),
        replay_attempts: replay.as_ref().map_or(0, |r| r.attempts),
        replay_next: replay.as_ref().map_or(1, |r| r.attempts + 1),
        replay_last: replay.as_ref().map(|r| replay_last_text(&r.last, trail)).unwrap_or_default(),
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct ItemQuery {
    #[serde(default)]
    done: String,
}

/// The notice after an action, from a fixed list (never text from the URL).
fn done_notice(done: &str, loaded: &Loaded) -> String {
    match done {
        "acknowledge" => "Acknowledged.".to_owned(),
        "assign" => format!("Assigned to {}.", loaded.item.assignee),
        "comment" => "Comment added.".to_owned(),
        "resolve" => "Resolved.".to_owned(),
        "replay" => loaded.replay.as_ref().and_then(|r| r.last.as_ref()).map_or_else(String::new, |last| match last.outcome.as_str() {
            "delivered" => format!("Replay attempt {} delivered to {}.", loaded.replay.as_ref().map_or(0, |r| r.attempts), loaded.replay.as_ref().map_or("", |r| r.system.as_str())),
            "failed" => format!("Replay failed: {}", last.detail),
            _ => "Replay is being sent.".to_owned(),
        }),
        _ => String::new(),
    }
}

async fn item_page(State(dashboards): State<Dashboards>, Extension(viewer): Extension<Viewer>, Path(id): Path<String>, Query(query): Query<ItemQuery>) -> Response {
    match load_item(&dashboards, &id).await {
        Ok(Some(loaded)) => {
            let notice = done_notice(&query.done, &loaded);
            page::render(&item_page_of(&viewer, &loaded, notice, String::new()))
        }
        Ok(None) => page::error_page(StatusCode::NOT_FOUND, &format!("no transaction has the id {id}: find it on the exceptions list or by a business key")),
        Err(err) => page::store_error(err),
    }
}

async fn item_json(State(dashboards): State<Dashboards>, Path(id): Path<String>) -> Response {
    match load_item(&dashboards, &id).await {
        Ok(Some(Loaded { tx, item, trail, replay })) => {
            Json(ItemJson { item, transaction: Transaction::from(tx), replay, trail: trail.iter().map(TrailEntry::from).collect() }).into_response()
        }
        Ok(None) => page::json_error(StatusCode::NOT_FOUND, &format!("no transaction has the id {id}")),
        Err(err) => unavailable(err),
    }
}

// ---------------------------------------------------------------------------
// Actions.

/// The fields of the action forms (all optional; each action checks its own).
#[derive(Debug, Default, Deserialize)]
pub struct ActionForm {
    #[serde(default)]
    assignee: String,
    #[serde(default)]
    comment: String,
    #[serde(default)]
    note: String,
    /// `yes` confirms another replay of a step already replayed.
    #[serde(default)]
    again: String,
    /// With `again`: the attempt the person confirmed (guards a double click).
    #[serde(default)]
    attempt: Option<u32>,
}

fn parse_form(headers: &HeaderMap, body: &[u8]) -> Result<ActionForm, String> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(ActionForm::default());
    }
    if content_type.starts_with("application/json") {
        return serde_json::from_slice(body).map_err(|e| format!("the JSON body is not an action: {e}"));
    }
    // Forms send every field as text; read them as pairs first so `csrf`
    // and any other field are ignored.
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body).map_err(|e| format!("the form could not be read: {e}"))?;
    let mut form = ActionForm::default();
    for (name, value) in pairs {
        match name.as_str() {
            "assignee" => form.assignee = value,
            "comment" => form.comment = value,
            "note" => form.note = value,
            "again" => form.again = value,
            "attempt" if !value.trim().is_empty() => form.attempt = Some(value.trim().parse().map_err(|_| format!("attempt {value:?} is not a number"))?),
            _ => {}
        }
    }
    Ok(form)
}

/// What an action answered.
enum Outcome {
    /// Done: back to the item (with a notice), or the JSON.
    Done { action: &'static str, json: serde_json::Value },
    /// Refused with a status and a message the person can act on.
    Refused { status: StatusCode, message: String, json: serde_json::Value },
}

fn refused(status: StatusCode, message: impl Into<String>) -> Outcome {
    let message = message.into();
    Outcome::Refused { status, json: serde_json::json!({ "error": message }), message }
}

fn wants_json(headers: &HeaderMap) -> bool {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("application/json"))
}

async fn act_page(State(dashboards): State<Dashboards>, Extension(viewer): Extension<Viewer>, Path((id, action)): Path<(String, String)>, headers: HeaderMap, body: Bytes) -> Response {
    let json = wants_json(&headers);
    let outcome = act(&dashboards, &viewer, &id, &action, &headers, &body).await;
    respond(&dashboards, &viewer, &id, outcome, json).await
}

async fn act_json(State(dashboards): State<Dashboards>, Extension(viewer): Extension<Viewer>, Path((id, action)): Path<(String, String)>, headers: HeaderMap, body: Bytes) -> Response {
    let outcome = act(&dashboards, &viewer, &id, &action, &headers, &body).await;
    respond(&dashboards, &viewer, &id, outcome, true).await
}

async fn respond(dashboards: &Dashboards, viewer: &Viewer, id: &str, outcome: Outcome, json: bool) -> Response {
    match (outcome, json) {
        // A replay the receiver did not take is recorded, and a failure to
        // the script that asked.
        (Outcome::Done { json: body, .. }, true) if body["outcome"] == "failed" => (StatusCode::BAD_GATEWAY, Json(body)).into_response(),
        (Outcome::Done { json: body, .. }, true) => Json(body).into_response(),
        (Outcome::Done { action, .. }, false) => Redirect::to(&format!("/exceptions/{}?done={action}", page::url_encode(id))).into_response(),
        (Outcome::Refused { status, json: body, .. }, true) => (status, Json(body)).into_response(),
        // A refused replay shows the item again, saying why and offering
        // the confirmation; anything else is an error page.
        (Outcome::Refused { status, message, .. }, false) if status == StatusCode::CONFLICT => match load_item(dashboards, id).await {
            Ok(Some(loaded)) => {
                let mut response = page::render(&item_page_of(viewer, &loaded, String::new(), message));
                *response.status_mut() = status;
                response
            }
            _ => page::error_page(status, &message),
        },
        (Outcome::Refused { status, message, .. }, false) => page::error_page(status, &message),
    }
}

fn store_refusal(err: StoreError) -> Outcome {
    refused(StatusCode::SERVICE_UNAVAILABLE, format!("the store did not answer: {err}"))
}

async fn act(dashboards: &Dashboards, viewer: &Viewer, id: &str, action: &str, headers: &HeaderMap, body: &[u8]) -> Outcome {
    let Some(action) = ACTIONS.iter().copied().find(|a| *a == action) else {
        return refused(StatusCode::NOT_FOUND, format!("{action} is not an action on an exception: use one of {}", ACTIONS.join(", ")));
    };
    let form = match parse_form(headers, body) {
        Ok(form) => form,
        Err(message) => return refused(StatusCode::BAD_REQUEST, message),
    };
    let loaded = match load_item(dashboards, id).await {
        Ok(Some(loaded)) => loaded,
        Ok(None) => return refused(StatusCode::NOT_FOUND, format!("no transaction has the id {id}")),
        Err(err) => return store_refusal(err),
    };
    let mut row = ExceptionActionRow { time_ns: page::now_ns(), transaction_id: loaded.tx.id.clone(), actor: viewer.name.clone(), action: action.to_owned(), ..Default::default() };
    match action {
        "acknowledge" => {}
        "assign" => {
            let name = form.assignee.trim();
            if name.is_empty() {
                return refused(StatusCode::BAD_REQUEST, "assign needs a name: fill in who takes this item (field assignee)");
            }
            if name.chars().count() > MAX_NAME {
                return refused(StatusCode::BAD_REQUEST, format!("the name is longer than {MAX_NAME} characters"));
            }
            row.assignee = name.to_owned();
        }
        "comment" => {
            let text = form.comment.trim();
            if text.is_empty() {
                return refused(StatusCode::BAD_REQUEST, "a comment needs text: write what you found or did (field comment)");
            }
            if text.chars().count() > MAX_TEXT {
                return refused(StatusCode::BAD_REQUEST, format!("the comment is longer than {MAX_TEXT} characters"));
            }
            row.comment = text.to_owned();
        }
        "resolve" => {
            let note = form.note.trim();
            if note.chars().count() > MAX_TEXT {
                return refused(StatusCode::BAD_REQUEST, format!("the note is longer than {MAX_TEXT} characters"));
            }
            row.comment = note.to_owned();
        }
        _ => return replay(dashboards, viewer, &loaded, &form).await,
    }
    if let Err(err) = dashboards.store().insert("exception_actions", std::slice::from_ref(&row)).await {
        return store_refusal(err);
    }
    let mut trail = loaded.trail;
    trail.push(row.clone());
    let item = item_of(&loaded.tx, &trail);
    Outcome::Done {
        action,
        json: serde_json::json!({
            "transaction_id": row.transaction_id,
            "action": action,
            "actor": row.actor,
            "time": rfc3339(row.time_ns),
            "status": item.status,
            "assignee": item.assignee,
        }),
    }
}

// ---------------------------------------------------------------------------
// Replay.

/// `Idempotency-Key` of attempt `attempt` of replaying `payload`: the same
/// for every retry of one attempt, so the receiver can drop duplicates.
pub fn idempotency_key(transaction_id: &str, payload: &Payload, attempt: u32) -> String {
    let identity = format!("{transaction_id}\u{0}{}\u{0}{}\u{0}{attempt}", payload.milestone, payload.span_id);
    let digest = ring::digest::digest(&ring::digest::SHA256, identity.as_bytes());
    digest.as_ref()[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// How many attempts of replaying `payload` the trail records.
fn attempts_so_far(trail: &[ExceptionActionRow], transaction_id: &str, payload: &Payload) -> u32 {
    let keys: HashSet<&str> = trail.iter().filter(|a| a.action == "replay").map(|a| a.replay_key.as_str()).collect();
    let mut attempts = 0;
    while keys.contains(idempotency_key(transaction_id, payload, attempts + 1).as_str()) {
        attempts += 1;
    }
    attempts
}

/// Steps being replayed by this process right now.
static IN_FLIGHT: Mutex<Option<HashSet<String>>> = Mutex::new(None);

fn claim(step: &str) -> bool {
    let mut guard = IN_FLIGHT.lock().unwrap_or_else(|e| e.into_inner());
    guard.get_or_insert_with(HashSet::new).insert(step.to_owned())
}

fn release(step: &str) {
    let mut guard = IN_FLIGHT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(set) = guard.as_mut() {
        set.remove(step);
    }
}

/// The JSON a replay endpoint receives.
#[derive(Debug, Serialize)]
pub struct ReplayRequest {
    pub transaction_id: String,
    pub milestone: String,
    pub system: String,
    pub trace_id: String,
    pub span_id: String,
    /// The transaction's keys by kind (a kind may have several values).
    pub keys: BTreeMap<String, Vec<String>>,
    pub idempotency_key: String,
    pub requested_by: String,
}

async fn replay(dashboards: &Dashboards, viewer: &Viewer, loaded: &Loaded, form: &ActionForm) -> Outcome {
    let tx = &loaded.tx;
    let Some(step) = &loaded.item.step else {
        return refused(StatusCode::CONFLICT, format!("nothing to replay: the transaction is {} now, not failed or stuck", tx.state));
    };
    let Some(payload) = &step.payload else {
        return refused(StatusCode::CONFLICT, "nothing to replay: no milestone of this transaction was recorded");
    };
    let Some(target) = dashboards.config().replay.get(&payload.system).cloned() else {
        return refused(
            StatusCode::CONFLICT,
            format!("{} has no replay target: set dashboards.replay.{}.url (and headers, if it needs any) in the config file", payload.system, payload.system),
        );
    };
    let attempts = attempts_so_far(&loaded.trail, &tx.id, payload);
    let again = form.again.trim().eq_ignore_ascii_case("yes");
    let attempt = if attempts == 0 {
        1
    } else if again {
        if form.attempt.is_some_and(|confirmed| confirmed != attempts + 1) {
            return refused(StatusCode::CONFLICT, format!("attempt {} was already sent; reload the page to see how it went", attempts));
        }
        attempts + 1
    } else {
        // A plain replay of a step already replayed: refused when it was
        // delivered or is recent; else the same attempt (same key) again.
        let key = idempotency_key(&tx.id, payload, attempts);
        let rows: Vec<&ExceptionActionRow> = loaded.trail.iter().filter(|a| a.action == "replay" && a.replay_key == key).collect();
        let delivered = rows.iter().any(|a| a.outcome == "delivered");
        let recent = rows.iter().any(|a| a.time_ns > page::now_ns() - REPLAY_GUARD_NS);
        if delivered || recent {
            let last = rows.last().map(|a| TrailEntry::from(*a));
            let said = replay_last_text(&last, &loaded.trail);
            let message = format!("not replayed again: this step was {said}. To send it once more, confirm with “Replay again” (again=yes)");
            let started = rows.first();
            return Outcome::Refused {
                status: StatusCode::CONFLICT,
                json: serde_json::json!({
                    "error": message,
                    "attempts": attempts,
                    "replayed_at": started.map(|a| rfc3339(a.time_ns)),
                    "replayed_by": started.map(|a| a.actor.clone()),
                    "outcome": rows.last().map(|a| a.outcome.clone()),
                }),
                message,
            };
        }
        attempts
    };
    let step_id = format!("{}\u{0}{}\u{0}{}", tx.id, payload.milestone, payload.span_id);
    if !claim(&step_id) {
        return refused(StatusCode::CONFLICT, "a replay of this step is being sent right now: wait for it and reload the page");
    }
    let key = idempotency_key(&tx.id, payload, attempt);
    let mut keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (kind, value) in tx.key_kinds.iter().zip(&tx.key_values) {
        keys.entry(kind.clone()).or_default().push(value.clone());
    }
    let request = ReplayRequest {
        transaction_id: tx.id.clone(),
        milestone: payload.milestone.clone(),
        system: payload.system.clone(),
        trace_id: payload.trace_id.clone(),
        span_id: payload.span_id.clone(),
        keys,
        idempotency_key: key.clone(),
        requested_by: viewer.name.clone(),
    };
    let started = ExceptionActionRow {
        time_ns: page::now_ns(),
        transaction_id: tx.id.clone(),
        actor: viewer.name.clone(),
        action: "replay".to_owned(),
        comment: form.comment.trim().chars().take(MAX_TEXT).collect(),
        replay_key: key.clone(),
        outcome: "started".to_owned(),
        detail: format!("attempt {attempt}: {} at {}", payload.milestone, payload.system),
        ..Default::default()
    };
    if let Err(err) = dashboards.store().insert("exception_actions", std::slice::from_ref(&started)).await {
        release(&step_id);
        return store_refusal(err);
    }
    // Sent from a task of its own, so the outcome is recorded even when the
    // person closes the page while the sender retries.
    let task = {
        let dashboards = dashboards.clone();
        let started = started.clone();
        let system = payload.system.clone();
        tokio::spawn(async move {
            let body = serde_json::to_vec(&request).expect("a replay request serializes");
            let mut headers: Vec<(&str, String)> = target.headers.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
            headers.push(("Idempotency-Key", request.idempotency_key.clone()));
            let result = dashboards.sender().post(&target.url, body, &headers).await;
            let (outcome, detail) = match &result {
                Ok(tries) => ("delivered", format!("attempt {attempt}: {system} accepted it (try {tries})")),
                Err(err) => ("failed", format!("attempt {attempt}: {err}")),
            };
            let row = ExceptionActionRow { time_ns: page::now_ns().max(started.time_ns + 1), outcome: outcome.to_owned(), detail, comment: String::new(), ..started };
            let recorded = dashboards.store().insert("exception_actions", std::slice::from_ref(&row)).await;
            if let Err(err) = &recorded {
                tracing::error!(error = %err, transaction = %row.transaction_id, "a replay's outcome could not be recorded");
            }
            release(&step_id);
            (row, recorded.is_ok())
        })
    };
    let (row, recorded) = match task.await {
        Ok(done) => done,
        Err(err) => return refused(StatusCode::INTERNAL_SERVER_ERROR, format!("the replay stopped: {err}")),
    };
    if !recorded {
        return refused(StatusCode::SERVICE_UNAVAILABLE, format!("the replay was {} but the store did not record it: {}", row.outcome, row.detail));
    }
    Outcome::Done {
        action: "replay",
        json: serde_json::json!({
            "transaction_id": row.transaction_id,
            "action": "replay",
            "actor": row.actor,
            "time": rfc3339(row.time_ns),
            "attempt": attempt,
            "idempotency_key": row.replay_key,
            "outcome": row.outcome,
            "detail": row.detail,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tx(state: &str, milestones: &[(&str, &str, i64, &str)]) -> TransactionRow {
        TransactionRow {
            id: "t1".into(),
            state: state.into(),
            milestone_names: milestones.iter().map(|m| m.0.to_owned()).collect(),
            milestone_systems: milestones.iter().map(|m| m.1.to_owned()).collect(),
            milestone_times_ns: milestones.iter().map(|m| m.2).collect(),
            milestone_outcomes: milestones.iter().map(|m| m.3.to_owned()).collect(),
            milestone_trace_ids: milestones.iter().map(|_| "t".to_owned()).collect(),
            milestone_span_ids: milestones.iter().enumerate().map(|(i, _)| format!("s{i}")).collect(),
            updated_ns: 100,
            ..Default::default()
        }
    }

    #[test]
    fn the_failed_step_is_the_latest_failure_not_cleared_by_a_later_success() {
        let row = tx("failed", &[("order.captured", "portal", 1, "ok"), ("order.accepted", "erp", 2, "rejected"), ("order.accepted", "erp", 3, "ok"), ("invoice.posted", "billing", 4, "failed")]);
        let step = step_of(&row).unwrap();
        assert_eq!((step.milestone.as_str(), step.system.as_str(), step.since_ns), ("invoice.posted", "billing", 4));
        assert_eq!(step.payload.unwrap().span_id, "s3");
    }

    #[test]
    fn an_overdue_step_replays_the_last_milestone_reached() {
        let mut row = tx("stuck", &[("order.captured", "portal", 1, "ok"), ("order.accepted", "erp", 2, "ok")]);
        row.overdue_milestones = vec!["invoice.posted".into(), "shipment.dispatched".into()];
        row.overdue_due_ns = vec![9, 5];
        let step = step_of(&row).unwrap();
        assert_eq!((step.milestone.as_str(), step.system.as_str(), step.since_ns), ("shipment.dispatched", "erp", 5));
        assert_eq!(step.payload.unwrap().milestone, "order.accepted");
        assert!(step_of(&tx("completed", &[])).is_none());
    }

    #[test]
    fn status_follows_the_last_action_since_the_problem_began() {
        let act = |t: i64, action: &str, assignee: &str| ExceptionActionRow { time_ns: t, action: action.into(), assignee: assignee.into(), ..Default::default() };
        assert_eq!(status_of(&[], 10), ("open", String::new()));
        let trail = [act(5, "resolve", ""), act(11, "acknowledge", ""), act(12, "comment", ""), act(13, "assign", "kim")];
        assert_eq!(status_of(&trail[..2], 10), ("acknowledged", String::new()));
        assert_eq!(status_of(&trail, 10), ("assigned", "kim".to_owned()));
        assert_eq!(status_of(&trail[..1], 10), ("open", String::new()), "a resolution of an earlier problem does not count");
    }

    #[test]
    fn each_attempt_has_its_own_idempotency_key() {
        let payload = Payload { milestone: "invoice.posted".into(), system: "erp".into(), trace_id: "t".into(), span_id: "s".into(), time_ns: 1 };
        let first = idempotency_key("t1", &payload, 1);
        assert_eq!(first.len(), 32);
        assert_eq!(first, idempotency_key("t1", &payload, 1));
        assert_ne!(first, idempotency_key("t1", &payload, 2));
        let trail = [ExceptionActionRow { action: "replay".into(), replay_key: first, ..Default::default() }];
        assert_eq!(attempts_so_far(&trail, "t1", &payload), 1);
        assert_eq!(attempts_so_far(&trail, "t2", &payload), 0);
    }
}
