//! The resolver: turns stored business events into the key graph and the
//! transactions table, as events arrive and as deadlines pass.
//!
//! For the traces it is told about it reads their events (and those of
//! traces they link to or are linked from), writes the links and the
//! key → trace index, finds the root keys upstream of every key touched,
//! and recomputes those transactions from their whole downstream closure.
//! Everything it writes is derived and idempotent, so reprocessing a trace
//! is harmless and `lineage rebuild` can recompute it all.
//!
//! Between steps it remembers the key graph it has read and written
//! (`known.rs`), so a step asks the store only about keys it has not
//! met. It must therefore be the only writer of the key graph's tables:
//! one resolver per store. A `lineage rebuild` marks the graph rewritten,
//! which makes a running resolver forget; on a cluster it remembers nothing
//! between steps.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use waybill_store::sql::quote_string;
use waybill_store::{BizEventRow, EdgeRow, KeyTraceRow, ProgressRow, Store, StoreError, TransactionKeyRow, TransactionRow};

use crate::config::{LineageConfig, Step};
use crate::graph::{self, Key};
use crate::journey::{self, Milestone};
use crate::known::{KeyFilter, KnownGraph, KEY_HASH_SQL};

/// Bytes of one operand of `IN` ([`in_lists`], [`in_sets`]), under
/// ClickHouse's default 256 KiB query size limit.
const IN_BYTES: usize = 192 * 1024;
/// Traces waiting beyond this many are dropped and caught up from the store.
const MAX_PENDING_TRACES: usize = 500_000;
/// Events ingested this long before the recorded progress are looked at
/// again after a restart: their notification may not have been handled.
const CATCH_UP_MARGIN: Duration = Duration::from_secs(300);
const PROGRESS_NAME: &str = "resolver";
/// Set in `lineage_progress` by `lineage rebuild` when it empties the key
/// graph's tables: a resolver that sees it change forgets what it remembers.
const REWRITTEN_NAME: &str = "key graph rewritten";
/// Catching up reads this much ingest time at a time.
const CATCH_UP_PAGE: Duration = Duration::from_secs(600);
/// Every key of the key graph's tables, for the resolver's key filter.
const GRAPH_KEYS: &str = "(SELECT Kind, Value FROM biz_key_traces UNION ALL SELECT Kind, Value FROM biz_edges)";
/// Rows of the key graph's tables per query while filling the key filter:
/// each query keeps the distinct hashes of one share of them (at 1 M
/// transactions, 15 M rows held 4.6 M keys).
const FILTER_PAGE_ROWS: u64 = 16_000_000;

/// Where the pipeline tells the resolver which traces got new business events.
pub type Notifier = mpsc::UnboundedSender<Vec<String>>;

/// What one resolve step did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    pub traces: usize,
    pub events: usize,
    pub transactions: usize,
}

pub struct Resolver {
    store: Store,
    config: LineageConfig,
    journeys: HashMap<String, Vec<Step>>,
    last_version: u64,
    known: KnownGraph,
    /// False on a cluster, where rows written through Distributed tables
    /// reach their shards later, so what was just read may be incomplete;
    /// and where `lineage.remembered_keys` is 0.
    remember: bool,
    /// The key graph's last rewrite seen (`REWRITTEN_NAME`).
    rewritten_us: Option<i64>,
}

/// The events of some traces, read once per step.
#[derive(Default)]
struct Traces {
    events: foldhash::HashMap<String, Vec<BizEventRow>>,
    shared: foldhash::HashMap<String, BTreeSet<Key>>,
}

/// The shared keys of a trace without any.
static NO_KEYS: BTreeSet<Key> = BTreeSet::new();

impl Traces {
    fn insert(&mut self, trace: String, events: Vec<BizEventRow>) {
        self.shared.insert(trace.clone(), graph::shared_keys(&events));
        self.events.insert(trace, events);
    }

    fn shared(&self, trace: &str) -> &BTreeSet<Key> {
        self.shared.get(trace).unwrap_or(&NO_KEYS)
    }
}

impl Resolver {
    pub fn new(store: Store, config: LineageConfig) -> Result<Self, String> {
        config.validate()?;
        let journeys = config.kinds.iter().map(|kind| Ok((kind.clone(), config.journey(kind)?))).collect::<Result<_, String>>()?;
        let remember = store.target().cluster.is_none() && config.remembered_keys > 0;
        let known = KnownGraph::new(config.remembered_keys);
        Ok(Resolver { store, config, journeys, last_version: 0, known, remember, rewritten_us: None })
    }

    /// Runs [`Resolver::run`] on a thread of its own, with a runtime of its
    /// own, at a lower CPU priority (nice 10): when the cores are busy,
    /// people's lookups and pages go first. Give it a store of its own that
    /// has served no calls: its in-process connections are then made on
    /// that runtime, so the threads making its engine calls are niced too.
    /// The future returned ends when the resolver does, with an error if it
    /// could not start its runtime or panicked.
    pub fn run_apart(
        self,
        notifications: mpsc::UnboundedReceiver<Vec<String>>,
        shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<impl std::future::Future<Output = Result<(), String>>> {
        let (done, ended) = tokio::sync::oneshot::channel::<Result<(), String>>();
        std::thread::Builder::new().name("lineage-resolver".into()).spawn(move || {
            lower_this_threads_priority();
            let outcome = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => {
                    runtime.block_on(self.run(notifications, shutdown));
                    Ok(())
                }
                Err(err) => {
                    tracing::error!(error = %err, "the lineage resolver cannot start its runtime");
                    Err(format!("the lineage resolver could not start its runtime: {err}"))
                }
            };
            let _ = done.send(outcome);
        })?;
        Ok(async move { ended.await.unwrap_or_else(|_| Err("the lineage resolver stopped unexpectedly".to_owned())) })
    }

