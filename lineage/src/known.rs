//! What the resolver remembers of the key graph between steps, so that a
//! step asks the store only about keys it has not met, and writes only
//! rows the store does not hold already (links, key → trace rows, and the
//! key index of transactions, which a transaction's every update would
//! otherwise write again whole).
//!
//! The resolver is the only writer of `biz_edges`, `biz_key_traces` and
//! `transaction_keys`. Every list of links or traces remembered for a key
//! is complete: either read whole from the store, or started empty for a
//! key the store has never held, and from then on added to with every row
//! the resolver writes. Whether the store
//! has ever held a key is answered by a Bloom filter over every key of the
//! two tables, read at the first step and grown with every write: its "no"
//! is certain, its "maybe" (about one new key in a hundred) costs a query.
//!
//! Remembered keys are found by their xxHash64, the filter's hash too, and
//! each keeps its own key, so two keys with one hash are never confused:
//! the later simply takes the earlier's place.
//!
//! Memory is bounded: keys live in two generations of half of
//! `lineage.remembered_keys` each; a key read again moves to the newer one,
//! and the older generation is dropped whole when the newer one fills.
//! A remembered key with a link, a trace and a transaction takes about
//! 450 bytes, so the default 200,000 keys hold about 90 MB; a
//! key with more than [`MAX_PER_KEY`] links or traces (a busy partner) is
//! not remembered.
//! Forgetting only ever costs queries, so after a failed step the resolver
//! forgets everything rather than reason about a half-written step.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};

use twox_hash::XxHash64;
use waybill_store::{EdgeRow, KeyTraceRow, TransactionKeyRow};

use crate::graph::Key;

/// Links or traces remembered per key and direction at most: a key shared
/// by more (a partner, a SKU) is read from the store each time instead.
const MAX_PER_KEY: usize = 1000;
/// The filter is sized for twice the keys stored when it is read, and
/// never for fewer than this.
const MIN_FILTER_KEYS: usize = 1_000_000;
/// Bits per key and hash functions for about a 1 % false-positive rate.
const BITS_PER_KEY: usize = 10;
const HASHES: u64 = 7;
/// The filter's bits of one key lie in one block of this many words (a
/// cache line), so a look-up costs one cache miss instead of seven.
const BLOCK_WORDS: usize = 8;

/// A key packed as `<kind length>:<kind><value>` in one allocation, which
/// halves what a remembered key costs; the length keeps any kind and value
/// apart, NUL and `:` included.
type Packed = Box<str>;

fn pack(kind: &str, value: &str) -> Packed {
    let len = kind.len().to_string();
    let mut packed = String::with_capacity(len.len() + 1 + kind.len() + value.len());
    for part in [len.as_str(), ":", kind, value] {
        packed.push_str(part);
    }
    packed.into_boxed_str()
}

/// The kind and value of a packed key.
fn parts(packed: &str) -> (&str, &str) {
    let (len, rest) = packed.split_once(':').expect("packed keys start with their kind's length");
    rest.split_at(len.parse().expect("packed keys start with their kind's length"))
}

fn unpack(packed: &str) -> Key {
    let (kind, value) = parts(packed);
    (kind.to_owned(), value.to_owned())
}

/// A key with its hash ([`key_hash`]), which both the filter and the
/// remembered facts are looked up by.
struct Hashed<'a> {
    kind: &'a str,
    value: &'a str,
    hash: u64,
}

impl<'a> Hashed<'a> {
    fn new(kind: &'a str, value: &'a str) -> Self {
        Hashed { kind, value, hash: key_hash(kind, value) }
    }
}

/// The store's answer for one key, remembered: `None` where not known.
struct Facts {
    /// The key itself: two keys with one hash are told apart by it.
    key: Packed,
    up: Option<Vec<Packed>>,
    down: Option<Vec<Packed>>,
    traces: Option<Vec<Box<str>>>,
    /// Transactions the key index (`transaction_keys`) holds this key
    /// under, as far as the resolver wrote them: not a complete list,
    /// only enough to skip writing the same index row again.
    indexed: Vec<Box<str>>,
}

