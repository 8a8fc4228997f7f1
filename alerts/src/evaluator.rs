//! The evaluation loop: on every interval, measures each rule's SLI, moves
//! each alert through its states, stores transitions and state, and hands
//! alerts to the receivers. The rules file is reloaded when it changes or
//! on SIGHUP; a file that does not validate is refused and the old rules
//! are kept.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tokio::sync::{watch, Notify};
use waybill_store::{AlertHistoryRow, AlertStateRow, Store, StoreError};

use crate::config::AlertsConfig;
use crate::notify::{self, AlertView, Sender};
use crate::rules::{Rule, RulesFile};
use crate::silence::{self, Silence};
use crate::sli::{self, Measurement};
use crate::state::{group_key, Alert, Change, Phase};
use crate::{now_ns, rfc3339};

/// The alerts service: shared by the evaluation loop, the API and `/metrics`.
#[derive(Clone)]
pub struct Alerts {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    config: AlertsConfig,
    sender: Sender,
    reload: Notify,
    state: RwLock<Snapshot>,
}

/// What the API and `/metrics` show.
#[derive(Default)]
struct Snapshot {
    rules: Option<RulesFile>,
    modified: Option<SystemTime>,
    reload_error: Option<String>,
    /// Rule → the error of its last measurement, if it failed.
    rule_errors: BTreeMap<String, String>,
    alerts: BTreeMap<(String, String), Alert>,
    /// Rule → its last measurements.
    measured: BTreeMap<String, Vec<Measurement>>,
    /// Rule → its worst group's value at each of the last evaluations.
    trends: BTreeMap<String, VecDeque<TrendPoint>>,
}

/// How many evaluations a rule's trend remembers (an hour at the default
/// 15 s interval).
pub const TREND_POINTS: usize = 240;

/// One evaluation of a rule in its trend: the value of its worst group
/// (the highest for `above` rules, the lowest for `below`), of the groups
/// with at least `min_samples` samples; `None` if no group had a value.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct TrendPoint {
    pub time_ns: i64,
    pub value: Option<f64>,
}

/// A rule as `GET /api/v1/rules` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RuleView {
    #[serde(flatten)]
    pub rule: Rule,
    /// `ok`, or the error of its last evaluation.
    pub health: String,
}

impl Alerts {
    /// Loads the rules file (refusing one that does not validate).
    pub fn new(store: Store, config: AlertsConfig) -> Result<Alerts, String> {
        let mut snapshot = Snapshot::default();
        if let Some(path) = &config.rules_file {
            snapshot.rules = Some(RulesFile::load(path).map_err(|err| err.to_string())?);
            snapshot.modified = modified(path);
        }
        Ok(Alerts { inner: Arc::new(Inner { store, config, sender: Sender::default(), reload: Notify::new(), state: RwLock::new(snapshot) }) })
    }

    /// Asks the loop to reload the rules file now (SIGHUP).
    pub fn reload(&self) {
        self.inner.reload.notify_one();
    }