    /// Runs until `shutdown`: resolves the traces the pipeline names, and
    /// advances transactions whose deadlines pass. After a restart it first
    /// resolves what was ingested since its recorded progress.
    pub async fn run(mut self, mut notifications: mpsc::UnboundedReceiver<Vec<String>>, mut shutdown: watch::Receiver<bool>) {
        let mut pending: BTreeSet<String> = BTreeSet::new();
        let mut caught_up = false;
        let mut deadlines_checked = Instant::now();
        let mut step_started = Instant::now();
        loop {
            take_notified(&mut notifications, &mut pending);
            // A step per interval, or at once while a whole step's traces
            // wait. Each step costs queries and new parts in four tables
            // whatever its size, so while it keeps up the resolver takes
            // few, full steps, and leaves the engine to ingest meanwhile.
            let pause = if pending.len() >= self.config.max_traces_per_step {
                Duration::ZERO
            } else {
                self.config.resolve_interval().saturating_sub(step_started.elapsed())
            };
            let stopping = tokio::select! {
                _ = tokio::time::sleep(pause) => false,
                _ = shutdown.wait_for(|stop| *stop) => true,
            };
            let started = now_us();
            step_started = Instant::now();
            take_notified(&mut notifications, &mut pending);
            if pending.len() > MAX_PENDING_TRACES {
                // Far behind: forget the names and catch up from the store
                // (progress is not recorded while traces are pending).
                tracing::warn!(traces = pending.len(), "lineage is far behind ingest; catching up from the store");
                pending.clear();
                caught_up = false;
            }
            if !caught_up {
                match self.catch_up().await {
                    Ok(resolved) => {
                        caught_up = true;
                        if resolved.traces > 0 {
                            tracing::info!(traces = resolved.traces, transactions = resolved.transactions, "lineage caught up");
                        }
                    }
                    Err(err) => {
                        metrics::failed("catch_up");
                        tracing::warn!(error = %err, "lineage catch-up failed; retrying");
                    }
                }
            }
            metrics::PENDING_TRACES.set(pending.len() as i64);
            if !pending.is_empty() {
                // A bounded step, so memory and the engine's time per step stay bounded.
                let step: BTreeSet<String> = pending.iter().take(self.config.max_traces_per_step).cloned().collect();
                let timer = metrics::RESOLVE_SECONDS.start_timer();
                match self.resolve_traces(&step, now_ns()).await {
                    Ok(resolved) => {
                        timer.observe_duration();
                        metrics::RESOLVED_EVENTS.inc_by(resolved.events as u64);
                        metrics::TRANSACTIONS_WRITTEN.inc_by(resolved.transactions as u64);
                        // Far fewer than `pending`: removing them one by one costs
                        // less than testing every pending trace against the step.
                        for trace in &step {
                            pending.remove(trace);
                        }
                        metrics::PENDING_TRACES.set(pending.len() as i64);
                    }
                    Err(err) => {
                        timer.stop_and_discard();
                        metrics::failed("resolve");
                        tracing::warn!(error = %err, traces = step.len(), "lineage not resolved; retrying");
                    }
                }
            }
            // Once per interval: while a backlog drains, steps follow each
            // other at once, and deadlines need no check after each.
            if deadlines_checked.elapsed() >= self.config.resolve_interval() || pending.is_empty() {
                match self.advance_deadlines(now_ns()).await {
                    Ok(changed) => {
                        metrics::TRANSACTIONS_WRITTEN.inc_by(changed as u64);
                        deadlines_checked = Instant::now();
                    }
                    Err(err) => {
                        metrics::failed("deadlines");
                        tracing::warn!(error = %err, "deadlines not checked; retrying");
                    }
                }
            }
            if caught_up && pending.is_empty() {
                if let Err(err) = self.save_progress(started).await {
                    metrics::failed("progress");
                    tracing::warn!(error = %err, "lineage progress not recorded");
                }
            }
            if stopping {
                return;
            }
        }
    }

