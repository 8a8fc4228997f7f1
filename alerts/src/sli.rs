//! Every rule's SLI measured with a few SQL queries, one per source of
//! data, instead of one per rule.
//!
//! Rules that read the same source share one scan of it. The scan reads the
//! widest window any of them needs, tests each row against every rule's
//! conditions (its window, milestone, outcome...) as the bits of a mask,
//! and counts rows per distinct combination of mask and group dimensions.
//! Those counts are small, and each rule's value is summed from them here:
//! a count, a share of counts, or for latencies a quantile of a histogram
//! with logarithmic buckets (relative error under 1 %, see [`bucket_value`]).
//!
//! Business events are read through [`events`]: one row per record however
//! many copies a resent batch stored, found through the `by_milestone`
//! projection (ordered by milestone and source time) so a rule reads its
//! window, not the table. Windows are in business time (the records' source
//! time), except latency from source time, which counts by arrival.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use clickhouse::Row;
use serde::Deserialize;
use waybill_store::sql::quote_string;
use waybill_store::Store;

use crate::rules::{Rule, Sli};

/// One group's measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    /// Group labels, e.g. `system="erp"`.
    pub group: BTreeMap<String, String>,
    pub value: f64,
    pub samples: u64,
}

/// A latency of at most this many seconds falls into bucket 0.
const LATENCY_FLOOR_SECONDS: f64 = 0.001;
/// Ratio of consecutive latency bucket bounds: a bucket's representative
/// value is within 1 % of every latency in it.
const LATENCY_GAMMA: f64 = 1.02;
/// At most this many conditions share one scan (the bits of a UInt64).
const MAX_CONDITIONS: usize = 64;
const NOT_FAILED: &str = "NOT IN ('failed', 'rejected')";

/// Measures every rule for the window ending at `now_ns`; the results are
/// in the order of `rules`. A failed query fails only the rules that
/// shared it.
pub async fn measure_all(store: &Store, rules: &[Rule], now_ns: i64) -> Vec<Result<Vec<Measurement>, String>> {
    let mut results: Vec<Result<Vec<Measurement>, String>> = vec![Ok(Vec::new()); rules.len()];
    for scan in plan(rules, now_ns) {
        match store.fetch_all::<Counted>(&scan.sql()).await {
            Ok(rows) => {
                for member in &scan.members {
                    results[member.rule] = Ok(member.measure(&rules[member.rule], &rows));
                }
            }
            Err(err) => {
                for member in &scan.members {
                    results[member.rule] = Err(err.to_string());
                }
            }
        }
    }
    results
}