    /// Evaluates until `shutdown`, after restoring the stored alert state.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut restored = false;
        loop {
            let interval = self.interval();
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = self.inner.reload.notified() => self.reload_rules(true),
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            self.reload_rules(false);
            if !restored {
                match self.restore().await {
                    Ok(count) => {
                        restored = true;
                        if count > 0 {
                            tracing::info!(alerts = count, "alert state restored");
                        }
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "alert state not restored yet; retrying");
                        continue;
                    }
                }
            }
            let timer = metrics::EVALUATION_SECONDS.start_timer();
            match self.evaluate(now_ns()).await {
                Ok(()) => timer.observe_duration(),
                Err(err) => {
                    timer.stop_and_discard();
                    tracing::warn!(error = %err, "alert evaluation failed; retrying");
                }
            }
        }
    }

    fn interval(&self) -> Duration {
        let state = self.inner.state.read().expect("alerts lock");
        state.rules.as_ref().map_or(Duration::from_secs(15), |r| r.interval)
    }

    /// Reloads the rules file if asked or if it changed on disk.
    fn reload_rules(&self, asked: bool) {
        let Some(path) = &self.inner.config.rules_file else { return };
        let now_modified = modified(path);
        let mut state = self.inner.state.write().expect("alerts lock");
        if !asked && now_modified == state.modified {
            return;
        }
        state.modified = now_modified;
        match RulesFile::load(path) {
            Ok(rules) => {
                tracing::info!(file = %path.display(), rules = rules.rules.len(), "alert rules loaded");
                state.rules = Some(rules);
                state.reload_error = None;
            }
            Err(err) => {
                metrics::RELOAD_FAILURES.inc();
                tracing::error!(error = %err, "alert rules not reloaded; the previous rules stay in force");
                state.reload_error = Some(err.to_string());
            }
        }
    }

    /// Reads the stored state of alerts that were pending or firing.
    async fn restore(&self) -> Result<usize, StoreError> {
        let rows: Vec<AlertStateRow> = self
            .inner
            .store
            .fetch_all("SELECT Rule, GroupKey, Labels, State, Since, FiredAt, LastNotified, Value, Samples, Version FROM alert_state FINAL WHERE State != 'inactive'")
            .await?;
        let mut state = self.inner.state.write().expect("alerts lock");
        for row in &rows {
            let mut alert = Alert::new(&row.rule, row.labels.iter().cloned().collect());
            alert.phase = Phase::parse(&row.state);
            alert.since_ns = row.since_ns;
            alert.fired_at_ns = row.fired_at_ns;
            alert.last_notified_ns = row.last_notified_ns;
            alert.value = row.value;
            alert.samples = row.samples;
            state.alerts.insert((alert.rule.clone(), alert.group_key.clone()), alert);
        }
        Ok(rows.len())
    }

    /// One evaluation cycle at `now_ns`.
    pub async fn evaluate(&self, now_ns: i64) -> Result<(), StoreError> {
        let store = &self.inner.store;
        let rules: Vec<Rule> = self.inner.state.read().expect("alerts lock").rules.as_ref().map(|r| r.rules.clone()).unwrap_or_default();
        let silences = silence::active(store, now_ns).await?;

        // Measure every rule first, outside the lock.
        let mut measured: BTreeMap<String, Result<Vec<Measurement>, String>> = BTreeMap::new();
        for (rule, result) in rules.iter().zip(sli::measure_all(store, &rules, now_ns).await) {
            if let Err(err) = &result {
                tracing::warn!(rule = %rule.name, error = %err, "rule not evaluated");
            }
            measured.insert(rule.name.clone(), result);
        }

        let mut changes: Vec<(Alert, Change)> = Vec::new();
        let mut touched: Vec<Alert> = Vec::new();
        {
            let mut state = self.inner.state.write().expect("alerts lock");
            let by_name: BTreeMap<&str, &Rule> = rules.iter().map(|r| (r.name.as_str(), r)).collect();
            for rule in &rules {
                let Some(Ok(measurements)) = measured.get(&rule.name) else { continue };
                let for_ns = i64::try_from(rule.for_duration.as_nanos()).unwrap_or(i64::MAX);
                let mut seen = BTreeSet::new();
                for m in measurements {
                    let key = (rule.name.clone(), group_key(&m.group));
                    seen.insert(key.1.clone());
                    let alert = state.alerts.entry(key).or_insert_with(|| Alert::new(&rule.name, m.group.clone()));
                    let breached = m.samples >= rule.min_samples && rule.breached(m.value);
                    if let Some(change) = alert.observe(breached, m.value, m.samples, for_ns, now_ns) {
                        changes.push((alert.clone(), change));
                    }
                }
                // Groups that vanished from the window no longer breach.
                for ((name, key), alert) in state.alerts.iter_mut() {
                    if name == &rule.name && !seen.contains(key) {
                        if let Some(change) = alert.observe(false, alert.value, 0, for_ns, now_ns) {
                            changes.push((alert.clone(), change));
                        }
                    }
                }
            }
            // Alerts of rules that were removed resolve.
            for ((name, _), alert) in state.alerts.iter_mut() {
                if !by_name.contains_key(name.as_str()) {
                    if let Some(change) = alert.observe(false, alert.value, 0, 0, now_ns) {
                        changes.push((alert.clone(), change));
                    }
                }
            }
            state.rule_errors = measured.iter().filter_map(|(name, r)| r.as_ref().err().map(|e| (name.clone(), e.clone()))).collect();
            state.measured = measured.into_iter().filter_map(|(name, r)| r.ok().map(|m| (name, m))).collect();
            let snapshot = &mut *state;
            record_trends(&mut snapshot.trends, &rules, &snapshot.measured, now_ns);

            // Who hears of what: firing alerts on their transition and then
            // every repeat interval; resolutions of alerts that were heard of.
            let repeat_ns = i64::try_from(self.inner.config.repeat_interval().as_nanos()).unwrap_or(i64::MAX);
            for alert in state.alerts.values_mut() {
                let due = alert.phase == Phase::Firing && (alert.last_notified_ns == 0 || now_ns - alert.last_notified_ns >= repeat_ns);
                if due && !silenced(&silences, &labels_of(alert, by_name.get(alert.rule.as_str()).copied())) {
                    alert.last_notified_ns = now_ns;
                    touched.push(alert.clone());
                }
            }
            state.alerts.retain(|_, alert| alert.phase != Phase::Inactive);
        }

        // Store transitions and state.
        let history: Vec<AlertHistoryRow> = changes
            .iter()
            .map(|(alert, change)| AlertHistoryRow {
                time_ns: now_ns,
                rule: alert.rule.clone(),
                group_key: alert.group_key.clone(),
                labels: alert.group.clone().into_iter().collect(),
                event: change.as_str().to_owned(),
                value: alert.value,
                receiver: String::new(),
                detail: String::new(),
            })
            .collect();
        // Receivers hear of this cycle even if the store does not take its
        // record: the state in memory has already moved on.
        let history_result = store.insert("alert_history", &history).await;
        let mut states: BTreeMap<(String, String), AlertStateRow> = BTreeMap::new();
        for alert in changes.iter().map(|(a, _)| a).chain(&touched) {
            let mut alert = alert.clone();
            if let Some(now) = touched.iter().find(|t| t.rule == alert.rule && t.group_key == alert.group_key) {
                alert.last_notified_ns = now.last_notified_ns;
            }
            states.insert((alert.rule.clone(), alert.group_key.clone()), state_row(&alert));
        }
        let states: Vec<AlertStateRow> = states.into_values().collect();
        let state_result = store.insert("alert_state", &states).await;
        metrics::FIRING.set(self.inner.state.read().expect("alerts lock").alerts.values().filter(|a| a.phase == Phase::Firing).count() as i64);

        self.deliver(&rules, &silences, &changes, &touched, now_ns);
        history_result?;
        state_result?;
        metrics::EVALUATIONS.inc();
        Ok(())
    }

    /// Hands this cycle's alerts to the receivers, each delivery in its own
    /// task so a slow receiver does not hold up evaluation.
    fn deliver(&self, rules: &[Rule], silences: &[Silence], changes: &[(Alert, Change)], notify: &[Alert], now_ns: i64) {
        let by_name: BTreeMap<&str, &Rule> = rules.iter().map(|r| (r.name.as_str(), r)).collect();
        let view = |alert: &Alert, state: &str| -> AlertView {
            let rule = by_name.get(alert.rule.as_str()).copied();
            AlertView {
                rule: alert.rule.clone(),
                state: state.to_owned(),
                severity: rule.map_or_else(|| "warning".to_owned(), |r| r.severity.clone()),
                labels: labels_of(alert, rule),
                annotations: rule.map(|r| annotations(r, alert)).unwrap_or_default(),
                value: alert.value,
                since: rfc3339(alert.since_ns),
            }
        };
        let resolved: Vec<&Alert> = changes.iter().filter(|(_, c)| *c == Change::Resolved).map(|(a, _)| a).collect();

        if let Some(url) = &self.inner.config.alertmanager_url {
            // Alertmanager wants every firing alert again each cycle; it
            // deduplicates, groups and repeats for its own receivers.
            let firing: Vec<(AlertView, i64)> = {
                let state = self.inner.state.read().expect("alerts lock");
                state
                    .alerts
                    .values()
                    .filter(|a| a.phase == Phase::Firing)
                    .map(|a| (view(a, "firing"), a.fired_at_ns))
                    .filter(|(v, _)| !silenced(silences, &v.labels))
                    .collect()
            };
            let mut alerts = firing;
            alerts.extend(resolved.iter().map(|a| (view(a, "resolved"), a.fired_at_ns)));
            if !alerts.is_empty() {
                let interval = i64::try_from(self.interval().as_nanos()).unwrap_or(i64::MAX);
                let expires = now_ns.saturating_add(interval.saturating_mul(4).max(60_000_000_000));
                let body = notify::alertmanager_body(&alerts, expires, now_ns, &self.inner.config.external_url);
                let announced: Vec<&Alert> = changes.iter().filter(|(_, c)| matches!(c, Change::Firing | Change::Resolved)).map(|(a, _)| a).collect();
                self.spawn_delivery("alertmanager", format!("{}/api/v2/alerts", url.trim_end_matches('/')), body, Vec::new(), &announced);
            }
        }

        let mut views: Vec<AlertView> = notify.iter().map(|a| view(a, "firing")).collect();
        let told_of: Vec<&Alert> = resolved.iter().copied().filter(|a| a.last_notified_ns > 0).collect();
        views.extend(told_of.iter().map(|a| view(a, "resolved")));
        if views.is_empty() {
            return;
        }
        let mut subjects: Vec<&Alert> = notify.iter().collect();
        subjects.extend(told_of);
        for webhook in &self.inner.config.webhooks {
            let body = notify::webhook_body(webhook, &views, now_ns);
            let mut headers = vec![("X-Waybill-Delivery", format!("{:016x}", cityhash_rs::cityhash_102_128(&body) as u64))];
            if let Some(secret) = &webhook.secret {
                headers.push(("X-Waybill-Signature", notify::signature(secret, &body)));
            }
            self.spawn_delivery(&webhook.name, webhook.url.clone(), body, headers, &subjects);
        }
    }

    fn spawn_delivery(&self, receiver: &str, url: String, body: Vec<u8>, headers: Vec<(&'static str, String)>, subjects: &[&Alert]) {
        let inner = self.inner.clone();
        let receiver = receiver.to_owned();
        let subjects: Vec<Alert> = subjects.iter().map(|a| (*a).clone()).collect();
        tokio::spawn(async move {
            let result = inner.sender.post(&url, body, &headers).await;
            let (event, detail) = match &result {
                Ok(attempts) => ("delivered", format!("after {attempts} attempt(s)")),
                Err(err) => ("delivery_failed", err.clone()),
            };
            metrics::DELIVERIES.with_label_values(&[receiver.as_str(), if result.is_ok() { "delivered" } else { "failed" }]).inc();
            if let Err(err) = &result {
                tracing::warn!(receiver = %receiver, error = %err, "alert delivery failed");
            }
            let rows: Vec<AlertHistoryRow> = subjects
                .iter()
                .map(|alert| AlertHistoryRow {
                    time_ns: now_ns(),
                    rule: alert.rule.clone(),
                    group_key: alert.group_key.clone(),
                    labels: alert.group.clone().into_iter().collect(),
                    event: event.to_owned(),
                    value: alert.value,
                    receiver: receiver.clone(),
                    detail: detail.clone(),
                })
                .collect();
            if let Err(err) = inner.store.insert("alert_history", &rows).await {
                tracing::warn!(error = %err, "delivery outcome not recorded");
            }
        });
    }

    /// Pending and firing alerts, as the API shows them.
    pub fn alerts(&self) -> Vec<AlertView> {
        let state = self.inner.state.read().expect("alerts lock");
        let rules: BTreeMap<&str, &Rule> = state.rules.iter().flat_map(|f| &f.rules).map(|r| (r.name.as_str(), r)).collect();
        state
            .alerts
            .values()
            .map(|alert| {
                let rule = rules.get(alert.rule.as_str()).copied();
                AlertView {
                    rule: alert.rule.clone(),
                    state: alert.phase.as_str().to_owned(),
                    severity: rule.map_or_else(|| "warning".to_owned(), |r| r.severity.clone()),
                    labels: labels_of(alert, rule),
                    annotations: rule.map(|r| annotations(r, alert)).unwrap_or_default(),
                    value: alert.value,
                    since: rfc3339(alert.since_ns),
                }
            })
            .collect()
    }

    /// The rules in force, each with its health, and the last reload error.
    pub fn rules(&self) -> (Vec<RuleView>, Option<String>) {
        let state = self.inner.state.read().expect("alerts lock");
        let rules = state
            .rules
            .iter()
            .flat_map(|f| &f.rules)
            .map(|rule| RuleView { rule: rule.clone(), health: state.rule_errors.get(&rule.name).cloned().unwrap_or_else(|| "ok".to_owned()) })
            .collect();
        (rules, state.reload_error.clone())
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The rules file in use; `None` when `alerts.rules_file` is not set.
    pub fn rules_file(&self) -> Option<&Path> {
        self.inner.config.rules_file.as_deref()
    }

    /// Each rule's measurements of the last evaluation, per group (rules
    /// whose measurement failed are missing: see [`Alerts::rules`]).
    pub fn measurements(&self) -> BTreeMap<String, Vec<Measurement>> {
        self.inner.state.read().expect("alerts lock").measured.clone()
    }

    /// Each rule's trend over its last [`TREND_POINTS`] evaluations,
    /// oldest first (kept in memory only; empty after a restart).
    pub fn trends(&self) -> BTreeMap<String, Vec<TrendPoint>> {
        let state = self.inner.state.read().expect("alerts lock");
        state.trends.iter().map(|(name, points)| (name.clone(), points.iter().copied().collect())).collect()
    }

    /// Every rule's current SLI value and sample count per group, and each
    /// alert's state, in Prometheus text exposition.
    pub fn exposition(&self) -> String {
        let state = self.inner.state.read().expect("alerts lock");
        let mut out = String::new();
        out.push_str("# HELP waybill_sli_value Current value of each alert rule's SLI, per group.\n# TYPE waybill_sli_value gauge\n");
        for (rule, measurements) in &state.measured {
            for m in measurements {
                out.push_str(&format!("waybill_sli_value{} {}\n", labels_text(rule, &m.group, None), m.value));
            }
        }
        out.push_str("# HELP waybill_sli_samples Samples behind each SLI value, per group.\n# TYPE waybill_sli_samples gauge\n");
        for (rule, measurements) in &state.measured {
            for m in measurements {
                out.push_str(&format!("waybill_sli_samples{} {}\n", labels_text(rule, &m.group, None), m.samples));
            }
        }
        out.push_str("# HELP waybill_alert_active Pending and firing alerts (1), by state.\n# TYPE waybill_alert_active gauge\n");
        for alert in state.alerts.values() {
            out.push_str(&format!("waybill_alert_active{} 1\n", labels_text(&alert.rule, &alert.group, Some(alert.phase.as_str()))));
        }
        out
    }
}

/// Adds this evaluation's worst value to every measured rule's trend,
/// keeping the last [`TREND_POINTS`], and forgets rules no longer in the
/// file. A rule whose measurement failed gets no point.
fn record_trends(trends: &mut BTreeMap<String, VecDeque<TrendPoint>>, rules: &[Rule], measured: &BTreeMap<String, Vec<Measurement>>, now_ns: i64) {
    trends.retain(|name, _| rules.iter().any(|r| &r.name == name));
    for rule in rules {
        let Some(measurements) = measured.get(&rule.name) else { continue };
        let values = measurements.iter().filter(|m| m.samples >= rule.min_samples && m.value.is_finite()).map(|m| m.value);
        let value = if rule.below.is_some() { values.reduce(f64::min) } else { values.reduce(f64::max) };
        let points = trends.entry(rule.name.clone()).or_default();
        if points.len() == TREND_POINTS {
            points.pop_front();
        }
        points.push_back(TrendPoint { time_ns: now_ns, value });
    }
}

fn silenced(silences: &[Silence], labels: &BTreeMap<String, String>) -> bool {
    silences.iter().any(|s| s.matches(labels))
}

/// An alert's labels: the group's, the rule's, `alertname` and `severity`.
fn labels_of(alert: &Alert, rule: Option<&Rule>) -> BTreeMap<String, String> {
    let mut labels = alert.group.clone();
    if let Some(rule) = rule {
        labels.extend(rule.labels.clone());
        labels.insert("severity".into(), rule.severity.clone());
    }
    labels.insert("alertname".into(), alert.rule.clone());
    labels
}

/// The rule's annotations with `{{ value }}`, `{{ threshold }}`,
/// `{{ samples }}`, `{{ rule }}` and `{{ labels.<name> }}` filled in.
pub fn annotations(rule: &Rule, alert: &Alert) -> BTreeMap<String, String> {
    let labels = labels_of(alert, Some(rule));
    let fill = |name: &str| -> String {
        match name {
            "value" => format_value(alert.value),
            "threshold" => format_value(rule.threshold()),
            "samples" => alert.samples.to_string(),
            "rule" => rule.name.clone(),
            _ => name.strip_prefix("labels.").and_then(|l| labels.get(l)).cloned().unwrap_or_default(),
        }
    };
    rule.annotations.iter().map(|(k, template)| (k.clone(), render(template, fill))).collect()
}

fn render(template: &str, fill: impl Fn(&str) -> String) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find("}}") else { break };
        out.push_str(&fill(rest[open + 2..open + close].trim()));
        rest = &rest[open + close + 2..];
    }
    out.push_str(rest);
    out
}

