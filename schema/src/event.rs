//! The native change event: what the journal stores, what `transform` sees as
//! `.`, and the stdout sink's line.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::Lsn;

/// A row's column values by column name, in table column order.
pub type Row = Map<String, Value>;

/// Stable identity of one change, derived from its source position, so a
/// replay of the same WAL produces the same id.
///
/// Streamed changes: `<commit LSN as 16 hex digits>-<ordinal in the
/// transaction as 8 hex digits>`; ids of one source sort in commit order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(String);

impl EventId {
    /// The id of the `seq`-th change (0-based) of the transaction committed at `commit_lsn`.
    pub fn from_position(commit_lsn: Lsn, seq: u32) -> Self {
        EventId(format!("{:016X}-{:08X}", commit_lsn.0, seq))
    }

    /// Wraps an id read back from storage or from an operator.
    pub fn from_string(id: String) -> Self {
        EventId(id)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What happened to the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// A new row.
    Insert,
    /// A changed row.
    Update,
    /// A removed row.
    Delete,
    /// The whole table was emptied (`key`, `old` and `new` are null).
    Truncate,
    /// A row read by a snapshot or resync, not by the stream.
    Read,
    /// The table's columns changed (`columns`, `previous`); `key`, `old` and `new` are
    /// null. Only sinks with `schema_changes = true` receive it.
    Schema,
}

impl Op {
    /// The lowercase name used in events and headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Truncate => "truncate",
            Op::Read => "read",
            Op::Schema => "schema",
        }
    }
}

/// One committed row change in pgcdc's native shape (ARCHITECTURE.md, "Native event").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeEvent {
    /// Stable event id.
    pub id: EventId,
    /// Kind of change.
    pub op: Op,
    /// Schema of the table.
    pub schema: String,
    /// Table name.
    pub table: String,
    /// Primary key columns and values (null for truncate).
    pub key: Option<Row>,
    /// The row before the change, as far as it is known (see README: "What `.old` holds").
    pub old: Option<Row>,
    /// The row after the change, without unchanged TOAST columns.
    pub new: Option<Row>,
    /// The trigger that selected this event for a sink, if any.
    #[serde(default)]
    pub trigger: Option<String>,
    /// Commit LSN of the transaction.
    pub lsn: Lsn,
    /// Transaction id (null for snapshot rows).
    pub xid: Option<u32>,
    /// Commit time, RFC 3339 in UTC with microseconds.
    pub commit_time: Option<String>,
    /// Columns whose value did not change and was not sent (TOAST); absent from `new`.
    #[serde(default)]
    pub unchanged_toast: Vec<String>,
    /// A schema event's columns after the change (absent from row events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<Column>>,
    /// A schema event's columns before the change (absent from row events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Vec<Column>>,
}

/// One column of a table, as a schema event describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    /// Column name.
    pub name: String,
    /// Type as Postgres names it (`int4`, `numeric`, `_text` for text[]).
    #[serde(rename = "type")]
    pub type_name: String,
    /// Part of the key (primary key, else replica identity).
    pub key: bool,
}

impl ChangeEvent {
    /// `schema.table`.
    pub fn qualified_table(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }
}

/// Microseconds between the Unix epoch and the Postgres epoch (2000-01-01).
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// Converts a Postgres timestamp (µs since 2000-01-01 UTC) to RFC 3339 with microseconds.
pub fn pg_micros_to_rfc3339(pg_micros: i64) -> String {
    let unix = pg_micros.saturating_add(PG_EPOCH_OFFSET_MICROS);
    match chrono::DateTime::from_timestamp_micros(unix) {
        Some(t) => t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        None => pg_micros.to_string(),
    }
}

/// Converts a Postgres timestamp (µs since 2000-01-01) to Unix microseconds.
pub fn pg_micros_to_unix_micros(pg_micros: i64) -> i64 {
    pg_micros.saturating_add(PG_EPOCH_OFFSET_MICROS)
}

/// Converts a Postgres timestamp (µs since 2000-01-01) to Unix milliseconds.
pub fn pg_micros_to_unix_millis(pg_micros: i64) -> i64 {
    pg_micros.saturating_add(PG_EPOCH_OFFSET_MICROS) / 1000
}

/// The current time as a Postgres timestamp (µs since 2000-01-01 UTC).
pub fn now_pg_micros() -> i64 {
    chrono::Utc::now().timestamp_micros() - PG_EPOCH_OFFSET_MICROS
}

/// Parses JSON whose nesting is already bounded: json/jsonb values (checked
/// against [`crate::value::MAX_JSON_DEPTH`] first) and what pgcdc wrote itself
/// from them (journal payloads, DLQ items, remembered rows: that bound plus the
/// event's own few levels). serde_json's default limit of 128 levels, which would
/// refuse a stored document that was accepted when it was decoded, is off.
pub fn from_stored_json<T: serde::de::DeserializeOwned>(text: &str) -> serde_json::Result<T> {
    let mut de = serde_json::Deserializer::from_str(text);
    de.disable_recursion_limit();
    let value = T::deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_sort_in_commit_order() {
        let a = EventId::from_position(Lsn(0x16B3748), 2);
        let b = EventId::from_position(Lsn(0x16B3748), 10);
        let c = EventId::from_position(Lsn(0x1_0000_0000), 0);
        assert_eq!(a.as_str(), "00000000016B3748-00000002");
        assert!(a < b && b < c);
    }

    #[test]
    fn commit_time_is_rfc3339_utc() {
        assert_eq!(pg_micros_to_rfc3339(0), "2000-01-01T00:00:00.000000Z");
        assert_eq!(
            pg_micros_to_rfc3339(1_123_456),
            "2000-01-01T00:00:01.123456Z"
        );
        assert_eq!(pg_micros_to_unix_millis(0), 946_684_800_000);
    }

    #[test]
    fn native_event_has_the_contract_shape() {
        let mut key = Row::new();
        key.insert("id".into(), Value::from(42));
        let ev = ChangeEvent {
            id: EventId::from_position(Lsn(0x1A2B3C4), 0),
            op: Op::Update,
            schema: "public".into(),
            table: "permits".into(),
            key: Some(key.clone()),
            old: None,
            new: Some(key),
            trigger: Some("permitApproved".into()),
            lsn: Lsn(0x1A2B3C4),
            xid: Some(731),
            commit_time: Some("2026-11-26T10:00:00.123456Z".into()),
            unchanged_toast: vec!["notes".into()],
            columns: None,
            previous: None,
        };
        let v = serde_json::to_value(&ev).unwrap_or_default();
        let keys: Vec<&str> = v
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        assert_eq!(
            keys,
            [
                "id",
                "op",
                "schema",
                "table",
                "key",
                "old",
                "new",
                "trigger",
                "lsn",
                "xid",
                "commit_time",
                "unchanged_toast"
            ]
        );
        assert_eq!(v["op"], "update");
        assert_eq!(v["lsn"], "0/1A2B3C4");
        assert_eq!(v["old"], Value::Null);
        let back: ChangeEvent = serde_json::from_value(v).unwrap_or_else(|_| ev.clone());
        assert_eq!(back, ev);
    }
}