/// Measures one rule for the window ending at `now_ns`.
pub async fn measure(store: &Store, rule: &Rule, now_ns: i64) -> Result<Vec<Measurement>, String> {
    measure_all(store, std::slice::from_ref(rule), now_ns).await.pop().expect("one result per rule")
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

/// The scans that measure `rules` at `now_ns`.
pub fn plan(rules: &[Rule], now_ns: i64) -> Vec<Scan> {
    let mut scans: Vec<Scan> = Vec::new();
    for (index, rule) in rules.iter().enumerate() {
        let source = Source::of(rule);
        let fits = |scan: &&mut Scan| scan.source == source && scan.conditions.len() + 2 <= MAX_CONDITIONS;
        let scan = match scans.iter_mut().find(|s| fits(s)) {
            Some(scan) => scan,
            None => {
                scans.push(Scan::new(source, now_ns));
                scans.last_mut().expect("just pushed")
            }
        };
        scan.add(index, rule);
    }
    scans
}

/// What a scan reads; rules of one source share a scan.
#[derive(Debug, Clone, PartialEq)]
enum Source {
    /// `transactions FINAL`: ratio and overdue.
    Transactions,
    /// Business events by source time: count and rate.
    Events,
    /// Business events by arrival: latency from source time.
    Arrivals,
    /// `to` events paired with the latest `from` event of the same key.
    Pairs { from: String, to: String, key: String },
    /// Spans: error rate.
    Spans,
}

impl Source {
    fn of(rule: &Rule) -> Source {
        match &rule.sli {
            Sli::Ratio { .. } | Sli::Overdue { .. } => Source::Transactions,
            Sli::Count { .. } | Sli::Rate { .. } => Source::Events,
            Sli::Latency { key: None, .. } => Source::Arrivals,
            Sli::Latency { from, to, key: Some(key), .. } => Source::Pairs { from: from.clone(), to: to.clone(), key: key.clone() },
            Sli::ErrorRate { .. } => Source::Spans,
        }
    }

    /// A dimension of a row of this source. `milestone`: the ratio's
    /// denominator, whose system `system` means.
    fn dimension(&self, dimension: &str, milestone: Option<&str>) -> String {
        let key = |prefix: &str, kind: &str| format!("{prefix}KeyValues[indexOf({prefix}KeyKinds, {})]", quote_string(kind));
        match self {
            Source::Transactions => match (dimension.strip_prefix("key:"), milestone) {
                (Some(kind), _) => key("", kind),
                (None, Some(m)) => format!("MilestoneSystems[indexOf(MilestoneNames, {})]", quote_string(m)),
                (None, None) => "Systems[1]".to_owned(),
            },
            Source::Spans => match dimension.strip_prefix("attribute:") {
                Some(name) => format!("SpanAttributes[{}]", quote_string(name)),
                None => "ServiceName".to_owned(),
            },
            Source::Events | Source::Arrivals | Source::Pairs { .. } => {
                let prefix = if matches!(self, Source::Pairs { .. }) { "b." } else { "" };
                match dimension.strip_prefix("key:") {
                    Some(kind) => key(prefix, kind),
                    None => match dimension {
                        "system" => format!("{prefix}System"),
                        "source" => format!("{prefix}Source"),
                        _ => format!("{prefix}Milestone"),
                    },
                }
            }
        }
    }
}

/// One query measuring the rules that read one source.
#[derive(Debug)]
pub struct Scan {
    source: Source,
    now_ns: i64,
    /// Row conditions; condition `i` is bit `i` of a row's mask.
    conditions: Vec<String>,
    /// Group dimension expressions, the columns of `dims`.
    dimensions: Vec<String>,
    /// What to read: `OR`ed, each a range the source's sort order narrows.
    reads: Vec<String>,
    /// Pairs: the earliest source time of a `to` and of a `from` read.
    earliest_to_ns: i64,
    earliest_from_ns: i64,
    members: Vec<Member>,
}

/// How one rule's value comes from the scan's counts.
#[derive(Debug)]
struct Member {
    rule: usize,
    /// A row counts for the rule when it has all these bits...
    within: u64,
    /// ...and for the numerator of a share when it also has these.
    good: u64,
    dimensions: Vec<Dimension>,
    value: Value,
}

#[derive(Debug)]
enum Dimension {
    /// Column `i` of the scan's `dims`.
    Column(usize),
    /// Each of the transaction's overdue milestones (only this one, if given).
    OverdueMilestone(Option<String>),
}

#[derive(Debug)]
enum Value {
    Count,
    PerSecond(f64),
    Share,
    Quantile(f64),
}

/// A count of rows with one mask, group and latency bucket.
#[derive(Debug, Row, Deserialize)]
struct Counted {
    dims: Vec<String>,
    mask: u64,
    bucket: i32,
    overdue: Vec<String>,
    n: u64,
}

impl Scan {
    fn new(source: Source, now_ns: i64) -> Scan {
        Scan {
            source,
            now_ns,
            conditions: Vec::new(),
            dimensions: Vec::new(),
            reads: Vec::new(),
            earliest_to_ns: i64::MAX,
            earliest_from_ns: i64::MAX,
            members: Vec::new(),
        }
    }

    /// The bit of `condition`, added if new.
    fn bit(&mut self, condition: String) -> u64 {
        1 << position_or_push(&mut self.conditions, condition)
    }

    fn read(&mut self, range: String) {
        position_or_push(&mut self.reads, range);
    }

    fn add(&mut self, rule_index: usize, rule: &Rule) {
        let now = format!("fromUnixTimestamp64Nano({})", self.now_ns);
        let start_ns = self.now_ns.saturating_sub(nanos(rule.window));
        let start = format!("fromUnixTimestamp64Nano({start_ns})");
        let within;
        let (mut good, mut value) = (0, Value::Count);
        let mut milestone_of_system = None;
        let mut overdue_by_milestone = None;
        match &rule.sli {
            Sli::Ratio { numerator, denominator } => {
                let (num, den) = (quote_string(numerator), quote_string(denominator));
                self.read(format!(
                    "arrayExists((n, t) -> n = {den} AND t >= {start} AND t <= {now}, MilestoneNames, MilestoneTimes)"
                ));
                within = self.bit(format!(
                    "arrayExists((n, t, o) -> n = {den} AND t >= {start} AND t <= {now} AND o {NOT_FAILED}, MilestoneNames, MilestoneTimes, MilestoneOutcomes)"
                ));
                good = self.bit(format!("arrayExists((n, o) -> n = {num} AND o {NOT_FAILED}, MilestoneNames, MilestoneOutcomes)"));
                value = Value::Share;
                milestone_of_system = Some(denominator.as_str());
            }
            Sli::Overdue { milestone } => {
                self.read("State = 'stuck'".to_owned());
                if rule.group_by.iter().any(|d| d == "milestone") {
                    within = self.bit("State = 'stuck'".to_owned());
                    overdue_by_milestone = Some(milestone.clone());
                } else {
                    let filter = milestone.as_ref().map(|m| format!(" AND has(OverdueMilestones, {})", quote_string(m))).unwrap_or_default();
                    within = self.bit(format!("State = 'stuck'{filter}"));
                }
            }
            Sli::Count { milestone, outcome } | Sli::Rate { milestone, outcome } => {
                let milestone = quote_string(milestone);
                self.read(format!("Milestone = {milestone} AND SourceTime >= {start} AND SourceTime <= {now}"));
                let outcome = outcome.as_ref().map(|o| format!(" AND Outcome = {}", quote_string(o))).unwrap_or_default();
                within = self.bit(format!("Milestone = {milestone} AND SourceTime >= {start}{outcome}"));
                if matches!(rule.sli, Sli::Rate { .. }) {
                    value = Value::PerSecond(rule.window.as_secs_f64().max(0.001));
                }
            }
            Sli::Latency { to, key: None, quantile, .. } => {
                let to = quote_string(to);
                // Arrival lags source time by the latency measured; a day bounds the read.
                let arrived = format!("Milestone = {to} AND SourceTime >= {start} - toIntervalDay(1) AND Ingested >= {start}");
                self.read(format!("{arrived} AND Ingested <= {now}"));
                within = self.bit(arrived);
                value = Value::Quantile(*quantile);
            }
            Sli::Latency { key: Some(_), quantile, .. } => {
                // Each `to` in the window pairs with the latest `from` before
                // it, if that is at most one window earlier.
                let paired_from_ns = start_ns.saturating_sub(nanos(rule.window).max(1_000_000_000));
                self.earliest_to_ns = self.earliest_to_ns.min(start_ns);
                self.earliest_from_ns = self.earliest_from_ns.min(paired_from_ns);
                within = self.bit(format!("b.SourceTime >= {start} AND a.SourceTime >= fromUnixTimestamp64Nano({paired_from_ns})"));
                value = Value::Quantile(*quantile);
            }
            Sli::ErrorRate { span_kind } => {
                let kind = quote_string(span_kind.as_deref().unwrap_or("Client"));
                self.read(format!("SpanKind = {kind} AND Timestamp >= {start} AND Timestamp <= {now}"));
                within = self.bit(format!("SpanKind = {kind} AND Timestamp >= {start}"));
                good = self.bit("StatusCode = 'Error'".to_owned());
                value = Value::Share;
            }
        }
        let dimensions = rule
            .group_by
            .iter()
            .map(|d| match &overdue_by_milestone {
                Some(filter) if d == "milestone" => Dimension::OverdueMilestone(filter.clone()),
                _ => Dimension::Column(position_or_push(&mut self.dimensions, self.source.dimension(d, milestone_of_system))),
            })
            .collect();
        self.members.push(Member { rule: rule_index, within, good, dimensions, value });
    }

    /// The query: counts per mask, group dimensions, latency bucket and
    /// (for transactions) overdue milestones.
    pub fn sql(&self) -> String {
        let dims = format!("[{}]::Array(String)", self.dimensions.iter().map(|d| format!("toString({d})")).collect::<Vec<_>>().join(", "));
        let mask = self.conditions.iter().enumerate().map(|(i, c)| format!("(toUInt64({c}) * {})", 1u64 << i)).collect::<Vec<_>>().join(" + ");
        let reads = self.reads.iter().map(|r| format!("({r})")).collect::<Vec<_>>().join(" OR ");
        let now = format!("fromUnixTimestamp64Nano({})", self.now_ns);
        let (bucket, overdue, from) = match &self.source {
            Source::Transactions => ("0".to_owned(), "if(State = 'stuck', OverdueMilestones, [])".to_owned(), format!("transactions FINAL WHERE {reads}")),
            Source::Events => ("0".to_owned(), "[]".to_owned(), events(&reads)),
            Source::Arrivals => (
                latency_bucket("(toUnixTimestamp64Micro(Ingested) - toUnixTimestamp64Micro(SourceTime)) / 1e6"),
                "[]".to_owned(),
                events(&reads),
            ),
            Source::Pairs { from, to, key } => {
                let kind = quote_string(key);
                let read = |milestone: &str, start_ns: i64| {
                    events(&format!(
                        "Milestone = {} AND SourceTime >= fromUnixTimestamp64Nano({start_ns}) AND SourceTime <= {now} AND has(KeyKinds, {kind})",
                        quote_string(milestone)
                    ))
                };
                let (to_events, from_events) = (read(to, self.earliest_to_ns), read(from, self.earliest_from_ns));
                (
                    latency_bucket("(toUnixTimestamp64Nano(b.SourceTime) - toUnixTimestamp64Nano(a.SourceTime)) / 1e9"),
                    "[]".to_owned(),
                    format!(
                        "(SELECT *, KeyValues[indexOf(KeyKinds, {kind})] AS pair FROM {to_events}) AS b \
                         ASOF JOIN (SELECT KeyValues[indexOf(KeyKinds, {kind})] AS pair, SourceTime FROM {from_events}) AS a \
                         ON b.pair = a.pair AND b.SourceTime >= a.SourceTime"
                    ),
                )
            }
            Source::Spans => ("0".to_owned(), "[]".to_owned(), format!("otel_traces WHERE {reads}")),
        };
        format!(
            "SELECT dims, mask, bucket, overdue, count() AS n \
             FROM (SELECT {dims} AS dims, {mask} AS mask, toInt32({bucket}) AS bucket, {overdue}::Array(String) AS overdue FROM {from}) \
             WHERE mask != 0 GROUP BY dims, mask, bucket, overdue"
        )
    }
}

impl Member {
    fn measure(&self, rule: &Rule, rows: &[Counted]) -> Vec<Measurement> {
        #[derive(Default)]
        struct Tally {
            samples: u64,
            good: u64,
            histogram: BTreeMap<i32, u64>,
        }
        let mut groups: HashMap<Vec<String>, Tally> = HashMap::new();
        for row in rows.iter().filter(|r| r.mask & self.within == self.within) {
            let mut keys: Vec<Vec<String>> = vec![Vec::new()];
            for dimension in &self.dimensions {
                keys = match dimension {
                    Dimension::Column(i) => keys.into_iter().map(|mut k| {
                        k.push(row.dims.get(*i).cloned().unwrap_or_default());
                        k
                    }).collect(),
                    Dimension::OverdueMilestone(only) => {
                        let milestones = row.overdue.iter().filter(|m| only.as_ref().is_none_or(|o| o == *m));
                        milestones.flat_map(|m| keys.iter().cloned().map(move |mut k| {
                            k.push(m.clone());
                            k
                        })).collect()
                    }
                };
            }
            for key in keys {
                let tally = groups.entry(key).or_default();
                tally.samples += row.n;
                if self.good != 0 && row.mask & self.good == self.good {
                    tally.good += row.n;
                }
                if matches!(self.value, Value::Quantile(_)) {
                    *tally.histogram.entry(row.bucket).or_default() += row.n;
                }
            }
        }
        // An ungrouped count over an empty window is a value: zero.
        if groups.is_empty() && rule.group_by.is_empty() && matches!(self.value, Value::Count | Value::PerSecond(_)) {
            groups.insert(Vec::new(), Tally::default());
        }
        let names: Vec<String> = rule.group_by.iter().map(|d| label_name(d)).collect();
        let mut measurements: Vec<Measurement> = groups
            .into_iter()
            .map(|(key, tally)| {
                let value = match self.value {
                    Value::Count => tally.samples as f64,
                    Value::PerSecond(seconds) => tally.samples as f64 / seconds,
                    Value::Share if tally.samples == 0 => 0.0,
                    Value::Share => tally.good as f64 / tally.samples as f64,
                    Value::Quantile(q) => quantile(&tally.histogram, tally.samples, q),
                };
                Measurement { group: names.iter().cloned().zip(key).collect(), value, samples: tally.samples }
            })
            .collect();
        measurements.sort_by(|a, b| a.group.cmp(&b.group));
        measurements
    }
}

/// The business events matching `condition`, one row per record: copies
/// stored by a resent batch share the table's sorting key and are read
/// once. Only the columns of the `by_milestone` projection are read, so
/// ClickHouse can answer from it.
pub fn events(condition: &str) -> String {
    format!(
        "(SELECT TraceId, Record, SpanId, RecordIndex, SourceTime, Milestone, System, Outcome, KeyKinds, KeyValues, Source, Ingested \
         FROM biz_events WHERE {condition} LIMIT 1 BY TraceId, Record, SpanId, RecordIndex, Milestone, System)"
    )
}

/// SQL for the histogram bucket of a latency in seconds: 0 up to
/// [`LATENCY_FLOOR_SECONDS`] (and for negative latencies, from clocks that
/// disagree), then `b` for latencies in (floor·γ^(b-1), floor·γ^b].
fn latency_bucket(seconds: &str) -> String {
    format!(
        "if({seconds} <= {LATENCY_FLOOR_SECONDS}, 0, toInt32(ceil(log({seconds} / {LATENCY_FLOOR_SECONDS}) / log({LATENCY_GAMMA}))))"
    )
}

/// The latency bucket `b` stands for: the point within 1 % of both its
/// bounds (DDSketch's estimate).
pub fn bucket_value(bucket: i32) -> f64 {
    if bucket <= 0 {
        return 0.0;
    }
    LATENCY_FLOOR_SECONDS * 2.0 * LATENCY_GAMMA.powi(bucket) / (LATENCY_GAMMA + 1.0)
}

/// The `q` quantile (nearest rank) of `samples` values in `histogram`.
fn quantile(histogram: &BTreeMap<i32, u64>, samples: u64, q: f64) -> f64 {
    let rank = ((q * samples as f64).ceil() as u64).clamp(1, samples.max(1));
    let mut seen = 0;
    for (bucket, count) in histogram {
        seen += count;
        if seen >= rank {
            return bucket_value(*bucket);
        }
    }
    0.0
}

fn position_or_push(items: &mut Vec<String>, item: String) -> usize {
    match items.iter().position(|i| *i == item) {
        Some(position) => position,
        None => {
            items.push(item);
            items.len() - 1
        }
    }
}

fn nanos(duration: Duration) -> i64 {
    i64::try_from(duration.as_nanos()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_latency_is_reported_within_one_percent_of_itself() {
        for seconds in [0.0015, 0.02, 0.7, 3.0, 59.9, 300.0, 86_400.0] {
            let bucket = ((seconds / LATENCY_FLOOR_SECONDS).ln() / LATENCY_GAMMA.ln()).ceil() as i32;
            let reported = bucket_value(bucket);
            assert!((reported - seconds).abs() / seconds < 0.01, "{seconds} s reported as {reported} s");
        }
        assert_eq!(bucket_value(0), 0.0);
    }

    #[test]
    fn the_quantile_is_the_nearest_rank() {
        // 95 fast values in bucket 1, 5 slow ones in bucket 500.
        let histogram = BTreeMap::from([(1, 95), (500, 5)]);
        assert_eq!(quantile(&histogram, 100, 0.95), bucket_value(1));
        assert_eq!(quantile(&histogram, 100, 0.96), bucket_value(500));
        assert_eq!(quantile(&histogram, 100, 1.0), bucket_value(500));
        assert_eq!(quantile(&BTreeMap::new(), 0, 0.5), 0.0);
    }

    #[test]
    fn rules_of_one_source_share_a_scan_and_each_has_its_own_conditions() {
        let file = crate::rules::RulesFile::parse(
            "rules:
  - { name: a, sli: { kind: count, milestone: m1 }, window: 5m, above: 1 }
  - { name: b, sli: { kind: rate, milestone: m2, outcome: failed }, window: 1h, group_by: [system], above: 1 }
  - { name: c, sli: { kind: ratio, numerator: m2, denominator: m1 }, window: 1h, group_by: [system], below: 1 }
  - { name: d, sli: { kind: overdue }, window: 0s, group_by: [milestone], above: 1 }
  - { name: e, sli: { kind: count, milestone: m1 }, window: 5m, group_by: [system], above: 1 }
",
            "test",
        )
        .unwrap();
        let scans = plan(&file.rules, 1_000_000_000_000);
        assert_eq!(scans.len(), 2, "{scans:#?}");
        let events = scans.iter().find(|s| s.source == Source::Events).unwrap();
        assert_eq!(events.members.iter().map(|m| m.rule).collect::<Vec<_>>(), [0, 1, 4]);
        // Rules a and e share their condition; b has its own.
        assert_eq!(events.conditions.len(), 2);
        assert_eq!(events.members[0].within, events.members[2].within);
        assert_eq!(events.dimensions, ["System"]);
        let transactions = scans.iter().find(|s| s.source == Source::Transactions).unwrap();
        assert_eq!(transactions.members.len(), 2);
        assert!(matches!(transactions.members[1].dimensions[..], [Dimension::OverdueMilestone(None)]));
    }
}
