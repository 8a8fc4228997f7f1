//! Business extraction: which spans, span events and log records are
//! business events, and what they say (keys, milestone, system, outcome,
//! source time). It reads the stored row types, so ingest, `lineage
//! rebuild` (from stored rows) and `lineage explain` (from a file) share it.

use std::collections::HashSet;

use waybill_store::{BizEventRow, LogRow, SpanRow};

use crate::config::{LineageConfig, Match, RecordKind, Rule, StatusMatch, ValueFrom};

/// Prefix of a trace id made up for a record without trace context: such a
/// record shares its keys with nothing. `~` is never part of a hex trace id.
pub const OWN_TRACE_PREFIX: char = '~';

/// One record, as the rules see it.
struct Record<'a> {
    kind: RecordKind,
    name: &'a str,
    service: &'a str,
    scope: &'a str,
    /// The span's status code as stored (`Ok`, `Error`, `Unset`); empty for logs.
    status: &'a str,
    /// Looked up in this order.
    attributes: [&'a [(String, String)]; 3],
    time_ns: i64,
    trace_id: String,
    span_id: &'a str,
    index: u32,
    links: &'a [String],
    source: &'a str,
}

/// What one record maps to, and which rules said so.
#[derive(Debug, Clone, PartialEq)]
pub struct Explained {
    /// `span`, `event` or `log`.
    pub record: &'static str,
    pub name: String,
    pub service: String,
    pub rules: Vec<String>,
    /// `None` when the record carries no business key or milestone.
    pub event: Option<BizEventRow>,
}

/// Applies the mapping rules and the `biz.*` convention.
pub struct Extractor {
    rules: Vec<Rule>,
}

impl Extractor {
    pub fn new(config: &LineageConfig) -> Self {
        Extractor { rules: config.rules.clone() }
    }

    /// Business events of `spans` (spans and their events), plus one
    /// presence row per trace and system for the spans that are not.
    pub fn spans(&self, spans: &[SpanRow]) -> Vec<BizEventRow> {
        let mut rows = Vec::new();
        let mut present = HashSet::new();
        for span in spans {
            for record in span_records(span) {
                match self.event(&record).0 {
                    Some(event) => rows.push(event),
                    None => self.presence(&record, &mut present, &mut rows),
                }
            }
        }
        rows
    }

    /// Business events of `logs`, plus presence rows as for spans.
    pub fn logs(&self, logs: &[LogRow]) -> Vec<BizEventRow> {
        let mut rows = Vec::new();
        let mut present = HashSet::new();
        for log in logs {
            let record = log_record(log);
            match self.event(&record).0 {
                Some(event) => rows.push(event),
                None => self.presence(&record, &mut present, &mut rows),
            }
        }
        rows
    }

    /// Every record of `spans` and `logs` with what it maps to.
    pub fn explain(&self, spans: &[SpanRow], logs: &[LogRow]) -> Vec<Explained> {
        let records = spans.iter().flat_map(span_records).chain(logs.iter().map(log_record));
        records
            .map(|record| {
                let (event, rules) = self.event(&record);
                Explained {
                    record: match record.kind {
                        RecordKind::Span => "span",
                        RecordKind::Event => "event",
                        RecordKind::Log => "log",
                    },
                    name: record.name.to_owned(),
                    service: record.service.to_owned(),
                    rules,
                    event,
                }
            })
            .collect()
    }

    fn presence(&self, record: &Record<'_>, present: &mut HashSet<(String, String)>, rows: &mut Vec<BizEventRow>) {
        if record.trace_id.starts_with(OWN_TRACE_PREFIX) || record.kind == RecordKind::Event {
            return;
        }
        let system = record.service.to_owned();
        if present.insert((record.trace_id.clone(), system.clone())) {
            rows.push(BizEventRow {
                trace_id: record.trace_id.clone(),
                record: "presence".into(),
                time_ns: record.time_ns,
                source_time_ns: record.time_ns,
                system,
                source: record.source.to_owned(),
                ..Default::default()
            });
        }
    }

