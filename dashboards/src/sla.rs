//! The SLA and alerts page: every alert rule with its SLI per group, state
//! and trend, the history of transitions and deliveries, and silences
//! (listed for all, created and expired by admins); JSON twin `/api/v1/sla`.

use std::collections::BTreeMap;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Form, Json, Router};
use serde::{Deserialize, Serialize};
use waybill_alerts::evaluator::{RuleView, TrendPoint};
use waybill_alerts::notify::AlertView;
use waybill_alerts::rules::Sli;
use waybill_alerts::silence::{self, NewSilence, Silence};
use waybill_alerts::sli::Measurement;
use waybill_store::sql::quote_string;
use waybill_store::{AlertHistoryRow, StoreError};

use crate::auth::Viewer;
use crate::config::Role;
use crate::page::{self, Layout};
use crate::{svg, Dashboards};

/// Rows of `alert_history` shown, newest first.
const HISTORY_ROWS: usize = 100;
/// History older than this is not read (the table is partitioned by month).
const HISTORY_DAYS: i64 = 30;
/// Groups shown per rule on the page (the JSON twin has all of them).
const GROUPS_SHOWN: usize = 50;
const DAY_NS: i64 = 86_400_000_000_000;

pub fn routes() -> Router<Dashboards> {
    Router::new()
        .route("/sla", get(sla_page))
        .route("/sla/silences", post(create_silence))
        .route("/sla/silences/{id}/expire", post(expire_silence))
        .route("/api/v1/sla", get(sla_json))
}

#[derive(Debug, Default, Deserialize)]
pub struct SlaQuery {
    /// Only this rule's history.
    #[serde(default)]
    rule: Option<String>,
}

impl SlaQuery {
    fn rule(&self) -> Option<&str> {
        self.rule.as_deref().map(str::trim).filter(|r| !r.is_empty())
    }
}

/// One group of a rule: its labels, last value and alert state.
#[derive(Debug, Clone, Serialize)]
pub struct GroupRow {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
    /// `None` for an alert restored from the store and not measured since.
    pub samples: Option<u64>,
    /// `firing`, `pending` or `ok`.
    pub state: &'static str,
    /// An active silence matches its alert: it is not delivered.
    pub silenced: bool,
    #[serde(skip)]
    pub labels_text: String,
    #[serde(skip)]
    pub value_text: String,
    /// Fewer samples than `min_samples`: the value does not count.
    #[serde(skip)]
    pub too_few: bool,
}

/// A rule as the page and its JSON twin show it.
#[derive(Debug, Clone, Serialize)]
pub struct RuleRow {
    pub name: String,
    pub kind: &'static str,
    /// What the SLI measures, in words.
    pub sli: String,
    pub window: String,
    pub threshold: f64,
    pub direction: &'static str,
    pub min_samples: u64,
    /// `firing`, `pending` or `ok`: the worst of its groups.
    pub state: &'static str,
    pub severity: String,
    /// `ok`, or the error of its last evaluation.
    pub health: String,
    pub runbook_url: Option<String>,
    pub groups: Vec<GroupRow>,
    pub trend: Vec<TrendJson>,
    #[serde(skip)]
    pub threshold_text: String,
    #[serde(skip)]
    pub chart: String,
    #[serde(skip)]
    pub groups_hidden: usize,
    #[serde(skip)]
    pub history_link: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrendJson {
    pub time: String,
    pub value: Option<f64>,
}

/// One row of `alert_history`.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryRow {
    pub time: String,
    pub rule: String,
    pub labels: BTreeMap<String, String>,
    pub event: String,
    pub value: f64,
    pub receiver: String,
    pub detail: String,
    #[serde(skip)]
    pub shown_time: String,
    #[serde(skip)]
    pub labels_text: String,
    #[serde(skip)]
    pub value_text: String,
}

/// A silence with its matchers as text, for the page.
pub struct SilenceRow {
    pub silence: Silence,
    pub matchers_text: String,
    pub ends: String,
}

/// What was typed into the silence form, kept when it is refused.
#[derive(Debug, Default, Deserialize)]
pub struct SilenceForm {
    #[serde(default)]
    matchers: String,
    #[serde(default)]
    duration: String,
    #[serde(default)]
    comment: String,
}

#[derive(Template)]
#[template(path = "sla.html")]
struct SlaPage {
    layout: Layout,
    /// False when `alerts.rules_file` is not set.
    configured: bool,
    rules_file: String,
    reload_error: Option<String>,
    rules: Vec<RuleRow>,
    history: Vec<HistoryRow>,
    history_rule: String,
    rule_names: Vec<String>,
    silences: Vec<SilenceRow>,
    admin: bool,
    form: SilenceForm,
    /// Why the silence form was refused.
    problem: Option<String>,
}

