//! Executive KPIs: six numbers of the order-to-cash flow for a period (1, 7
//! or 30 days to now), each against the period just before, with a trend.
//!
//! Every KPI is one query that counts per step (an hour for `1d`, a day
//! otherwise) over both periods; the inventory latency reuses the alert
//! rules' SLI (`waybill_alerts::sli::measure`), so the page and an alert on
//! the same milestones agree.

use std::collections::BTreeMap;
use std::time::Duration;

use askama::Template;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use clickhouse::Row;
use serde::{Deserialize, Serialize};
use waybill_alerts::rules::{Rule, Sli};
use waybill_alerts::sli::events;
use waybill_store::sql::quote_string;
use waybill_store::{Store, StoreError};

use crate::auth::Viewer;
use crate::config::KpiConfig;
use crate::page::{self, Layout};
use crate::svg;
use crate::Dashboards;

const NS: i64 = 1_000_000_000;
const HOUR_NS: i64 = 3600 * NS;
const DAY_NS: i64 = 24 * HOUR_NS;
/// The periods offered: length, and the step of the trend.
const PERIODS: &[(&str, i64, i64, &str)] = &[("1d", DAY_NS, HOUR_NS, "1h"), ("7d", 7 * DAY_NS, DAY_NS, "1d"), ("30d", 30 * DAY_NS, DAY_NS, "1d")];
const DEFAULT_PERIOD: &str = "7d";
const NOT_FAILED: &str = "NOT IN ('failed', 'rejected')";

pub fn routes() -> Router<Dashboards> {
    Router::new().route("/kpis", get(kpis_page)).route("/api/v1/kpis", get(kpis_json))
}

#[derive(Debug, Deserialize)]
pub struct KpisQuery {
    #[serde(default)]
    period: Option<String>,
}

/// The period of a report and the one before it, in nanoseconds.
#[derive(Debug, Clone, Copy)]
struct Period {
    name: &'static str,
    from_ns: i64,
    to_ns: i64,
    previous_from_ns: i64,
    step_ns: i64,
    step: &'static str,
}

impl Period {
    fn ending(name: &str, to_ns: i64) -> Option<Period> {
        let (name, length, step_ns, step) = PERIODS.iter().copied().find(|(n, ..)| *n == name)?;
        Some(Period { name, from_ns: to_ns - length, to_ns, previous_from_ns: to_ns - 2 * length, step_ns, step })
    }

    /// Trend points in one period.
    fn steps(&self) -> usize {
        ((self.to_ns - self.from_ns) / self.step_ns) as usize
    }

    /// SQL for the step (0 the first of the previous period) of `time`.
    fn bucket(&self, time: &str) -> String {
        format!("intDiv(toUnixTimestamp64Nano({time}) - {}, {})", self.previous_from_ns, self.step_ns)
    }

    /// SQL: `time` falls in the previous period or this one.
    fn both(&self, time: &str) -> String {
        format!(
            "{time} >= fromUnixTimestamp64Nano({}) AND {time} < fromUnixTimestamp64Nano({})",
            self.previous_from_ns, self.to_ns
        )
    }
}

/// How a KPI's value reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// 0 to 1, shown as a percentage.
    Share,
    Seconds,
    Count,
}

/// Which way is good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Better {
    Lower,
    Higher,
    /// Neither: more handled exceptions is more work done, and more to do.
    Neither,
}

/// One KPI, as the JSON twin gives it.
#[derive(Debug, Clone, Serialize)]
pub struct Kpi {
    pub name: &'static str,
    pub label: &'static str,
    pub unit: Unit,
    pub better: Better,
    /// This period; `None`: no data.
    pub value: Option<f64>,
    /// The period before.
    pub previous: Option<f64>,
    /// What the value counts (transactions, events, pairs...).
    pub samples: u64,
    pub previous_samples: u64,
    /// One value per step of this period, oldest first; `None`: no data.
    pub trend: Vec<Option<f64>>,
    /// False when the data it reads is not stored (an older schema).
    pub available: bool,
    #[serde(skip)]
    pub explanation: String,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub period: String,
    pub from: String,
    pub to: String,
    pub previous_from: String,
    /// The step of every trend: `1h` or `1d`.
    pub trend_step: String,
    pub kpis: Vec<Kpi>,
}