    /// Resolves every trace with events ingested since the recorded
    /// progress (less a margin).
    pub async fn catch_up(&mut self) -> Result<Resolved, StoreError> {
        let progress: Vec<i64> = self
            .store
            .fetch_all(&format!("SELECT ResolvedBefore FROM lineage_progress FINAL WHERE Name = {}", quote_string(PROGRESS_NAME)))
            .await?;
        let since_us = progress.first().map_or(0, |us| us - CATCH_UP_MARGIN.as_micros() as i64);
        let first: Vec<i64> = self
            .store
            .fetch_all(&format!("SELECT toUnixTimestamp64Micro(min(Ingested)) FROM biz_events WHERE Ingested >= fromUnixTimestamp64Micro({since_us})"))
            .await?;
        let until_us = now_us();
        // min() over no rows is the epoch: then there is nothing to catch up.
        let mut from_us = first.first().copied().filter(|&us| us > 0).unwrap_or(until_us).max(since_us);
        let mut total = Resolved::default();
        // About how many traces wait, counted once, for the pending gauge
        // (a trace ingested across two pages is resolved in both).
        let mut left = 0;
        if from_us < until_us {
            let traces: Vec<u64> = self
                .store
                .fetch_all(&format!(
                    "SELECT uniq(TraceId) FROM biz_events \
                     WHERE Ingested >= fromUnixTimestamp64Micro({from_us}) AND Ingested < fromUnixTimestamp64Micro({until_us})"
                ))
                .await?;
            left = traces.first().map_or(0, |&traces| traces as usize);
        }
        // A page of ingest time at a time, so memory stays bounded however
        // far behind the resolver is; progress is recorded after each.
        while from_us < until_us {
            let to_us = (from_us + CATCH_UP_PAGE.as_micros() as i64).min(until_us);
            let traces: Vec<String> = self
                .store
                .fetch_all(&format!(
                    "SELECT DISTINCT TraceId FROM biz_events \
                     WHERE Ingested >= fromUnixTimestamp64Micro({from_us}) AND Ingested < fromUnixTimestamp64Micro({to_us}) ORDER BY TraceId"
                ))
                .await?;
            // Counted as the loop's steps are: a long catch-up shows its
            // backlog and its progress on /metrics (the alert rules watch both).
            let page = traces.len();
            let resolved = self
                .resolve_in_chunks(traces, |done, of, chunk| {
                    metrics::PENDING_TRACES.set(left.saturating_sub(done).max(of - done) as i64);
                    metrics::RESOLVED_EVENTS.inc_by(chunk.events as u64);
                    metrics::TRANSACTIONS_WRITTEN.inc_by(chunk.transactions as u64);
                })
                .await?;
            total.traces += resolved.traces;
            total.events += resolved.events;
            total.transactions += resolved.transactions;
            self.save_progress(to_us).await?;
            left = left.saturating_sub(page);
            from_us = to_us;
        }
        Ok(total)
    }

    /// Resolves `traces` a few thousand at a time, reporting after each
    /// chunk how many traces are done, of how many, and what the chunk did.
    pub async fn resolve_in_chunks(
        &mut self,
        traces: Vec<String>,
        mut progress: impl FnMut(usize, usize, Resolved),
    ) -> Result<Resolved, StoreError> {
        let mut total = Resolved::default();
        let per_step = self.config.max_traces_per_step;
        for (i, chunk) in traces.chunks(per_step).enumerate() {
            let chunk: BTreeSet<String> = chunk.iter().cloned().collect();
            let resolved = self.resolve_traces(&chunk, now_ns()).await?;
            total.traces += resolved.traces;
            total.events += resolved.events;
            total.transactions += resolved.transactions;
            progress((i * per_step + chunk.len()).min(traces.len()), traces.len(), resolved);
        }
        Ok(total)
    }

    /// Links the keys of `traces` and recomputes every transaction they touch.
    pub async fn resolve_traces(&mut self, traces: &BTreeSet<String>, now_ns: i64) -> Result<Resolved, StoreError> {
        let resolved = self.resolve_step(traces, now_ns).await;
        if resolved.is_err() {
            // Part of the step may be stored and not remembered: start afresh.
            self.known.forget();
        }
        resolved
    }

    async fn resolve_step(&mut self, traces: &BTreeSet<String>, now_ns: i64) -> Result<Resolved, StoreError> {
        if self.remember {
            let rewritten: Vec<i64> = self
                .store
                .fetch_all(&format!("SELECT ResolvedBefore FROM lineage_progress FINAL WHERE Name = {}", quote_string(REWRITTEN_NAME)))
                .await?;
            if rewritten.first() != self.rewritten_us.as_ref() {
                self.known.forget();
                self.rewritten_us = rewritten.first().copied();
            }
            if self.known.needs_filter() {
                let filter = self.read_key_filter().await?;
                self.known.set_filter(filter);
            }
        } else {
            self.known.forget();
        }
        let mut loaded = Traces::default();
        self.load(&mut loaded, traces.iter().cloned().collect()).await?;
        // Traces these link to, and traces whose records link to these.
        let outgoing: BTreeSet<String> = loaded.events.values().flatten().flat_map(|e| e.linked_trace_ids.iter().cloned()).collect();
        let incoming = self.traces_linking_to(traces).await?;
        let extra = outgoing.union(&incoming).filter(|t| !loaded.events.contains_key(*t)).cloned().collect();
        self.load(&mut loaded, extra).await?;

        let mut edges = BTreeSet::new();
        let mut key_traces = BTreeSet::new();
        let mut touched: BTreeSet<Key> = BTreeSet::new();
        let mut events = 0;
        for trace in traces.iter().chain(incoming.iter()) {
            let Some(trace_events) = loaded.events.get(trace) else { continue };
            let shared = loaded.shared(trace);
            // Records of a trace with the same keys and links (the spans
            // of one order, say) link the same keys: each such group once.
            let mut alike = foldhash::HashSet::default();
            // The keys the trace's records belong to, for the key → trace index.
            let mut trace_keys: BTreeSet<Key> = BTreeSet::new();
            for event in trace_events {
                events += 1;
                if !alike.insert((&event.key_kinds, &event.key_values, &event.linked_trace_ids)) {
                    continue;
                }
                let mut keys = graph::effective_keys(event, shared);
                graph::edges_among(&keys, &self.config, &mut edges);
                let linked: BTreeSet<Key> = event.linked_trace_ids.iter().flat_map(|t| loaded.shared(t).iter().cloned()).collect();
                graph::edges_between(&keys, &linked, &self.config, &mut edges);
                touched.extend(linked.iter().cloned());
                // A trace without keys of its own belongs where its links point.
                if keys.is_empty() {
                    keys = linked;
                }
                trace_keys.extend(keys);
            }
            for key in trace_keys {
                key_traces.insert(KeyTraceRow { kind: key.0.clone(), value: key.1.clone(), trace_id: trace.clone() });
                touched.insert(key);
            }
        }
        // Rows the store holds already (a trace seen in an earlier step) are not written again.
        let edges: Vec<EdgeRow> = edges.into_iter().filter(|edge| !self.known.has_edge(edge)).collect();
        let key_traces: Vec<KeyTraceRow> = key_traces.into_iter().filter(|row| !self.known.has_key_trace(row)).collect();
        self.store.insert("biz_edges", &edges).await?;
        self.known.wrote_edges(&edges);
        self.store.insert("biz_key_traces", &key_traces).await?;
        self.known.wrote_key_traces(&key_traces);

        let roots = self.roots_upstream_of(touched).await?;
        let transactions = self.recompute(&roots, &mut loaded, now_ns).await?;
        // Freeing a step's events (hundreds of thousands of strings) takes
        // a tenth of its own time: a blocking thread does it meanwhile.
        tokio::task::spawn_blocking(move || drop(loaded));
        Ok(Resolved { traces: traces.len(), events, transactions })
    }