/// What the page shows, read once for the page and its JSON twin.
struct Sla {
    configured: bool,
    rules_file: String,
    reload_error: Option<String>,
    rules: Vec<RuleRow>,
    history: Vec<HistoryRow>,
    silences: Vec<Silence>,
}

async fn load(dashboards: &Dashboards, rule_filter: Option<&str>) -> Result<Sla, StoreError> {
    let alerts = dashboards.alerts();
    let (views, reload_error) = alerts.rules();
    let measured = alerts.measurements();
    let trends = alerts.trends();
    let states = alerts.alerts();
    let now = page::now_ns();
    let silences = silence::active(dashboards.store(), now).await?;
    let rules = views.iter().map(|view| rule_row(view, measured.get(&view.rule.name), trends.get(&view.rule.name), &states, &silences)).collect();

    let mut sql = format!(
        "SELECT Time, Rule, GroupKey, Labels, Event, Value, Receiver, Detail FROM alert_history WHERE Time >= fromUnixTimestamp64Nano({})",
        now - HISTORY_DAYS * DAY_NS
    );
    if let Some(rule) = rule_filter {
        sql.push_str(&format!(" AND Rule = {}", quote_string(rule)));
    }
    sql.push_str(&format!(" ORDER BY Time DESC LIMIT {HISTORY_ROWS}"));
    let history = dashboards.store().fetch_all::<AlertHistoryRow>(&sql).await?.into_iter().map(history_row).collect();
    Ok(Sla {
        configured: alerts.rules_file().is_some(),
        rules_file: alerts.rules_file().map(|p| p.display().to_string()).unwrap_or_default(),
        reload_error,
        rules,
        history,
        silences,
    })
}

fn rule_row(view: &RuleView, measured: Option<&Vec<Measurement>>, trend: Option<&Vec<TrendPoint>>, states: &[AlertView], silences: &[Silence]) -> RuleRow {
    let rule = &view.rule;
    let unit = unit(&rule.sli);
    let own: Vec<&AlertView> = states.iter().filter(|a| a.rule == rule.name).collect();
    let state_of = |group: &BTreeMap<String, String>| -> &'static str {
        let matching = own.iter().filter(|a| group.iter().all(|(k, v)| a.labels.get(k) == Some(v)));
        worst(matching.map(|a| phase(&a.state)))
    };
    let mut groups: Vec<GroupRow> = measured
        .into_iter()
        .flatten()
        .map(|m| GroupRow {
            labels: m.group.clone(),
            value: m.value,
            samples: Some(m.samples),
            state: state_of(&m.group),
            silenced: false,
            labels_text: labels_text(&m.group),
            value_text: with_unit(m.value, unit),
            too_few: m.samples < rule.min_samples,
        })
        .collect();
    // Alerts not measured this time (restored after a restart, or the
    // measurement failed) still show, with their last value.
    for alert in &own {
        let group: BTreeMap<String, String> =
            alert.labels.iter().filter(|(k, _)| !matches!(k.as_str(), "alertname" | "severity") && !rule.labels.contains_key(*k)).map(|(k, v)| (k.clone(), v.clone())).collect();
        if !groups.iter().any(|g| g.labels == group) {
            groups.push(GroupRow {
                labels_text: labels_text(&group),
                labels: group,
                value: alert.value,
                samples: None,
                state: phase(&alert.state),
                silenced: false,
                value_text: with_unit(alert.value, unit),
                too_few: false,
            });
        }
    }
    // Worst first: firing, pending, then by how far the value is over.
    let rank = |s: &str| match s {
        "firing" => 0,
        "pending" => 1,
        _ => 2,
    };
    let below = rule.below.is_some();
    groups.sort_by(|a, b| {
        rank(a.state).cmp(&rank(b.state)).then_with(|| if below { a.value.total_cmp(&b.value) } else { b.value.total_cmp(&a.value) })
    });
    let state = worst(groups.iter().map(|g| g.state));
    // An alert's labels as delivered: the group's, the rule's, alertname
    // and severity (as the evaluator builds them).
    for group in &mut groups {
        let mut labels = group.labels.clone();
        labels.extend(rule.labels.clone());
        labels.insert("severity".into(), rule.severity.clone());
        labels.insert("alertname".into(), rule.name.clone());
        group.silenced = silences.iter().any(|s| s.matches(&labels));
    }

    let trend = trend.map(Vec::as_slice).unwrap_or_default();
    let values: Vec<Option<f64>> = trend.iter().map(|p| p.value).collect();
    let chart = svg::sparkline(&values, 180, 36, &format!("{}: the worst group's value over the last {} evaluations", rule.name, trend.len()));
    let runbook_url = rule.annotations.get("runbook_url").filter(|u| u.starts_with("https://") || u.starts_with("http://")).cloned();
    RuleRow {
        name: rule.name.clone(),
        kind: kind(&rule.sli),
        sli: describe(&rule.sli),
        window: if matches!(rule.sli, Sli::Overdue { .. }) { "now".to_owned() } else { humantime::format_duration(rule.window).to_string() },
        threshold: rule.threshold(),
        direction: if below { "below" } else { "above" },
        min_samples: rule.min_samples,
        state,
        severity: rule.severity.clone(),
        health: view.health.clone(),
        runbook_url,
        groups,
        trend: trend.iter().map(|p| TrendJson { time: waybill_alerts::rfc3339(p.time_ns), value: p.value }).collect(),
        threshold_text: with_unit(rule.threshold(), unit),
        chart,
        groups_hidden: 0,
        history_link: format!("/sla?rule={}#history", page::url_encode(&rule.name)),
    }
}