/// Why a report could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The inventory latency SLI failed (its message is the store's).
    #[error("{0}")]
    Sli(String),
}

/// Per step: how many things counted, and how many of them were hits.
#[derive(Debug, Row, Deserialize)]
struct Bucketed {
    bucket: i64,
    hits: u64,
    total: u64,
}

fn order_exceptions_sql(period: &Period) -> String {
    format!(
        "SELECT {} AS bucket, \
                countIf(State IN ('failed', 'stuck') OR arrayExists(o -> o IN ('failed', 'rejected'), MilestoneOutcomes)) AS hits, \
                count() AS total \
         FROM transactions FINAL WHERE RootKind = 'order' AND {} GROUP BY bucket",
        period.bucket("Started"),
        period.both("Started")
    )
}

/// A shipment is visible when a carrier event of its key follows within
/// `within`; a shipment still inside that time without one is not counted
/// yet (it may still become visible).
fn visibility_sql(period: &Period, config: &KpiConfig) -> String {
    let kind = quote_string(&config.shipment_key);
    let within_ns = i64::try_from(config.visibility_within.as_nanos()).unwrap_or(i64::MAX / 4);
    let shipments = events(&format!("Milestone = {} AND {} AND has(KeyKinds, {kind})", quote_string(&config.shipment_milestone), period.both("SourceTime")));
    let carrier = events(&format!(
        "Milestone = {} AND SourceTime >= fromUnixTimestamp64Nano({}) AND SourceTime <= fromUnixTimestamp64Nano({}) AND has(KeyKinds, {kind})",
        quote_string(&config.carrier_milestone),
        period.previous_from_ns,
        period.to_ns.saturating_add(within_ns)
    ));
    format!(
        "SELECT {bucket} AS bucket, countIf(seen) AS hits, countIf(seen OR ts + {within_ns} <= {now}) AS total FROM ( \
           SELECT s.SourceTime AS SourceTime, toUnixTimestamp64Nano(s.SourceTime) AS ts, \
                  arrayExists(x -> x >= ts AND x <= ts + {within_ns}, c.times) AS seen \
           FROM (SELECT KeyValues[indexOf(KeyKinds, {kind})] AS k, SourceTime FROM {shipments}) AS s \
           LEFT JOIN (SELECT KeyValues[indexOf(KeyKinds, {kind})] AS k, groupArray(toUnixTimestamp64Nano(SourceTime)) AS times \
                      FROM {carrier} GROUP BY k) AS c ON s.k = c.k) \
         GROUP BY bucket",
        bucket = period.bucket("SourceTime"),
        now = period.to_ns,
    )
}

fn invoice_sql(period: &Period, config: &KpiConfig) -> String {
    format!(
        "SELECT {} AS bucket, countIf(Outcome {NOT_FAILED}) AS hits, count() AS total FROM {} GROUP BY bucket",
        period.bucket("SourceTime"),
        events(&format!("Milestone = {} AND {}", quote_string(&config.invoice_milestone), period.both("SourceTime")))
    )
}

fn incidents_sql(period: &Period) -> String {
    format!(
        "SELECT {} AS bucket, count() AS hits, count() AS total FROM alert_history WHERE Event = 'firing' AND {} GROUP BY bucket",
        period.bucket("Time"),
        period.both("Time")
    )
}

fn resolved_exceptions_sql(period: &Period) -> String {
    format!(
        "SELECT {} AS bucket, count() AS hits, count() AS total FROM exception_actions WHERE Action = 'resolve' AND {} GROUP BY bucket",
        period.bucket("Time"),
        period.both("Time")
    )
}

/// Sums of one period's steps.
#[derive(Debug, Default, Clone, Copy)]
struct Sums {
    hits: u64,
    total: u64,
}