    /// Reads the events of `traces` not read yet, one copy of each record.
    async fn load(&self, loaded: &mut Traces, traces: Vec<String>) -> Result<(), StoreError> {
        let wanted: Vec<String> = traces.into_iter().filter(|t| !loaded.events.contains_key(t)).collect();
        let mut found: foldhash::HashMap<String, Vec<BizEventRow>> = foldhash::HashMap::default();
        let rows: Vec<BizEventRow> =
            self.fetch_in(in_lists(&wanted), |list| format!("SELECT {EVENT_COLUMNS} FROM biz_events WHERE TraceId IN ({list})")).await?;
        for row in rows {
            // The id is copied once per trace, not once per row.
            match found.get_mut(&row.trace_id) {
                Some(events) => events.push(row),
                None => {
                    found.insert(row.trace_id.clone(), vec![row]);
                }
            }
        }
        for trace in wanted {
            let mut events = found.remove(&trace).unwrap_or_default();
            // Copies of a resent record (until merges collapse them) count once.
            events.sort_by(|a, b| identity(a).cmp(&identity(b)));
            events.dedup_by(|a, b| identity(a) == identity(b));
            loaded.insert(trace, events);
        }
        Ok(())
    }

    async fn traces_linking_to(&self, traces: &BTreeSet<String>) -> Result<BTreeSet<String>, StoreError> {
        let linking: Vec<String> = self
            .fetch_in(in_sets(ID_SET, id_rows(traces)), |set| format!("SELECT DISTINCT TraceId FROM biz_trace_links WHERE LinkedTraceId IN ({set})"))
            .await?;
        Ok(linking.into_iter().collect())
    }

    /// The root-kind keys upstream of `keys` (and those among them).
    async fn roots_upstream_of(&mut self, keys: BTreeSet<Key>) -> Result<BTreeSet<Key>, StoreError> {
        let root_kind = self.config.root_kind.clone();
        let root_rank = self.config.rank(&root_kind);
        let mut roots = BTreeSet::new();
        // Keys of kinds not in the order (sku, partner) lead nowhere.
        let mut frontier: BTreeSet<Key> = keys.into_iter().filter(|k| self.config.rank(&k.0) < self.config.kinds.len()).collect();
        let mut seen = frontier.clone();
        while !frontier.is_empty() {
            let mut next = BTreeSet::new();
            for key in &frontier {
                if key.0 == root_kind {
                    roots.insert(key.clone());
                }
            }
            let climbing: Vec<Key> = frontier.into_iter().filter(|k| self.config.rank(&k.0) > root_rank).collect();
            for (_, key) in self.neighbours(&climbing, false).await? {
                if self.config.rank(&key.0) >= root_rank && seen.insert(key.clone()) {
                    next.insert(key);
                }
            }
            frontier = next;
        }
        Ok(roots)
    }

    /// Edges from `keys` in one direction, as (key, other key); the store
    /// is asked only about keys not known already.
    async fn neighbours(&mut self, keys: &[Key], down: bool) -> Result<Vec<(Key, Key)>, StoreError> {
        let mut found = Vec::new();
        let mut unknown = Vec::new();
        for key in keys {
            match self.known.edges(key, down) {
                Some(others) => found.extend(others.into_iter().map(|other| (key.clone(), other))),
                None => unknown.push(key.clone()),
            }
        }
        if !unknown.is_empty() {
            let rows: Vec<EdgeRow> = self
                .fetch_in(in_sets(KEY_SET, key_rows(&unknown)), |set| {
                    format!("SELECT DISTINCT Kind, Value, Down, OtherKind, OtherValue FROM biz_edges WHERE (Value, Kind) IN ({set}) AND Down = {down}")
                })
                .await?;
            self.known.learned_edges(&unknown, &rows, down);
            found.extend(rows.into_iter().map(|edge| ((edge.kind, edge.value), (edge.other_kind, edge.other_value))));
        }
        Ok(found)
    }

