//! Every table Waybill creates, written once and rendered for one node
//! (`MergeTree`) or a cluster (`Replicated*MergeTree` local tables plus
//! `Distributed` tables, all `ON CLUSTER`).
//!
//! `otel_traces` and `otel_logs` follow the OpenTelemetry Collector's
//! ClickHouse exporter (exporter/clickhouseexporter/internal/sqltemplates)
//! column for column, so Grafana's ClickHouse data source reads them unchanged.

use crate::sql::quote_identifier;

/// Where and how the schema is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaTarget {
    pub database: String,
    /// Cluster name from the server's `remote_servers`; `None` for one node.
    pub cluster: Option<String>,
    pub retention_days: u32,
}

/// MergeTree family member a table is built on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    MergeTree,
    AggregatingMergeTree,
    /// ReplacingMergeTree with the given version column.
    ReplacingMergeTree(&'static str),
    /// ReplacingMergeTree without a version: rows equal in the sorting key
    /// are one row.
    Deduplicating,
}

/// One table, engine-agnostic.
#[derive(Debug, Clone, Copy)]
pub struct TableDef {
    pub name: &'static str,
    /// The column and index list, without the surrounding parentheses.
    pub columns: &'static str,
    pub engine: EngineKind,
    /// PARTITION BY / PRIMARY KEY / ORDER BY clauses.
    pub keys: &'static str,
    /// Expression that retention counts from; `None` keeps rows forever.
    pub ttl_from: Option<&'static str>,
    pub settings: &'static str,
    /// Expression that spreads rows over shards in a cluster.
    pub shard_key: &'static str,
}