/// A value as people read it: up to four decimals, no trailing zeros.
fn format_value(value: f64) -> String {
    let text = format!("{value:.4}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text.is_empty() || text == "-" { "0".into() } else { text.to_owned() }
}

fn labels_text(rule: &str, group: &BTreeMap<String, String>, state: Option<&str>) -> String {
    let escape = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
    let mut parts = vec![format!("rule=\"{}\"", escape(rule))];
    parts.extend(group.iter().filter(|(k, _)| k.as_str() != "rule" && k.as_str() != "state").map(|(k, v)| format!("{k}=\"{}\"", escape(v))));
    if let Some(state) = state {
        parts.push(format!("state=\"{state}\""));
    }
    format!("{{{}}}", parts.join(","))
}

fn state_row(alert: &Alert) -> AlertStateRow {
    AlertStateRow {
        rule: alert.rule.clone(),
        group_key: alert.group_key.clone(),
        labels: alert.group.clone().into_iter().collect(),
        state: alert.phase.as_str().to_owned(),
        since_ns: alert.since_ns,
        fired_at_ns: alert.fired_at_ns,
        last_notified_ns: alert.last_notified_ns,
        value: alert.value,
        samples: alert.samples,
        version: now_ns() as u64,
    }
}

fn modified(path: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

mod metrics {
    //! The alert engine's own Prometheus metrics (default registry).
    use std::sync::LazyLock;

    use prometheus::{register_histogram, register_int_counter, register_int_counter_vec, register_int_gauge};
    use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge};

    pub static EVALUATIONS: LazyLock<IntCounter> = LazyLock::new(|| {
        register_int_counter!("waybill_alerts_evaluations_total", "Completed alert evaluation cycles").expect("metric registers once")
    });
    pub static EVALUATION_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
        register_histogram!(
            "waybill_alerts_evaluation_duration_seconds",
            "Time of one evaluation cycle of every rule",
            vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
        )
        .expect("metric registers once")
    });
    pub static DELIVERIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
        register_int_counter_vec!("waybill_alerts_deliveries_total", "Alert deliveries by receiver and outcome (delivered, failed after retries)", &["receiver", "outcome"])
            .expect("metric registers once")
    });
    pub static RELOAD_FAILURES: LazyLock<IntCounter> = LazyLock::new(|| {
        register_int_counter!("waybill_alerts_rules_reload_failures_total", "Rules files refused on reload (the previous rules stayed)")
            .expect("metric registers once")
    });
    pub static FIRING: LazyLock<IntGauge> =
        LazyLock::new(|| register_int_gauge!("waybill_alerts_firing", "Alerts firing now").expect("metric registers once"));

    pub fn register() {
        LazyLock::force(&EVALUATIONS);
        LazyLock::force(&EVALUATION_SECONDS);
        LazyLock::force(&DELIVERIES);
        LazyLock::force(&RELOAD_FAILURES);
        LazyLock::force(&FIRING);
    }
}