    /// The record's business event, if it is one, and the rules that matched.
    fn event(&self, record: &Record<'_>) -> (Option<BizEventRow>, Vec<String>) {
        let mut keys: Vec<(String, String)> = Vec::new();
        let (mut milestone, mut outcome, mut system, mut source_time) = (None, None, None, None);
        let mut matched = Vec::new();
        for rule in self.rules.iter().filter(|rule| matches(&rule.matches, record)) {
            matched.push(rule.name.clone());
            for (kind, from) in &rule.keys {
                if let Some(value) = value_of(from, record) {
                    keys.push((kind.clone(), value.to_owned()));
                }
            }
            milestone = milestone.or_else(|| rule.milestone.as_ref().and_then(|f| value_of(f, record)));
            outcome = outcome.or_else(|| rule.outcome.as_ref().and_then(|f| value_of(f, record)));
            system = system.or_else(|| rule.system.as_ref().and_then(|f| value_of(f, record)));
            source_time = source_time.or_else(|| rule.source_time.as_ref().and_then(|f| value_of(f, record)));
        }
        // A record is a business event by what it says itself (rule keys,
        // its own biz.key.* or a milestone), not by keys it only inherits
        // from its span or resource: a span event without business
        // attributes is part of its span's event, not another one.
        let says_own = !keys.is_empty() || record.attributes[0].iter().any(|(name, _)| name.starts_with("biz.key."));
        // The convention: biz.key.<kind> anywhere the record's attributes are looked up.
        for attributes in record.attributes {
            for (name, value) in attributes {
                if let Some(kind) = name.strip_prefix("biz.key.") {
                    if !kind.is_empty() && !value.is_empty() {
                        keys.push((kind.to_owned(), value.clone()));
                    }
                }
            }
        }
        let mut seen = HashSet::new();
        keys.retain(|key| !key.1.is_empty() && seen.insert(key.clone()));
        // The convention's milestone, outcome and source time are the record's own.
        let own = record.attributes[0];
        let milestone = milestone.or_else(|| attribute(own, "biz.milestone")).unwrap_or_default().to_owned();
        if !says_own && milestone.is_empty() {
            return (None, matched);
        }
        let outcome = outcome
            .or_else(|| attribute(own, "biz.outcome"))
            .map(str::to_owned)
            .or_else(|| (record.status == "Error").then(|| "failed".to_owned()))
            .or_else(|| (!milestone.is_empty()).then(|| "ok".to_owned()))
            .unwrap_or_default();
        let system = system.or_else(|| lookup(record, "biz.system")).unwrap_or(record.service).to_owned();
        let source_time_ns = source_time
            .or_else(|| attribute(own, "biz.source_time_unix_nano"))
            .and_then(parse_time)
            .unwrap_or(record.time_ns);
        let (key_kinds, key_values) = keys.into_iter().unzip();
        let event = BizEventRow {
            trace_id: record.trace_id.clone(),
            record: match record.kind {
                RecordKind::Span => "span",
                RecordKind::Event => "event",
                RecordKind::Log => "log",
            }
            .into(),
            span_id: record.span_id.to_owned(),
            record_index: record.index,
            time_ns: record.time_ns,
            source_time_ns,
            milestone,
            system,
            outcome,
            key_kinds,
            key_values,
            linked_trace_ids: record.links.iter().filter(|id| !id.is_empty()).cloned().collect(),
            source: record.source.to_owned(),
        };
        (Some(event), matched)
    }
}

/// A span and each of its events as records; the events see the span's
/// attributes after their own.
fn span_records(span: &SpanRow) -> impl Iterator<Item = Record<'_>> {
    let service = span.service_name.as_str();
    let trace_id = trace_or_own(&span.trace_id, || format!("{}/{}/{}", span.service_name, span.span_id, span.timestamp_ns));
    let none: &[(String, String)] = &[];
    let this = Record {
        kind: RecordKind::Span,
        name: &span.span_name,
        service,
        scope: &span.scope_name,
        status: &span.status_code,
        attributes: [&span.span_attributes, none, &span.resource_attributes],
        time_ns: span.timestamp_ns,
        trace_id: trace_id.clone(),
        span_id: &span.span_id,
        index: 0,
        links: &span.links_trace_id,
        source: &span.source,
    };
    let events = span.events_name.iter().enumerate().map(move |(i, name)| Record {
        kind: RecordKind::Event,
        name,
        service,
        scope: &span.scope_name,
        status: &span.status_code,
        attributes: [span.events_attributes.get(i).map_or(none, Vec::as_slice), &span.span_attributes, &span.resource_attributes],
        time_ns: span.events_timestamp_ns.get(i).copied().unwrap_or(span.timestamp_ns),
        trace_id: trace_id.clone(),
        span_id: &span.span_id,
        index: i as u32 + 1,
        links: &[],
        source: &span.source,
    });
    std::iter::once(this).chain(events)
}

