//! The Debezium PostgreSQL connector's change-event envelope, as its JSON
//! converter writes it with `schemas.enable=false`, so consumers written for
//! Debezium (Flink `debezium-json`, ksqlDB, Materialize, ClickHouse) read
//! pgcdc's Kafka records unchanged.
//!
//! Column values keep pgcdc's typed encoding (see README, "Debezium
//! format"): it matches Debezium configured with `decimal.handling.mode =
//! string`, `time.precision.mode = isostring` and `binary.handling.mode =
//! base64`.

use serde::Serialize;
use serde_json::Value;

use crate::event::Row;
use crate::{ChangeEvent, Op};

/// What Debezium writes for a TOAST column that was not sent (its
/// `unavailable.value.placeholder` default).
pub const UNAVAILABLE_VALUE: &str = "__debezium_unavailable_value";

/// The parts of `source` that come from the deployment, not the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebeziumSource {
    /// `source.name`: Debezium's `topic.prefix` (logical server name).
    pub name: String,
    /// `source.db`: the source database.
    pub db: String,
    /// `source.version`.
    pub version: String,
}

/// Debezium's one-letter operation code.
pub fn op_code(op: Op) -> &'static str {
    match op {
        Op::Insert => "c",
        Op::Update => "u",
        Op::Delete => "d",
        Op::Read => "r",
        Op::Truncate => "t",
    }
}

/// The envelope of `event` as a JSON value; `now_ms` is the top-level `ts_ms`
/// (processing time).
pub fn envelope(event: &ChangeEvent, source: &DebeziumSource, now_ms: i64) -> Value {
    serde_json::to_value(Envelope::new(event, source, now_ms)).unwrap_or(Value::Null)
}

/// The envelope of `event`, serialized straight from the event (no intermediate value).
pub fn to_vec(
    event: &ChangeEvent,
    source: &DebeziumSource,
    now_ms: i64,
) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&Envelope::new(event, source, now_ms))
}

#[derive(Serialize)]
struct Envelope<'a> {
    before: Option<&'a Row>,
    after: Option<After<'a>>,
    source: Source<'a>,
    op: &'static str,
    ts_ms: i64,
    ts_us: i64,
    ts_ns: i64,
    transaction: Option<()>,
}

#[derive(Serialize)]
struct Source<'a> {
    version: &'a str,
    connector: &'static str,
    name: &'a str,
    ts_ms: Option<i64>,
    ts_us: Option<i64>,
    ts_ns: Option<i64>,
    snapshot: &'static str,
    db: &'a str,
    sequence: String,
    schema: &'a str,
    table: &'a str,
    #[serde(rename = "txId")]
    tx_id: Option<u32>,
    lsn: u64,
    xmin: Option<()>,
}

/// `after`: the new row, with Debezium's placeholder for each unchanged TOAST column.
struct After<'a> {
    row: &'a Row,
    toast: &'a [String],
}

impl Serialize for After<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.row.len() + self.toast.len()))?;
        for (k, v) in self.row {
            map.serialize_entry(k, v)?;
        }
        for col in self.toast {
            map.serialize_entry(col, UNAVAILABLE_VALUE)?;
        }
        map.end()
    }
}

impl<'a> Envelope<'a> {
    fn new(event: &'a ChangeEvent, source: &'a DebeziumSource, now_ms: i64) -> Envelope<'a> {
        let commit_us = event
            .commit_time
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.timestamp_micros());
        Envelope {
            before: event.old.as_ref(),
            after: event.new.as_ref().map(|row| After {
                row,
                toast: &event.unchanged_toast,
            }),
            source: Source {
                version: &source.version,
                connector: "postgresql",
                name: &source.name,
                ts_ms: commit_us.map(|us| us / 1000),
                ts_us: commit_us,
                ts_ns: commit_us.map(|us| us.saturating_mul(1000)),
                snapshot: if event.op == Op::Read {
                    "true"
                } else {
                    "false"
                },
                db: &source.db,
                sequence: format!("[null,\"{}\"]", event.lsn.0),
                schema: &event.schema,
                table: &event.table,
                tx_id: event.xid,
                lsn: event.lsn.0,
                xmin: None,
            },
            op: op_code(event.op),
            ts_ms: now_ms,
            ts_us: now_ms.saturating_mul(1000),
            ts_ns: now_ms.saturating_mul(1_000_000),
            transaction: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EventId, Lsn};
    use serde_json::{json, Map};

    fn row(pairs: &[(&str, Value)]) -> Map<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    fn source() -> DebeziumSource {
        DebeziumSource {
            name: "portal".into(),
            db: "permits".into(),
            version: "pgcdc 0.1.0".into(),
        }
    }

    #[test]
    fn update_has_debeziums_fields() {
        let ev = ChangeEvent {
            id: EventId::from_position(Lsn(0x1A2B3C4), 1),
            op: Op::Update,
            schema: "public".into(),
            table: "permits".into(),
            key: Some(row(&[("id", json!(7))])),
            old: Some(row(&[("id", json!(7)), ("status", json!("pending"))])),
            new: Some(row(&[("id", json!(7)), ("status", json!("approved"))])),
            trigger: None,
            lsn: Lsn(0x1A2B3C4),
            xid: Some(731),
            commit_time: Some("2026-11-26T10:00:00.123456Z".into()),
            unchanged_toast: vec!["notes".into()],
            origin: Default::default(),
        };
        let v = envelope(&ev, &source(), 1_800_000_000_000);
        assert_eq!(v["op"], "u");
        assert_eq!(v["before"]["status"], "pending");
        assert_eq!(v["after"]["status"], "approved");
        assert_eq!(v["after"]["notes"], UNAVAILABLE_VALUE);
        assert_eq!(v["source"]["connector"], "postgresql");
        assert_eq!(v["source"]["name"], "portal");
        assert_eq!(v["source"]["db"], "permits");
        assert_eq!(v["source"]["schema"], "public");
        assert_eq!(v["source"]["table"], "permits");
        assert_eq!(v["source"]["txId"], 731);
        assert_eq!(v["source"]["lsn"], 0x1A2B3C4);
        assert_eq!(v["source"]["snapshot"], "false");
        assert_eq!(v["source"]["ts_ms"], 1_795_687_200_123_i64);
        assert_eq!(v["ts_ms"], 1_800_000_000_000_i64);
        assert_eq!(v["transaction"], Value::Null);
    }

    #[test]
    fn op_codes_follow_debezium() {
        let codes: Vec<&str> = [Op::Insert, Op::Update, Op::Delete, Op::Read, Op::Truncate]
            .into_iter()
            .map(op_code)
            .collect();
        assert_eq!(codes, ["c", "u", "d", "r", "t"]);
    }

    #[test]
    fn delete_has_before_and_null_after() {
        let ev = ChangeEvent {
            id: EventId::from_position(Lsn(16), 0),
            op: Op::Delete,
            schema: "public".into(),
            table: "permits".into(),
            key: Some(row(&[("id", json!(7))])),
            old: Some(row(&[("id", json!(7))])),
            new: None,
            trigger: None,
            lsn: Lsn(16),
            xid: Some(1),
            commit_time: None,
            unchanged_toast: vec![],
            origin: Default::default(),
        };
        let v = envelope(&ev, &source(), 0);
        assert_eq!(v["op"], "d");
        assert_eq!(v["before"]["id"], 7);
        assert_eq!(v["after"], Value::Null);
        assert_eq!(v["source"]["ts_ms"], Value::Null);
    }
}