    /// The traces of each of `keys`; the store is asked only about keys
    /// not known already.
    async fn traces_of(&mut self, keys: &[Key]) -> Result<BTreeMap<Key, BTreeSet<String>>, StoreError> {
        let mut traces_of: BTreeMap<Key, BTreeSet<String>> = BTreeMap::new();
        let mut unknown = Vec::new();
        for key in keys {
            match self.known.traces(key) {
                Some(traces) if traces.is_empty() => {}
                Some(traces) => {
                    traces_of.insert(key.clone(), traces.into_iter().collect());
                }
                None => unknown.push(key.clone()),
            }
        }
        if !unknown.is_empty() {
            let rows: Vec<KeyTraceRow> = self
                .fetch_in(in_sets(KEY_SET, key_rows(&unknown)), |set| {
                    format!("SELECT DISTINCT Kind, Value, TraceId FROM biz_key_traces WHERE (Value, Kind) IN ({set})")
                })
                .await?;
            self.known.learned_traces(&unknown, &rows);
            for row in rows {
                traces_of.entry((row.kind, row.value)).or_default().insert(row.trace_id);
            }
        }
        Ok(traces_of)
    }

    /// A filter of every key in the key graph's tables, read a share of the
    /// hashes at a time. Each share costs a scan of the tables, so there are
    /// as few as keep the engine's memory bounded: one per
    /// `FILTER_PAGE_ROWS` rows, counted from the parts' metadata.
    async fn read_key_filter(&self) -> Result<KeyFilter, StoreError> {
        let rows: Vec<u64> = self.store.fetch_all("SELECT count() FROM biz_key_traces UNION ALL SELECT count() FROM biz_edges").await?;
        let pages = rows.iter().sum::<u64>().div_ceil(FILTER_PAGE_ROWS).max(1);
        let share = |page: u64| async move {
            self.store.fetch_all::<u64>(&format!("SELECT DISTINCT {KEY_HASH_SQL} AS hash FROM {GRAPH_KEYS} WHERE hash % {pages} = {page}")).await
        };
        // Hashes fall evenly into the shares: the first share's keys, times
        // the shares, size the filter.
        let first = share(0).await?;
        let mut filter = KeyFilter::for_keys(first.len() * pages as usize);
        first.into_iter().for_each(|hash| filter.insert(hash));
        for page in 1..pages {
            share(page).await?.into_iter().for_each(|hash| filter.insert(hash));
        }
        tracing::debug!(keys = filter.inserted(), pages, "lineage key filter read");
        Ok(filter)
    }

    /// The rows of `sql(operand)` for each of `operands` of `IN` ([`in_lists`], [`in_sets`]).
    async fn fetch_in<T>(&self, operands: Vec<String>, sql: impl Fn(&str) -> String) -> Result<Vec<T>, StoreError>
    where
        T: clickhouse::RowOwned + clickhouse::RowRead,
    {
        let mut rows = Vec::new();
        for operand in operands {
            rows.extend(self.store.fetch_all::<T>(&sql(&operand)).await?);
        }
        Ok(rows)
    }

    /// Recomputes and writes the transactions rooted at `roots`.
    async fn recompute(&mut self, roots: &BTreeSet<Key>, loaded: &mut Traces, now_ns: i64) -> Result<usize, StoreError> {
        if roots.is_empty() {
            return Ok(0);
        }
        // The downstream graph below the roots, one level per query.
        let mut down: BTreeMap<Key, BTreeSet<Key>> = BTreeMap::new();
        let mut seen: BTreeSet<Key> = roots.clone();
        let mut frontier: Vec<Key> = roots.iter().cloned().collect();
        while !frontier.is_empty() {
            let mut next = Vec::new();
            for (from, to) in self.neighbours(&frontier, true).await? {
                down.entry(from).or_default().insert(to.clone());
                if seen.insert(to.clone()) {
                    next.push(to);
                }
            }
            frontier = next;
        }
        // The traces of every key in any closure.
        let all_keys: Vec<Key> = seen.into_iter().collect();
        let traces_of = self.traces_of(&all_keys).await?;
        let needed: Vec<String> = traces_of.values().flatten().collect::<BTreeSet<&String>>().into_iter().cloned().collect();
        self.load(loaded, needed).await?;

        let mut rows = Vec::new();
        let mut keys = Vec::new();
        for root in roots {
            let closure = graph::closure(root, &down);
            let traces: BTreeSet<&String> = closure.iter().filter_map(|k| traces_of.get(k)).flatten().collect();
            let row = self.assemble(root, &closure, &traces, loaded, now_ns);
            // The key index gets only what this update adds to the transaction (most keys were there before).
            for key in &closure {
                if !self.known.indexed(key, &row.id) {
                    keys.push(TransactionKeyRow { value: key.1.clone(), kind: key.0.clone(), id: row.id.clone() });
                }
            }
            rows.push(row);
        }
        self.store.insert("transaction_keys", &keys).await?;
        self.known.wrote_transaction_keys(&keys);
        self.store.insert("transactions", &rows).await?;
        Ok(rows.len())
    }