/// Previous period, this period, and this period's steps.
fn split(period: &Period, rows: &[Bucketed]) -> (Sums, Sums, Vec<Sums>) {
    let steps = period.steps() as i64;
    let (mut previous, mut current) = (Sums::default(), Sums::default());
    let mut trend = vec![Sums::default(); steps as usize];
    for row in rows {
        let target = match row.bucket {
            b if (0..steps).contains(&b) => &mut previous,
            b if (steps..2 * steps).contains(&b) => {
                let step = &mut trend[(b - steps) as usize];
                step.hits += row.hits;
                step.total += row.total;
                &mut current
            }
            _ => continue,
        };
        target.hits += row.hits;
        target.total += row.total;
    }
    (previous, current, trend)
}

fn ratio(sums: Sums) -> Option<f64> {
    (sums.total > 0).then(|| sums.hits as f64 / sums.total as f64)
}

fn share_kpi(name: &'static str, label: &'static str, better: Better, explanation: String, period: &Period, rows: &[Bucketed]) -> Kpi {
    let (previous, current, trend) = split(period, rows);
    Kpi {
        name,
        label,
        unit: Unit::Share,
        better,
        value: ratio(current),
        previous: ratio(previous),
        samples: current.total,
        previous_samples: previous.total,
        trend: trend.into_iter().map(ratio).collect(),
        available: true,
        explanation,
    }
}

fn count_kpi(name: &'static str, label: &'static str, better: Better, explanation: String, period: &Period, rows: &[Bucketed]) -> Kpi {
    let (previous, current, trend) = split(period, rows);
    Kpi {
        name,
        label,
        unit: Unit::Count,
        better,
        value: Some(current.total as f64),
        previous: Some(previous.total as f64),
        samples: current.total,
        previous_samples: previous.total,
        trend: trend.into_iter().map(|s| Some(s.total as f64)).collect(),
        available: true,
        explanation,
    }
}

/// The inventory latency SLI as an alert rule would measure it.
fn latency_rule(config: &KpiConfig, window_ns: i64) -> Rule {
    Rule {
        name: "kpi_inventory_sync_latency".to_owned(),
        sli: Sli::Latency { from: config.inventory_from.clone(), to: config.inventory_to.clone(), key: Some(config.inventory_key.clone()), quantile: 0.95 },
        window: Duration::from_nanos(window_ns.max(0) as u64),
        group_by: Vec::new(),
        above: Some(0.0),
        below: None,
        for_duration: Duration::ZERO,
        min_samples: 0,
        severity: "info".to_owned(),
        labels: BTreeMap::new(),
        annotations: BTreeMap::new(),
    }
}

/// The p95 and its samples of the window ending at `end_ns`; no samples: `None`.
async fn latency_at(store: &Store, rule: &Rule, end_ns: i64) -> Result<(Option<f64>, u64), ReportError> {
    let measured = waybill_alerts::sli::measure(store, rule, end_ns).await.map_err(ReportError::Sli)?;
    Ok(measured.into_iter().find(|m| m.samples > 0).map_or((None, 0), |m| (Some(m.value), m.samples)))
}

async fn inventory_latency(store: &Store, period: &Period, config: &KpiConfig) -> Result<Kpi, ReportError> {
    let whole = latency_rule(config, period.to_ns - period.from_ns);
    let (value, samples) = latency_at(store, &whole, period.to_ns).await?;
    let (previous, previous_samples) = latency_at(store, &whole, period.from_ns).await?;
    let step = latency_rule(config, period.step_ns);
    let mut trend = Vec::with_capacity(period.steps());
    for i in 1..=period.steps() as i64 {
        // Steps with no pair in the whole period need no query.
        if value.is_none() {
            trend.push(None);
            continue;
        }
        trend.push(latency_at(store, &step, period.from_ns + i * period.step_ns).await?.0);
    }
    Ok(Kpi {
        name: "inventory_sync_latency_p95",
        label: "Inventory sync latency (p95)",
        unit: Unit::Seconds,
        better: Better::Lower,
        value,
        previous,
        samples,
        previous_samples,
        trend,
        available: true,
        explanation: format!(
            "95th percentile of the time from {} to {} of the same {}",
            config.inventory_from, config.inventory_to, config.inventory_key
        ),
    })
}

