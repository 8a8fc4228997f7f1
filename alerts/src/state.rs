//! One alert per rule and group, moving `inactive → pending → firing →
//! resolved` as its SLI crosses the threshold for the rule's `for`.

use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Inactive,
    Pending,
    Firing,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Inactive => "inactive",
            Phase::Pending => "pending",
            Phase::Firing => "firing",
        }
    }

    pub fn parse(text: &str) -> Phase {
        match text {
            "pending" => Phase::Pending,
            "firing" => Phase::Firing,
            _ => Phase::Inactive,
        }
    }
}

/// What an observation changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The threshold is crossed; waiting out `for`.
    Pending,
    Firing,
    /// A firing alert no longer crosses the threshold.
    Resolved,
    /// A pending alert stopped crossing the threshold before it fired.
    Cleared,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Pending => "pending",
            Change::Firing => "firing",
            Change::Resolved => "resolved",
            Change::Cleared => "cleared",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub rule: String,
    /// The group's labels rendered `a=x,b=y`; empty for an ungrouped rule.
    pub group_key: String,
    /// Group labels only (rule labels and severity are added on delivery).
    pub group: BTreeMap<String, String>,
    pub phase: Phase,
    /// When the current phase began (nanoseconds since the epoch).
    pub since_ns: i64,
    /// When it last began firing; 0 if never.
    pub fired_at_ns: i64,
    /// When receivers were last told it fires; 0 if never.
    pub last_notified_ns: i64,
    pub value: f64,
    pub samples: u64,
}

impl Alert {
    pub fn new(rule: &str, group: BTreeMap<String, String>) -> Alert {
        Alert {
            rule: rule.to_owned(),
            group_key: group_key(&group),
            group,
            phase: Phase::Inactive,
            since_ns: 0,
            fired_at_ns: 0,
            last_notified_ns: 0,
            value: 0.0,
            samples: 0,
        }
    }

    /// Takes one evaluation: whether the threshold is crossed now (with
    /// enough samples), the value, and the rule's `for`.
    pub fn observe(&mut self, breached: bool, value: f64, samples: u64, for_ns: i64, now_ns: i64) -> Option<Change> {
        self.value = value;
        self.samples = samples;
        let change = match (self.phase, breached) {
            (Phase::Inactive, true) if for_ns <= 0 => Some(Change::Firing),
            (Phase::Inactive, true) => Some(Change::Pending),
            (Phase::Pending, true) if now_ns - self.since_ns >= for_ns => Some(Change::Firing),
            (Phase::Pending, false) => Some(Change::Cleared),
            (Phase::Firing, false) => Some(Change::Resolved),
            _ => None,
        };
        match change {
            Some(Change::Pending) => self.enter(Phase::Pending, now_ns),
            Some(Change::Firing) => {
                self.enter(Phase::Firing, now_ns);
                self.fired_at_ns = now_ns;
            }
            Some(Change::Resolved | Change::Cleared) => self.enter(Phase::Inactive, now_ns),
            None => {}
        }
        change
    }

    fn enter(&mut self, phase: Phase, now_ns: i64) {
        self.phase = phase;
        self.since_ns = now_ns;
    }
}

/// `a=x,b=y` in label order, with `\\`, `,` and `=` in values escaped so
/// two groups never share a key.
pub fn group_key(group: &BTreeMap<String, String>) -> String {
    let escape = |v: &str| v.replace('\\', "\\\\").replace(',', "\\,").replace('=', "\\=");
    group.iter().map(|(k, v)| format!("{k}={}", escape(v))).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn an_alert_fires_only_after_crossing_for_its_whole_for_duration() {
        let mut alert = Alert::new("r", BTreeMap::new());
        assert_eq!(alert.observe(true, 1.0, 10, 60 * S, 0), Some(Change::Pending));
        assert_eq!(alert.observe(true, 1.0, 10, 60 * S, 30 * S), None);
        assert_eq!(alert.observe(true, 1.0, 10, 60 * S, 60 * S), Some(Change::Firing));
        assert_eq!((alert.phase, alert.fired_at_ns), (Phase::Firing, 60 * S));
        assert_eq!(alert.observe(true, 1.0, 10, 60 * S, 90 * S), None);
        assert_eq!(alert.observe(false, 0.0, 10, 60 * S, 120 * S), Some(Change::Resolved));
        assert_eq!(alert.phase, Phase::Inactive);
    }

    #[test]
    fn a_pending_alert_that_recovers_never_fires() {
        let mut alert = Alert::new("r", BTreeMap::new());
        alert.observe(true, 1.0, 10, 60 * S, 0);
        assert_eq!(alert.observe(false, 0.0, 10, 60 * S, 10 * S), Some(Change::Cleared));
        assert_eq!(alert.observe(true, 1.0, 10, 60 * S, 20 * S), Some(Change::Pending));
        assert_eq!(alert.since_ns, 20 * S, "for counts again from the new crossing");
    }

    #[test]
    fn without_for_an_alert_fires_at_once() {
        let mut alert = Alert::new("r", BTreeMap::from([("system".to_string(), "erp".to_string())]));
        assert_eq!(alert.observe(true, 3.0, 3, 0, 5), Some(Change::Firing));
        assert_eq!(alert.group_key, "system=erp");
        let tricky = |v: &str| group_key(&BTreeMap::from([("a".to_string(), v.to_string()), ("b".to_string(), "x".to_string())]));
        assert_ne!(tricky("1,b=x"), group_key(&BTreeMap::from([("a".to_string(), "1".to_string()), ("b".to_string(), "x,b=x".to_string())])));
        assert_eq!(tricky("1,b=x"), r"a=1\,b\=x,b=x");
    }
}