fn log_record(log: &LogRow) -> Record<'_> {
    Record {
        kind: RecordKind::Log,
        name: &log.body,
        service: &log.service_name,
        scope: &log.scope_name,
        status: "",
        attributes: [&log.log_attributes, &log.scope_attributes, &log.resource_attributes],
        time_ns: log.timestamp_ns,
        trace_id: trace_or_own(&log.trace_id, || format!("{}/{}/{}/{:?}", log.service_name, log.timestamp_ns, log.body, log.log_attributes)),
        span_id: &log.span_id,
        // Tells apart records of one span, the same on every read of the record.
        index: {
            let identity = format!("{}/{}/{:?}", log.timestamp_ns, log.body, log.log_attributes);
            cityhash_rs::cityhash_102_128(identity.as_bytes()) as u32
        },
        links: &[],
        source: &log.source,
    }
}

/// The trace id, or for a record without one an id of its own, the same
/// each time the same record is read (a resend, a rebuild).
fn trace_or_own(trace_id: &str, identity: impl FnOnce() -> String) -> String {
    if !trace_id.is_empty() {
        return trace_id.to_owned();
    }
    let identity = identity();
    format!("{OWN_TRACE_PREFIX}{:032x}", cityhash_rs::cityhash_102_128(identity.as_bytes()))
}

fn matches(when: &Match, record: &Record<'_>) -> bool {
    let text = |pattern: &Option<String>, value: &str| pattern.as_deref().is_none_or(|p| glob(p, value));
    when.record.is_none_or(|kind| kind == record.kind)
        && text(&when.service, record.service)
        && text(&when.name, record.name)
        && text(&when.scope, record.scope)
        && when.status.is_none_or(|status| match status {
            // Instrumentations rarely set OK: a span that did not fail succeeded.
            StatusMatch::Ok => record.status == "Ok" || record.status == "Unset",
            StatusMatch::Error => record.status == "Error",
            StatusMatch::Unset => record.status == "Unset",
        })
        && when.attributes.iter().all(|(name, pattern)| lookup(record, name).is_some_and(|value| glob(pattern, value)))
}

fn value_of<'a>(from: &'a ValueFrom, record: &Record<'a>) -> Option<&'a str> {
    match from {
        ValueFrom::Literal(value) => Some(value.as_str()),
        ValueFrom::Attribute { attribute } => lookup(record, attribute),
    }
    .filter(|value| !value.is_empty())
}

/// An attribute from the record, then its span or scope, then the resource.
fn lookup<'a>(record: &Record<'a>, name: &str) -> Option<&'a str> {
    record.attributes.iter().find_map(|attributes| attribute(attributes, name))
}

fn attribute<'a>(attributes: &'a [(String, String)], name: &str) -> Option<&'a str> {
    attributes.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Nanoseconds since the epoch, or an RFC 3339 time.
fn parse_time(text: &str) -> Option<i64> {
    if let Ok(ns) = text.trim().parse::<i64>() {
        return Some(ns);
    }
    let time = humantime::parse_rfc3339_weak(text.trim()).ok()?;
    let since = time.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(since.as_nanos()).ok()
}