async fn table_exists(store: &Store, table: &str) -> Result<bool, StoreError> {
    #[derive(Row, Deserialize)]
    struct Found {
        n: u64,
    }
    let sql = format!(
        "SELECT count() AS n FROM system.tables WHERE database = {} AND name = {}",
        quote_string(&store.target().database),
        quote_string(table)
    );
    Ok(store.fetch_all::<Found>(&sql).await?.first().is_some_and(|f| f.n > 0))
}

/// Every KPI of `period`.
async fn report(store: &Store, config: &KpiConfig, period: &Period) -> Result<Report, ReportError> {
    let orders: Vec<Bucketed> = store.fetch_all(&order_exceptions_sql(period)).await?;
    let inventory = inventory_latency(store, period, config).await?;
    let visibility: Vec<Bucketed> = store.fetch_all(&visibility_sql(period, config)).await?;
    let invoices: Vec<Bucketed> = store.fetch_all(&invoice_sql(period, config)).await?;
    let incidents: Vec<Bucketed> = store.fetch_all(&incidents_sql(period)).await?;
    let resolved_explanation = "exceptions resolved by hand in the exception queue".to_owned();
    let resolved = if table_exists(store, "exception_actions").await? {
        let rows: Vec<Bucketed> = store.fetch_all(&resolved_exceptions_sql(period)).await?;
        count_kpi("manual_exceptions_handled", "Manual exceptions handled", Better::Neither, resolved_explanation, period, &rows)
    } else {
        Kpi {
            name: "manual_exceptions_handled",
            label: "Manual exceptions handled",
            unit: Unit::Count,
            better: Better::Neither,
            value: None,
            previous: None,
            samples: 0,
            previous_samples: 0,
            trend: vec![None; period.steps()],
            available: false,
            explanation: "the store has no exception audit trail yet: run `waybill migrate`".to_owned(),
        }
    };
    let kpis = vec![
        share_kpi(
            "order_exception_rate",
            "Order exception rate",
            Better::Lower,
            "orders started in the period that failed, got stuck or had a step fail or rejected".to_owned(),
            period,
            &orders,
        ),
        inventory,
        share_kpi(
            "shipment_visibility",
            "Shipment visibility",
            Better::Higher,
            format!(
                "{} events followed by a {} of the same {} within {}",
                config.shipment_milestone,
                config.carrier_milestone,
                config.shipment_key,
                humantime::format_duration(config.visibility_within)
            ),
            period,
            &visibility,
        ),
        share_kpi(
            "invoice_posting_success",
            "Invoice posting success",
            Better::Higher,
            format!("{} events that did not fail", config.invoice_milestone),
            period,
            &invoices,
        ),
        count_kpi("integration_incidents", "Integration incidents", Better::Lower, "alerts that began firing".to_owned(), period, &incidents),
        resolved,
    ];
    Ok(Report {
        period: period.name.to_owned(),
        from: waybill_lineage::api::rfc3339(period.from_ns),
        to: waybill_lineage::api::rfc3339(period.to_ns),
        previous_from: waybill_lineage::api::rfc3339(period.previous_from_ns),
        trend_step: period.step.to_owned(),
        kpis,
    })
}

/// A KPI value as people read it.
fn format_value(unit: Unit, value: f64) -> String {
    match unit {
        Unit::Share => format!("{:.1}%", value * 100.0),
        Unit::Seconds => page::duration(value),
        Unit::Count => format!("{value:.0}"),
    }
}