pub use metrics::register as register_metrics;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotations_fill_in_values_and_labels() {
        let rule: Rule = serde_yaml::from_str(
            r#"
name: acceptance
sli: { kind: ratio, numerator: order.accepted, denominator: order.captured }
window: 1h
below: 0.95
annotations: { summary: "{{ labels.system }} accepts {{value}} of orders (threshold {{ threshold }}, {{ samples }} orders)" }
"#,
        )
        .unwrap();
        let mut alert = Alert::new("acceptance", BTreeMap::from([("system".to_string(), "erp".to_string())]));
        alert.value = 0.8;
        alert.samples = 40;
        assert_eq!(annotations(&rule, &alert)["summary"], "erp accepts 0.8 of orders (threshold 0.95, 40 orders)");
        assert_eq!(labels_text("r", &alert.group, Some("firing")), r#"{rule="r",system="erp",state="firing"}"#);
    }

    #[test]
    fn a_trend_keeps_the_worst_group_of_the_last_evaluations_of_rules_still_there() {
        let rules: RulesFile = serde_yaml::from_str(
            r#"
rules:
  - { name: failures, sli: { kind: count, milestone: invoice.posted }, window: 1h, group_by: [system], above: 0, min_samples: 1 }
  - { name: acceptance, sli: { kind: ratio, numerator: order.accepted, denominator: order.captured }, window: 1h, below: 0.9, min_samples: 10 }
"#,
        )
        .unwrap();
        let group = |system: &str, value: f64, samples: u64| Measurement { group: BTreeMap::from([("system".to_string(), system.to_string())]), value, samples };
        let mut trends = BTreeMap::new();
        for i in 0..(TREND_POINTS as i64 + 5) {
            let measured = BTreeMap::from([
                ("failures".to_string(), vec![group("erp", i as f64, 3), group("wms", 2.0, 5), group("tiny", 1e9, 0)]),
                // The lowest ratio is worst, but one below min_samples has no value.
                ("acceptance".to_string(), vec![group("erp", 0.8, 40), group("wms", 0.5, 2)]),
            ]);
            record_trends(&mut trends, &rules.rules, &measured, i);
        }
        let failures = &trends["failures"];
        assert_eq!(failures.len(), TREND_POINTS);
        assert_eq!(failures.front(), Some(&TrendPoint { time_ns: 5, value: Some(5.0) }));
        assert_eq!(failures.back(), Some(&TrendPoint { time_ns: TREND_POINTS as i64 + 4, value: Some(TREND_POINTS as f64 + 4.0) }));
        assert_eq!(trends["acceptance"].back().unwrap().value, Some(0.8));

        // A rule without groups with enough samples has a point without a
        // value; a rule gone from the file loses its trend.
        let measured = BTreeMap::from([("acceptance".to_string(), vec![group("wms", 0.5, 2)])]);
        record_trends(&mut trends, &rules.rules[1..], &measured, 1000);
        assert!(!trends.contains_key("failures"));
        assert_eq!(trends["acceptance"].back(), Some(&TrendPoint { time_ns: 1000, value: None }));
    }
}
