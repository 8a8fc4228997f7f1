//! Silences: an alert whose labels include every matcher of an active
//! silence is evaluated as usual but not delivered.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use waybill_store::sql::quote_string;
use waybill_store::{SilenceRow, Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Silence {
    pub id: String,
    /// Label → value; all must equal the alert's.
    pub matchers: BTreeMap<String, String>,
    pub starts_at: String,
    pub ends_at: String,
    pub created_by: String,
    pub comment: String,
    #[serde(skip)]
    pub ends_at_ns: i64,
}

impl Silence {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matchers.iter().all(|(name, value)| labels.get(name) == Some(value))
    }

    fn from_row(row: SilenceRow) -> Silence {
        Silence {
            id: row.id,
            matchers: row.matchers.into_iter().collect(),
            starts_at: crate::rfc3339(row.starts_at_ns),
            ends_at: crate::rfc3339(row.ends_at_ns),
            created_by: row.created_by,
            comment: row.comment,
            ends_at_ns: row.ends_at_ns,
        }
    }
}

/// What `POST /api/v1/silences` takes: matchers, and `duration` (`2h`) or
/// `ends_at` (RFC 3339).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSilence {
    pub matchers: BTreeMap<String, String>,
    #[serde(default)]
    pub duration: Option<String>,
    #[serde(default)]
    pub ends_at: Option<String>,
    #[serde(default)]
    pub created_by: String,
    #[serde(default)]
    pub comment: String,
}

const COLUMNS: &str = "Id, Matchers, StartsAt, EndsAt, CreatedBy, Comment, Version";

/// Silences in force at `now_ns`.
pub async fn active(store: &Store, now_ns: i64) -> Result<Vec<Silence>, StoreError> {
    let rows: Vec<SilenceRow> = store
        .fetch_all(&format!(
            "SELECT {COLUMNS} FROM alert_silences FINAL WHERE StartsAt <= fromUnixTimestamp64Nano({now_ns}) AND EndsAt > fromUnixTimestamp64Nano({now_ns}) ORDER BY EndsAt"
        ))
        .await?;
    Ok(rows.into_iter().map(Silence::from_row).collect())
}

/// Stores a new silence; a message saying what to fix if the request is wrong.
pub async fn create(store: &Store, request: NewSilence, now_ns: i64) -> Result<Result<Silence, String>, StoreError> {
    if request.matchers.is_empty() || request.matchers.keys().any(String::is_empty) {
        return Ok(Err("give at least one matcher, e.g. {\"alertname\": \"order_acceptance\"}".into()));
    }
    let ends_at_ns = match (&request.duration, &request.ends_at) {
        (Some(duration), None) => match humantime::parse_duration(duration) {
            Ok(d) => now_ns.saturating_add(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)),
            Err(err) => return Ok(Err(format!("duration {duration:?} is not like 30m or 2h: {err}"))),
        },
        (None, Some(ends_at)) => match humantime::parse_rfc3339_weak(ends_at) {
            Ok(t) => match t.duration_since(std::time::UNIX_EPOCH).ok().and_then(|d| i64::try_from(d.as_nanos()).ok()) {
                Some(ns) => ns,
                None => return Ok(Err(format!("ends_at {ends_at:?} is out of range: give a time between 1970 and 2262"))),
            },
            Err(err) => return Ok(Err(format!("ends_at {ends_at:?} is not an RFC 3339 time: {err}"))),
        },
        _ => return Ok(Err("give either duration (e.g. \"2h\") or ends_at (RFC 3339)".into())),
    };
    if ends_at_ns <= now_ns {
        return Ok(Err("the silence would end before it starts".into()));
    }
    let identity = format!("{now_ns}/{:?}/{}", request.matchers, request.created_by);
    let row = SilenceRow {
        id: format!("{:016x}", cityhash_rs::cityhash_102_128(identity.as_bytes()) as u64),
        matchers: request.matchers.into_iter().collect(),
        starts_at_ns: now_ns,
        ends_at_ns,
        created_by: request.created_by,
        comment: request.comment,
        version: now_ns as u64,
    };
    store.insert("alert_silences", std::slice::from_ref(&row)).await?;
    Ok(Ok(Silence::from_row(row)))
}

/// Ends the silence `id` now; `None` if there is no such silence.
pub async fn expire(store: &Store, id: &str, now_ns: i64) -> Result<Option<Silence>, StoreError> {
    let rows: Vec<SilenceRow> =
        store.fetch_all(&format!("SELECT {COLUMNS} FROM alert_silences FINAL WHERE Id = {}", quote_string(id))).await?;
    let Some(mut row) = rows.into_iter().next() else {
        return Ok(None);
    };
    row.ends_at_ns = row.ends_at_ns.min(now_ns);
    row.version = (now_ns as u64).max(row.version + 1);
    store.insert("alert_silences", std::slice::from_ref(&row)).await?;
    Ok(Some(Silence::from_row(row)))
}