impl Facts {
    fn new(key: Packed) -> Self {
        Facts { key, up: None, down: None, traces: None, indexed: Vec::new() }
    }

    fn is(&self, key: &Hashed) -> bool {
        parts(&self.key) == (key.kind, key.value)
    }

    fn edges_read(&self, down: bool) -> Option<&Vec<Packed>> {
        if down {
            self.down.as_ref()
        } else {
            self.up.as_ref()
        }
    }

    fn edges(&mut self, down: bool) -> &mut Option<Vec<Packed>> {
        if down {
            &mut self.down
        } else {
            &mut self.up
        }
    }
}

pub(crate) struct KnownGraph {
    filter: Option<KeyFilter>,
    /// By key hash. A key whose hash another key holds is not remembered.
    facts: Generations<u64, Facts, BuildHasherDefault<Unhashed>>,
}

impl KnownGraph {
    /// Remembers up to `keys` keys, in two generations of half as many.
    pub fn new(keys: usize) -> Self {
        KnownGraph { filter: None, facts: Generations::new(keys.div_ceil(2).max(1)) }
    }

    /// True until a filter is in place (at the first step, after a failed
    /// one, or once the filter holds more keys than it was sized for).
    pub fn needs_filter(&self) -> bool {
        self.filter.as_ref().is_none_or(KeyFilter::is_full)
    }

    pub fn set_filter(&mut self, filter: KeyFilter) {
        self.filter = Some(filter);
    }

    /// Forgets everything, the filter included.
    pub fn forget(&mut self) {
        self.filter = None;
        self.facts.clear();
    }

    /// The complete edges of `key` in one direction, if known without asking the store.
    pub fn edges(&mut self, key: &Key, down: bool) -> Option<Vec<Key>> {
        let key = Hashed::new(&key.0, &key.1);
        if let Some(others) = self.facts(&key).and_then(|facts| facts.edges_read(down)) {
            return Some(others.iter().map(|other| unpack(other)).collect());
        }
        self.never_stored(&key).then(Vec::new)
    }

    /// The complete traces of `key`, if known without asking the store.
    pub fn traces(&mut self, key: &Key) -> Option<Vec<String>> {
        let key = Hashed::new(&key.0, &key.1);
        if let Some(traces) = self.facts(&key).and_then(|facts| facts.traces.as_ref()) {
            return Some(traces.iter().map(|trace| trace.to_string()).collect());
        }
        self.never_stored(&key).then(Vec::new)
    }

    /// Remembers what the store answered for `asked`: all their edges in
    /// one direction are among `rows` (distinct).
    pub fn learned_edges(&mut self, asked: &[Key], rows: &[EdgeRow], down: bool) {
        let found = per_key(
            asked,
            rows.iter().filter(|row| row.down == down).map(|row| (&row.kind, &row.value, pack(&row.other_kind, &row.other_value))),
        );
        for (key, list) in found {
            let (kind, value) = parts(&key);
            *self.facts_or_new(&Hashed::new(kind, value)).edges(down) = list;
        }
    }

    /// Remembers what the store answered for `asked`: all their traces are
    /// among `rows` (distinct).
    pub fn learned_traces(&mut self, asked: &[Key], rows: &[KeyTraceRow]) {
        let found = per_key(asked, rows.iter().map(|row| (&row.kind, &row.value, Box::<str>::from(row.trace_id.as_str()))));
        for (key, list) in found {
            let (kind, value) = parts(&key);
            self.facts_or_new(&Hashed::new(kind, value)).traces = list;
        }
    }

    // The three questions below (is this row stored?) leave the
    // generations as they are: moving every key they ask about to the newer
    // generation would fill it sooner and make the resolver forget keys it
    // is about to need.

    /// Whether the store holds `row`, as far as remembered.
    pub fn has_edge(&self, row: &EdgeRow) -> bool {
        let other = (row.other_kind.as_str(), row.other_value.as_str());
        self.peek(&Hashed::new(&row.kind, &row.value))
            .and_then(|facts| facts.edges_read(row.down))
            .is_some_and(|others| others.iter().any(|known| parts(known) == other))
    }