    /// One transaction from the events of its traces that belong to its keys.
    fn assemble(&mut self, root: &Key, closure: &BTreeSet<Key>, traces: &BTreeSet<&String>, loaded: &Traces, now_ns: i64) -> TransactionRow {
        let in_closure: foldhash::HashSet<(&str, &str)> = closure.iter().map(|(kind, value)| (kind.as_str(), value.as_str())).collect();
        let mut included: Vec<&BizEventRow> = Vec::new();
        for trace in traces {
            let shared = loaded.shared(trace);
            for event in loaded.events.get(*trace).into_iter().flatten() {
                // A record belongs by its own keys, a record without any by
                // its trace's, and without those by the traces it links to.
                let belongs = if !event.key_kinds.is_empty() {
                    any_in(&in_closure, event.key_kinds.iter().zip(&event.key_values))
                } else if !shared.is_empty() {
                    any_in(&in_closure, shared.iter().map(|(k, v)| (k, v)))
                } else {
                    event.linked_trace_ids.iter().filter_map(|t| loaded.shared.get(t)).any(|keys| any_in(&in_closure, keys.iter().map(|(k, v)| (k, v))))
                };
                if belongs {
                    included.push(event);
                }
            }
        }
        let version = self.next_version();
        let journey = self.journeys.get(&root.0).map(Vec::as_slice).unwrap_or_default();
        let mut ordered: Vec<Key> = closure.iter().cloned().collect();
        ordered.sort_by_key(|k| (self.config.rank(&k.0), k.0.clone(), k.1.clone()));
        transaction_row(root, &ordered, included, journey, now_ns, version)
    }

    /// Re-evaluates transactions whose next deadline has passed; returns
    /// how many changed state.
    pub async fn advance_deadlines(&mut self, now_ns: i64) -> Result<usize, StoreError> {
        let due: Vec<String> = self
            .store
            .fetch_all(&format!("SELECT DISTINCT Id FROM transactions WHERE NextDue > 0 AND NextDue <= fromUnixTimestamp64Nano({now_ns})"))
            .await?;
        let rows: Vec<TransactionRow> = self
            .fetch_in(in_lists(&due), |list| format!("SELECT {TRANSACTION_COLUMNS} FROM transactions WHERE Id IN ({list}) ORDER BY Version DESC LIMIT 1 BY Id"))
            .await?;
        let mut changed = Vec::new();
        for mut row in rows.into_iter().filter(|r| r.next_due_ns > 0 && r.next_due_ns <= now_ns) {
            let journey = self.journeys.get(&row.root_kind).map(Vec::as_slice).unwrap_or_default();
            let evaluation = journey::evaluate(journey, &milestones_of(&row), now_ns);
            set_evaluation(&mut row, &evaluation);
            row.version = self.next_version();
            changed.push(row);
        }
        self.store.insert("transactions", &changed).await?;
        Ok(changed.len())
    }

    pub(crate) async fn save_progress(&self, resolved_before_us: i64) -> Result<(), StoreError> {
        let row = ProgressRow { name: PROGRESS_NAME.into(), resolved_before_us, version: now_ns() as u64 };
        self.store.insert("lineage_progress", &[row]).await
    }

    /// Marks the key graph's tables as emptied and rewritten, so that a
    /// resolver still running elsewhere forgets what it remembers of them.
    pub(crate) async fn mark_rewritten(&self) -> Result<(), StoreError> {
        let row = ProgressRow { name: REWRITTEN_NAME.into(), resolved_before_us: now_us(), version: now_ns() as u64 };
        self.store.insert("lineage_progress", &[row]).await
    }

    /// Versions only grow, even if the clock steps back.
    fn next_version(&mut self) -> u64 {
        self.last_version = (now_ns() as u64).max(self.last_version + 1);
        self.last_version
    }
}

/// The columns of [`BizEventRow`], in its field order.
pub const EVENT_COLUMNS: &str =
    "TraceId, Record, SpanId, RecordIndex, Time, SourceTime, Milestone, System, Outcome, KeyKinds, KeyValues, LinkedTraceIds, Source";

/// The columns of [`TransactionRow`], in its field order.
pub const TRANSACTION_COLUMNS: &str = "Id, RootKind, RootValue, State, KeyKinds, KeyValues, Systems, MilestoneNames, MilestoneSystems, \
     MilestoneTimes, MilestoneOutcomes, MilestoneTraceIds, MilestoneSpanIds, OverdueMilestones, OverdueDue, NextDue, Started, Updated, Version";

