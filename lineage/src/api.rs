//! The transactions JSON API (contract in docs/lineage.md):
//!
//! - `GET /api/v1/transactions?key=VALUE[&kind=KIND]` → `{"transactions": [T, ...]}`
//! - `GET /api/v1/transactions?state=STATE[&limit=N]` → the same, newest first
//! - `GET /api/v1/transactions/ID` → `T`, or 404 `{"error": "..."}`

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::time::{Duration, UNIX_EPOCH};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use waybill_store::sql::quote_string;
use waybill_store::{Store, StoreError, TransactionRow};

use crate::extract::OWN_TRACE_PREFIX;
use crate::journey::State as TxState;
use crate::resolve::TRANSACTION_COLUMNS;

const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 1000;

/// A transaction as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transaction {
    pub id: String,
    pub root: KeyRef,
    pub state: String,
    pub keys: Vec<KeyRef>,
    pub systems: Vec<String>,
    pub milestones: Vec<MilestoneRef>,
    pub overdue: Vec<Overdue>,
    pub started: String,
    pub updated: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRef {
    pub kind: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MilestoneRef {
    pub name: String,
    pub system: String,
    pub time: String,
    pub outcome: String,
    /// Empty for a record that came without trace context.
    pub trace_id: String,
    pub span_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overdue {
    pub milestone: String,
    pub due: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transactions {
    pub transactions: Vec<Transaction>,
}

impl From<TransactionRow> for Transaction {
    fn from(row: TransactionRow) -> Self {
        let milestones = crate::resolve::milestones_of(&row)
            .into_iter()
            .map(|m| MilestoneRef {
                name: m.name,
                system: m.system,
                time: rfc3339(m.time_ns),
                outcome: m.outcome,
                trace_id: if m.trace_id.starts_with(OWN_TRACE_PREFIX) { String::new() } else { m.trace_id },
                span_id: m.span_id,
            })
            .collect();
        Transaction {
            root: KeyRef { kind: row.root_kind, value: row.root_value },
            state: row.state,
            keys: row.key_kinds.into_iter().zip(row.key_values).map(|(kind, value)| KeyRef { kind, value }).collect(),
            systems: row.systems,
            milestones,
            overdue: row
                .overdue_milestones
                .into_iter()
                .zip(row.overdue_due_ns)
                .map(|(milestone, due)| Overdue { milestone, due: rfc3339(due) })
                .collect(),
            started: rfc3339(row.started_ns),
            updated: rfc3339(row.updated_ns),
            id: row.id,
        }
    }
}

/// RFC 3339 in UTC with nanoseconds, e.g. `2026-11-27T03:37:22.123456789Z`.
pub fn rfc3339(ns: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_nanos(ns.max(0) as u64);
    humantime::format_rfc3339_nanos(time).to_string()
}

/// The transaction with `id`, as last computed.
pub async fn by_id(store: &Store, id: &str) -> Result<Option<Transaction>, StoreError> {
    Ok(latest_row(store, id).await?.map(Transaction::from))
}

/// The stored row of transaction `id`, as last computed. Its versions that
/// merges have not replaced yet come back too (a few at most), and the
/// newest is picked here: sorting them in the engine made the query a
/// third dearer.
pub async fn latest_row(store: &Store, id: &str) -> Result<Option<TransactionRow>, StoreError> {
    let rows: Vec<TransactionRow> =
        store.fetch_all(&format!("SELECT {TRANSACTION_COLUMNS} FROM transactions WHERE Id = {}", quote_string(id))).await?;
    Ok(rows.into_iter().max_by_key(|row| row.version))
}

/// Stored versions [`by_key`] reads at most to pick the newest itself. A key
/// that more transactions share (a partner, a product) is narrowed by the
/// engine instead.
const VERSIONS_PICKED_HERE: usize = 1000;

/// Transactions with a key of this value (and kind, and in `state`),
/// newest first, at most `limit`.
///
/// Most keys belong to a few transactions: their stored versions are read
/// as they are and the newest of each picked here, as [`latest_row`] does
/// (on the lineage bench's store, 9-10 ms against 12-17 ms for the same
/// done by the engine). Only when a key has more versions than
/// [`VERSIONS_PICKED_HERE`] does the engine pick, sort and limit them.
pub async fn by_key(store: &Store, value: &str, kind: Option<&str>, state: Option<TxState>, limit: usize) -> Result<Vec<Transaction>, StoreError> {
    let kind = kind.map(|k| format!(" AND Kind = {}", quote_string(k))).unwrap_or_default();
    let ids = format!("SELECT Id FROM transaction_keys WHERE Value = {}{kind}", quote_string(value));
    let versions: Vec<TransactionRow> =
        store.fetch_all(&format!("SELECT {TRANSACTION_COLUMNS} FROM transactions WHERE Id IN ({ids}) LIMIT {VERSIONS_PICKED_HERE}")).await?;
    if versions.len() < VERSIONS_PICKED_HERE {
        return Ok(newest_first(versions, state, limit).into_iter().map(Transaction::from).collect());
    }
    let state = state.map(|s| format!(" WHERE State = {}", quote_string(s.as_str()))).unwrap_or_default();
    let sql = format!(
        "SELECT * FROM (SELECT {TRANSACTION_COLUMNS} FROM transactions WHERE Id IN ({ids}) \
         ORDER BY Version DESC LIMIT 1 BY Id){state} ORDER BY Updated DESC, Id LIMIT {limit}"
    );
    let rows: Vec<TransactionRow> = store.fetch_all(&sql).await?;
    Ok(rows.into_iter().map(Transaction::from).collect())
}

/// The newest version of each transaction among `versions`, those in
/// `state`, last updated first (then by id), at most `limit`.
fn newest_first(versions: Vec<TransactionRow>, state: Option<TxState>, limit: usize) -> Vec<TransactionRow> {
    let mut newest: HashMap<String, TransactionRow> = HashMap::new();
    for row in versions {
        match newest.entry(row.id.clone()) {
            Entry::Occupied(mut held) if held.get().version < row.version => {
                held.insert(row);
            }
            Entry::Occupied(_) => {}
            Entry::Vacant(slot) => {
                slot.insert(row);
            }
        }
    }
    let mut rows: Vec<TransactionRow> = newest.into_values().filter(|row| state.is_none_or(|s| row.state == s.as_str())).collect();
    rows.sort_by(|a, b| b.updated_ns.cmp(&a.updated_ns).then_with(|| a.id.cmp(&b.id)));
    rows.truncate(limit);
    rows
}

/// Transactions in `state`, newest (last updated) first.
pub async fn by_state(store: &Store, state: TxState, limit: usize) -> Result<Vec<Transaction>, StoreError> {
    let sql = format!(
        "SELECT {TRANSACTION_COLUMNS} FROM transactions FINAL WHERE State = {} ORDER BY Updated DESC, Id LIMIT {limit}",
        quote_string(state.as_str())
    );
    let rows: Vec<TransactionRow> = store.fetch_all(&sql).await?;
    Ok(rows.into_iter().map(Transaction::from).collect())
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    key: Option<String>,
    kind: Option<String>,
    state: Option<String>,
    limit: Option<usize>,
}

/// `/api/v1/transactions` and `/api/v1/transactions/{id}` over `store`.
pub fn router(store: Store) -> Router {
    Router::new()
        .route("/api/v1/transactions", get(list))
        .route("/api/v1/transactions/{id}", get(one))
        .with_state(store)
}

async fn list(State(store): State<Store>, query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>) -> Response {
    let Ok(Query(query)) = query else {
        return error(StatusCode::BAD_REQUEST, "the query string is malformed: use key=VALUE[&kind=KIND] or state=STATE[&limit=N]");
    };
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let state = match query.state.as_deref().map(|s| (s, TxState::parse(s))) {
        Some((text, None)) => {
            return error(StatusCode::BAD_REQUEST, &format!("unknown state {text:?}: use in_flight, completed, failed or stuck"));
        }
        Some((_, state)) => state,
        None => None,
    };
    let result = match (query.key.as_deref(), state) {
        (Some(key), state) => by_key(&store, key, query.kind.as_deref(), state, limit).await,
        (None, Some(state)) => by_state(&store, state, limit).await,
        (None, None) => return error(StatusCode::BAD_REQUEST, "give key=VALUE (optionally kind=KIND) or state=STATE"),
    };
    match result {
        Ok(transactions) => Json(Transactions { transactions }).into_response(),
        Err(err) => error(StatusCode::SERVICE_UNAVAILABLE, &format!("the store did not answer: {err}")),
    }
}

async fn one(State(store): State<Store>, Path(id): Path<String>) -> Response {
    match by_id(&store, &id).await {
        Ok(Some(transaction)) => Json(transaction).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, &format!("no transaction with id {id:?}")),
        Err(err) => error(StatusCode::SERVICE_UNAVAILABLE, &format!("the store did not answer: {err}")),
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}
