//! The rules file: SLIs over business signals, thresholds, `for`,
//! severity, labels and annotations. See docs/alerts.md.
//!
//! ```yaml
//! interval: 15s
//! rules:
//!   - name: order_acceptance
//!     sli: { kind: ratio, numerator: order.accepted, denominator: order.captured }
//!     window: 1h
//!     below: 0.95
//!     for: 5m
//!     min_samples: 20
//!     severity: critical
//!     annotations:
//!       summary: "Order acceptance is {{ value }} (below {{ threshold }})"
//!       runbook_url: https://runbooks.example.com/erp-acceptance
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The parsed rules file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesFile {
    /// How often every rule is evaluated.
    #[serde(default = "default_interval", with = "duration_text")]
    pub interval: Duration,
    #[serde(default)]
    pub rules: Vec<Rule>,
}

fn default_interval() -> Duration {
    Duration::from_secs(15)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Unique; the alert's `alertname`.
    pub name: String,
    pub sli: Sli,
    /// The period the SLI is computed over, ending now.
    #[serde(with = "duration_text")]
    pub window: Duration,
    /// Dimensions (see docs/alerts.md for which SLI takes which): `system`,
    /// `source`, `milestone`, `key:<kind>` (e.g. `key:partner`), and for
    /// `error_rate` `attribute:<name>` of the span.
    #[serde(default)]
    pub group_by: Vec<String>,
    /// Fires when the value is above this...
    #[serde(default)]
    pub above: Option<f64>,
    /// ...or below this.
    #[serde(default)]
    pub below: Option<f64>,
    /// How long the threshold must be crossed before the alert fires.
    #[serde(default, rename = "for", with = "duration_text")]
    pub for_duration: Duration,
    /// Fewer samples than this in the window: no value, nobody paged.
    #[serde(default)]
    pub min_samples: u64,
    #[serde(default = "default_severity")]
    pub severity: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `summary`, `description`, `runbook_url`, ...; `{{ value }}`,
    /// `{{ threshold }}`, `{{ samples }}`, `{{ rule }}` and
    /// `{{ labels.<name> }}` are replaced.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

fn default_severity() -> String {
    "warning".to_owned()
}

/// What a rule measures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Sli {
    /// Of the transactions that reached `denominator` in the window, the
    /// share that also reached `numerator` (successfully).
    Ratio { numerator: String, denominator: String },
    /// A quantile, in seconds, of the time from `from` to `to`: between two
    /// milestones of the same key of kind `key` (each `to` paired with the
    /// latest `from` before it), or with `from: source_time`, between a
    /// record's source time and its arrival at Waybill.
    Latency {
        from: String,
        to: String,
        #[serde(default)]
        key: Option<String>,
        #[serde(default = "default_quantile")]
        quantile: f64,
    },
    /// Business events of `milestone` (with `outcome`, if given) in the window.
    Count {
        milestone: String,
        #[serde(default)]
        outcome: Option<String>,
    },
    /// The same per second.
    Rate {
        milestone: String,
        #[serde(default)]
        outcome: Option<String>,
    },
    /// Transactions stuck past a journey deadline now (optionally only
    /// those overdue for `milestone`); the window is not used.
    Overdue {
        #[serde(default)]
        milestone: Option<String>,
    },
    /// Share of failed calls among client spans (calls to other systems)
    /// in the window.
    ErrorRate {
        #[serde(default)]
        span_kind: Option<String>,
    },
}

fn default_quantile() -> f64 {
    0.95
}

impl Rule {
    /// Whether `value` crosses the threshold.
    pub fn breached(&self, value: f64) -> bool {
        self.above.is_some_and(|t| value > t) || self.below.is_some_and(|t| value < t)
    }

    pub fn threshold(&self) -> f64 {
        self.above.or(self.below).unwrap_or_default()
    }
}

/// A rules file that cannot be used, and where.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{origin}: {message}")]
pub struct RulesError {
    pub origin: String,
    pub message: String,
}

