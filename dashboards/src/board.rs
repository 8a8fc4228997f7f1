//! The operations board (`/board`, `/api/v1/board`): how many transactions
//! are in flight, stuck or failed, by stage and by system, and the stuck
//! ones oldest first, filtered by channel, partner, system, time and state.

use std::collections::BTreeMap;

use askama::Template;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use clickhouse::Row;
use serde::{Deserialize, Serialize};
use waybill_store::sql::quote_string;
use waybill_store::StoreError;

use crate::auth::Viewer;
use crate::page::{self, Layout};
use crate::Dashboards;

/// At most this many stuck transactions are listed.
const STUCK_LIMIT: usize = 100;
/// Groups of (state, stage, systems) read for the counts; more is a sign of
/// unbounded stage or system names, and the board says its counts are partial.
const GROUP_LIMIT: usize = 10_000;
/// The default time range: transactions started in the last 7 days.
const DEFAULT_RANGE_NS: i64 = 7 * 86_400 * 1_000_000_000;
/// Transactions the board counts, in the order it shows them.
const STATES: [(&str, &str); 3] = [("in_flight", "in flight"), ("stuck", "stuck"), ("failed", "failed")];

pub fn routes() -> Router<Dashboards> {
    Router::new().route("/board", get(board_page)).route("/api/v1/board", get(board_json))
}

/// The filter form as sent; empty fields are unset.
#[derive(Debug, Default, Deserialize)]
pub struct BoardQuery {
    #[serde(default)]
    channel: String,
    #[serde(default)]
    partner: String,
    #[serde(default)]
    system: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    #[serde(default)]
    state: String,
}

/// Validated filters.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Filters {
    pub channel: Option<String>,
    pub partner: Option<String>,
    pub system: Option<String>,
    pub state: Option<String>,
    #[serde(rename = "from", serialize_with = "ser_time")]
    pub from_ns: i64,
    #[serde(rename = "to", serialize_with = "ser_opt_time")]
    pub to_ns: Option<i64>,
}

fn ser_time<S: serde::Serializer>(ns: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&waybill_lineage::api::rfc3339(*ns))
}

fn ser_opt_time<S: serde::Serializer>(ns: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    match ns {
        Some(ns) => s.serialize_str(&waybill_lineage::api::rfc3339(*ns)),
        None => s.serialize_none(),
    }
}

fn non_empty(text: &str) -> Option<String> {
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// A time from the form: RFC 3339, or what a `datetime-local` input sends
/// (`2026-11-27T06:12`), or a date; read as UTC.
pub fn parse_form_time(text: &str) -> Option<i64> {
    let text = text.trim();
    let full = match text.len() {
        10 => format!("{text}T00:00:00Z"),
        16 => format!("{text}:00Z"),
        19 => format!("{text}Z"),
        _ => text.to_owned(),
    };
    page::parse_time(&full)
}

/// `2026-11-27T06:12` for a `datetime-local` input.
fn form_time(ns: i64) -> String {
    page::time(ns).replacen(' ', "T", 1).chars().take(16).collect()
}

impl BoardQuery {
    fn validate(&self, now_ns: i64) -> Result<Filters, String> {
        let state = non_empty(&self.state);
        if let Some(state) = &state {
            if !STATES.iter().any(|(s, _)| s == state) {
                return Err(format!("state {state:?} is not one the board shows: use in_flight, stuck or failed"));
            }
        }
        let from_ns = match non_empty(&self.from) {
            None => now_ns - DEFAULT_RANGE_NS,
            Some(text) => parse_form_time(&text).ok_or_else(|| format!("from {text:?} is not a time like 2026-11-27T06:00 (UTC)"))?,
        };
        let to_ns = match non_empty(&self.to) {
            None => None,
            Some(text) => Some(parse_form_time(&text).ok_or_else(|| format!("to {text:?} is not a time like 2026-11-27T18:00 (UTC)"))?),
        };
        if to_ns.is_some_and(|to| to <= from_ns) {
            return Err("the time range is empty: `to` must be after `from`".to_owned());
        }
        Ok(Filters { channel: non_empty(&self.channel), partner: non_empty(&self.partner), system: non_empty(&self.system), state, from_ns, to_ns })
    }
}

impl Filters {
    /// The WHERE conditions of the filters, every value quoted.
    fn conditions(&self) -> String {
        let mut conditions = vec![format!("Started >= fromUnixTimestamp64Nano({})", self.from_ns)];
        if let Some(to) = self.to_ns {
            conditions.push(format!("Started < fromUnixTimestamp64Nano({to})"));
        }
        if let Some(channel) = &self.channel {
            conditions.push(format!("Systems[1] = {}", quote_string(channel)));
        }
        if let Some(partner) = &self.partner {
            conditions.push(format!("arrayExists((k, v) -> k = 'partner' AND v = {}, KeyKinds, KeyValues)", quote_string(partner)));
        }
        if let Some(system) = &self.system {
            conditions.push(format!("has(Systems, {})", quote_string(system)));
        }
        match &self.state {
            Some(state) => conditions.push(format!("State = {}", quote_string(state))),
            None => conditions.push("State IN ('in_flight', 'stuck', 'failed')".to_owned()),
        }
        conditions.join(" AND ")
    }

    /// The query string of these filters with `state` replaced (for links).
    fn query_with_state(&self, state: &str) -> String {
        let mut parts = vec![format!("from={}", page::url_encode(&form_time(self.from_ns)))];
        if let Some(to) = self.to_ns {
            parts.push(format!("to={}", page::url_encode(&form_time(to))));
        }
        for (name, value) in [("channel", &self.channel), ("partner", &self.partner), ("system", &self.system)] {
            if let Some(value) = value {
                parts.push(format!("{name}={}", page::url_encode(value)));
            }
        }
        if !state.is_empty() {
            parts.push(format!("state={state}"));
        }
        parts.join("&")
    }
}

#[derive(Debug, Row, Deserialize)]
struct GroupRow {
    state: String,
    stage: String,
    systems: Vec<String>,
    count: u64,
}

#[derive(Debug, Row, Deserialize)]
struct StuckRow {
    id: String,
    root_kind: String,
    root_value: String,
    systems: Vec<String>,
    overdue_milestone: String,
    since_ns: i64,
    started_ns: i64,
}

#[derive(Debug, Row, Deserialize)]
struct OptionsRow {
    channels: Vec<String>,
    systems: Vec<String>,
}

/// Counts of one stage or system.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Counts {
    pub in_flight: u64,
    pub stuck: u64,
    pub failed: u64,
}

