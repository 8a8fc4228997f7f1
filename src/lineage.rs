//! `waybill lineage explain` and `waybill lineage rebuild`.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use waybill_collector::{ExportLogsServiceRequest, ExportTraceServiceRequest};
use waybill_lineage::api::rfc3339;
use waybill_lineage::rebuild::Progress;
use waybill_lineage::{Extractor, LineageConfig};

use crate::config::Config;
use crate::pipeline::{log_rows, span_rows};

/// Prints what each record of the OTLP/JSON file at `path` maps to.
pub fn explain(config: &LineageConfig, path: &Path, out: &mut impl Write) -> anyhow::Result<()> {
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let value: serde_json::Value =
        serde_json::from_slice(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let (spans, logs) = if value.get("resourceSpans").is_some() {
        let request: ExportTraceServiceRequest = serde_json::from_value(value)
            .with_context(|| format!("{} is not an OTLP/JSON traces request", path.display()))?;
        (span_rows(&request, ""), Vec::new())
    } else if value.get("resourceLogs").is_some() {
        let request: ExportLogsServiceRequest = serde_json::from_value(value)
            .with_context(|| format!("{} is not an OTLP/JSON logs request", path.display()))?;
        (Vec::new(), log_rows(&request, ""))
    } else {
        anyhow::bail!("{} holds neither resourceSpans nor resourceLogs: give an OTLP/JSON export request", path.display());
    };
    let explained = Extractor::new(config).explain(&spans, &logs);
    let events = explained.iter().filter(|e| e.event.is_some()).count();
    for record in &explained {
        write!(out, "{} {:?} ({})", record.record, record.name, record.service)?;
        match &record.event {
            None => writeln!(out, ": no business key or milestone")?,
            Some(event) => {
                writeln!(out)?;
                let keys: Vec<String> = event.key_kinds.iter().zip(&event.key_values).map(|(k, v)| format!("{k}={v}")).collect();
                writeln!(out, "  keys:        {}", if keys.is_empty() { "(none: inherits its trace's)".into() } else { keys.join(", ") })?;
                if !event.milestone.is_empty() {
                    writeln!(out, "  milestone:   {} ({})", event.milestone, event.outcome)?;
                }
                writeln!(out, "  system:      {}", event.system)?;
                writeln!(out, "  source time: {}", rfc3339(event.source_time_ns))?;
                if !event.linked_trace_ids.is_empty() {
                    writeln!(out, "  links to:    {}", event.linked_trace_ids.join(", "))?;
                }
            }
        }
        if !record.rules.is_empty() {
            writeln!(out, "  rules:       {}", record.rules.join(", "))?;
        }
    }
    writeln!(out, "{} records, {events} business events", explained.len())?;
    Ok(())
}

/// Re-extracts and re-resolves the lineage of the last `since`.
pub async fn rebuild(config: Config, since: Duration) -> anyhow::Result<()> {
    let store = waybill_store::Store::open(&config.store).await.context("cannot open the store")?;
    let result = async {
        store.migrate().await.context("migration failed")?;
        let mut last_line = std::time::Instant::now();
        let rebuilt = waybill_lineage::rebuild::rebuild(&store, &config.lineage, since, |progress| {
            // A line a second at most, and always the last one.
            let last = match progress {
                Progress::Extracted { done_ns, until_ns, .. } => done_ns >= until_ns,
                Progress::Resolved { done, total } => done >= total,
            };
            if !last && last_line.elapsed() < Duration::from_secs(1) {
                return;
            }
            last_line = std::time::Instant::now();
            match progress {
                Progress::Extracted { done_ns, events, .. } => {
                    eprintln!("re-extracted up to {}: {events} business events", rfc3339(done_ns));
                }
                Progress::Resolved { done, total } => eprintln!("resolved {done} of {total} traces"),
            }
        })
        .await?;
        println!(
            "rebuilt lineage of the last {}: {} spans and {} log records read, {} business events, {} transactions",
            humantime::format_duration(since),
            rebuilt.spans,
            rebuilt.logs,
            rebuilt.events,
            rebuilt.resolved.transactions
        );
        anyhow::Ok(())
    }
    .await;
    store.close().await;
    result
}
