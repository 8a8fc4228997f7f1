//! A transaction's state from its milestones, its journey and the clock.

use crate::config::Step;

/// A milestone a transaction reached (or failed at).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Milestone {
    pub name: String,
    pub system: String,
    /// When the source system says it happened, nanoseconds since the epoch.
    pub time_ns: i64,
    /// `ok`, `rejected` or `failed`.
    pub outcome: String,
    pub trace_id: String,
    pub span_id: String,
}

impl Milestone {
    fn failed(&self) -> bool {
        matches!(self.outcome.as_str(), "failed" | "rejected")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    InFlight,
    Completed,
    Failed,
    Stuck,
}

impl State {
    pub const ALL: [State; 4] = [State::InFlight, State::Completed, State::Failed, State::Stuck];

    pub fn as_str(self) -> &'static str {
        match self {
            State::InFlight => "in_flight",
            State::Completed => "completed",
            State::Failed => "failed",
            State::Stuck => "stuck",
        }
    }

    pub fn parse(text: &str) -> Option<State> {
        State::ALL.into_iter().find(|state| state.as_str() == text)
    }
}

/// Where a transaction stands now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    pub state: State,
    /// Milestones past their deadline and not reached, with the deadline.
    pub overdue: Vec<(String, i64)>,
    /// The next deadline still ahead, which would change the state or its
    /// overdue milestones by time alone; 0: none.
    pub next_due_ns: i64,
}

/// The state of a transaction with `milestones` (any order) on `journey`
/// at `now_ns`:
/// - `failed`: the latest event of some milestone failed or was rejected
///   (a later successful retry of that milestone clears it);
/// - `completed`: every milestone of the journey was reached;
/// - `stuck`: a deadline passed without its milestone;
/// - `in_flight`: otherwise.
pub fn evaluate(journey: &[Step], milestones: &[Milestone], now_ns: i64) -> Evaluation {
    let reached = |name: &str| milestones.iter().filter(|m| m.name == name && !m.failed()).map(|m| m.time_ns).min();
    let mut latest: Vec<&Milestone> = Vec::new();
    for milestone in milestones {
        match latest.iter_mut().find(|m| m.name == milestone.name) {
            Some(current) if (milestone.time_ns, !milestone.failed()) > (current.time_ns, !current.failed()) => *current = milestone,
            Some(_) => {}
            None => latest.push(milestone),
        }
    }
    let failed = latest.iter().any(|m| m.failed());
    let completed = !journey.is_empty() && journey.iter().all(|step| reached(&step.milestone).is_some());

    let mut overdue = Vec::new();
    let mut next_due_ns = 0;
    for step in journey {
        let Some((after, within)) = &step.deadline else { continue };
        let (Some(start), None) = (reached(after), reached(&step.milestone)) else { continue };
        let due = start.saturating_add(i64::try_from(within.as_nanos()).unwrap_or(i64::MAX));
        if due <= now_ns {
            overdue.push((step.milestone.clone(), due));
        } else if next_due_ns == 0 || due < next_due_ns {
            next_due_ns = due;
        }
    }
    let state = if failed {
        State::Failed
    } else if completed {
        State::Completed
    } else if !overdue.is_empty() {
        State::Stuck
    } else {
        State::InFlight
    };
    // A stuck transaction can still pass later deadlines; a finished one cannot.
    if matches!(state, State::Completed | State::Failed) {
        next_due_ns = 0;
    }
    Evaluation { state, overdue, next_due_ns }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const MIN: i64 = 60_000_000_000;

    fn journey() -> Vec<Step> {
        vec![
            Step { milestone: "order.captured".into(), deadline: None },
            Step { milestone: "order.accepted".into(), deadline: Some(("order.captured".into(), Duration::from_secs(15 * 60))) },
            Step { milestone: "invoice.posted".into(), deadline: None },
        ]
    }

    fn at(name: &str, minute: i64, outcome: &str) -> Milestone {
        Milestone {
            name: name.into(),
            system: "s".into(),
            time_ns: minute * MIN,
            outcome: outcome.into(),
            trace_id: String::new(),
            span_id: String::new(),
        }
    }

    #[test]
    fn an_order_waits_for_acceptance_until_its_deadline_then_is_stuck() {
        let captured = [at("order.captured", 0, "ok")];
        let early = evaluate(&journey(), &captured, 5 * MIN);
        assert_eq!((early.state, early.next_due_ns), (State::InFlight, 15 * MIN));
        let late = evaluate(&journey(), &captured, 16 * MIN);
        assert_eq!(late.state, State::Stuck);
        assert_eq!(late.overdue, [("order.accepted".to_string(), 15 * MIN)]);
        assert_eq!(late.next_due_ns, 0);
    }

    #[test]
    fn reaching_every_milestone_completes_even_if_late() {
        let all = [at("invoice.posted", 50, "ok"), at("order.captured", 0, "ok"), at("order.accepted", 20, "ok")];
        assert_eq!(evaluate(&journey(), &all, 60 * MIN).state, State::Completed);
    }

    #[test]
    fn a_rejection_fails_and_a_later_success_of_the_same_milestone_clears_it() {
        let rejected = [at("order.captured", 0, "ok"), at("order.accepted", 1, "rejected")];
        assert_eq!(evaluate(&journey(), &rejected, 2 * MIN).state, State::Failed);
        let retried = [at("order.captured", 0, "ok"), at("order.accepted", 1, "rejected"), at("order.accepted", 3, "ok")];
        assert_eq!(evaluate(&journey(), &retried, 4 * MIN).state, State::InFlight);
        let failed_outside_the_journey = [at("order.captured", 0, "ok"), at("payment.authorized", 1, "failed")];
        assert_eq!(evaluate(&journey(), &failed_outside_the_journey, 2 * MIN).state, State::Failed);
    }
}