/// The change from the previous period: its text, arrow and verdict
/// (`good`, `bad`, `same` or `neutral`).
fn change(kpi: &Kpi) -> Option<(String, &'static str, &'static str)> {
    let (value, previous) = (kpi.value?, kpi.previous?);
    let delta = value - previous;
    let text = match kpi.unit {
        Unit::Share => format!("{:+.1} pp", delta * 100.0),
        Unit::Seconds if delta > 0.0 => format!("+{}", page::duration(delta)),
        Unit::Seconds => page::duration(delta),
        Unit::Count => format!("{delta:+.0}"),
    };
    let same = delta.abs() < 1e-9 || (kpi.unit == Unit::Share && (delta * 1000.0).round() == 0.0);
    if same {
        return Some(("no change".to_owned(), "→", "same"));
    }
    let arrow = if delta > 0.0 { "▲" } else { "▼" };
    let verdict = match (kpi.better, delta > 0.0) {
        (Better::Neither, _) => "neutral",
        (Better::Higher, true) | (Better::Lower, false) => "good",
        _ => "bad",
    };
    Some((text, arrow, verdict))
}

struct PeriodOption {
    value: &'static str,
    selected: bool,
}

struct KpiView {
    name: &'static str,
    label: &'static str,
    explanation: String,
    value: String,
    previous: String,
    has_value: bool,
    change: String,
    arrow: &'static str,
    verdict: &'static str,
    samples: String,
    chart: String,
    trend: String,
}

impl KpiView {
    fn of(kpi: &Kpi, period: &Period) -> KpiView {
        let shown = |value: Option<f64>| match (kpi.available, value) {
            (false, _) => "—".to_owned(),
            (true, None) => "no data".to_owned(),
            (true, Some(v)) => format_value(kpi.unit, v),
        };
        let (change, arrow, verdict) = change(kpi).unwrap_or_default();
        let mut pairs = Vec::new();
        if let Some(previous) = kpi.previous {
            pairs.push(("previous".to_owned(), previous));
        }
        if let Some(value) = kpi.value {
            pairs.push(("this period".to_owned(), value));
        }
        let unit = kpi.unit;
        let chart = if pairs.is_empty() { String::new() } else { svg::bars(&pairs, 320, move |v| format_value(unit, v), &format!("{}: previous period and this one", kpi.label)) };
        let trend_values: Vec<Option<f64>> = kpi.trend.clone();
        let step = if period.step == "1h" { "hour" } else { "day" };
        let samples = match kpi.unit {
            Unit::Count => String::new(),
            _ if kpi.samples == 0 => String::new(),
            _ => format!("of {}", kpi.samples),
        };
        KpiView {
            name: kpi.name,
            label: kpi.label,
            explanation: kpi.explanation.clone(),
            value: shown(kpi.value),
            previous: shown(kpi.previous),
            has_value: kpi.value.is_some(),
            change: change.to_owned(),
            arrow,
            verdict,
            samples,
            chart,
            trend: svg::sparkline(&trend_values, 220, 36, &format!("{} per {step}", kpi.label)),
        }
    }
}

#[derive(Template)]
#[template(path = "kpis.html")]
struct KpisPage {
    layout: Layout,
    period: String,
    periods: Vec<PeriodOption>,
    from: String,
    to: String,
    previous_from: String,
    step: &'static str,
    kpis: Vec<KpiView>,
    any_data: bool,
}

fn chosen_period(query: &KpisQuery, to_ns: i64) -> Result<Period, String> {
    let name = query.period.as_deref().map(str::trim).filter(|p| !p.is_empty()).unwrap_or(DEFAULT_PERIOD);
    Period::ending(name, to_ns).ok_or_else(|| format!("the period must be one of {}", PERIODS.iter().map(|p| p.0).collect::<Vec<_>>().join(", ")))
}

