//! SLA alerts on business signals: the rules file ([`rules`]), SLI queries
//! over the store ([`sli`]), the alert state machine ([`state`]), the
//! evaluation loop ([`evaluator`]), delivery to Alertmanager and webhooks
//! ([`notify`]), silences ([`silence`]) and the API ([`api`]).

pub mod api;
pub mod config;
pub mod evaluator;
pub mod notify;
pub mod rules;
pub mod silence;
pub mod sli;
pub mod state;

pub use config::AlertsConfig;
pub use evaluator::Alerts;

/// RFC 3339 in UTC, e.g. `2026-11-27T03:37:22.123456789Z`.
pub fn rfc3339(ns: i64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns.max(0) as u64);
    humantime::format_rfc3339_nanos(time).to_string()
}

pub(crate) fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}
