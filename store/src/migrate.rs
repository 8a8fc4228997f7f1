//! Versioned schema migrations, applied at start and by `waybill migrate`.
//!
//! Every statement is idempotent (`IF NOT EXISTS`), so two processes that
//! migrate at once converge on the same schema; each applied version is
//! recorded in `waybill_schema_migrations`, whose ReplacingMergeTree
//! collapses the duplicate rows such a race leaves. Retention is not a
//! migration: it follows the config on every run (`MODIFY TTL` when changed).

use clickhouse::Row;
use serde::{Deserialize, Serialize};

use crate::schema::{self, SchemaTarget, TableDef};
use crate::sql::{quote_identifier, quote_string};
use crate::{Store, StoreError};

/// One schema version: the statements that bring the previous one to it.
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub statements: fn(&SchemaTarget) -> Vec<String>,
}

/// Every migration, in order. Append; never edit a released one.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "OpenTelemetry traces and logs tables",
        statements: |target| {
            let mut statements = target.create_table(&schema::OTEL_TRACES);
            statements.extend(target.create_table(&schema::OTEL_TRACES_TRACE_ID_TS));
            statements.push(target.create_trace_id_ts_view());
            statements.extend(target.create_table(&schema::OTEL_LOGS));
            statements
        },
    },
    Migration {
        version: 2,
        name: "insert deduplication window for retried batches",
        statements: |target| {
            schema::RETAINED_TABLES.iter().filter_map(|table| target.enable_insert_deduplication(table)).collect()
        },
    },
    Migration {
        version: 3,
        name: "source system column on spans and log records",
        statements: |target| {
            [&schema::OTEL_TRACES, &schema::OTEL_LOGS]
                .into_iter()
                .flat_map(|table| target.add_column(table, "WaybillSource LowCardinality(String) CODEC(ZSTD(1))"))
                .collect()
        },
    },
    Migration {
        version: 4,
        name: "business lineage tables",
        statements: |target| {
            let mut statements = target.create_table(&schema::BIZ_EVENTS);
            statements.extend(target.enable_insert_deduplication(&schema::BIZ_EVENTS));
            for table in schema::LINEAGE_DERIVED_TABLES {
                statements.extend(target.create_table(table));
            }
            statements
        },
    },
    Migration {
        version: 5,
        name: "alert state, history and silences",
        statements: |target| {
            [&schema::ALERT_STATE, &schema::ALERT_HISTORY, &schema::ALERT_SILENCES]
                .into_iter()
                .flat_map(|table| target.create_table(table))
                .collect()
        },
    },
    Migration {
        version: 6,
        name: "span links by the trace they point at",
        statements: |target| {
            let mut statements = target.create_table(&schema::BIZ_TRACE_LINKS);
            statements.push(target.create_trace_links_view());
            // Links stored before the view existed.
            statements.push(format!(
                "INSERT INTO {db}.biz_trace_links SELECT arrayJoin(LinkedTraceIds), TraceId FROM {db}.biz_events WHERE notEmpty(LinkedTraceIds)",
                db = crate::sql::quote_identifier(&target.database)
            ));
            statements
        },
    },
    Migration {
        version: 7,
        name: "business events by milestone and source time, for alert rules",
        statements: |target| target.add_milestone_projection(),
    },
    Migration {
        version: 8,
        name: "exception queue audit trail",
        statements: |target| target.create_table(&schema::EXCEPTION_ACTIONS),
    },
];

/// The newest schema version this build knows.
pub fn latest_version() -> u32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// What a migration run did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// Versions applied by this run.
    pub applied: Vec<u32>,
    /// Tables whose TTL was changed to the configured retention.
    pub retention_changed: Vec<&'static str>,
    /// Tables copied into a table with their current settings.
    pub rebuilt: Vec<&'static str>,
    /// The schema version after the run.
    pub version: u32,
}