async fn kpis_page(State(dashboards): State<Dashboards>, Extension(viewer): Extension<Viewer>, Query(query): Query<KpisQuery>) -> Response {
    let period = match chosen_period(&query, page::now_ns()) {
        Ok(period) => period,
        Err(message) => return page::error_page(StatusCode::BAD_REQUEST, &message),
    };
    let report = match report(dashboards.store(), &dashboards.config().kpis, &period).await {
        Ok(report) => report,
        Err(err) => return page::store_error(err),
    };
    let any_data = report.kpis.iter().any(|k| k.samples > 0 || k.previous_samples > 0);
    page::render(&KpisPage {
        layout: Layout::new("Executive KPIs", "kpis", &viewer),
        period: period.name.to_owned(),
        periods: PERIODS.iter().map(|p| PeriodOption { value: p.0, selected: p.0 == period.name }).collect(),
        from: page::time(period.from_ns),
        to: page::time(period.to_ns),
        previous_from: page::time(period.previous_from_ns),
        step: if period.step == "1h" { "hour" } else { "day" },
        kpis: report.kpis.iter().map(|k| KpiView::of(k, &period)).collect(),
        any_data,
    })
}

async fn kpis_json(State(dashboards): State<Dashboards>, Query(query): Query<KpisQuery>) -> Response {
    let period = match chosen_period(&query, page::now_ns()) {
        Ok(period) => period,
        Err(message) => return page::json_error(StatusCode::BAD_REQUEST, &message),
    };
    match report(dashboards.store(), &dashboards.config().kpis, &period).await {
        Ok(report) => Json(report).into_response(),
        Err(err) => page::json_error(StatusCode::SERVICE_UNAVAILABLE, &format!("the store did not answer: {err}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kpi(unit: Unit, better: Better, value: Option<f64>, previous: Option<f64>) -> Kpi {
        Kpi {
            name: "k",
            label: "K",
            unit,
            better,
            value,
            previous,
            samples: 1,
            previous_samples: 1,
            trend: Vec::new(),
            available: true,
            explanation: String::new(),
        }
    }

    #[test]
    fn a_change_says_whether_it_is_good() {
        assert_eq!(change(&kpi(Unit::Share, Better::Lower, Some(0.1), Some(0.2))), Some(("-10.0 pp".to_owned(), "▼", "good")));
        assert_eq!(change(&kpi(Unit::Share, Better::Higher, Some(0.1), Some(0.2))), Some(("-10.0 pp".to_owned(), "▼", "bad")));
        assert_eq!(change(&kpi(Unit::Count, Better::Lower, Some(3.0), Some(1.0))), Some(("+2".to_owned(), "▲", "bad")));
        assert_eq!(change(&kpi(Unit::Seconds, Better::Lower, Some(90.0), Some(30.0))), Some(("+1 min 0 s".to_owned(), "▲", "bad")));
        assert_eq!(change(&kpi(Unit::Count, Better::Neither, Some(3.0), Some(1.0))).unwrap().2, "neutral");
        assert_eq!(change(&kpi(Unit::Count, Better::Lower, Some(1.0), Some(1.0))).unwrap().2, "same");
        assert_eq!(change(&kpi(Unit::Share, Better::Lower, None, Some(0.2))), None);
    }

    #[test]
    fn steps_fall_into_their_period() {
        let period = Period::ending("7d", 14 * DAY_NS).unwrap();
        let rows = [
            Bucketed { bucket: 0, hits: 1, total: 2 },
            Bucketed { bucket: 6, hits: 1, total: 2 },
            Bucketed { bucket: 7, hits: 3, total: 4 },
            Bucketed { bucket: 13, hits: 0, total: 1 },
            Bucketed { bucket: 14, hits: 9, total: 9 },
        ];
        let (previous, current, trend) = split(&period, &rows);
        assert_eq!((previous.hits, previous.total), (2, 4));
        assert_eq!((current.hits, current.total), (3, 5));
        assert_eq!(trend.len(), 7);
        assert_eq!((trend[0].hits, trend[0].total, trend[6].total), (3, 4, 1));
    }

    #[test]
    fn periods_are_known_ones() {
        assert!(Period::ending("2d", 0).is_none());
        let day = Period::ending("1d", 2 * DAY_NS).unwrap();
        assert_eq!((day.steps(), day.from_ns, day.previous_from_ns), (24, DAY_NS, 0));
    }
}
