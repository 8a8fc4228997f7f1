//! `waybill lineage rebuild --since 7d`: after a rule change, re-extracts
//! business events from the stored spans and log records of the period and
//! recomputes all lineage from the business events.
//!
//! Steps: delete the period's business events; extract them again from
//! `otel_traces` / `otel_logs`, ten minutes of data at a time; empty the
//! derived tables (links, key index, transactions); resolve every trace
//! with business events. Events older than the period are kept as they
//! were extracted, and take part in the new lineage.

use std::time::Duration;

use waybill_store::{schema, LogRow, SpanRow, Store, StoreError};

use crate::config::LineageConfig;
use crate::extract::Extractor;
use crate::resolve::{now_ns, Resolved, Resolver};

/// Raw rows are read in windows this long, to bound memory.
const WINDOW: Duration = Duration::from_secs(600);

/// What a rebuild did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Rebuilt {
    pub spans: usize,
    pub logs: usize,
    pub events: usize,
    pub resolved: Resolved,
}

/// Progress of a rebuild, for the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Re-extracted up to this time (of `until`).
    Extracted { done_ns: i64, until_ns: i64, events: usize },
    /// Resolved this many of the traces with business events.
    Resolved { done: usize, total: usize },
}

pub async fn rebuild(store: &Store, config: &LineageConfig, since: Duration, mut progress: impl FnMut(Progress)) -> Result<Rebuilt, RebuildError> {
    let mut resolver = Resolver::new(store.clone(), config.clone()).map_err(RebuildError::Config)?;
    let extractor = Extractor::new(config);
    let until_ns = now_ns();
    let since_ns = until_ns - i64::try_from(since.as_nanos()).unwrap_or(i64::MAX).min(until_ns);
    let mut rebuilt = Rebuilt::default();

    // Synchronous, so the re-extracted rows below are not deleted with them.
    let target = store.target();
    store.execute(&target.delete_where(&schema::BIZ_EVENTS, &format!("Time >= fromUnixTimestamp64Nano({since_ns})"))).await?;
    // The links of the deleted events go too: refilled from what is left,
    // then by the view as the period is extracted again.
    store.execute(&target.truncate(&schema::BIZ_TRACE_LINKS)).await?;
    store
        .execute("INSERT INTO biz_trace_links SELECT arrayJoin(LinkedTraceIds), TraceId FROM biz_events WHERE notEmpty(LinkedTraceIds)")
        .await?;
    let mut from = since_ns;
    while from < until_ns {
        let to = (from + WINDOW.as_nanos() as i64).min(until_ns);
        let window = format!("Timestamp >= fromUnixTimestamp64Nano({from}) AND Timestamp < fromUnixTimestamp64Nano({to})");
        let spans: Vec<SpanRow> = store.fetch_all(&format!("SELECT {} FROM otel_traces WHERE {window}", SpanRow::COLUMNS)).await?;
        let logs: Vec<LogRow> = store.fetch_all(&format!("SELECT {} FROM otel_logs WHERE {window}", LogRow::COLUMNS)).await?;
        let mut events = extractor.spans(&spans);
        events.extend(extractor.logs(&logs));
        store.insert("biz_events", &events).await?;
        rebuilt.spans += spans.len();
        rebuilt.logs += logs.len();
        rebuilt.events += events.len();
        progress(Progress::Extracted { done_ns: to, until_ns, events: rebuilt.events });
        from = to;
    }

    for table in schema::LINEAGE_DERIVED_TABLES {
        store.execute(&target.truncate(table)).await?;
    }
    resolver.mark_rewritten().await?;
    let traces: Vec<String> = store.fetch_all("SELECT DISTINCT TraceId FROM biz_events ORDER BY TraceId").await?;
    let started_us = now_ns() / 1000;
    rebuilt.resolved = resolver.resolve_in_chunks(traces, |done, total, _| progress(Progress::Resolved { done, total })).await?;
    // The service need not catch up on what was just resolved.
    resolver.save_progress(started_us).await?;
    Ok(rebuilt)
}

#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("the lineage config is invalid: {0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}