fn phase(state: &str) -> &'static str {
    match state {
        "firing" => "firing",
        "pending" => "pending",
        _ => "ok",
    }
}

fn worst<'a>(states: impl Iterator<Item = &'a str>) -> &'static str {
    let mut worst = "ok";
    for state in states {
        match state {
            "firing" => return "firing",
            "pending" => worst = "pending",
            _ => {}
        }
    }
    worst
}

fn kind(sli: &Sli) -> &'static str {
    match sli {
        Sli::Ratio { .. } => "ratio",
        Sli::Latency { .. } => "latency",
        Sli::Count { .. } => "count",
        Sli::Rate { .. } => "rate",
        Sli::Overdue { .. } => "overdue",
        Sli::ErrorRate { .. } => "error_rate",
    }
}

/// What a rule measures, as a sentence fragment.
fn describe(sli: &Sli) -> String {
    let outcome = |o: &Option<String>| o.as_ref().map(|o| format!(" with outcome {o}")).unwrap_or_default();
    match sli {
        Sli::Ratio { numerator, denominator } => format!("share of transactions reaching {denominator} that reached {numerator}"),
        Sli::Latency { from, to, key, quantile } => {
            let q = format_value(quantile * 100.0);
            match key {
                Some(key) => format!("p{q} seconds from {from} to {to} of the same {key}"),
                None => format!("p{q} seconds from source time to arrival of {to}"),
            }
        }
        Sli::Count { milestone, outcome: o } => format!("{milestone} events{}", outcome(o)),
        Sli::Rate { milestone, outcome: o } => format!("{milestone} events{} per second", outcome(o)),
        Sli::Overdue { milestone } => match milestone {
            Some(m) => format!("transactions overdue for {m}"),
            None => "transactions past a journey deadline".to_owned(),
        },
        Sli::ErrorRate { span_kind } => format!("share of {} spans with status error", span_kind.as_deref().unwrap_or("Client")),
    }
}

fn unit(sli: &Sli) -> &'static str {
    match sli {
        Sli::Latency { .. } => " s",
        Sli::Rate { .. } => "/s",
        _ => "",
    }
}

/// A value as people read it: up to four decimals, no trailing zeros.
fn format_value(value: f64) -> String {
    let text = format!("{value:.4}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text.is_empty() || text == "-" || text == "-0" {
        "0".into()
    } else {
        text.to_owned()
    }
}

fn with_unit(value: f64, unit: &str) -> String {
    format!("{}{unit}", format_value(value))
}

fn labels_text(labels: &BTreeMap<String, String>) -> String {
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")
}

fn history_row(row: AlertHistoryRow) -> HistoryRow {
    let labels: BTreeMap<String, String> = row.labels.into_iter().collect();
    HistoryRow {
        time: waybill_alerts::rfc3339(row.time_ns),
        shown_time: page::time(row.time_ns),
        labels_text: labels_text(&labels),
        labels,
        rule: row.rule,
        value_text: format_value(row.value),
        event: row.event,
        value: row.value,
        receiver: row.receiver,
        detail: row.detail,
    }
}

fn silence_row(silence: Silence) -> SilenceRow {
    let ends = page::time(silence.ends_at_ns);
    SilenceRow { matchers_text: labels_text(&silence.matchers), ends, silence }
}

fn render(sla: Sla, viewer: &Viewer, history_rule: Option<&str>, form: SilenceForm, problem: Option<String>) -> SlaPage {
    let mut rules = sla.rules;
    for rule in &mut rules {
        rule.groups_hidden = rule.groups.len().saturating_sub(GROUPS_SHOWN);
        rule.groups.truncate(GROUPS_SHOWN);
    }
    SlaPage {
        layout: Layout::new("SLA & alerts", "sla", viewer),
        configured: sla.configured,
        rules_file: sla.rules_file,
        reload_error: sla.reload_error,
        rule_names: rules.iter().map(|r| r.name.clone()).collect(),
        rules,
        history: sla.history,
        history_rule: history_rule.unwrap_or_default().to_owned(),
        silences: sla.silences.into_iter().map(silence_row).collect(),
        admin: viewer.can(Role::Admin),
        form,
        problem,
    }
}