/// A transaction's row: rooted at `root`, holding `keys` (in display
/// order) and the records `included`, its state from `journey` at `now_ns`.
pub fn transaction_row(root: &Key, keys: &[Key], mut included: Vec<&BizEventRow>, journey: &[Step], now_ns: i64, version: u64) -> TransactionRow {
    included.sort_by_key(|e| (e.source_time_ns, e.time_ns));
    let mut milestones: Vec<Milestone> = included
        .iter()
        .filter(|e| !e.milestone.is_empty())
        .map(|e| Milestone {
            name: e.milestone.clone(),
            system: e.system.clone(),
            time_ns: e.source_time_ns,
            outcome: e.outcome.clone(),
            trace_id: e.trace_id.clone(),
            span_id: e.span_id.clone(),
        })
        .collect();
    milestones.dedup();
    let mut systems: Vec<String> = Vec::new();
    for event in &included {
        if !event.system.is_empty() && !systems.contains(&event.system) {
            systems.push(event.system.clone());
        }
    }
    let mut row = TransactionRow {
        id: transaction_id(root),
        root_kind: root.0.clone(),
        root_value: root.1.clone(),
        key_kinds: keys.iter().map(|k| k.0.clone()).collect(),
        key_values: keys.iter().map(|k| k.1.clone()).collect(),
        systems,
        milestone_names: milestones.iter().map(|m| m.name.clone()).collect(),
        milestone_systems: milestones.iter().map(|m| m.system.clone()).collect(),
        milestone_times_ns: milestones.iter().map(|m| m.time_ns).collect(),
        milestone_outcomes: milestones.iter().map(|m| m.outcome.clone()).collect(),
        milestone_trace_ids: milestones.iter().map(|m| m.trace_id.clone()).collect(),
        milestone_span_ids: milestones.iter().map(|m| m.span_id.clone()).collect(),
        started_ns: included.first().map_or(0, |e| e.source_time_ns),
        updated_ns: included.iter().map(|e| e.source_time_ns.max(e.time_ns)).max().unwrap_or(0),
        version,
        ..TransactionRow::default()
    };
    set_evaluation(&mut row, &journey::evaluate(journey, &milestones, now_ns));
    row
}

/// Writes a journey evaluation onto a transaction row.
fn set_evaluation(row: &mut TransactionRow, evaluation: &journey::Evaluation) {
    row.state = evaluation.state.as_str().to_owned();
    row.overdue_milestones = evaluation.overdue.iter().map(|o| o.0.clone()).collect();
    row.overdue_due_ns = evaluation.overdue.iter().map(|o| o.1).collect();
    row.next_due_ns = evaluation.next_due_ns;
}

/// Nice 10 for the calling thread, and for the threads it starts (its
/// runtime's blocking threads, which make the engine's calls). Raising a
/// thread's nice value needs no privilege; it is never lowered again.
fn lower_this_threads_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid has no arguments; setpriority only reads its own.
        let result = unsafe {
            let thread = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, thread, 10)
        };
        if result != 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), "the lineage resolver runs at normal priority");
        }
    }
}

/// Adds the traces the pipeline has named since the last call to `pending`.
fn take_notified(notifications: &mut mpsc::UnboundedReceiver<Vec<String>>, pending: &mut BTreeSet<String>) {
    while let Ok(traces) = notifications.try_recv() {
        pending.extend(traces);
    }
}

/// Whether any of `keys` is in `set`.
fn any_in<'a>(set: &foldhash::HashSet<(&str, &str)>, mut keys: impl Iterator<Item = (&'a String, &'a String)>) -> bool {
    keys.any(|(kind, value)| set.contains(&(kind.as_str(), value.as_str())))
}

/// What makes two stored rows the same record (the table's sorting key).
fn identity(event: &BizEventRow) -> (&str, &str, &str, u32, &str, &str) {
    (&event.trace_id, &event.record, &event.span_id, event.record_index, &event.milestone, &event.system)
}

/// The milestones stored on a transaction row.
pub fn milestones_of(row: &TransactionRow) -> Vec<Milestone> {
    (0..row.milestone_names.len())
        .map(|i| Milestone {
            name: row.milestone_names[i].clone(),
            system: row.milestone_systems.get(i).cloned().unwrap_or_default(),
            time_ns: row.milestone_times_ns.get(i).copied().unwrap_or_default(),
            outcome: row.milestone_outcomes.get(i).cloned().unwrap_or_default(),
            trace_id: row.milestone_trace_ids.get(i).cloned().unwrap_or_default(),
            span_id: row.milestone_span_ids.get(i).cloned().unwrap_or_default(),
        })
        .collect()
}

/// A transaction's id: stable for its root key.
pub fn transaction_id(root: &Key) -> String {
    let identity = format!("{}\u{0}{}", root.0, root.1);
    format!("{:032x}", cityhash_rs::cityhash_102_128(identity.as_bytes()))
}

/// `values` as lists of string literals for `IN`, in as few as
/// ClickHouse's query size limit allows. For reading the events of
/// thousands of traces spread over `biz_events` such a list takes about
/// half the time of a set ([`in_sets`]) of the same ids.
pub fn in_lists<'a>(values: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    pack(values.into_iter().map(|value| quote_string(value)), ", ")
}

/// The structure of a set of ids ([`id_rows`]).
pub const ID_SET: &str = "id String";
/// The structure of a set of keys ([`key_rows`]), in the order of the
/// key tables' sorting keys.
pub const KEY_SET: &str = "value String, kind String";

/// `rows` (from [`id_rows`] or [`key_rows`]) as subqueries for `IN`, in as
/// few as ClickHouse's query size limit allows. Each is
/// `SELECT * FROM format(TSV, structure, '...')`: the engine reads such a
/// set as data. Looking up thousands of keys in a table sorted by them
/// takes a fifth of the time it takes with the keys written as a list of
/// tuple literals, which the engine must analyse one by one.
pub fn in_sets(structure: &str, rows: impl IntoIterator<Item = String>) -> Vec<String> {
    let structure = quote_string(structure);
    pack(rows, "\\n").into_iter().map(|data| format!("SELECT * FROM format(TSV, {structure}, '{data}')")).collect()
}

