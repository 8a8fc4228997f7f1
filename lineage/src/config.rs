//! The `lineage:` section of the config file: key kinds and their
//! downstream order, mapping rules, and journeys with deadlines.
//!
//! ```yaml
//! lineage:
//!   kinds: [order, sales_order, shipment, invoice]
//!   root_kind: order
//!   rules:
//!     - name: sap-sales-order
//!       match: { service: erp-gateway, name: "BAPI_SALESORDER_CREATEFROMDAT2", status: ok }
//!       keys: { sales_order: { attribute: sap.vbeln } }
//!       milestone: order.accepted
//!   journeys:
//!     order:
//!       - milestone: order.captured
//!       - milestone: order.accepted
//!         within: 15m
//! ```

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LineageConfig {
    /// Key kinds in downstream order: a transaction rooted at a key contains
    /// the keys linked to it of later kinds, and theirs, never earlier ones.
    /// Kinds not listed (`sku`, `partner`) are leaves: they attach to any
    /// listed kind and lead nowhere.
    pub kinds: Vec<String>,
    /// The kind a transaction is rooted at.
    pub root_kind: String,
    /// Applied in order to every span, span event and log record, before
    /// the `biz.*` attribute convention; the first rule to set a milestone,
    /// outcome, system or source time wins, keys add up.
    pub rules: Vec<Rule>,
    /// Expected milestones per root kind, in order, with deadlines.
    pub journeys: BTreeMap<String, Vec<JourneyStep>>,
    /// How often the resolver looks for new business events and deadlines.
    pub resolve_interval_ms: u64,
    /// Pending traces one resolve step takes. Larger steps resolve a
    /// backlog faster and hold more in memory while they run.
    pub max_traces_per_step: usize,
    /// Keys of the key graph the resolver remembers between steps (the
    /// most recently used), about 450 bytes each. More keys save queries
    /// when many transactions are in flight; 0 remembers nothing.
    pub remembered_keys: usize,
}

impl Default for LineageConfig {
    fn default() -> Self {
        let step = |milestone: &str, within: Option<&str>, after: Option<&str>| JourneyStep {
            milestone: milestone.to_owned(),
            within: within.map(str::to_owned),
            after: after.map(str::to_owned),
        };
        LineageConfig {
            kinds: ["order", "sales_order", "shipment", "invoice"].map(String::from).to_vec(),
            root_kind: "order".to_owned(),
            rules: Vec::new(),
            journeys: BTreeMap::from([(
                "order".to_owned(),
                vec![
                    step("order.captured", None, None),
                    step("order.accepted", Some("15m"), Some("order.captured")),
                    step("shipment.dispatched", Some("24h"), Some("order.accepted")),
                    step("invoice.posted", Some("48h"), Some("shipment.dispatched")),
                ],
            )]),
            resolve_interval_ms: 1000,
            max_traces_per_step: 5000,
            remembered_keys: 200_000,
        }
    }
}

/// One mapping rule: when a record matches, what it means.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Shown by `waybill lineage explain`.
    pub name: String,
    #[serde(rename = "match", default)]
    pub matches: Match,
    /// Key kind → where its value comes from.
    #[serde(default)]
    pub keys: BTreeMap<String, ValueFrom>,
    #[serde(default)]
    pub milestone: Option<ValueFrom>,
    /// `ok`, `rejected` or `failed`.
    #[serde(default)]
    pub outcome: Option<ValueFrom>,
    #[serde(default)]
    pub system: Option<ValueFrom>,
    /// Nanoseconds since the epoch, or an RFC 3339 time.
    #[serde(default)]
    pub source_time: Option<ValueFrom>,
}

/// Conditions a record must all meet; an empty match matches everything.
/// Text conditions are exact, or globs with `*`.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Match {
    pub record: Option<RecordKind>,
    /// The resource's `service.name`.
    pub service: Option<String>,
    /// The span's name, the span event's name, or the log record's body.
    pub name: Option<String>,
    /// The span's status (span events have their span's); logs have none.
    /// `ok` is any span that did not fail (status OK or unset), as
    /// instrumentations rarely set OK.
    pub status: Option<StatusMatch>,
    /// Instrumentation scope name.
    pub scope: Option<String>,
    /// Attribute → pattern; the attribute must be present (found as `ValueFrom::Attribute` finds it).
    pub attributes: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    Span,
    Event,
    Log,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StatusMatch {
    Ok,
    Error,
    Unset,
}

/// A literal (`milestone: order.accepted`) or an attribute's value
/// (`{ attribute: sap.vbeln }`), looked up on the record, then (for a span
/// event) its span, then the log record's scope, then the resource.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum ValueFrom {
    Literal(String),
    Attribute {
        attribute: String,
    },
}

/// One expected milestone; `within` (e.g. `15m`, `24h`, `2d`) is its
/// deadline after `after` (default: the previous step) was reached.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JourneyStep {
    pub milestone: String,
    #[serde(default)]
    pub within: Option<String>,
    #[serde(default)]
    pub after: Option<String>,
}

/// A journey step with its deadline resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub milestone: String,
    /// The earlier milestone and how long after it this one is due.
    pub deadline: Option<(String, Duration)>,
}