    /// Whether the store holds `row`, as far as remembered.
    pub fn has_key_trace(&self, row: &KeyTraceRow) -> bool {
        self.peek(&Hashed::new(&row.kind, &row.value))
            .and_then(|facts| facts.traces.as_ref())
            .is_some_and(|traces| traces.iter().any(|known| **known == *row.trace_id))
    }

    /// Whether the key index holds `key` → transaction `id`, as far as the
    /// resolver remembers writing it.
    pub fn indexed(&self, key: &Key, id: &str) -> bool {
        self.peek(&Hashed::new(&key.0, &key.1)).is_some_and(|facts| facts.indexed.iter().any(|known| **known == *id))
    }

    /// Adds edges the resolver has just stored.
    pub fn wrote_edges(&mut self, rows: &[EdgeRow]) {
        for row in rows {
            let key = Hashed::new(&row.kind, &row.value);
            if let Some(facts) = self.facts_to_extend(&key) {
                extend(facts.edges(row.down), pack(&row.other_kind, &row.other_value));
            }
            self.add_to_filter(&key);
        }
    }

    /// Adds key → trace rows the resolver has just stored.
    pub fn wrote_key_traces(&mut self, rows: &[KeyTraceRow]) {
        for row in rows {
            let key = Hashed::new(&row.kind, &row.value);
            if let Some(facts) = self.facts_to_extend(&key) {
                extend(&mut facts.traces, row.trace_id.as_str().into());
            }
            self.add_to_filter(&key);
        }
    }

    /// Adds key index rows the resolver has just stored, to the keys it
    /// remembers, where they are (the others are simply written again).
    pub fn wrote_transaction_keys(&mut self, rows: &[TransactionKeyRow]) {
        for row in rows {
            let Some(facts) = self.peek_mut(&Hashed::new(&row.kind, &row.value)) else { continue };
            if facts.indexed.len() < MAX_PER_KEY && !facts.indexed.iter().any(|known| **known == *row.id) {
                facts.indexed.push(row.id.as_str().into());
            }
        }
    }

    /// The facts of `key` that a write must extend: remembered ones, or
    /// empty complete ones for a key the store never held until now.
    fn facts_to_extend(&mut self, key: &Hashed) -> Option<&mut Facts> {
        if self.never_stored(key) {
            let facts = self.facts_or_new(key);
            for list in [&mut facts.up, &mut facts.down] {
                list.get_or_insert_with(Vec::new);
            }
            facts.traces.get_or_insert_with(Vec::new);
            return Some(facts);
        }
        self.facts(key)
    }

    fn add_to_filter(&mut self, key: &Hashed) {
        if let Some(filter) = &mut self.filter {
            filter.insert(key.hash);
        }
    }

    fn never_stored(&self, key: &Hashed) -> bool {
        self.filter.as_ref().is_some_and(|filter| !filter.may_contain(key.hash))
    }

    fn facts(&mut self, key: &Hashed) -> Option<&mut Facts> {
        self.facts.get(&key.hash).filter(|facts| facts.is(key))
    }

    /// The facts of `key`, leaving the generations as they are.
    fn peek(&self, key: &Hashed) -> Option<&Facts> {
        self.facts.peek(&key.hash).filter(|facts| facts.is(key))
    }

    fn peek_mut(&mut self, key: &Hashed) -> Option<&mut Facts> {
        self.facts.peek_mut(&key.hash).filter(|facts| facts.is(key))
    }

    /// The facts of `key`, new and empty if it was not remembered (and
    /// in place of another key with the same hash).
    fn facts_or_new(&mut self, key: &Hashed) -> &mut Facts {
        if self.facts(key).is_none() {
            self.facts.insert(key.hash, Facts::new(pack(key.kind, key.value)));
        }
        self.facts.get(&key.hash).expect("just inserted")
    }

    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.facts.len()
    }
}