/// `items` joined by `separator` into as few strings of at most
/// [`IN_BYTES`] as they fit in (an item longer than that alone).
fn pack(items: impl IntoIterator<Item = String>, separator: &str) -> Vec<String> {
    let mut packed = Vec::new();
    let mut joined = String::new();
    for item in items {
        if !joined.is_empty() && joined.len() + separator.len() + item.len() > IN_BYTES {
            packed.push(std::mem::take(&mut joined));
        }
        if !joined.is_empty() {
            joined.push_str(separator);
        }
        joined.push_str(&item);
    }
    if !joined.is_empty() {
        packed.push(joined);
    }
    packed
}

/// Each of `values` as a row of a set of ids.
pub fn id_rows<'a>(values: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    values
        .into_iter()
        .map(|value| {
            let mut row = String::with_capacity(value.len());
            push_field(&mut row, value);
            row
        })
        .collect()
}

/// Each of `keys` as a row of a set of keys: value, then kind.
pub fn key_rows<'a>(keys: impl IntoIterator<Item = &'a Key>) -> Vec<String> {
    keys.into_iter()
        .map(|(kind, value)| {
            let mut row = String::with_capacity(kind.len() + value.len() + 2);
            push_field(&mut row, value);
            row.push_str("\\t");
            push_field(&mut row, kind);
            row
        })
        .collect()
}

/// `field` escaped for TSV, and that escaped again for the SQL string
/// literal the set is sent in.
fn push_field(row: &mut String, field: &str) {
    for c in field.chars() {
        match c {
            '\\' => row.push_str("\\\\\\\\"),
            '\t' => row.push_str("\\\\t"),
            '\n' => row.push_str("\\\\n"),
            '\r' => row.push_str("\\\\r"),
            '\0' => row.push_str("\\\\0"),
            '\'' => row.push_str("\\'"),
            c => row.push(c),
        }
    }
}

pub(crate) fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

fn now_us() -> i64 {
    now_ns() / 1000
}

mod metrics {
    //! The resolver's Prometheus metrics (default registry).
    use std::sync::LazyLock;

    use prometheus::{register_histogram, register_int_counter, register_int_counter_vec, register_int_gauge};
    use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge};

    /// What the loop does that can fail, each retried on its next turn.
    const WORK: [&str; 4] = ["resolve", "catch_up", "deadlines", "progress"];

    pub static PENDING_TRACES: LazyLock<IntGauge> = LazyLock::new(|| {
        register_int_gauge!("waybill_lineage_pending_traces", "Traces with new business events not resolved yet").expect("metric registers once")
    });
    pub static RESOLVED_EVENTS: LazyLock<IntCounter> = LazyLock::new(|| {
        register_int_counter!("waybill_lineage_resolved_events_total", "Business events read by resolve steps").expect("metric registers once")
    });
    pub static TRANSACTIONS_WRITTEN: LazyLock<IntCounter> = LazyLock::new(|| {
        register_int_counter!("waybill_lineage_transactions_written_total", "Transaction versions written (new events or passed deadlines)")
            .expect("metric registers once")
    });
    pub static FAILED: LazyLock<IntCounterVec> = LazyLock::new(|| {
        let failed = register_int_counter_vec!(
            "waybill_lineage_failed_steps_total",
            "Resolver work that failed and is retried: resolve steps, catching up after a restart, deadline checks, recording progress",
            &["work"]
        )
        .expect("metric registers once");
        // Every series from 0, so that `increase()` sees the first failure.
        for work in WORK {
            failed.with_label_values(&[work]);
        }
        failed
    });
    pub static RESOLVE_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
        register_histogram!(
            "waybill_lineage_resolve_duration_seconds",
            "Time of one resolve step",
            vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
        )
        .expect("metric registers once")
    });

    pub fn register() {
        LazyLock::force(&PENDING_TRACES);
        LazyLock::force(&RESOLVED_EVENTS);
        LazyLock::force(&TRANSACTIONS_WRITTEN);
        LazyLock::force(&RESOLVE_SECONDS);
        LazyLock::force(&FAILED);
    }

    /// Counts a failure of `work` (one of [`WORK`]).
    pub fn failed(work: &str) {
        FAILED.with_label_values(&[work]).inc();
    }
}

pub use metrics::register as register_metrics;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_split_under_the_query_size_limit_and_keep_every_key_once() {
        let keys: Vec<Key> = (0..20_000).map(|i| ("sales_order".to_owned(), format!("SO-{i:08}"))).collect();
        let sets = in_sets(KEY_SET, key_rows(&keys));
        assert!(sets.len() > 1, "20,000 keys take more than one set");
        let mut sent = Vec::new();
        for set in &sets {
            let data = set.strip_prefix("SELECT * FROM format(TSV, 'value String, kind String', '").and_then(|s| s.strip_suffix("')")).unwrap();
            assert!(data.len() <= IN_BYTES, "a set of {} bytes", data.len());
            sent.extend(data.split("\\n").map(|row| row.split_once("\\t").unwrap().0.to_owned()));
        }
        assert_eq!(sent, keys.iter().map(|k| k.1.clone()).collect::<Vec<_>>());
    }
}
