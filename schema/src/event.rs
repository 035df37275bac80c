//! The native change event: what the journal stores, what `transform` sees as
//! `.`, and the stdout sink's line.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Lsn;

pub use crate::row::{Name, Row};

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
        // `format!("{:016X}-{:08X}")` by hand: one per change, on the hot path.
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        let mut out = [0u8; 25];
        for (i, b) in out[..16].iter_mut().enumerate() {
            *b = HEX[((commit_lsn.0 >> (60 - 4 * i)) & 0xF) as usize];
        }
        out[16] = b'-';
        for (i, b) in out[17..].iter_mut().enumerate() {
            *b = HEX[((seq >> (28 - 4 * i)) & 0xF) as usize];
        }
        EventId(String::from_utf8_lossy(&out).into_owned())
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
    /// Schema of the table (shared by the events of one relation).
    pub schema: Name,
    /// Table name (shared by the events of one relation).
    pub table: Name,
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
    /// Commit time, RFC 3339 in UTC with microseconds (shared by the events of one
    /// transaction).
    pub commit_time: Option<Name>,
    /// Columns whose value did not change and was not sent (TOAST); absent from `new`.
    #[serde(default)]
    pub unchanged_toast: Vec<String>,
    /// A schema event's columns after the change (absent from row events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<Column>>,
    /// A schema event's columns before the change (absent from row events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Vec<Column>>,
    /// Where the change came from, beyond the commit position (for the Debezium
    /// envelope). Kept in the journal ([`Journaled`]) but never part of the native
    /// event (ARCHITECTURE.md's contract): absent from events journaled before it
    /// existed.
    #[serde(default, skip_serializing)]
    pub origin: Origin,
}

/// An event as the journal stores it: the native event plus its [`Origin`].
#[derive(Serialize)]
pub struct Journaled<'a> {
    /// The native event's fields.
    #[serde(flatten)]
    pub event: &'a ChangeEvent,
    /// The origin (left out when empty).
    #[serde(skip_serializing_if = "Origin::is_empty")]
    pub origin: &'a Origin,
}

impl<'a> Journaled<'a> {
    /// The journal record of `event`.
    pub fn of(event: &'a ChangeEvent) -> Self {
        Journaled {
            event,
            origin: &event.origin,
        }
    }
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

/// Facts about a change's source that only some outputs need: its own WAL
/// position, the snapshot it belongs to, what Postgres sent as the old row.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The change's own WAL position (the start of the WAL data carrying it); the
    /// event's `lsn` is its transaction's commit LSN. None for snapshot and resync rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_lsn: Option<Lsn>,
    /// The end LSN of the last transaction committed before this change's (as the
    /// replication stream showed it since pgcdc started reading); Debezium's
    /// `sequence[0]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_commit_lsn: Option<Lsn>,
    /// For a `read` row: which part of a snapshot it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotMark>,
    /// What Postgres sent as the old row of an update or delete (None: nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_sent: Option<OldSent>,
    /// The table has no primary key: `key` holds its replica identity columns.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_primary_key: bool,
    /// Each column's type (`int4`, `jsonb`, `timestamptz`, `text[]`, ... see
    /// [`crate::value::PgType::name`]), in table order: for Debezium's JSON-as-text and
    /// its schemas.
    #[serde(default, skip_serializing_if = "column_types_empty")]
    pub column_types: ColumnTypes,
}

/// (column name, type name) in table order; shared by every event of one
/// relation version, so an event costs a reference count, not a copy.
pub type ColumnTypes = std::sync::Arc<[(String, String)]>;

fn column_types_empty(types: &ColumnTypes) -> bool {
    types.is_empty()
}

impl Origin {
    /// Nothing known (an event journaled before origins existed, or built in a test).
    pub fn is_empty(&self) -> bool {
        *self == Origin::default()
    }
}

/// Which part of a snapshot a row is, in Debezium's words (`source.snapshot`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotMark {
    /// The first row of the initial snapshot.
    First,
    /// The first row of a table's snapshot (not the first table).
    FirstInDataCollection,
    /// Any other row of the initial snapshot.
    True,
    /// The last row of a table's snapshot (not the last table).
    LastInDataCollection,
    /// The last row of the initial snapshot.
    Last,
    /// A row read by a resync (Debezium's incremental snapshot).
    Incremental,
}

impl SnapshotMark {
    /// The mark of the row at (`first_row`, `last_row`) of a table that is the
    /// first/last of the snapshot, as Debezium's relational snapshot marks it.
    pub fn of(first_table: bool, last_table: bool, first_row: bool, last_row: bool) -> Self {
        if last_row && last_table {
            SnapshotMark::Last
        } else if first_row && first_table {
            SnapshotMark::First
        } else if last_row {
            SnapshotMark::LastInDataCollection
        } else if first_row {
            SnapshotMark::FirstInDataCollection
        } else {
            SnapshotMark::True
        }
    }

