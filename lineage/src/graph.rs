//! How the business events of one trace link keys, as pure functions.
//!
//! - Keys that occur together in one record are linked.
//! - Records in one trace share their trace's keys: every key whose kind
//!   occurs with one value only in the trace. A batch trace that carries
//!   several orders and several invoices therefore shares neither, and its
//!   records link only what they carry themselves; one that carries several
//!   orders and one invoice links that invoice to each order.
//! - A record without keys (a middleware span, a carrier event) belongs to
//!   the trace's shared keys.
//! - Links only go between different kinds, and point downstream by the
//!   configured order; same-kind keys (sibling orders) are never joined.

use std::collections::{BTreeMap, BTreeSet};

use waybill_store::{BizEventRow, EdgeRow};

use crate::config::LineageConfig;

/// A business key: (kind, value).
pub type Key = (String, String);

/// The keys a record carries.
pub fn own_keys(event: &BizEventRow) -> impl Iterator<Item = Key> + '_ {
    event.key_kinds.iter().cloned().zip(event.key_values.iter().cloned())
}

/// The keys every record of a trace shares: those whose kind has one value
/// in the trace.
pub fn shared_keys<'a>(events: impl IntoIterator<Item = &'a BizEventRow>) -> BTreeSet<Key> {
    let mut by_kind: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for event in events {
        for (kind, value) in event.key_kinds.iter().zip(&event.key_values) {
            by_kind.entry(kind).or_default().insert(value);
        }
    }
    by_kind
        .into_iter()
        .filter(|(_, values)| values.len() == 1)
        .flat_map(|(kind, values)| values.into_iter().map(move |value| (kind.to_owned(), value.to_owned())))
        .collect()
}

/// A record's keys: its own and its trace's shared ones.
pub fn effective_keys(event: &BizEventRow, shared: &BTreeSet<Key>) -> BTreeSet<Key> {
    own_keys(event).chain(shared.iter().cloned()).collect()
}

/// Both directions of every link among `keys` (pairs of different kinds).
pub fn edges_among(keys: &BTreeSet<Key>, config: &LineageConfig, out: &mut BTreeSet<EdgeRow>) {
    edges_between(keys, keys, config, out);
}

/// Both directions of the links between `from` and `to` (of different kinds).
pub fn edges_between(from: &BTreeSet<Key>, to: &BTreeSet<Key>, config: &LineageConfig, out: &mut BTreeSet<EdgeRow>) {
    for a in from {
        for b in to {
            match config.rank(&a.0).cmp(&config.rank(&b.0)) {
                std::cmp::Ordering::Less => push_edge(a, b, out),
                std::cmp::Ordering::Greater => push_edge(b, a, out),
                std::cmp::Ordering::Equal => {}
            }
        }
    }
}

/// `upstream` → `downstream`, stored both ways.
fn push_edge(upstream: &Key, downstream: &Key, out: &mut BTreeSet<EdgeRow>) {
    out.insert(EdgeRow {
        kind: upstream.0.clone(),
        value: upstream.1.clone(),
        down: true,
        other_kind: downstream.0.clone(),
        other_value: downstream.1.clone(),
    });
    out.insert(EdgeRow {
        kind: downstream.0.clone(),
        value: downstream.1.clone(),
        down: false,
        other_kind: upstream.0.clone(),
        other_value: upstream.1.clone(),
    });
}

/// The keys reachable downstream from `root` over `down` (key → later keys).
pub fn closure(root: &Key, down: &BTreeMap<Key, BTreeSet<Key>>) -> BTreeSet<Key> {
    let mut seen = BTreeSet::from([root.clone()]);
    let mut frontier = vec![root.clone()];
    while let Some(key) = frontier.pop() {
        for next in down.get(&key).into_iter().flatten() {
            if seen.insert(next.clone()) {
                frontier.push(next.clone());
            }
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(keys: &[(&str, &str)]) -> BizEventRow {
        BizEventRow {
            key_kinds: keys.iter().map(|k| k.0.to_string()).collect(),
            key_values: keys.iter().map(|k| k.1.to_string()).collect(),
            ..Default::default()
        }
    }

    fn key(kind: &str, value: &str) -> Key {
        (kind.to_string(), value.to_string())
    }

    fn links(events: &[BizEventRow]) -> BTreeSet<(String, String)> {
        let config = LineageConfig::default();
        let shared = shared_keys(events);
        let mut edges = BTreeSet::new();
        for event in events {
            edges_among(&effective_keys(event, &shared), &config, &mut edges);
        }
        edges.into_iter().filter(|e| e.down).map(|e| (e.value, e.other_value)).collect()
    }

    fn pairs(items: &[(&str, &str)]) -> BTreeSet<(String, String)> {
        items.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn a_trace_shares_its_keys_with_records_that_carry_none() {
        let portal = [event(&[("order", "PO-1")]), event(&[]), event(&[("sales_order", "SO-9")])];
        assert_eq!(links(&portal), pairs(&[("PO-1", "SO-9")]));
        let shared = shared_keys(&portal);
        assert_eq!(effective_keys(&portal[1], &shared), BTreeSet::from([key("order", "PO-1"), key("sales_order", "SO-9")]));
    }

    #[test]
    fn a_split_shipment_links_both_shipments_to_the_one_sales_order() {
        let warehouse = [event(&[("sales_order", "SO-9")]), event(&[("shipment", "SH-1")]), event(&[("shipment", "SH-2")])];
        assert_eq!(links(&warehouse), pairs(&[("SO-9", "SH-1"), ("SO-9", "SH-2")]));
    }

    #[test]
    fn one_invoice_for_two_orders_links_it_to_each_and_never_the_orders_together() {
        let billing = [event(&[("order", "PO-1")]), event(&[("order", "PO-2")]), event(&[("invoice", "INV-7")])];
        assert_eq!(links(&billing), pairs(&[("PO-1", "INV-7"), ("PO-2", "INV-7")]));
    }

    #[test]
    fn a_batch_trace_of_many_orders_and_invoices_links_only_within_records() {
        let batch = [event(&[("order", "PO-1"), ("invoice", "INV-1")]), event(&[("order", "PO-2"), ("invoice", "INV-2")]), event(&[])];
        assert_eq!(links(&batch), pairs(&[("PO-1", "INV-1"), ("PO-2", "INV-2")]));
    }

    #[test]
    fn closure_follows_links_downstream_only() {
        let mut down: BTreeMap<Key, BTreeSet<Key>> = BTreeMap::new();
        down.entry(key("order", "PO-1")).or_default().insert(key("invoice", "INV-7"));
        down.entry(key("order", "PO-2")).or_default().insert(key("invoice", "INV-7"));
        down.entry(key("order", "PO-1")).or_default().insert(key("shipment", "SH-1"));
        let po1 = closure(&key("order", "PO-1"), &down);
        assert_eq!(po1, BTreeSet::from([key("order", "PO-1"), key("invoice", "INV-7"), key("shipment", "SH-1")]));
        assert!(!closure(&key("order", "PO-2"), &down).contains(&key("order", "PO-1")));
    }
}
