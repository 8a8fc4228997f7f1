//! The resolver against the real engine: what it remembers between steps
//! must never hide a key the store already holds, the keys it looks up
//! reach the engine intact whatever their characters, and run apart as the
//! service runs it, it resolves at a lower CPU priority. A store that
//! refuses its writes delays lineage, counted for the shipped Prometheus
//! rules, and loses nothing. And what the API reads of its rows: a key
//! lookup shows each transaction as last written.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use waybill_lineage::journey::State;
use waybill_lineage::{api, LineageConfig, Resolver};
use waybill_store::{BizEventRow, Store, TransactionKeyRow, TransactionRow};

/// A business record of `trace` carrying `keys` (at least one).
fn record(trace: &str, span: u64, milestone: &str, system: &str, keys: &[(&str, &str)]) -> BizEventRow {
    let at_ns = common::now_ns() - 60_000_000_000 + span as i64 * 1_000_000;
    BizEventRow {
        trace_id: trace.into(),
        key_kinds: keys.iter().map(|k| k.0.to_string()).collect(),
        key_values: keys.iter().map(|k| k.1.to_string()).collect(),
        ..common::rows::biz_event(span, at_ns, milestone, system, "ok", keys[0])
    }
}

async fn resolve(resolver: &mut Resolver, store: &Store, records: &[BizEventRow]) {
    store.insert("biz_events", records).await.unwrap();
    let traces: BTreeSet<String> = records.iter().map(|r| r.trace_id.clone()).collect();
    resolver.resolve_traces(&traces, common::now_ns()).await.unwrap();
}