/// A map that keeps what was used lately: two generations of at most
/// `limit` entries; an entry read moves to the newer one, and the older is
/// dropped whole when the newer one fills.
pub(crate) struct Generations<K, V, S> {
    newer: HashMap<K, V, S>,
    older: HashMap<K, V, S>,
    limit: usize,
}

impl<K: Hash + Eq + Clone, V, S: BuildHasher + Default> Generations<K, V, S> {
    pub fn new(limit: usize) -> Self {
        Generations { newer: HashMap::default(), older: HashMap::default(), limit }
    }

    pub fn get(&mut self, key: &K) -> Option<&mut V> {
        if !self.newer.contains_key(key) {
            let value = self.older.remove(key)?;
            self.insert(key.clone(), value);
        }
        self.newer.get_mut(key)
    }

    /// The entry of `key`, in whichever generation it is, without moving it.
    pub fn peek(&self, key: &K) -> Option<&V> {
        self.newer.get(key).or_else(|| self.older.get(key))
    }

    pub fn peek_mut(&mut self, key: &K) -> Option<&mut V> {
        match self.newer.get_mut(key) {
            Some(value) => Some(value),
            None => self.older.get_mut(key),
        }
    }

    pub fn insert(&mut self, key: K, value: V) {
        if self.newer.len() >= self.limit && !self.newer.contains_key(&key) {
            self.older = std::mem::take(&mut self.newer);
        }
        self.older.remove(&key);
        self.newer.insert(key, value);
    }

    pub fn clear(&mut self) {
        self.newer.clear();
        self.older.clear();
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.newer.len() + self.older.len()
    }
}

/// The hasher of maps whose keys are hashes already ([`key_hash`]).
#[derive(Default)]
pub(crate) struct Unhashed(u64);

impl Hasher for Unhashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, hash: u64) {
        self.0 = hash;
    }
}

/// The items of each of `asked` among distinct `(kind, value, item)` rows;
/// `None` for a key with more than [`MAX_PER_KEY`], which is not remembered.
fn per_key<'a, T>(asked: &[Key], rows: impl Iterator<Item = (&'a String, &'a String, T)>) -> HashMap<Packed, Option<Vec<T>>> {
    let mut found: HashMap<Packed, Option<Vec<T>>> = asked.iter().map(|key| (pack(&key.0, &key.1), Some(Vec::new()))).collect();
    for (kind, value, item) in rows {
        if let Some(list) = found.get_mut(&pack(kind, value)) {
            match list {
                Some(items) if items.len() < MAX_PER_KEY => items.push(item),
                _ => *list = None,
            }
        }
    }
    found
}

/// Adds `item` to a remembered list; a list grown past [`MAX_PER_KEY`] is
/// forgotten (it is read from the store when needed).
fn extend<T: PartialEq>(list: &mut Option<Vec<T>>, item: T) {
    let Some(items) = list else { return };
    if !items.contains(&item) {
        if items.len() >= MAX_PER_KEY {
            *list = None;
        } else {
            items.push(item);
        }
    }
}

/// A key's hash, the same as the engine's
/// `xxHash64(concat(Kind, '\0', Value))` ([`KEY_HASH_SQL`]).
pub fn key_hash(kind: &str, value: &str) -> u64 {
    // In one pass: the streaming hasher copies short input into a buffer
    // first. Keys are short, so they are joined on the stack.
    let len = kind.len() + 1 + value.len();
    let mut stack = [0u8; 128];
    let mut heap = Vec::new();
    let joined: &mut [u8] = if len <= stack.len() {
        &mut stack[..len]
    } else {
        heap.resize(len, 0);
        &mut heap
    };
    joined[..kind.len()].copy_from_slice(kind.as_bytes());
    joined[kind.len() + 1..].copy_from_slice(value.as_bytes());
    XxHash64::oneshot(0, joined)
}

/// [`key_hash`] in SQL, over a table's `Kind` and `Value` columns.
pub const KEY_HASH_SQL: &str = "xxHash64(concat(Kind, '\\0', Value))";

/// A Bloom filter over key hashes: no false negatives.
pub(crate) struct KeyFilter {
    bits: Vec<u64>,
    capacity: usize,
    inserted: usize,
}

