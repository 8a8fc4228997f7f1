//! SLA alerts on business signals: SLI queries on a schedule, the rule state
//! machine, Alertmanager and webhook notifiers. Not built yet: the alerts
//! issue fills this crate.