async fn keys_of(store: &Store, value: &str) -> Vec<String> {
    let found = api::by_key(store, value, None, None, 10).await.unwrap();
    assert_eq!(found.len(), 1, "{value} is in one transaction");
    found[0].keys.iter().map(|k| k.value.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_resolver_joins_new_traces_to_keys_stored_before_it_started() {
    let store = common::store("resolver_restart").await;
    let mut before = Resolver::new(store.clone(), LineageConfig::default()).unwrap();
    resolve(&mut before, &store, &[record("a1", 1, "order.captured", "portal", &[("order", "PO-1")])]).await;
    resolve(&mut before, &store, &[record("a2", 2, "order.accepted", "erp", &[("order", "PO-1"), ("sales_order", "SO-ü\"1")])]).await;
    drop(before);

    // A new resolver meets SO-ü"1 for the first time in its own memory: it
    // must learn from the store that the key has an order upstream.
    let mut after = Resolver::new(store.clone(), LineageConfig::default()).unwrap();
    resolve(
        &mut after,
        &store,
        &[record("a3", 3, "shipment.dispatched", "warehouse", &[("sales_order", "SO-ü\"1"), ("shipment", "SH-1")])],
    )
    .await;
    assert_eq!(keys_of(&store, "SH-1").await, ["PO-1", "SO-ü\"1", "SH-1"]);

    // And from its memory on the next step, in both directions.
    resolve(&mut after, &store, &[record("a4", 4, "invoice.posted", "billing", &[("shipment", "SH-1"), ("invoice", "INV-1")])]).await;
    assert_eq!(keys_of(&store, "INV-1").await, ["PO-1", "SO-ü\"1", "SH-1", "INV-1"]);
    let transaction = &api::by_key(&store, "PO-1", None, None, 10).await.unwrap()[0];
    let milestones: Vec<&str> = transaction.milestones.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(milestones, ["order.captured", "order.accepted", "shipment.dispatched", "invoice.posted"]);
    common::drop_database(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_with_tabs_newlines_quotes_and_backslashes_are_found_in_the_store() {
    // The resolver sends the keys it looks up to the engine as TSV data in
    // a string literal: each of these must come back as itself.
    let store = common::store("resolver_odd_keys").await;
    let forgetful = LineageConfig { remembered_keys: 0, ..LineageConfig::default() };
    let odd = ["SO\t1", "SO\n2", "SO\\3", "SO'4", "\\N", "SO$$6", "SO\r7", "SO\\t8", "SO\u{0}9"];
    for (i, value) in odd.iter().enumerate() {
        let (order, shipment) = (format!("PO-{i}"), format!("SH-{i}"));
        let mut first = Resolver::new(store.clone(), forgetful.clone()).unwrap();
        resolve(&mut first, &store, &[record(&format!("erp{i}"), 1, "order.accepted", "erp", &[("order", &order), ("sales_order", value)])]).await;
        // A resolver that remembers nothing asks the store about the sales order.
        let mut second = Resolver::new(store.clone(), forgetful.clone()).unwrap();
        resolve(&mut second, &store, &[record(&format!("wh{i}"), 2, "shipment.dispatched", "warehouse", &[("sales_order", value), ("shipment", &shipment)])])
            .await;
        assert_eq!(keys_of(&store, &shipment).await, [order.as_str(), value, shipment.as_str()], "sales order {value:?}");
    }
    common::drop_database(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolver_remembers_across_many_steps_what_a_fresh_one_reads_from_the_store() {
    // Orders arrive staggered over steps, each stage in its own trace, as in
    // the service. One resolver keeps its memory throughout; the same
    // records resolved by a fresh resolver per step (which starts each step
    // knowing only what the store holds) must leave the same transactions.
    let stages = |order: u64| -> Vec<BizEventRow> {
        let (po, so, sh, inv) = (format!("PO-{order}"), format!("SO-{order}"), format!("SH-{order}"), format!("INV-{order}"));
        let trace = |stage: u64| format!("{order:08x}{stage:024x}");
        vec![
            record(&trace(0), order * 10, "order.captured", "portal", &[("order", &po)]),
            record(&trace(1), order * 10 + 1, "order.accepted", "erp", &[("order", &po), ("sales_order", &so)]),
            record(&trace(2), order * 10 + 2, "shipment.dispatched", "warehouse", &[("sales_order", &so), ("shipment", &sh)]),
            record(&trace(3), order * 10 + 3, "invoice.posted", "billing", &[("order", &po), ("invoice", &inv)]),
        ]
    };
    let orders = 40u64;
    // Step s holds stage 0 of block s, stage 1 of block s-1, and so on.
    let mut steps: Vec<Vec<BizEventRow>> = (0..orders / 10 + 3)
        .map(|s| {
            (0..4u64)
                .filter(|stage| s >= *stage && s - stage < orders / 10)
                .flat_map(|stage| (0..10).map(move |i| ((s - stage) * 10 + i, stage)))
                .map(|(order, stage)| stages(order)[stage as usize].clone())
                .collect()
        })
        .collect();
    // Late records for earlier traces: an ERP correction in each order's
    // ERP trace, long after that trace was first resolved and remembered.
    steps.push(
        (0..orders)
            .map(|order| {
                let erp = &stages(order)[1];
                let mut late = record(&erp.trace_id, order * 10 + 9, "order.corrected", "erp", &[("order", &format!("PO-{order}"))]);
                late.source_time_ns += 10_000_000_000;
                late
            })
            .collect(),
    );
    let fresh = common::store("resolver_fresh").await;
    for step in &steps {
        resolve(&mut Resolver::new(fresh.clone(), LineageConfig::default()).unwrap(), &fresh, step).await;
    }
    // The default memory holds every key here; 12 keys make the resolver
    // forget most of what it met, mid-step too; 0 remembers nothing.
    for remembered_keys in [LineageConfig::default().remembered_keys, 12, 0] {
        let remembering = common::store(&format!("resolver_remembering_{remembered_keys}")).await;
        let mut resolver = Resolver::new(remembering.clone(), LineageConfig { remembered_keys, ..LineageConfig::default() }).unwrap();
        for step in &steps {
            resolve(&mut resolver, &remembering, step).await;
        }
        for order in 0..orders {
            let invoice = format!("INV-{order}");
            let (remembered, read) = (
                &api::by_key(&remembering, &invoice, None, None, 10).await.unwrap(),
                &api::by_key(&fresh, &invoice, None, None, 10).await.unwrap(),
            );
            assert_eq!(remembered.len(), 1, "remembering {remembered_keys} keys");
            assert_eq!(
                (&remembered[0].keys, &remembered[0].milestones, &remembered[0].state),
                (&read[0].keys, &read[0].milestones, &read[0].state),
                "remembering {remembered_keys} keys"
            );
            assert_eq!(keys_of(&remembering, &invoice).await, [format!("PO-{order}"), format!("SO-{order}"), format!("SH-{order}"), invoice]);
            let milestones: Vec<&str> = remembered[0].milestones.iter().map(|m| m.name.as_str()).collect();
            assert_eq!(milestones, ["order.captured", "order.accepted", "shipment.dispatched", "invoice.posted", "order.corrected"]);
        }
        // The remembering resolver skips writing rows it knows are stored;
        // the key graph and the key index must still hold exactly what the
        // fresh resolvers wrote.
        for (table, row) in [
            ("biz_edges", "concat(Kind, '|', Value, '|', toString(Down), '|', OtherKind, '|', OtherValue)"),
            ("biz_key_traces", "concat(Kind, '|', Value, '|', TraceId)"),
            ("transaction_keys", "concat(Kind, '|', Value, '|', Id)"),
        ] {
            let sql = format!("SELECT DISTINCT {row} AS row FROM {table} ORDER BY row");
            let (remembered, read): (Vec<String>, Vec<String>) = (remembering.fetch_all(&sql).await.unwrap(), fresh.fetch_all(&sql).await.unwrap());
            assert!(!read.is_empty());
            assert_eq!(remembered, read, "{table}, remembering {remembered_keys} keys");
        }
        common::drop_database(&remembering).await;
    }
    common::drop_database(&fresh).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_resolver_forgets_what_it_remembers_once_a_rebuild_rewrites_the_key_graph() {
    let store = common::store("resolver_rebuilt").await;
    let mut service = Resolver::new(store.clone(), LineageConfig::default()).unwrap();
    resolve(&mut service, &store, &[record("b1", 1, "order.captured", "portal", &[("order", "PO-1")])]).await;
    resolve(&mut service, &store, &[record("b2", 2, "order.accepted", "erp", &[("order", "PO-1"), ("sales_order", "SO-1")])]).await;

    // New mapping rules say SO-1 belongs to PO-2: the rebuild re-extracts
    // (here: replaces the ERP record) and recomputes the whole key graph.
    store.execute("ALTER TABLE biz_events DELETE WHERE TraceId = 'b2' SETTINGS mutations_sync = 2").await.unwrap();
    store.insert("biz_events", &[record("b3", 3, "order.accepted", "erp", &[("order", "PO-2"), ("sales_order", "SO-1")])]).await.unwrap();
    waybill_lineage::rebuild::rebuild(&store, &LineageConfig::default(), Duration::from_secs(1), |_| {}).await.unwrap();

    // The service's resolver must not link the shipment through its memory
    // of SO-1 → PO-1.
    resolve(&mut service, &store, &[record("b4", 4, "shipment.dispatched", "warehouse", &[("sales_order", "SO-1"), ("shipment", "SH-1")])])
        .await;
    assert_eq!(keys_of(&store, "SH-1").await, ["PO-2", "SO-1", "SH-1"]);
    common::drop_database(&store).await;
}

/// The nice value of this process's thread named `name` (as the kernel
/// keeps it: 15 bytes at most), if there is one.
fn nice_of_thread(name: &str) -> Option<i64> {
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
        // After the name in parentheses come the fields from the third on; nice is the 19th.
        let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
        return fields.get(16)?.parse().ok();
    }
    None
}

/// The service runs the resolver apart so that people's lookups go first
/// when the cores are busy: on its own thread at nice 10, with its own
/// store client. It resolves what it is told about and ends when told to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolver_run_apart_resolves_at_a_lower_priority_and_ends_when_told() {
    let store = common::store("resolver_apart").await;
    let own_store = Store::embedded(common::engine(), common::target("resolver_apart"));
    let config = LineageConfig { resolve_interval_ms: 50, ..LineageConfig::default() };
    let (notifier, notifications) = tokio::sync::mpsc::unbounded_channel();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let running = Resolver::new(own_store, config).unwrap().run_apart(notifications, stopped).unwrap();

    let records = [record("p1", 1, "order.captured", "portal", &[("order", "PO-7")])];
    store.insert("biz_events", &records).await.unwrap();
    notifier.send(vec!["p1".into()]).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while api::by_key(&store, "PO-7", None, None, 10).await.unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the resolver apart did not resolve PO-7");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(nice_of_thread("lineage-resolve"), Some(10), "the resolver's thread runs at nice 10");

    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(60), running).await.expect("the resolver ends when told to").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while nice_of_thread("lineage-resolve").is_some() {
        assert!(std::time::Instant::now() < deadline, "the resolver's thread ends with it");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    common::drop_database(&store).await;
}

/// A counter of this process as `/metrics` shows it (0 before its first use).
fn counter(series: &str) -> u64 {
    let mut text = Vec::new();
    prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &prometheus::gather(), &mut text).unwrap();
    let series = format!("{series} ");
    String::from_utf8(text).unwrap().lines().find_map(|line| line.strip_prefix(&series)).map_or(0, |value| value.parse().unwrap())
}

fn failed_steps(work: &str) -> u64 {
    counter(&format!("waybill_lineage_failed_steps_total{{work=\"{work}\"}}"))
}

/// After a restart the resolver first catches up on what was ingested
/// while it was down. That counts on `/metrics` as the loop's steps do, so
/// the shipped Prometheus rules see a long catch-up working, not stalled.
/// (Other tests here resolve one or two events each meanwhile.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolver_catching_up_after_a_restart_counts_what_it_resolves() {
    let store = common::store("resolver_catch_up").await;
    let own_store = Store::embedded(common::engine(), common::target("resolver_catch_up"));
    let orders: Vec<String> = (0..50).map(|i| format!("PO-C{i}")).collect();
    let records: Vec<BizEventRow> =
        orders.iter().enumerate().map(|(i, order)| record(&format!("c{i}"), i as u64, "order.captured", "portal", &[("order", order)])).collect();
    store.insert("biz_events", &records).await.unwrap();
    let resolved_before = counter("waybill_lineage_resolved_events_total");
    let config = LineageConfig { resolve_interval_ms: 50, ..LineageConfig::default() };
    // Nothing is notified: the events were ingested before it started.
    let (_notifier, notifications) = tokio::sync::mpsc::unbounded_channel();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let running = Resolver::new(own_store, config).unwrap().run_apart(notifications, stopped).unwrap();

    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while counter("waybill_lineage_resolved_events_total") < resolved_before + 50 {
        assert!(std::time::Instant::now() < deadline, "the events caught up on were not counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for order in [&orders[0], &orders[49]] {
        assert_eq!(api::by_key(&store, order, None, None, 10).await.unwrap().len(), 1, "{order} is resolved");
    }
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(60), running).await.expect("the resolver ends when told to").unwrap();
    common::drop_database(&store).await;
}

/// A store that refuses the resolver's writes for a while delays lineage
/// and loses nothing: each failed step is counted on `/metrics` (where the
/// shipped Prometheus rules watch it) and retried, and once the store
/// takes the rows again the order is resolved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolver_whose_writes_are_refused_counts_each_failed_step_and_resolves_once_they_are_taken() {
    let store = common::store("resolver_refused").await;
    let own_store = Store::embedded(common::engine(), common::target("resolver_refused"));
    store.execute("ALTER TABLE biz_key_traces ADD CONSTRAINT refuse_for_the_test CHECK Kind = 'never'").await.unwrap();
    let config = LineageConfig { resolve_interval_ms: 50, ..LineageConfig::default() };
    let (notifier, notifications) = tokio::sync::mpsc::unbounded_channel();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let failed_before = failed_steps("resolve");
    let running = Resolver::new(own_store, config).unwrap().run_apart(notifications, stopped).unwrap();

    store.insert("biz_events", &[record("r1", 1, "order.captured", "portal", &[("order", "PO-REFUSED")])]).await.unwrap();
    notifier.send(vec!["r1".into()]).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while failed_steps("resolve") < failed_before + 3 {
        assert!(std::time::Instant::now() < deadline, "the refused steps were not counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(api::by_key(&store, "PO-REFUSED", None, None, 10).await.unwrap().is_empty(), "nothing is resolved while writes are refused");

    store.execute("ALTER TABLE biz_key_traces DROP CONSTRAINT refuse_for_the_test").await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while api::by_key(&store, "PO-REFUSED", None, None, 10).await.unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the order was not resolved once the store took the rows");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(60), running).await.expect("the resolver ends when told to").unwrap();
    common::drop_database(&store).await;
}

/// The Prometheus rules shipped for watching Waybill load, and fire and
/// stay quiet as their unit tests say, in Prometheus's own rule engine.
#[test]
fn the_shipped_prometheus_rules_load_and_pass_their_unit_tests() {
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let promtool = common::process::which("promtool");
    for args in [["check", "rules", "prometheus-rules.yaml"], ["test", "rules", "prometheus-rules.test.yaml"]] {
        let output = std::process::Command::new(&promtool).args(args).current_dir(&deploy).output().unwrap();
        assert!(output.status.success(), "promtool {}: {}", args.join(" "), common::process::text(&output));
    }
}

fn transaction_version(id: &str, state: &str, updated_ns: i64, version: u64) -> TransactionRow {
    TransactionRow { id: id.into(), root_kind: "order".into(), root_value: id.into(), state: state.into(), updated_ns, version, ..Default::default() }
}

fn key_of(id: &str, kind: &str, value: &str) -> TransactionKeyRow {
    TransactionKeyRow { value: value.into(), kind: kind.into(), id: id.into() }
}

fn ids_and_states(found: &[api::Transaction]) -> Vec<(String, String)> {
    found.iter().map(|t| (t.id.clone(), t.state.clone())).collect()
}

#[tokio::test]
async fn a_key_lookup_shows_each_transaction_as_last_written_whether_few_or_many_share_the_key() {
    let store = common::store("api_by_key_versions").await;
    // Two transactions of one invoice; the first written twice, in parts of
    // their own, as the resolver's steps leave them until merges run.
    store.insert("transactions", &[transaction_version("a", "in_flight", 10, 1), transaction_version("b", "stuck", 15, 1)]).await.unwrap();
    store.insert("transactions", &[transaction_version("a", "completed", 20, 2)]).await.unwrap();
    store.insert("transaction_keys", &[key_of("a", "invoice", "INV-9"), key_of("b", "invoice", "INV-9")]).await.unwrap();
    let found = |state, limit| api::by_key(&store, "INV-9", Some("invoice"), state, limit);
    let pair = |id: &str, state: &str| (id.to_owned(), state.to_owned());
    assert_eq!(ids_and_states(&found(None, 10).await.unwrap()), [pair("a", "completed"), pair("b", "stuck")]);
    assert_eq!(ids_and_states(&found(None, 1).await.unwrap()), [pair("a", "completed")]);
    assert_eq!(ids_and_states(&found(Some(State::Stuck), 10).await.unwrap()), [pair("b", "stuck")]);
    assert!(found(Some(State::InFlight), 10).await.unwrap().is_empty(), "a's older version does not count");
    assert!(api::by_key(&store, "INV-9", Some("order"), None, 10).await.unwrap().is_empty());

    // A partner shared by more transactions than the API reads versions of:
    // 1,200 transactions, every third written again as stuck.
    let count = 1_200;
    let first: Vec<TransactionRow> = (0..count).map(|i| transaction_version(&format!("p{i:04}"), "in_flight", 1_000 + i, 1)).collect();
    let again: Vec<TransactionRow> = (0..count).step_by(3).map(|i| transaction_version(&format!("p{i:04}"), "stuck", 5_000 - i, 2)).collect();
    store.insert("transactions", &first).await.unwrap();
    store.insert("transactions", &again).await.unwrap();
    let keys: Vec<TransactionKeyRow> = (0..count).map(|i| key_of(&format!("p{i:04}"), "partner", "ACME")).collect();
    store.insert("transaction_keys", &keys).await.unwrap();
    let stuck = api::by_key(&store, "ACME", None, Some(State::Stuck), 3).await.unwrap();
    assert_eq!(ids_and_states(&stuck), [pair("p0000", "stuck"), pair("p0003", "stuck"), pair("p0006", "stuck")]);
    let in_flight = api::by_key(&store, "ACME", Some("partner"), Some(State::InFlight), 2).await.unwrap();
    assert_eq!(ids_and_states(&in_flight), [pair("p1199", "in_flight"), pair("p1198", "in_flight")]);
    assert_eq!(api::by_key(&store, "ACME", None, None, 1000).await.unwrap().len(), 1000);
    common::drop_database(&store).await;
}