#[derive(Row, Serialize, Deserialize)]
struct MigrationRow {
    #[serde(rename = "Version")]
    version: u32,
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "AppliedAt")]
    applied_at_ms: i64,
    #[serde(rename = "AppliedBy")]
    applied_by: String,
}

impl Store {
    /// Brings the schema to [`latest_version`] and retention to the config.
    pub async fn migrate(&self) -> Result<MigrationReport, StoreError> {
        let target = self.target().clone();
        // The database may not exist yet: run that statement outside it.
        let outside = self.client().clone().with_database("default");
        let create_db = target.create_database();
        outside.query(&create_db).execute().await.map_err(StoreError::clickhouse("create database"))?;
        for statement in target.create_table(&schema::SCHEMA_MIGRATIONS) {
            self.execute(&statement).await?;
        }

        let applied: Vec<u32> = self
            .fetch_all(&format!("SELECT DISTINCT Version FROM {} ORDER BY Version", schema::SCHEMA_MIGRATIONS.name))
            .await?;
        let found = applied.last().copied().unwrap_or(0);
        if found > latest_version() {
            return Err(StoreError::SchemaTooNew { found, known: latest_version() });
        }

        let mut report = MigrationReport::default();
        for migration in MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
            tracing::info!(version = migration.version, name = migration.name, "applying schema migration");
            for statement in (migration.statements)(&target) {
                self.execute(&statement).await?;
            }
            let row = MigrationRow {
                version: migration.version,
                name: migration.name.to_owned(),
                applied_at_ms: now_ms(),
                applied_by: format!("waybill {} pid {}", env!("CARGO_PKG_VERSION"), std::process::id()),
            };
            self.insert(schema::SCHEMA_MIGRATIONS.name, &[row]).await?;
            report.applied.push(migration.version);
        }

