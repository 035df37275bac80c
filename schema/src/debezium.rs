//! The Debezium PostgreSQL connector's change-event envelope, as its JSON
//! converter writes it with `schemas.enable=false`, so consumers written for
//! Debezium (Flink `debezium-json`, ksqlDB, Materialize, ClickHouse) read
//! pgcdc's Kafka records unchanged.
//!
//! Column values keep pgcdc's typed encoding (see README, "Debezium
//! format"): it matches Debezium configured with `decimal.handling.mode =
//! string`, `time.precision.mode = isostring` and `binary.handling.mode =
//! base64`.

use serde_json::{json, Map, Value};

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

/// The envelope of `event`; `now_ms` is the top-level `ts_ms` (processing time).
pub fn envelope(event: &ChangeEvent, source: &DebeziumSource, now_ms: i64) -> Value {
    let commit_us = event
        .commit_time
        .as_deref()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.timestamp_micros());
    let after = event.new.as_ref().map(|new| {
        if event.unchanged_toast.is_empty() {
            Value::Object(new.clone())
        } else {
            // Debezium keeps the column and puts its placeholder where the value was.
            let mut row = Map::with_capacity(new.len() + event.unchanged_toast.len());
            row.extend(new.iter().map(|(k, v)| (k.clone(), v.clone())));
            for col in &event.unchanged_toast {
                row.insert(col.clone(), Value::from(UNAVAILABLE_VALUE));
            }
            Value::Object(row)
        }
    });
    let snapshot = if event.op == Op::Read {
        "true"
    } else {
        "false"
    };
    json!({
        "before": event.old.clone().map(Value::Object),
        "after": after,
        "source": {
            "version": source.version,
            "connector": "postgresql",
            "name": source.name,
            "ts_ms": commit_us.map(|us| us / 1000),
            "ts_us": commit_us,
            "ts_ns": commit_us.map(|us| us.saturating_mul(1000)),
            "snapshot": snapshot,
            "db": source.db,
            "sequence": Value::from(format!("[null,\"{}\"]", event.lsn.0)),
            "schema": event.schema,
            "table": event.table,
            "txId": event.xid,
            "lsn": event.lsn.0,
            "xmin": Value::Null,
        },
        "op": op_code(event.op),
        "ts_ms": now_ms,
        "ts_us": now_ms.saturating_mul(1000),
        "ts_ns": now_ms.saturating_mul(1_000_000),
        "transaction": Value::Null,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EventId, Lsn};

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
        };
        let v = envelope(&ev, &source(), 0);
        assert_eq!(v["op"], "d");
        assert_eq!(v["before"]["id"], 7);
        assert_eq!(v["after"], Value::Null);
        assert_eq!(v["source"]["ts_ms"], Value::Null);
    }
}