impl Counts {
    fn add(&mut self, state: &str, count: u64) {
        match state {
            "in_flight" => self.in_flight += count,
            "stuck" => self.stuck += count,
            "failed" => self.failed += count,
            _ => {}
        }
    }

    pub fn total(&self) -> u64 {
        self.in_flight + self.stuck + self.failed
    }

    fn get(&self, state: &str) -> u64 {
        match state {
            "in_flight" => self.in_flight,
            "stuck" => self.stuck,
            "failed" => self.failed,
            _ => 0,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StageCounts {
    pub stage: String,
    #[serde(flatten)]
    pub counts: Counts,
}

#[derive(Debug, Clone, Serialize)]
pub struct SystemCounts {
    pub system: String,
    #[serde(flatten)]
    pub counts: Counts,
}

#[derive(Debug, Clone, Serialize)]
pub struct RootKey {
    pub kind: String,
    pub value: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Stuck {
    pub id: String,
    pub root: RootKey,
    /// The overdue milestone that was due first.
    pub overdue_milestone: String,
    /// When it was due (else when the transaction started), RFC 3339.
    pub overdue_since: String,
    pub overdue_seconds: f64,
    pub systems: Vec<String>,
    pub started: String,
    #[serde(skip)]
    pub since_ns: i64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct FilterOptions {
    pub channels: Vec<String>,
    pub partners: Vec<String>,
    pub systems: Vec<String>,
}

/// The board's numbers: what the page shows and `/api/v1/board` answers.
#[derive(Debug, Clone, Serialize)]
pub struct Board {
    pub filters: Filters,
    pub totals: Counts,
    pub by_stage: Vec<StageCounts>,
    pub by_system: Vec<SystemCounts>,
    /// Stuck transactions, oldest overdue first, at most 100.
    pub stuck: Vec<Stuck>,
    pub options: FilterOptions,
    /// True when the counts had more groups than the board reads.
    pub partial: bool,
}

/// The last milestone reached, by time (empty when none).
const STAGE: &str = "MilestoneNames[indexOf(MilestoneTimes, arrayMax(MilestoneTimes))]";

async fn load(dashboards: &Dashboards, filters: Filters, now_ns: i64) -> Result<Board, StoreError> {
    let store = dashboards.store();
    let conditions = filters.conditions();
    // One pass over the transactions for all counts: per state, stage and
    // set of systems, summed by stage and by system here.
    let groups: Vec<GroupRow> = store
        .fetch_all(&format!(
            "SELECT State AS state, {STAGE} AS stage, Systems AS systems, count() AS count \
             FROM transactions FINAL WHERE {conditions} \
             GROUP BY state, stage, systems ORDER BY count DESC LIMIT {}",
            GROUP_LIMIT + 1
        ))
        .await?;
    let partial = groups.len() > GROUP_LIMIT;
    let mut totals = Counts::default();
    let mut stages: BTreeMap<String, Counts> = BTreeMap::new();
    let mut systems: BTreeMap<String, Counts> = BTreeMap::new();
    for group in groups.iter().take(GROUP_LIMIT) {
        totals.add(&group.state, group.count);
        stages.entry(group.stage.clone()).or_default().add(&group.state, group.count);
        let mut seen: Vec<&String> = Vec::with_capacity(group.systems.len());
        for system in &group.systems {
            if !seen.contains(&system) {
                seen.push(system);
                systems.entry(system.clone()).or_default().add(&group.state, group.count);
            }
        }
    }
    let mut by_stage: Vec<StageCounts> = stages.into_iter().map(|(stage, counts)| StageCounts { stage, counts }).collect();
    by_stage.sort_by(|a, b| b.counts.total().cmp(&a.counts.total()).then_with(|| a.stage.cmp(&b.stage)));
    let mut by_system: Vec<SystemCounts> = systems.into_iter().map(|(system, counts)| SystemCounts { system, counts }).collect();
    by_system.sort_by(|a, b| b.counts.total().cmp(&a.counts.total()).then_with(|| a.system.cmp(&b.system)));

    let stuck = if filters.state.as_deref().is_none_or(|s| s == "stuck") {
        let stuck_conditions = Filters { state: Some("stuck".to_owned()), ..filters.clone() }.conditions();
        let rows: Vec<StuckRow> = store
            .fetch_all(&format!(
                "SELECT Id AS id, RootKind AS root_kind, RootValue AS root_value, Systems AS systems, \
                 if(empty(OverdueDue), '', OverdueMilestones[indexOf(OverdueDue, arrayMin(OverdueDue))]) AS overdue_milestone, \
                 if(empty(OverdueDue), Started, arrayMin(OverdueDue)) AS since_ns, Started AS started_ns \
                 FROM transactions FINAL WHERE {stuck_conditions} ORDER BY since_ns, id LIMIT {STUCK_LIMIT}"
            ))
            .await?;
        rows.into_iter()
            .map(|row| Stuck {
                overdue_seconds: (now_ns - row.since_ns) as f64 / 1e9,
                overdue_since: waybill_lineage::api::rfc3339(row.since_ns),
                started: waybill_lineage::api::rfc3339(row.started_ns),
                root: RootKey { kind: row.root_kind, value: row.root_value },
                id: row.id,
                overdue_milestone: row.overdue_milestone,
                systems: row.systems,
                since_ns: row.since_ns,
            })
            .collect()
    } else {
        Vec::new()
    };

    // The filters' choices: small, bounded, over the chosen time range.
    let mut range = format!("Started >= fromUnixTimestamp64Nano({})", filters.from_ns);
    if let Some(to) = filters.to_ns {
        range.push_str(&format!(" AND Started < fromUnixTimestamp64Nano({to})"));
    }
    let options: Vec<OptionsRow> = store
        .fetch_all(&format!(
            "SELECT arraySort(groupUniqArray(100)(Systems[1])) AS channels, arraySort(groupUniqArrayArray(200)(Systems)) AS systems \
             FROM transactions WHERE {range} AND notEmpty(Systems)"
        ))
        .await?;
    let partners: Vec<String> = store.fetch_all("SELECT DISTINCT Value FROM transaction_keys WHERE Kind = 'partner' ORDER BY Value LIMIT 200").await?;
    let options = options.into_iter().next().map_or_else(FilterOptions::default, |o| FilterOptions { channels: o.channels, partners, systems: o.systems });

    Ok(Board { filters, totals, by_stage, by_system, stuck, options, partial })
}

pub struct Tile {
    pub state: &'static str,
    pub label: &'static str,
    pub count: u64,
    pub href: String,
}

pub struct Row3 {
    pub name: String,
    pub in_flight: u64,
    pub stuck: u64,
    pub failed: u64,
}

pub struct StuckLine {
    pub id: String,
    pub root: String,
    pub root_kind: String,
    pub overdue_milestone: String,
    pub overdue_for: String,
    pub due: String,
    pub systems: String,
}

#[derive(Template)]
#[template(path = "board.html")]
struct BoardPage {
    layout: Layout,
    board: Board,
    tiles: Vec<Tile>,
    stages: Vec<Row3>,
    systems: Vec<Row3>,
    stuck: Vec<StuckLine>,
    show_stuck: bool,
    from: String,
    to: String,
    channel: String,
    partner: String,
    system: String,
    state: String,
    json_href: String,
}

fn rows3<'a>(items: impl Iterator<Item = (&'a String, &'a Counts)>) -> Vec<Row3> {
    items
        .map(|(name, c)| Row3 { name: if name.is_empty() { "(no milestone)".to_owned() } else { name.clone() }, in_flight: c.in_flight, stuck: c.stuck, failed: c.failed })
        .collect()
}

async fn board_page(State(dashboards): State<Dashboards>, Extension(viewer): Extension<Viewer>, Query(query): Query<BoardQuery>) -> Response {
    let now_ns = page::now_ns();
    let filters = match query.validate(now_ns) {
        Ok(filters) => filters,
        Err(message) => return page::error_page(StatusCode::BAD_REQUEST, &message),
    };
    let mut board = match load(&dashboards, filters, now_ns).await {
        Ok(board) => board,
        Err(err) => return page::store_error(err),
    };
    // A chosen value stays selectable even when the range no longer has it.
    let chosen = board.filters.clone();
    for (list, value) in [(&mut board.options.channels, &chosen.channel), (&mut board.options.partners, &chosen.partner), (&mut board.options.systems, &chosen.system)] {
        if let Some(value) = value {
            if !list.contains(value) {
                list.push(value.clone());
            }
        }
    }
    let f = &board.filters;
    let tiles = STATES
        .iter()
        .map(|(state, label)| Tile { state, label, count: board.totals.get(state), href: format!("/board?{}", f.query_with_state(state)) })
        .collect();
    let stages = rows3(board.by_stage.iter().map(|s| (&s.stage, &s.counts)));
    let systems = rows3(board.by_system.iter().map(|s| (&s.system, &s.counts)));
    let stuck = board
        .stuck
        .iter()
        .map(|s| StuckLine {
            id: s.id.clone(),
            root: s.root.value.clone(),
            root_kind: s.root.kind.clone(),
            overdue_milestone: if s.overdue_milestone.is_empty() { "(none recorded)".to_owned() } else { s.overdue_milestone.clone() },
            overdue_for: page::duration(s.overdue_seconds),
            due: page::time(s.since_ns),
            systems: s.systems.join(" → "),
        })
        .collect();
    let template = BoardPage {
        layout: Layout::new("Operations board", "board", &viewer),
        tiles,
        stages,
        systems,
        stuck,
        show_stuck: f.state.as_deref().is_none_or(|s| s == "stuck"),
        from: form_time(f.from_ns),
        to: f.to_ns.map(form_time).unwrap_or_default(),
        channel: f.channel.clone().unwrap_or_default(),
        partner: f.partner.clone().unwrap_or_default(),
        system: f.system.clone().unwrap_or_default(),
        state: f.state.clone().unwrap_or_default(),
        json_href: format!("/api/v1/board?{}", f.query_with_state(f.state.as_deref().unwrap_or(""))),
        board,
    };
    page::render(&template)
}

async fn board_json(State(dashboards): State<Dashboards>, Query(query): Query<BoardQuery>) -> Response {
    let now_ns = page::now_ns();
    let filters = match query.validate(now_ns) {
        Ok(filters) => filters,
        Err(message) => return page::json_error(StatusCode::BAD_REQUEST, &message),
    };
    match load(&dashboards, filters, now_ns).await {
        Ok(board) => Json(board).into_response(),
        Err(err) => page::json_error(StatusCode::SERVICE_UNAVAILABLE, &format!("the store did not answer: {err}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_times_are_read_as_utc_in_the_shapes_browsers_send() {
        let minute = parse_form_time("2026-11-27T06:12").unwrap();
        assert_eq!(parse_form_time("2026-11-27T06:12:00Z"), Some(minute));
        assert_eq!(parse_form_time("2026-11-27T00:00"), parse_form_time("2026-11-27"));
        assert_eq!(form_time(minute), "2026-11-27T06:12");
        assert_eq!(parse_form_time("yesterday"), None);
    }

    #[test]
    fn filters_quote_what_people_type() {
        let query = BoardQuery { partner: "ACME'; DROP TABLE x --".into(), state: "stuck".into(), ..Default::default() };
        let conditions = query.validate(1_000_000_000_000_000_000).unwrap().conditions();
        assert!(conditions.contains(r"v = 'ACME\'; DROP TABLE x --'"), "{conditions}");
        assert!(conditions.contains("State = 'stuck'"), "{conditions}");
        let bad = BoardQuery { state: "completed".into(), ..Default::default() };
        assert!(bad.validate(0).unwrap_err().contains("in_flight, stuck or failed"));
    }
}