impl LineageConfig {
    /// Checks what serde cannot: known kinds, unique rule names, journeys
    /// whose deadlines refer to earlier steps, parseable durations.
    pub fn validate(&self) -> Result<(), String> {
        if self.kinds.is_empty() {
            return Err("lineage.kinds: list at least one key kind".into());
        }
        if self.max_traces_per_step == 0 {
            return Err("lineage.max_traces_per_step: must be at least 1".into());
        }
        let mut seen = HashSet::new();
        for kind in &self.kinds {
            if kind.is_empty() || !seen.insert(kind) {
                return Err(format!("lineage.kinds: {kind:?} is empty or listed twice"));
            }
        }
        if !self.kinds.contains(&self.root_kind) {
            return Err(format!("lineage.root_kind: {:?} is not one of lineage.kinds {:?}", self.root_kind, self.kinds));
        }
        let mut names = HashSet::new();
        for (i, rule) in self.rules.iter().enumerate() {
            if rule.name.is_empty() || !names.insert(&rule.name) {
                return Err(format!("lineage.rules[{i}]: give each rule a unique name (got {:?})", rule.name));
            }
            if rule.keys.is_empty() && rule.milestone.is_none() && rule.outcome.is_none() && rule.system.is_none() && rule.source_time.is_none() {
                return Err(format!("lineage.rules[{i}] ({}): the rule sets nothing (keys, milestone, outcome, system or source_time)", rule.name));
            }
            if rule.keys.keys().any(String::is_empty) {
                return Err(format!("lineage.rules[{i}] ({}): a key kind is empty", rule.name));
            }
        }
        for kind in self.journeys.keys() {
            if !self.kinds.contains(kind) {
                return Err(format!("lineage.journeys.{kind}: {kind:?} is not one of lineage.kinds"));
            }
            self.journey(kind)?;
        }
        Ok(())
    }

    /// The journey of transactions rooted at `kind`, deadlines resolved.
    pub fn journey(&self, kind: &str) -> Result<Vec<Step>, String> {
        let Some(steps) = self.journeys.get(kind) else {
            return Ok(Vec::new());
        };
        let mut resolved: Vec<Step> = Vec::new();
        for (i, step) in steps.iter().enumerate() {
            let at = || format!("lineage.journeys.{kind}[{i}] ({})", step.milestone);
            if resolved.iter().any(|s| s.milestone == step.milestone) {
                return Err(format!("{}: listed twice", at()));
            }
            let deadline = match (&step.within, &step.after) {
                (None, None) => None,
                (None, Some(_)) => return Err(format!("{}: `after` needs `within`", at())),
                (Some(within), after) => {
                    let duration = humantime::parse_duration(within)
                        .map_err(|err| format!("{}: within {within:?} is not a duration like 15m, 24h or 2d: {err}", at()))?;
                    let after = match after {
                        Some(after) => after.clone(),
                        None => resolved.last().map(|s| s.milestone.clone()).ok_or_else(|| format!("{}: the first step has no earlier one to be due after", at()))?,
                    };
                    if !resolved.iter().any(|s| s.milestone == after) {
                        return Err(format!("{}: after {after:?} must name an earlier step", at()));
                    }
                    Some((after, duration))
                }
            };
            resolved.push(Step { milestone: step.milestone.clone(), deadline });
        }
        Ok(resolved)
    }

    /// The position of `kind` downstream; kinds not listed come last.
    pub fn rank(&self, kind: &str) -> usize {
        self.kinds.iter().position(|k| k == kind).unwrap_or(self.kinds.len())
    }

    pub fn resolve_interval(&self) -> Duration {
        Duration::from_millis(self.resolve_interval_ms.max(10))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_journey_is_valid_and_resolves_its_deadlines() {
        let config = LineageConfig::default();
        config.validate().unwrap();
        let journey = config.journey("order").unwrap();
        assert_eq!(journey[1].deadline, Some(("order.captured".into(), Duration::from_secs(15 * 60))));
        assert_eq!(journey[3].deadline, Some(("shipment.dispatched".into(), Duration::from_secs(48 * 3600))));
    }

    #[test]
    fn rules_read_from_yaml_literals_and_attributes() {
        let yaml = r#"
name: sap
match: { service: erp-gateway, name: "BAPI_*", status: ok, record: span }
keys: { sales_order: { attribute: sap.vbeln } }
milestone: order.accepted
"#;
        let rule: Rule = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(rule.keys["sales_order"], ValueFrom::Attribute { attribute: "sap.vbeln".into() });
        assert_eq!(rule.milestone, Some(ValueFrom::Literal("order.accepted".into())));
        assert_eq!(rule.matches.status, Some(StatusMatch::Ok));
    }

    #[test]
    fn journeys_must_point_at_earlier_steps_with_real_durations() {
        let mut config = LineageConfig::default();
        config.journeys.get_mut("order").unwrap()[1].after = Some("invoice.posted".into());
        assert!(config.validate().unwrap_err().contains("must name an earlier step"));
        let mut config = LineageConfig::default();
        config.journeys.get_mut("order").unwrap()[1].within = Some("soon".into());
        assert!(config.validate().unwrap_err().contains("not a duration"));
        let mut config = LineageConfig::default();
        config.root_kind = "shipment_line".into();
        assert!(config.validate().unwrap_err().contains("lineage.root_kind"));
    }
}