        for table in schema::RETAINED_TABLES {
            if self.apply_retention(table).await? {
                report.retention_changed.push(table.name);
            }
        }
        self.tune_ingest_tables().await?;
        if self.rebuild_with_settings(&schema::TRANSACTIONS).await? {
            report.rebuilt.push(schema::TRANSACTIONS.name);
        }
        report.version = latest_version();
        Ok(report)
    }

    /// Sets [`schema::INGEST_TABLE_SETTINGS`] on the tables ingest writes
    /// where they differ; a setting the server does not know is left out.
    async fn tune_ingest_tables(&self) -> Result<(), StoreError> {
        let names: Vec<String> = schema::INGEST_TABLE_SETTINGS.iter().map(|(name, _)| quote_string(name)).collect();
        let known: Vec<String> =
            self.fetch_all(&format!("SELECT name FROM system.merge_tree_settings WHERE name IN ({})", names.join(", "))).await?;
        let target = self.target();
        for table in schema::INGEST_TABLES {
            let engine = self.engine_full(table).await?;
            let missing: Vec<String> = schema::INGEST_TABLE_SETTINGS
                .iter()
                .filter(|(name, _)| known.iter().any(|k| k == name))
                .map(|(name, value)| format!("{name} = {value}"))
                .filter(|setting| !has_setting(&engine, setting))
                .collect();
            if missing.is_empty() {
                continue;
            }
            tracing::info!(table = table.name, settings = %missing.join(", "), "tuning parts and merges");
            self.execute(&target.modify_settings(table, &missing)).await?;
        }
        Ok(())
    }

    /// Copies `table` into a new table with its current settings when the
    /// table was created with others that cannot be changed in place (such as
    /// `index_granularity`), then swaps the two atomically. Only tables the
    /// resolver rewrites are rebuilt this way: a write that lands in the old
    /// table during the copy is lost, so the service starts its resolver
    /// after migrating, and the resolver writes a transaction again whenever
    /// it changes. Each run copies into a table of its own name, so two
    /// processes that rebuild at once each swap in a complete copy with the
    /// current settings, and a run that stopped part way leaves a copy that
    /// the next run drops. On a cluster nothing is rebuilt: tables keep the
    /// settings they were made with.
    async fn rebuild_with_settings(&self, table: &TableDef) -> Result<bool, StoreError> {
        let target = self.target();
        if target.cluster.is_some() {
            return Ok(false);
        }
        let db = quote_identifier(&target.database);
        let live = quote_identifier(table.name);
        let copies = format!("{}_rebuilt_", table.name);
        let current = |engine: &[String]| table.settings.split(", ").all(|setting| has_setting(engine, setting));
        if current(&self.engine_full(table).await?) {
            let leftovers: Vec<String> = self
                .fetch_all(&format!(
                    "SELECT name FROM system.tables WHERE database = {} AND startsWith(name, {})",
                    quote_string(&target.database),
                    quote_string(&copies)
                ))
                .await?;
            for leftover in leftovers {
                tracing::info!(table = %leftover, "dropping the copy an earlier rebuild left");
                self.execute(&format!("DROP TABLE IF EXISTS {db}.{}", quote_identifier(&leftover))).await?;
            }
            return Ok(false);
        }
        let rows: Vec<u64> = self.fetch_all(&format!("SELECT count() FROM {db}.{live}")).await?;
        let rows = rows.first().copied().unwrap_or(0);
        tracing::info!(table = table.name, rows, settings = table.settings, "rebuilding the table with its current settings");
        let started = std::time::Instant::now();
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let copy_name = format!("{copies}{}_{nanos}", std::process::id());
        let copy = quote_identifier(&copy_name);
        self.execute(&target.create_storage_table(table, &copy_name)).await?;
        let swapped = async {
            self.execute(&format!("INSERT INTO {db}.{copy} SELECT * FROM {db}.{live}")).await?;
            // Needs an Atomic database, ClickHouse's default since 20.10.
            self.execute(&format!("EXCHANGE TABLES {db}.{live} AND {db}.{copy}")).await
        };
        if let Err(err) = swapped.await {
            // A retry makes a copy of its own: this one would only pile up.
            if let Err(drop_err) = self.execute(&format!("DROP TABLE IF EXISTS {db}.{copy}")).await {
                tracing::warn!(table = %copy_name, error = %drop_err, "cannot drop the unfinished copy");
            }
            return Err(err);
        }
        self.execute(&format!("DROP TABLE {db}.{copy}")).await?;
        tracing::info!(table = table.name, rows, seconds = started.elapsed().as_secs_f64(), "table rebuilt");
        Ok(true)
    }

    /// Sets `table`'s TTL to the configured retention when it differs.
    async fn apply_retention(&self, table: &TableDef) -> Result<bool, StoreError> {
        let target = self.target();
        let (Some(expected), Some(alter)) = (target.ttl_expression(table), target.modify_ttl(table)) else {
            return Ok(false);
        };
        if self.engine_full(table).await?.iter().all(|e| e.contains(&format!("TTL {expected}"))) {
            return Ok(false);
        }
        tracing::info!(table = table.name, days = target.retention_days, "changing retention");
        self.execute(&alter).await?;
        Ok(true)
    }

    /// `table`'s engine clause with its TTL and settings, as the server
    /// shows it.
    async fn engine_full(&self, table: &TableDef) -> Result<Vec<String>, StoreError> {
        let target = self.target();
        self.fetch_all(&format!(
            "SELECT engine_full FROM system.tables WHERE database = {} AND name = {}",
            quote_string(&target.database),
            quote_string(&target.storage_table(table))
        ))
        .await
    }

    /// The schema version recorded in the database (0 when none).
    pub async fn schema_version(&self) -> Result<u32, StoreError> {
        let versions: Vec<u32> = self
            .fetch_all(&format!("SELECT max(Version) FROM {}", schema::SCHEMA_MIGRATIONS.name))
            .await?;
        Ok(versions.first().copied().unwrap_or(0))
    }
}

/// Whether a table's engine clause (as `engine_full` reads it) holds
/// `setting`, written `name = value`.
fn has_setting(engine: &[String], setting: &str) -> bool {
    engine.iter().all(|e| e.contains(setting))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