pub const OTEL_TRACES: TableDef = TableDef {
    name: "otel_traces",
    columns: "
    Timestamp DateTime64(9) CODEC(Delta(8), ZSTD(1)),
    TraceId String CODEC(ZSTD(1)),
    SpanId String CODEC(ZSTD(1)),
    ParentSpanId String CODEC(ZSTD(1)),
    TraceState String CODEC(ZSTD(1)),
    SpanName LowCardinality(String) CODEC(ZSTD(1)),
    SpanKind LowCardinality(String) CODEC(ZSTD(1)),
    ServiceName LowCardinality(String) CODEC(ZSTD(1)),
    ResourceAttributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    ScopeName String CODEC(ZSTD(1)),
    ScopeVersion String CODEC(ZSTD(1)),
    SpanAttributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    Duration UInt64 CODEC(T64, ZSTD(1)),
    StatusCode LowCardinality(String) CODEC(ZSTD(1)),
    StatusMessage String CODEC(ZSTD(1)),
    Events Nested (
        Timestamp DateTime64(9),
        Name LowCardinality(String),
        Attributes Map(LowCardinality(String), String)
    ) CODEC(ZSTD(1)),
    Links Nested (
        TraceId String,
        SpanId String,
        TraceState String,
        Attributes Map(LowCardinality(String), String)
    ) CODEC(ZSTD(1)),
    INDEX idx_trace_id TraceId TYPE bloom_filter(0.001) GRANULARITY 1,
    INDEX idx_res_attr_key mapKeys(ResourceAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_res_attr_value mapValues(ResourceAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_span_attr_key mapKeys(SpanAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_span_attr_value mapValues(SpanAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_duration Duration TYPE minmax GRANULARITY 1,
    INDEX idx_lower_span_name lower(SpanName) TYPE tokenbf_v1(32768, 3, 0) GRANULARITY 8",
    engine: EngineKind::MergeTree,
    keys: "PARTITION BY toDate(Timestamp)
PRIMARY KEY (ServiceName, SpanName, toDateTime(Timestamp))
ORDER BY (ServiceName, SpanName, toDateTime(Timestamp), Timestamp)",
    ttl_from: Some("toDateTime(Timestamp)"),
    settings: "index_granularity = 8192, ttl_only_drop_parts = 1",
    shard_key: "cityHash64(TraceId)",
};

/// Trace id → first and last timestamp, kept by a materialized view; Grafana
/// uses it to narrow trace lookups to a time range.
pub const OTEL_TRACES_TRACE_ID_TS: TableDef = TableDef {
    name: "otel_traces_trace_id_ts",
    columns: "
    TraceId String CODEC(ZSTD(1)),
    Start SimpleAggregateFunction(min, DateTime) CODEC(ZSTD(1)),
    End SimpleAggregateFunction(max, DateTime) CODEC(ZSTD(1))",
    engine: EngineKind::AggregatingMergeTree,
    keys: "PARTITION BY toStartOfWeek(Start)
ORDER BY (TraceId)",
    ttl_from: Some("toDateTime(Start)"),
    settings: "index_granularity = 8192, ttl_only_drop_parts = 1",
    shard_key: "cityHash64(TraceId)",
};

pub const OTEL_LOGS: TableDef = TableDef {
    name: "otel_logs",
    columns: "
    Timestamp DateTime64(9) CODEC(Delta(8), ZSTD(1)),
    TimestampTime DateTime DEFAULT toDateTime(Timestamp),
    TraceId String CODEC(ZSTD(1)),
    SpanId String CODEC(ZSTD(1)),
    TraceFlags UInt8,
    SeverityText LowCardinality(String) CODEC(ZSTD(1)),
    SeverityNumber UInt8,
    ServiceName LowCardinality(String) CODEC(ZSTD(1)),
    Body String CODEC(ZSTD(1)),
    ResourceSchemaUrl LowCardinality(String) CODEC(ZSTD(1)),
    ResourceAttributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    ScopeSchemaUrl LowCardinality(String) CODEC(ZSTD(1)),
    ScopeName String CODEC(ZSTD(1)),
    ScopeVersion LowCardinality(String) CODEC(ZSTD(1)),
    ScopeAttributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    LogAttributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    INDEX idx_trace_id TraceId TYPE bloom_filter(0.001) GRANULARITY 1,
    INDEX idx_res_attr_key mapKeys(ResourceAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_res_attr_value mapValues(ResourceAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_scope_attr_key mapKeys(ScopeAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_scope_attr_value mapValues(ScopeAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_log_attr_key mapKeys(LogAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_log_attr_value mapValues(LogAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_body Body TYPE tokenbf_v1(32768, 3, 0) GRANULARITY 8",
    engine: EngineKind::MergeTree,
    keys: "PARTITION BY toDate(TimestampTime)
PRIMARY KEY (ServiceName, TimestampTime)
ORDER BY (ServiceName, TimestampTime, Timestamp)",
    ttl_from: Some("TimestampTime"),
    settings: "index_granularity = 8192, ttl_only_drop_parts = 1",
    shard_key: "cityHash64(TraceId)",
};

/// Which schema versions have been applied; one row per version, rows from
/// concurrent runs collapse by version.
pub const SCHEMA_MIGRATIONS: TableDef = TableDef {
    name: "waybill_schema_migrations",
    columns: "
    Version UInt32,
    Name String,
    AppliedAt DateTime64(3),
    AppliedBy String",
    engine: EngineKind::ReplacingMergeTree("AppliedAt"),
    keys: "ORDER BY Version",
    ttl_from: None,
    settings: "index_granularity = 8192",
    shard_key: "Version",
};

/// Business events: one row per span, span event or log record that
/// carries a business key or milestone, as the lineage mapping rules read
/// it; plus one presence row per trace and system, so a system that sent
/// nothing but plain spans still shows in its transaction. Rows of a resent
/// record collapse by the sorting key; readers dedup until merges do.
pub const BIZ_EVENTS: TableDef = TableDef {
    name: "biz_events",
    columns: "
    TraceId String CODEC(ZSTD(1)),
    Record LowCardinality(String),
    SpanId String CODEC(ZSTD(1)),
    RecordIndex UInt32,
    Time DateTime64(9) CODEC(Delta(8), ZSTD(1)),
    SourceTime DateTime64(9) CODEC(Delta(8), ZSTD(1)),
    Milestone LowCardinality(String),
    System LowCardinality(String),
    Outcome LowCardinality(String),
    KeyKinds Array(LowCardinality(String)),
    KeyValues Array(String) CODEC(ZSTD(1)),
    LinkedTraceIds Array(String) CODEC(ZSTD(1)),
    Source LowCardinality(String),
    Ingested DateTime64(6) DEFAULT now64(6),
    INDEX idx_linked LinkedTraceIds TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_ingested Ingested TYPE minmax GRANULARITY 1",
    engine: EngineKind::ReplacingMergeTree("Ingested"),
    keys: "PARTITION BY toYYYYMM(Time)
ORDER BY (TraceId, Record, SpanId, RecordIndex, Milestone, System)",
    ttl_from: None,
    settings: "index_granularity = 8192",
    shard_key: "cityHash64(TraceId)",
};

/// The key graph: an edge between two keys of different kinds that belong
/// together, stored in both directions (`Down` towards later kinds).
pub const BIZ_EDGES: TableDef = TableDef {
    name: "biz_edges",
    columns: "
    Kind LowCardinality(String),
    Value String CODEC(ZSTD(1)),
    Down Bool,
    OtherKind LowCardinality(String),
    OtherValue String CODEC(ZSTD(1))",
    engine: EngineKind::Deduplicating,
    keys: "ORDER BY (Value, Kind, Down, OtherKind, OtherValue)",
    ttl_from: None,
    settings: "index_granularity = 8192",
    shard_key: "cityHash64(Value)",
};

/// Span links by the trace they point at, filled from `biz_events` by a
/// materialized view: which traces link to a given trace.
pub const BIZ_TRACE_LINKS: TableDef = TableDef {
    name: "biz_trace_links",
    columns: "
    LinkedTraceId String CODEC(ZSTD(1)),
    TraceId String CODEC(ZSTD(1))",
    engine: EngineKind::Deduplicating,
    keys: "ORDER BY (LinkedTraceId, TraceId)",
    ttl_from: None,
    settings: "index_granularity = 8192",
    shard_key: "cityHash64(LinkedTraceId)",
};

/// Which traces a key belongs to (its own records and those that inherit it).
pub const BIZ_KEY_TRACES: TableDef = TableDef {
    name: "biz_key_traces",
    columns: "
    Kind LowCardinality(String),
    Value String CODEC(ZSTD(1)),
    TraceId String CODEC(ZSTD(1))",
    engine: EngineKind::Deduplicating,
    keys: "ORDER BY (Value, Kind, TraceId)",
    ttl_from: None,
    settings: "index_granularity = 8192",
    shard_key: "cityHash64(Value)",
};

/// One row per business transaction (newest `Version` wins): its root key,
/// state, keys, systems and milestones as the resolver last computed them.
///
/// Read mostly one transaction at a time (the JSON API, the transaction
/// page), and the engine reads a whole granule of every column for one row:
/// granules of 1,024 rows and compressed blocks of at most 64 KiB make a
/// lookup by key a quarter cheaper than ClickHouse's 8,192 rows and 1 MiB,
/// while the pages' scans cost the same (BENCHMARKS.md, lineage section).
pub const TRANSACTIONS: TableDef = TableDef {
    name: "transactions",
    columns: "
    Id String,
    RootKind LowCardinality(String),
    RootValue String,
    State LowCardinality(String),
    KeyKinds Array(LowCardinality(String)),
    KeyValues Array(String),
    Systems Array(LowCardinality(String)),
    MilestoneNames Array(LowCardinality(String)),
    MilestoneSystems Array(LowCardinality(String)),
    MilestoneTimes Array(DateTime64(9)),
    MilestoneOutcomes Array(LowCardinality(String)),
    MilestoneTraceIds Array(String),
    MilestoneSpanIds Array(String),
    OverdueMilestones Array(LowCardinality(String)),
    OverdueDue Array(DateTime64(9)),
    NextDue DateTime64(9),
    Started DateTime64(9),
    Updated DateTime64(9),
    Version UInt64,
    INDEX idx_next_due NextDue TYPE minmax GRANULARITY 1,
    INDEX idx_state State TYPE set(8) GRANULARITY 1",
    engine: EngineKind::ReplacingMergeTree("Version"),
    keys: "ORDER BY Id",
    ttl_from: None,
    settings: TRANSACTIONS_SETTINGS,
    shard_key: "cityHash64(Id)",
};

/// The settings of [`TRANSACTIONS`]. `index_granularity` cannot be changed
/// on an existing table, so `Store::migrate` rebuilds a table created with
/// other settings (one node only).
pub const TRANSACTIONS_SETTINGS: &str = "index_granularity = 1024, min_compress_block_size = 8192, max_compress_block_size = 65536";

/// Key → transaction, for finding a transaction by any of its keys.
pub const TRANSACTION_KEYS: TableDef = TableDef {
    name: "transaction_keys",
    columns: "
    Value String,
    Kind LowCardinality(String),
    Id String",
    engine: EngineKind::Deduplicating,
    keys: "ORDER BY (Value, Kind, Id)",
    ttl_from: None,
    settings: "index_granularity = 8192",
    shard_key: "cityHash64(Value)",
};

/// How far the lineage resolver has got: every business event ingested
/// before `ResolvedBefore` has been resolved.
pub const LINEAGE_PROGRESS: TableDef = TableDef {
    name: "lineage_progress",
    columns: "
    Name LowCardinality(String),
    ResolvedBefore DateTime64(6),
    Version UInt64",
    engine: EngineKind::ReplacingMergeTree("Version"),
    keys: "ORDER BY Name",
    ttl_from: None,
    settings: "index_granularity = 8192",
    shard_key: "cityHash64(Name)",
};

/// The current state of every alert (rule and group), newest `Version` wins.
pub const ALERT_STATE: TableDef = TableDef {
    name: "alert_state",
    columns: "
    Rule LowCardinality(String),
    GroupKey String,
    Labels Map(LowCardinality(String), String),
    State LowCardinality(String),
    Since DateTime64(9),
    FiredAt DateTime64(9),
    LastNotified DateTime64(9),
    Value Float64,
    Samples UInt64,
    Version UInt64",
    engine: EngineKind::ReplacingMergeTree("Version"),
    keys: "ORDER BY (Rule, GroupKey)",
    ttl_from: None,
    settings: "index_granularity = 8192",
    shard_key: "cityHash64(Rule)",
};

/// Every alert transition and delivery outcome.
pub const ALERT_HISTORY: TableDef = TableDef {
    name: "alert_history",
    columns: "
    Time DateTime64(9),
    Rule LowCardinality(String),
    GroupKey String,
    Labels Map(LowCardinality(String), String),
    Event LowCardinality(String),
    Value Float64,
    Receiver LowCardinality(String),
    Detail String",
    engine: EngineKind::MergeTree,
    keys: "PARTITION BY toYYYYMM(Time)
ORDER BY (Rule, Time)",
    ttl_from: None,
    settings: "index_granularity = 8192",
    shard_key: "cityHash64(Rule)",
};

/// Silences: alerts whose labels match are not delivered until `EndsAt`.
pub const ALERT_SILENCES: TableDef = TableDef {
    name: "alert_silences",
    columns: "
    Id String,
    Matchers Map(String, String),
    StartsAt DateTime64(9),
    EndsAt DateTime64(9),
    CreatedBy String,
    Comment String,
    Version UInt64",
    engine: EngineKind::ReplacingMergeTree("Version"),
    keys: "ORDER BY Id",
    ttl_from: None,
    settings: "index_granularity = 8192",
    shard_key: "cityHash64(Id)",
};

/// The exception queue's audit trail: who acknowledged, assigned,
/// commented on, resolved or replayed a failed or stuck transaction, and
/// what a replay's receiver answered. Kept like `alert_history`.
pub const EXCEPTION_ACTIONS: TableDef = TableDef {
    name: "exception_actions",
    columns: "
    Time DateTime64(9),
    TransactionId String,
    Actor LowCardinality(String),
    Action LowCardinality(String),
    Assignee String,
    Comment String,
    ReplayKey String,
    Outcome String,
    Detail String",
    engine: EngineKind::MergeTree,
    keys: "ORDER BY (TransactionId, Time)",
    ttl_from: None,
    settings: "index_granularity = 8192",
    shard_key: "cityHash64(TransactionId)",
};

/// Tables the lineage resolver derives from `biz_events`; a rebuild empties them.
pub const LINEAGE_DERIVED_TABLES: &[TableDef] = &[BIZ_EDGES, BIZ_KEY_TRACES, TRANSACTIONS, TRANSACTION_KEYS, LINEAGE_PROGRESS];

impl SchemaTarget {
    fn db(&self) -> String {
        quote_identifier(&self.database)
    }

    fn on_cluster(&self) -> String {
        match &self.cluster {
            Some(cluster) => format!(" ON CLUSTER {}", quote_identifier(cluster)),
            None => String::new(),
        }
    }

    /// The table that holds the rows: the table itself on one node, the
    /// `<name>_local` replicated table on a cluster.
    pub fn storage_table(&self, table: &TableDef) -> String {
        match self.cluster {
            Some(_) => format!("{}_local", table.name),
            None => table.name.to_owned(),
        }
    }

    /// `TTL <from> + toIntervalDay(<days>)`, or nothing.
    pub fn ttl_expression(&self, table: &TableDef) -> Option<String> {
        table.ttl_from.map(|from| format!("{from} + toIntervalDay({})", self.retention_days))
    }

    pub fn create_database(&self) -> String {
        format!("CREATE DATABASE IF NOT EXISTS {}{}", self.db(), self.on_cluster())
    }

    /// The statements that create `table`: one on a single node; the
    /// replicated local table and the Distributed table over it on a cluster.
    pub fn create_table(&self, table: &TableDef) -> Vec<String> {
        let storage = self.storage_table(table);
        let mut statements = vec![self.create_storage_table(table, &storage)];
        if let Some(cluster) = &self.cluster {
            statements.push(format!(
                "CREATE TABLE IF NOT EXISTS {db}.{name}{on} AS {db}.{local} ENGINE = Distributed({cluster}, {database}, {local_lit}, {key})",
                db = self.db(),
                name = quote_identifier(table.name),
                on = self.on_cluster(),
                local = quote_identifier(&storage),
                cluster = crate::sql::quote_string(cluster),
                database = crate::sql::quote_string(&self.database),
                local_lit = crate::sql::quote_string(&storage),
                key = table.shard_key,
            ));
        }
        statements
    }

    /// The statement that creates the table holding `table`'s rows, named
    /// `storage`.
    pub fn create_storage_table(&self, table: &TableDef, storage: &str) -> String {
        let engine = match (&self.cluster, table.engine) {
            (None, EngineKind::MergeTree) => "MergeTree()".to_owned(),
            (None, EngineKind::AggregatingMergeTree) => "AggregatingMergeTree()".to_owned(),
            (None, EngineKind::Deduplicating) => "ReplacingMergeTree()".to_owned(),
            (None, EngineKind::ReplacingMergeTree(version)) => format!("ReplacingMergeTree({version})"),
            (Some(_), kind) => {
                // Macros {shard}, {replica}, {database}, {table} come from each
                // server's config (deploy/clickhouse-cluster/).
                let path = "'/clickhouse/tables/{shard}/{database}/{table}', '{replica}'";
                match kind {
                    EngineKind::MergeTree => format!("ReplicatedMergeTree({path})"),
                    EngineKind::AggregatingMergeTree => format!("ReplicatedAggregatingMergeTree({path})"),
                    EngineKind::Deduplicating => format!("ReplicatedReplacingMergeTree({path})"),
                    EngineKind::ReplacingMergeTree(version) => format!("ReplicatedReplacingMergeTree({path}, {version})"),
                }
            }
        };
        let ttl = self.ttl_expression(table).map(|e| format!("\nTTL {e}")).unwrap_or_default();
        format!(
            "CREATE TABLE IF NOT EXISTS {}.{}{} ({}\n) ENGINE = {engine}\n{}{ttl}\nSETTINGS {}",
            self.db(),
            quote_identifier(storage),
            self.on_cluster(),
            table.columns,
            table.keys,
            table.settings
        )
    }

    /// The materialized view that fills `otel_traces_trace_id_ts` from
    /// `otel_traces`, local table to local table on a cluster.
    pub fn create_trace_id_ts_view(&self) -> String {
        format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{view}{on} TO {db}.{target} AS SELECT
    TraceId,
    min(Timestamp) AS Start,
    max(Timestamp) AS End
FROM {db}.{source}
WHERE TraceId != ''
GROUP BY TraceId",
            db = self.db(),
            view = quote_identifier("otel_traces_trace_id_ts_mv"),
            on = self.on_cluster(),
            target = quote_identifier(&self.storage_table(&OTEL_TRACES_TRACE_ID_TS)),
            source = quote_identifier(&self.storage_table(&OTEL_TRACES)),
        )
    }

    /// The materialized view that fills `biz_trace_links` from the links of
    /// `biz_events`, local table to local table on a cluster.
    pub fn create_trace_links_view(&self) -> String {
        format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{view}{on} TO {db}.{target} AS SELECT
    arrayJoin(LinkedTraceIds) AS LinkedTraceId,
    TraceId
FROM {db}.{source}
WHERE notEmpty(LinkedTraceIds)",
            db = self.db(),
            view = quote_identifier("biz_trace_links_mv"),
            on = self.on_cluster(),
            target = quote_identifier(&self.storage_table(&BIZ_TRACE_LINKS)),
            source = quote_identifier(&self.storage_table(&BIZ_EVENTS)),
        )
    }

    /// A projection of `biz_events` ordered by milestone and source time,
    /// which alert rules read their windows from. A ReplacingMergeTree
    /// with a projection must say what merges do to it: rebuild it.
    pub fn add_milestone_projection(&self) -> Vec<String> {
        let table = format!("{}.{}{}", self.db(), quote_identifier(&self.storage_table(&BIZ_EVENTS)), self.on_cluster());
        vec![
            format!("ALTER TABLE {table} MODIFY SETTING deduplicate_merge_projection_mode = 'rebuild'"),
            format!(
                "ALTER TABLE {table} ADD PROJECTION IF NOT EXISTS by_milestone (SELECT TraceId, Record, SpanId, RecordIndex, SourceTime, Milestone, \
                 System, Outcome, KeyKinds, KeyValues, Source, Ingested ORDER BY Milestone, SourceTime)"
            ),
            format!("ALTER TABLE {table} MATERIALIZE PROJECTION by_milestone"),
        ]
    }

    /// Changes a table's retention to the configured number of days.
    pub fn modify_ttl(&self, table: &TableDef) -> Option<String> {
        let ttl = self.ttl_expression(table)?;
        Some(format!(
            "ALTER TABLE {}.{}{} MODIFY TTL {ttl}",
            self.db(),
            quote_identifier(&self.storage_table(table)),
            self.on_cluster()
        ))
    }
}

impl SchemaTarget {
    /// Adds a column if missing: to the table, and on a cluster to the
    /// local tables and then the Distributed table over them.
    pub fn add_column(&self, table: &TableDef, column: &str) -> Vec<String> {
        let mut tables = vec![self.storage_table(table)];
        if self.cluster.is_some() {
            tables.push(table.name.to_owned());
        }
        tables
            .into_iter()
            .map(|name| {
                format!(
                    "ALTER TABLE {}.{}{} ADD COLUMN IF NOT EXISTS {column}",
                    self.db(),
                    quote_identifier(&name),
                    self.on_cluster()
                )
            })
            .collect()
    }

    /// Empties a table (its local tables on a cluster).
    pub fn truncate(&self, table: &TableDef) -> String {
        format!("TRUNCATE TABLE IF EXISTS {}.{}{}", self.db(), quote_identifier(&self.storage_table(table)), self.on_cluster())
    }

    /// Deletes the rows matching `condition` and waits until they are gone
    /// (on every replica of a cluster).
    pub fn delete_where(&self, table: &TableDef, condition: &str) -> String {
        format!(
            "ALTER TABLE {}.{}{} DELETE WHERE {condition} SETTINGS mutations_sync = 2",
            self.db(),
            quote_identifier(&self.storage_table(table)),
            self.on_cluster()
        )
    }

    /// Keeps the tokens of the last inserts so a retried insert with the
    /// same `insert_deduplication_token` is skipped. Replicated tables do
    /// this by default (`replicated_deduplication_window`); plain MergeTree
    /// only with `non_replicated_deduplication_window` set.
    pub fn enable_insert_deduplication(&self, table: &TableDef) -> Option<String> {
        if self.cluster.is_some() {
            return None;
        }
        Some(format!(
            "ALTER TABLE {}.{} MODIFY SETTING non_replicated_deduplication_window = 10000",
            self.db(),
            quote_identifier(&self.storage_table(table))
        ))
    }

    /// Sets `settings` (`name = value`) on `table`.
    pub fn modify_settings(&self, table: &TableDef, settings: &[String]) -> String {
        format!(
            "ALTER TABLE {}.{}{} MODIFY SETTING {}",
            self.db(),
            quote_identifier(&self.storage_table(table)),
            self.on_cluster(),
            settings.join(", ")
        )
    }
}

/// Parts of a size the merge selector joins at once on the tables ingest
/// writes, instead of ClickHouse's 5. Ingest writes a part per table every
/// batch, several a second; with 5 the OTLP bench held 56-290 MB more
/// memory under overload at the same throughput (BENCHMARKS.md).
pub const MERGE_SELECTOR_BASE: u64 = 20;

/// Parts of fewer rows are written compact (one file for all columns)
/// on the tables ingest writes. ClickHouse's own threshold is 10 MiB
/// uncompressed, which a batch passes somewhere between 10,000 and 20,000
/// spans; each such part of `otel_traces` is then some 140 files, and
/// creating them took 27 % of the OTLP bench's service CPU, in the kernel
/// (16 % with compact parts; BENCHMARKS.md). Five full batches: merges
/// still write wide parts.
pub const WIDE_PART_MIN_ROWS: u64 = 100_000;

/// Settings of the tables ingest writes, applied by `Store::migrate` where
/// the server knows them (`merge_selector_base` since ClickHouse 24.11).
pub const INGEST_TABLE_SETTINGS: &[(&str, u64)] =
    &[("merge_selector_base", MERGE_SELECTOR_BASE), ("min_rows_for_wide_part", WIDE_PART_MIN_ROWS)];

/// The tables the ingest pipeline writes a part to with each batch.
pub const INGEST_TABLES: &[TableDef] = &[OTEL_TRACES, OTEL_LOGS, BIZ_EVENTS];

/// Tables whose retention follows `store.retention_days`.
pub const RETAINED_TABLES: &[TableDef] = &[OTEL_TRACES, OTEL_TRACES_TRACE_ID_TS, OTEL_LOGS];

#[cfg(test)]
mod tests {
    use super::*;

    fn single() -> SchemaTarget {
        SchemaTarget { database: "waybill".into(), cluster: None, retention_days: 14 }
    }

    fn cluster() -> SchemaTarget {
        SchemaTarget { database: "waybill".into(), cluster: Some("waybill_cluster".into()), retention_days: 14 }
    }

    #[test]
    fn single_node_tables_are_merge_tree_with_ttl() {
        let statements = single().create_table(&OTEL_TRACES);
        assert_eq!(statements.len(), 1);
        let ddl = &statements[0];
        assert!(ddl.starts_with("CREATE TABLE IF NOT EXISTS `waybill`.`otel_traces` ("), "{ddl}");
        assert!(ddl.contains("ENGINE = MergeTree()"), "{ddl}");
        assert!(ddl.contains("TTL toDateTime(Timestamp) + toIntervalDay(14)"), "{ddl}");
        assert!(!ddl.contains("ON CLUSTER"), "{ddl}");
    }

    #[test]
    fn cluster_tables_are_replicated_with_a_distributed_table_on_top() {
        let statements = cluster().create_table(&OTEL_LOGS);
        assert_eq!(statements.len(), 2);
        assert!(statements[0].contains("`otel_logs_local` ON CLUSTER `waybill_cluster`"), "{}", statements[0]);
        assert!(
            statements[0].contains("ReplicatedMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}')"),
            "{}",
            statements[0]
        );
        assert!(statements[1].contains(
            "`waybill`.`otel_logs` ON CLUSTER `waybill_cluster` AS `waybill`.`otel_logs_local` ENGINE = Distributed('waybill_cluster', 'waybill', 'otel_logs_local', cityHash64(TraceId))"
        ), "{}", statements[1]);
        let view = cluster().create_trace_id_ts_view();
        assert!(view.contains("TO `waybill`.`otel_traces_trace_id_ts_local`") && view.contains("FROM `waybill`.`otel_traces_local`"), "{view}");
        let ttl = cluster().modify_ttl(&OTEL_TRACES).unwrap();
        assert_eq!(ttl, "ALTER TABLE `waybill`.`otel_traces_local` ON CLUSTER `waybill_cluster` MODIFY TTL toDateTime(Timestamp) + toIntervalDay(14)");
    }

    #[test]
    fn migrations_table_keeps_no_ttl() {
        assert!(single().modify_ttl(&SCHEMA_MIGRATIONS).is_none());
        let ddl = &cluster().create_table(&SCHEMA_MIGRATIONS)[0];
        assert!(ddl.contains("ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}', AppliedAt)"), "{ddl}");
        assert!(!ddl.contains("TTL"), "{ddl}");
    }
}