impl RulesFile {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<RulesFile, RulesError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|err| RulesError { origin: origin.clone(), message: format!("cannot read it: {err}") })?;
        RulesFile::parse(&text, &origin)
    }

    /// Parses and validates rules; errors name the line, or the rule and
    /// the setting to change.
    pub fn parse(text: &str, origin: &str) -> Result<RulesFile, RulesError> {
        let error = |message: String| RulesError { origin: origin.to_owned(), message };
        let file: RulesFile = serde_yaml::from_str(text).map_err(|err| {
            let at = err.location().map(|l| format!("line {} column {}: ", l.line(), l.column())).unwrap_or_default();
            // serde_yaml repeats the location at the end; it is said first here.
            let message = err.to_string();
            let message = message.rsplit_once(" at line ").map_or(message.as_str(), |(m, _)| m).to_owned();
            error(format!("{at}{message}"))
        })?;
        if file.interval < Duration::from_millis(100) {
            return Err(error("interval must be at least 100ms".into()));
        }
        let mut names = BTreeSet::new();
        for (i, rule) in file.rules.iter().enumerate() {
            let at = |message: &str| error(format!("rules[{i}] ({}): {message}", rule.name));
            if rule.name.is_empty() || !rule.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.') {
                return Err(at("give the rule a name of letters, digits, '_', '-' or '.'"));
            }
            if !names.insert(&rule.name) {
                return Err(at("another rule has this name"));
            }
            match (rule.above, rule.below) {
                (None, None) => return Err(at("set a threshold: above: N or below: N")),
                (Some(_), Some(_)) => return Err(at("set either above or below, not both")),
                _ => {}
            }
            if rule.window.is_zero() && !matches!(rule.sli, Sli::Overdue { .. }) {
                return Err(at("set a window, e.g. window: 15m"));
            }
            if let Sli::Latency { quantile, from, key, .. } = &rule.sli {
                if !(0.0..=1.0).contains(quantile) {
                    return Err(at("quantile must be between 0 and 1"));
                }
                if from != "source_time" && key.is_none() {
                    return Err(at("a latency between two milestones needs key: <kind> (the key both carry), or from: source_time"));
                }
                if from == "source_time" && key.is_some() {
                    return Err(at("from: source_time measures each record on its own: remove key"));
                }
            }
            for dimension in &rule.group_by {
                let allowed = match rule.sli {
                    Sli::ErrorRate { .. } => dimension == "system" || dimension.starts_with("attribute:"),
                    Sli::Ratio { .. } => dimension == "system" || dimension.starts_with("key:"),
                    Sli::Overdue { .. } => dimension == "milestone" || dimension.starts_with("key:"),
                    _ => matches!(dimension.as_str(), "system" | "source" | "milestone") || dimension.starts_with("key:"),
                };
                let named = dimension.split_once(':').is_none_or(|(_, name)| !name.is_empty());
                if !allowed || !named {
                    return Err(at(&format!(
                        "cannot group by {dimension:?}: ratio takes system or key:<kind>; latency, count and rate take system, source, milestone or key:<kind>; overdue takes milestone or key:<kind>; error_rate takes system or attribute:<name>"
                    )));
                }
            }
            for (name, value) in rule.labels.iter().chain(&rule.annotations) {
                if name.is_empty() || value.matches("{{").count() != value.matches("}}").count() {
                    return Err(at(&format!("label or annotation {name:?} has an unclosed {{{{ }}}}")));
                }
            }
        }
        Ok(file)
    }
}

/// Durations written as `15s`, `5m`, `1h`, `2d`.
mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&humantime::format_duration(*duration).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text).map_err(|err| serde::de::Error::custom(format!("{text:?} is not a duration like 30s, 15m or 1h: {err}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
interval: 5s
rules:
  - name: order_acceptance
    sli: { kind: ratio, numerator: order.accepted, denominator: order.captured }
    window: 1h
    below: 0.95
    for: 5m
    min_samples: 20
    severity: critical
    group_by: [system]
    annotations: { summary: "acceptance {{ value }}" }
  - name: inventory_latency
    sli: { kind: latency, from: inventory.changed, to: inventory.published, key: sku, quantile: 0.95 }
    window: 15m
    above: 300
"#;

    #[test]
    fn a_documented_rules_file_parses() {
        let file = RulesFile::parse(GOOD, "rules.yaml").unwrap();
        assert_eq!(file.interval, Duration::from_secs(5));
        assert_eq!(file.rules[0].for_duration, Duration::from_secs(300));
        assert!(file.rules[0].breached(0.9) && !file.rules[0].breached(0.99));
        assert!(matches!(file.rules[1].sli, Sli::Latency { quantile, .. } if quantile == 0.95));
    }

    #[test]
    fn the_example_rules_file_validates() {
        let file = RulesFile::parse(include_str!("../../deploy/alert-rules.yaml"), "deploy/alert-rules.yaml").unwrap();
        assert_eq!(file.rules.len(), 5);
    }

    #[test]
    fn mistakes_name_the_line_or_the_rule_and_setting() {
        let typo = GOOD.replace("below: 0.95", "belwo: 0.95");
        let err = RulesFile::parse(&typo, "rules.yaml").unwrap_err();
        assert!(err.to_string().starts_with("rules.yaml: line 7 column 5: rules[0]: unknown field `belwo`"), "{err}");
        assert!(err.to_string().contains("belwo"), "{err}");

        let no_threshold = GOOD.replace("    below: 0.95\n", "");
        let err = RulesFile::parse(&no_threshold, "rules.yaml").unwrap_err();
        assert!(err.to_string().contains("rules[0] (order_acceptance): set a threshold"), "{err}");

        let bad_group = GOOD.replace("group_by: [system]", "group_by: [colour]");
        assert!(RulesFile::parse(&bad_group, "r").unwrap_err().to_string().contains("cannot group by \"colour\""));

        let bad_window = GOOD.replace("window: 1h", "window: soon");
        let err = RulesFile::parse(&bad_window, "r").unwrap_err();
        assert!(err.to_string().contains("not a duration"), "{err}");
    }
}