async fn sla_page(State(dashboards): State<Dashboards>, Extension(viewer): Extension<Viewer>, Query(query): Query<SlaQuery>) -> Response {
    match load(&dashboards, query.rule()).await {
        Ok(sla) => page::render(&render(sla, &viewer, query.rule(), SilenceForm::default(), None)),
        Err(err) => page::store_error(err),
    }
}

async fn sla_json(State(dashboards): State<Dashboards>, Query(query): Query<SlaQuery>) -> Response {
    match load(&dashboards, query.rule()).await {
        Ok(sla) => Json(serde_json::json!({
            "rules": sla.rules,
            "reload_error": sla.reload_error,
            "history": sla.history,
            "silences": sla.silences,
        }))
        .into_response(),
        Err(err) => page::json_error(StatusCode::SERVICE_UNAVAILABLE, &format!("the store did not answer: {err}")),
    }
}

/// `label=value` per line (blank lines skipped; quotes around the value
/// dropped); a message saying what to fix otherwise.
fn parse_matchers(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut matchers = BTreeMap::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once('=') else {
            return Err(format!("{line:?} is not a matcher: write one per line as label=value, e.g. alertname=order_acceptance"));
        };
        let name = name.trim();
        if name.is_empty() {
            return Err(format!("{line:?} has no label name: write label=value"));
        }
        let value = value.trim();
        let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
        matchers.insert(name.to_owned(), value.to_owned());
    }
    if matchers.is_empty() {
        return Err("give at least one matcher, e.g. alertname=order_acceptance".to_owned());
    }
    Ok(matchers)
}

/// Creates a silence (the auth layer lets only admins reach this); a
/// refused form comes back with the reason and what was typed.
async fn create_silence(State(dashboards): State<Dashboards>, Extension(viewer): Extension<Viewer>, Form(form): Form<SilenceForm>) -> Response {
    let request = parse_matchers(&form.matchers).and_then(|matchers| {
        let duration = form.duration.trim();
        if duration.is_empty() {
            return Err("give a duration, e.g. 30m or 2h".to_owned());
        }
        Ok(NewSilence { matchers, duration: Some(duration.to_owned()), ends_at: None, created_by: viewer.name.clone(), comment: form.comment.trim().to_owned() })
    });
    let problem = match request {
        Ok(request) => match silence::create(dashboards.store(), request, page::now_ns()).await {
            Ok(Ok(_)) => return Redirect::to("/sla#silences").into_response(),
            Ok(Err(problem)) => problem,
            Err(err) => return page::store_error(err),
        },
        Err(problem) => problem,
    };
    match load(&dashboards, None).await {
        Ok(sla) => {
            let mut response = page::render(&render(sla, &viewer, None, form, Some(problem)));
            *response.status_mut() = StatusCode::BAD_REQUEST;
            response
        }
        Err(err) => page::store_error(err),
    }
}

async fn expire_silence(State(dashboards): State<Dashboards>, Path(id): Path<String>) -> Response {
    match silence::expire(dashboards.store(), &id, page::now_ns()).await {
        Ok(Some(_)) => Redirect::to("/sla#silences").into_response(),
        Ok(None) => page::error_page(StatusCode::NOT_FOUND, &format!("there is no silence {id}: it may have been removed")),
        Err(err) => page::store_error(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matchers_are_read_one_per_line() {
        let matchers = parse_matchers("alertname=invoice_failures\n\n  system = \"billing\" \n").unwrap();
        assert_eq!(matchers, BTreeMap::from([("alertname".into(), "invoice_failures".into()), ("system".into(), "billing".into())]));
        assert!(parse_matchers("").unwrap_err().contains("at least one matcher"));
        assert!(parse_matchers("alertname").unwrap_err().contains("label=value"));
        assert!(parse_matchers("=x").unwrap_err().contains("no label name"));
    }

    #[test]
    fn the_worst_state_wins_and_values_read_plainly() {
        assert_eq!(worst(["ok", "pending", "ok"].into_iter()), "pending");
        assert_eq!(worst(["pending", "firing"].into_iter()), "firing");
        assert_eq!(worst(std::iter::empty()), "ok");
        assert_eq!(format_value(3.0), "3");
        assert_eq!(format_value(0.95123456), "0.9512");
        assert_eq!(with_unit(12.5, " s"), "12.5 s");
    }
}