impl KeyFilter {
    /// A filter for `stored` keys and as many again.
    pub fn for_keys(stored: usize) -> Self {
        let capacity = (stored * 2).max(MIN_FILTER_KEYS);
        let blocks = (capacity * BITS_PER_KEY).div_ceil(BLOCK_WORDS * 64);
        KeyFilter { bits: vec![0; blocks * BLOCK_WORDS], capacity, inserted: 0 }
    }

    pub fn insert(&mut self, hash: u64) {
        // Only keys it did not hold count towards its size (bar the 1 %
        // it wrongly claims), so rewriting known keys never fills it.
        if !self.may_contain(hash) {
            self.inserted += 1;
        }
        for bit in self.positions(hash) {
            self.bits[bit / 64] |= 1 << (bit % 64);
        }
    }

    pub fn may_contain(&self, hash: u64) -> bool {
        self.positions(hash).all(|bit| self.bits[bit / 64] & (1 << (bit % 64)) != 0)
    }

    /// Keys inserted that it did not hold before.
    pub fn inserted(&self) -> usize {
        self.inserted
    }

    /// More insertions than it was sized for: its "maybe" grows common.
    pub fn is_full(&self) -> bool {
        self.inserted > self.capacity
    }

    /// `HASHES` positions in one block: the block from the hash's upper
    /// half, the bits in it by double hashing on two 16-bit parts of the
    /// lower half (an odd step visits distinct bits of the 512).
    fn positions(&self, hash: u64) -> impl Iterator<Item = usize> {
        const BLOCK_BITS: u64 = (BLOCK_WORDS * 64) as u64;
        let blocks = (self.bits.len() / BLOCK_WORDS) as u64;
        let base = (hash >> 32) % blocks * BLOCK_BITS;
        let (first, second) = (hash & 0xffff, ((hash >> 16) & 0xffff) | 1);
        (0..HASHES).map(move |i| (base + first.wrapping_add(i * second) % BLOCK_BITS) as usize)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    const REMEMBERED_KEYS: usize = 20_000;

    fn key(kind: &str, value: &str) -> Key {
        (kind.to_string(), value.to_string())
    }

    fn edge(from: &Key, down: bool, to: &Key) -> EdgeRow {
        EdgeRow { kind: from.0.clone(), value: from.1.clone(), down, other_kind: to.0.clone(), other_value: to.1.clone() }
    }

    #[test]
    fn key_hashes_are_the_engines() {
        // From the engine: SELECT xxHash64(concat(kind, '\0', value)).
        assert_eq!(key_hash("order", "PO-1"), 13258304070420010043);
        assert_eq!(key_hash("sales_order", &"SO-é".repeat(60)), 15440356760610578804);
        assert_eq!(key_hash("", ""), 16804241149081757544);
    }

    fn with_empty_filter() -> KnownGraph {
        let mut known = KnownGraph::new(REMEMBERED_KEYS);
        known.set_filter(KeyFilter::for_keys(0));
        known
    }

    #[test]
    fn the_filter_never_forgets_a_key_and_rarely_claims_one() {
        let mut filter = KeyFilter::for_keys(0);
        for i in 0..100_000 {
            filter.insert(key_hash("order", &format!("PO-{i}")));
        }
        assert!((0..100_000).all(|i| filter.may_contain(key_hash("order", &format!("PO-{i}")))));
        let claimed = (0..100_000).filter(|i| filter.may_contain(key_hash("order", &format!("PO-x{i}")))).count();
        // Sized for a million keys and holding a tenth of that, it claims far under 1 %.
        assert!(claimed < 100, "{claimed} false positives in 100,000");
        assert!(!filter.is_full());
    }

    #[test]
    fn packed_keys_keep_any_kind_and_value_apart() {
        let keys = [key("order\0x", "1"), key("order", "x\u{0}1"), key("a:b", ":c"), key("", ""), key("ü", "ß\0")];
        let packed: BTreeSet<Packed> = keys.iter().map(|k| pack(&k.0, &k.1)).collect();
        assert_eq!(packed.len(), keys.len());
        for k in &keys {
            assert_eq!(&unpack(&pack(&k.0, &k.1)), k);
        }
    }

    #[test]
    fn a_key_shared_by_very_many_traces_is_read_from_the_store_instead() {
        let mut known = with_empty_filter();
        let partner = key("partner", "ACME");
        let rows = |range: std::ops::Range<usize>| -> Vec<KeyTraceRow> {
            range.map(|i| KeyTraceRow { kind: partner.0.clone(), value: partner.1.clone(), trace_id: format!("t{i}") }).collect()
        };
        known.wrote_key_traces(&rows(0..MAX_PER_KEY));
        assert_eq!(known.traces(&partner).map(|t| t.len()), Some(MAX_PER_KEY));
        known.wrote_key_traces(&rows(MAX_PER_KEY..MAX_PER_KEY + 1));
        assert_eq!(known.traces(&partner), None, "forgotten, not cut short");
        known.learned_traces(std::slice::from_ref(&partner), &rows(0..MAX_PER_KEY + 1));
        assert_eq!(known.traces(&partner), None, "too many to remember");
    }

    #[test]
    fn rewriting_known_keys_does_not_fill_the_filter() {
        let mut filter = KeyFilter::for_keys(0);
        for _ in 0..3 {
            for i in 0..MIN_FILTER_KEYS / 2 {
                filter.insert(key_hash("order", &format!("PO-{i}")));
            }
        }
        assert!(filter.inserted <= MIN_FILTER_KEYS / 2);
        assert!(!filter.is_full());
    }

    #[test]
    fn two_keys_with_one_hash_are_never_taken_for_each_other() {
        let mut known = KnownGraph::new(REMEMBERED_KEYS);
        let (po1, po2) = (key("order", "PO-1"), key("order", "PO-2"));
        let row = |k: &Key, trace: &str| KeyTraceRow { kind: k.0.clone(), value: k.1.clone(), trace_id: trace.into() };
        known.learned_traces(std::slice::from_ref(&po1), &[row(&po1, "t1")]);
        // PO-2 as if its hash were PO-1's.
        let clash = Hashed { kind: &po2.0, value: &po2.1, hash: key_hash(&po1.0, &po1.1) };
        assert!(known.facts(&clash).is_none(), "PO-1's traces are not PO-2's");
        // Remembering PO-2 there forgets PO-1, which is then read from the store, never answered wrongly.
        known.facts_or_new(&clash).traces = Some(vec!["t2".into()]);
        assert_eq!(known.traces(&po1), None);
        assert_eq!(known.facts(&clash).and_then(|facts| facts.traces.clone()), Some(vec!["t2".into()]));
    }

    #[test]
    fn without_a_filter_only_what_was_read_is_known() {
        let mut known = KnownGraph::new(REMEMBERED_KEYS);
        let (po, so) = (key("order", "PO-1"), key("sales_order", "SO-1"));
        assert_eq!(known.edges(&so, false), None);
        known.learned_edges(std::slice::from_ref(&so), &[edge(&so, false, &po)], false);
        assert_eq!(known.edges(&so, false), Some(vec![po.clone()]));
        assert_eq!(known.edges(&so, true), None, "the other direction was not read");
        // A write extends what was read, and tells nothing of unread keys.
        let sh = key("shipment", "SH-1");
        known.wrote_edges(&[edge(&so, false, &key("order", "PO-2")), edge(&sh, false, &so)]);
        assert_eq!(known.edges(&so, false), Some(vec![po, key("order", "PO-2")]));
        assert_eq!(known.edges(&sh, false), None);
    }

    #[test]
    fn a_key_the_store_never_held_is_known_from_the_writes_alone() {
        let mut known = with_empty_filter();
        let (po, so) = (key("order", "PO-1"), key("sales_order", "SO-1"));
        assert_eq!(known.edges(&po, true), Some(vec![]));
        assert_eq!(known.traces(&po), Some(vec![]));
        known.wrote_edges(&[edge(&po, true, &so), edge(&so, false, &po)]);
        known.wrote_key_traces(&[KeyTraceRow { kind: po.0.clone(), value: po.1.clone(), trace_id: "t1".into() }]);
        assert_eq!(known.edges(&po, true), Some(vec![so.clone()]));
        assert_eq!(known.edges(&po, false), Some(vec![]));
        assert_eq!(known.edges(&so, false), Some(vec![po.clone()]));
        assert_eq!(known.traces(&po), Some(vec!["t1".to_string()]));
        assert_eq!(known.traces(&so), Some(vec![]), "its edge was written before its traces");
    }

    #[test]
    fn only_rows_read_or_written_count_as_stored() {
        let mut known = KnownGraph::new(REMEMBERED_KEYS);
        let (po, so) = (key("order", "PO-1"), key("sales_order", "SO-1"));
        let key_trace = |trace: &str| KeyTraceRow { kind: po.0.clone(), value: po.1.clone(), trace_id: trace.into() };
        let index_row = |id: &str| TransactionKeyRow { value: po.1.clone(), kind: po.0.clone(), id: id.into() };
        assert!(!known.has_edge(&edge(&po, true, &so)));
        assert!(!known.has_key_trace(&key_trace("t1")));
        assert!(!known.indexed(&po, "tx-1"));
        known.learned_edges(std::slice::from_ref(&po), &[edge(&po, true, &so)], true);
        known.wrote_key_traces(&[key_trace("t1")]);
        known.wrote_transaction_keys(&[index_row("tx-1")]);
        known.wrote_transaction_keys(&[TransactionKeyRow { value: "SO-9".into(), kind: "sales_order".into(), id: "tx-1".into() }]);
        assert!(!known.indexed(&key("sales_order", "SO-9"), "tx-1"), "only remembered keys keep their index rows");
        assert!(known.has_edge(&edge(&po, true, &so)));
        assert!(!known.has_edge(&edge(&po, false, &so)), "the other direction is another row");
        assert!(!known.has_edge(&edge(&po, true, &key("sales_order", "SO-2"))));
        // The key's traces were never read whole, so the one written is not
        // remembered either (a list is kept only when complete): it would be written again.
        assert!(!known.has_key_trace(&key_trace("t1")), "a partial list is not remembered");
        assert!(known.indexed(&po, "tx-1"));
        assert!(!known.indexed(&po, "tx-2"));
        assert!(!known.indexed(&so, "tx-1"));
        known.forget();
        assert!(!known.has_edge(&edge(&po, true, &so)));
        assert!(!known.indexed(&po, "tx-1"));
    }

    #[test]
    fn a_key_in_the_store_but_not_remembered_must_be_read() {
        let mut known = KnownGraph::new(REMEMBERED_KEYS);
        let mut filter = KeyFilter::for_keys(0);
        let po = key("order", "PO-1");
        filter.insert(key_hash(&po.0, &po.1));
        known.set_filter(filter);
        assert_eq!(known.edges(&po, true), None);
        // A write to it now does not make a partial list look complete.
        known.wrote_edges(&[edge(&po, true, &key("sales_order", "SO-1"))]);
        assert_eq!(known.edges(&po, true), None);
    }

    #[test]
    fn memory_stays_within_two_generations_and_what_is_used_stays() {
        let mut known = KnownGraph::new(REMEMBERED_KEYS);
        let hot = key("order", "PO-hot");
        known.learned_traces(std::slice::from_ref(&hot), &[]);
        for i in 0..REMEMBERED_KEYS * 2 {
            let cold = key("order", &format!("PO-{i}"));
            known.learned_traces(std::slice::from_ref(&cold), &[]);
            if i % 1000 == 0 {
                assert_eq!(known.traces(&hot), Some(vec![]));
            }
        }
        assert!(known.remembered() <= REMEMBERED_KEYS);
        assert_eq!(known.traces(&hot), Some(vec![]));
        assert_eq!(known.traces(&key("order", "PO-0")), None, "the oldest are forgotten");
        known.forget();
        assert_eq!(known.remembered(), 0);
        assert!(known.needs_filter());
    }
}