    /// The `source.snapshot` text.
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotMark::First => "first",
            SnapshotMark::FirstInDataCollection => "first_in_data_collection",
            SnapshotMark::True => "true",
            SnapshotMark::LastInDataCollection => "last_in_data_collection",
            SnapshotMark::Last => "last",
            SnapshotMark::Incremental => "incremental",
        }
    }
}

/// The old row Postgres sent with an update or delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OldSent {
    /// The whole row (REPLICA IDENTITY FULL).
    Full,
    /// The replica identity columns only (a delete, or an update that changed the key).
    Key,
}

impl ChangeEvent {
    /// `schema.table`.
    pub fn qualified_table(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }

    /// The bytes of its packed rows (key, old, new): about what any form of the
    /// event takes (its record, its JSON), so that room for a wide row is made
    /// once instead of by doubling a buffer as it fills.
    pub fn packed_bytes(&self) -> usize {
        [&self.key, &self.old, &self.new]
            .into_iter()
            .flatten()
            .filter_map(|row| row.packed().map(|(_, _, bytes)| bytes.len()))
            .sum()
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
    use serde_json::Value;

    use super::*;

    #[test]
    fn event_ids_sort_in_commit_order() {
        let a = EventId::from_position(Lsn(0x16B3748), 2);
        let b = EventId::from_position(Lsn(0x16B3748), 10);
        let c = EventId::from_position(Lsn(0x1_0000_0000), 0);
        assert_eq!(a.as_str(), "00000000016B3748-00000002");
        let edge = EventId::from_position(Lsn(u64::MAX), u32::MAX);
        assert_eq!(edge.as_str(), "FFFFFFFFFFFFFFFF-FFFFFFFF");
        let (lsn, seq) = (0x0123_4567_89AB_CDEF_u64, 0xA0B1_C2D3_u32);
        let mixed = EventId::from_position(Lsn(lsn), seq);
        assert_eq!(mixed.as_str(), format!("{lsn:016X}-{seq:08X}"));
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
            origin: Origin::default(),
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

    #[test]
    fn origin_round_trips_and_old_records_still_read() {
        let old_record = r#"{"id":"0000000001000000-00000000","op":"delete","schema":"public","table":"t","key":{"id":1},"old":{"id":1},"new":null,"lsn":"0/1000000","xid":5,"commit_time":null}"#;
        let ev: ChangeEvent = from_stored_json(old_record).unwrap_or_else(|e| panic!("{e}"));
        assert!(ev.origin.is_empty());
        let mut ev = ev;
        ev.origin = Origin {
            change_lsn: Some(Lsn(0x0FFF_FF00)),
            last_commit_lsn: Some(Lsn(0x0FFF_0000)),
            snapshot: Some(SnapshotMark::LastInDataCollection),
            old_sent: Some(OldSent::Key),
            no_primary_key: true,
            column_types: vec![("id".into(), "int4".into()), ("doc".into(), "jsonb".into())].into(),
        };
        // The native event never shows it; the journal's record keeps it.
        let native = serde_json::to_string(&ev).unwrap_or_default();
        assert!(!native.contains("origin"), "{native}");
        let text = serde_json::to_string(&Journaled::of(&ev)).unwrap_or_default();
        assert!(text.starts_with(&native[..native.len() - 1]), "{text}");
        assert!(text.contains(r#""origin":{"change_lsn":"0/FFFFF00","last_commit_lsn":"0/FFF0000","snapshot":"last_in_data_collection","old_sent":"key","no_primary_key":true,"column_types":[["id","int4"],["doc","jsonb"]]}"#), "{text}");
        let back: ChangeEvent = from_stored_json(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, ev);
    }

    #[test]
    fn snapshot_marks_follow_debezium() {
        use SnapshotMark::*;
        // (first table, last table, first row, last row)
        assert_eq!(SnapshotMark::of(true, false, true, false), First);
        assert_eq!(SnapshotMark::of(true, false, false, false), True);
        assert_eq!(
            SnapshotMark::of(true, false, false, true),
            LastInDataCollection
        );
        assert_eq!(
            SnapshotMark::of(false, true, true, false),
            FirstInDataCollection
        );
        assert_eq!(SnapshotMark::of(false, true, false, true), Last);
        assert_eq!(SnapshotMark::of(true, true, true, true), Last);
        assert_eq!(Last.as_str(), "last");
        assert_eq!(
            serde_json::to_value(FirstInDataCollection).unwrap_or_default(),
            "first_in_data_collection"
        );
    }
}