/// `*` matches any run of characters; everything else matches itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let Some((first, rest)) = pattern.split_once('*') else {
        return pattern == text;
    };
    let Some(mut remaining) = text.strip_prefix(first) else {
        return false;
    };
    let mut parts: Vec<&str> = rest.split('*').collect();
    let last = parts.pop().unwrap_or("");
    for part in parts {
        match remaining.find(part) {
            Some(at) => remaining = &remaining[at + part.len()..],
            None => return false,
        }
    }
    remaining.len() >= last.len() && remaining.ends_with(last)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn span(name: &str, service: &str, attributes: &[(&str, &str)]) -> SpanRow {
        SpanRow {
            timestamp_ns: 1_000,
            trace_id: "t1".into(),
            span_id: "s1".into(),
            span_name: name.into(),
            service_name: service.into(),
            status_code: "Ok".into(),
            span_attributes: pairs(attributes),
            resource_attributes: pairs(&[("service.name", service)]),
            ..Default::default()
        }
    }

    #[test]
    fn the_convention_needs_no_rules() {
        let extractor = Extractor::new(&LineageConfig::default());
        let rows = extractor.spans(&[span(
            "POST /orders",
            "portal",
            &[("biz.key.order", "PO-1"), ("biz.milestone", "order.captured"), ("biz.source_time_unix_nano", "777")],
        )]);
        assert_eq!(rows.len(), 1);
        let row = &rows[0];
        assert_eq!((row.key_kinds.as_slice(), row.key_values.as_slice()), (&["order".to_string()][..], &["PO-1".to_string()][..]));
        assert_eq!((row.milestone.as_str(), row.outcome.as_str(), row.system.as_str()), ("order.captured", "ok", "portal"));
        assert_eq!(row.source_time_ns, 777);
    }

    #[test]
    fn a_rule_maps_foreign_attributes_and_span_names() {
        let mut config = LineageConfig::default();
        config.rules.push(Rule {
            name: "sap".into(),
            matches: Match {
                service: Some("erp-gateway".into()),
                name: Some("BAPI_SALESORDER_*".into()),
                status: Some(StatusMatch::Ok),
                ..Default::default()
            },
            keys: [("sales_order".to_string(), ValueFrom::Attribute { attribute: "sap.vbeln".into() })].into(),
            milestone: Some(ValueFrom::Literal("order.accepted".into())),
            ..Default::default()
        });
        let extractor = Extractor::new(&config);
        let explained = extractor.explain(&[span("BAPI_SALESORDER_CREATEFROMDAT2", "erp-gateway", &[("sap.vbeln", "0000901")])], &[]);
        assert_eq!(explained[0].rules, ["sap"]);
        let event = explained[0].event.as_ref().unwrap();
        assert_eq!(event.key_values, ["0000901"]);
        assert_eq!(event.milestone, "order.accepted");
        // Another service's span of the same name is not the rule's.
        assert!(extractor.explain(&[span("BAPI_SALESORDER_CREATEFROMDAT2", "other", &[("sap.vbeln", "1")])], &[])[0].event.is_none());
    }

    #[test]
    fn span_events_inherit_their_spans_keys_and_plain_spans_leave_presence() {
        let extractor = Extractor::new(&LineageConfig::default());
        let mut carrier = span("webhook", "carrier", &[("biz.key.shipment", "SH-1")]);
        carrier.events_name = vec!["delivered".into(), "http retry".into()];
        carrier.events_timestamp_ns = vec![5_000, 6_000];
        carrier.events_attributes = vec![pairs(&[("biz.milestone", "shipment.delivered")]), pairs(&[("attempt", "2")])];
        let mut plain = span("mq publish", "middleware", &[]);
        plain.span_id = "s2".into();
        let rows = extractor.spans(&[carrier, plain.clone(), plain]);
        let events: Vec<_> = rows.iter().filter(|r| r.record == "event").collect();
        assert_eq!(events.len(), 1, "an event that says nothing of its own is not a business event");
        let event = events[0];
        assert_eq!((event.milestone.as_str(), event.key_values.as_slice(), event.time_ns), ("shipment.delivered", &["SH-1".to_string()][..], 5_000));
        let presence: Vec<_> = rows.iter().filter(|r| r.record == "presence").collect();
        assert_eq!(presence.len(), 1, "one presence row per trace and system");
        assert_eq!(presence[0].system, "middleware");
    }

    #[test]
    fn error_status_fails_a_milestone_unless_the_record_says_otherwise() {
        let extractor = Extractor::new(&LineageConfig::default());
        let mut failed = span("post invoice", "billing", &[("biz.key.invoice", "INV-1"), ("biz.milestone", "invoice.posted")]);
        failed.status_code = "Error".into();
        assert_eq!(extractor.spans(&[failed.clone()])[0].outcome, "failed");
        failed.span_attributes.push(("biz.outcome".into(), "rejected".into()));
        assert_eq!(extractor.spans(&[failed])[0].outcome, "rejected");
    }

    #[test]
    fn logs_without_trace_context_get_a_trace_of_their_own() {
        let extractor = Extractor::new(&LineageConfig::default());
        let log = LogRow {
            timestamp_ns: 9,
            body: "shipment dispatched".into(),
            service_name: "wms".into(),
            log_attributes: pairs(&[("biz.key.shipment", "SH-9"), ("biz.milestone", "shipment.dispatched")]),
            ..Default::default()
        };
        let rows = extractor.logs(&[log]);
        assert!(rows[0].trace_id.starts_with(OWN_TRACE_PREFIX), "{}", rows[0].trace_id);
    }

    #[test]
    fn globs() {
        assert!(glob("BAPI_*", "BAPI_SALESORDER"));
        assert!(glob("*ORDER*", "BAPI_SALESORDER_CREATE"));
        assert!(glob("a*b*c", "abc"));
        assert!(!glob("a*b*c", "acb"));
        assert!(!glob("ab*ba", "aba"));
        assert!(glob("exact", "exact") && !glob("exact", "exactly"));
    }

    proptest! {
        #[test]
        fn a_star_matches_whatever_it_replaces(prefix in "[a-c]{0,4}", middle in "[a-c]{0,4}", suffix in "[a-c]{0,4}") {
            let text = format!("{prefix}{middle}{suffix}");
            let pattern = format!("{prefix}*{suffix}");
            prop_assert!(glob(&pattern, &text));
            prop_assert!(glob(&text, &text));
            prop_assert!(glob("*", &text));
        }
    }
}
