//! Kafka record -> native event. Pure: no I/O.
//!
//! A record is pgcdc's when it carries the `pgcdc-event-id` header a pgcdc
//! Kafka sink writes. Its value is either the native event (`format =
//! "native"`, which round-trips exactly: `.old`, `unchanged_toast`, `xid`,
//! `commit_time`) or the Debezium envelope (read as far as it goes: `before`
//! / `after`, `source`, the key from the record key; values keep the
//! Debezium rendering). Errors (all definite: the same bytes fail again):
//! - no `pgcdc-event-id` header: not written by pgcdc;
//! - the value is not JSON, or JSON of neither shape;
//! - the header's id and the event's id differ (a transform's output, or a
//!   record assembled by someone else).
//!
//! A record without a value (a tombstone after a delete) carries no event.

use pgcdc_schema::event::{Name, Row};
use pgcdc_schema::{ChangeEvent, EventId, Lsn, Op};
use serde_json::Value;

/// The header with the event id (written by every pgcdc Kafka sink).
pub(crate) const H_EVENT_ID: &str = "pgcdc-event-id";
const H_LSN: &str = "pgcdc-lsn";
const H_TABLE: &str = "pgcdc-table";

/// Placeholder Debezium writes for an unchanged TOAST column.
const UNAVAILABLE: &str = "__debezium_unavailable_value";

/// Longest record value decoded (larger ones are refused with the limit named).
pub(crate) const MAX_VALUE_BYTES: usize = 64 << 20;

/// What a record holds.
#[derive(Debug)]
pub(crate) enum Decoded {
    /// A change, and the captured table it belongs to (`schema.table`).
    Event(Box<ChangeEvent>, String),
    /// A tombstone: nothing to deliver.
    Tombstone,
}

/// The parts of a record decoding looks at.
pub(crate) struct RawRecord<'a> {
    pub(crate) headers: Vec<(&'a str, Option<&'a [u8]>)>,
    pub(crate) key: Option<&'a [u8]>,
    pub(crate) value: Option<&'a [u8]>,
}

impl RawRecord<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .and_then(|(_, v)| *v)
            .and_then(|v| std::str::from_utf8(v).ok())
    }
}

/// Decodes one record; `Err` says what is wrong with it (the caller adds where it is).
pub(crate) fn decode(record: &RawRecord<'_>) -> Result<Decoded, String> {
    let Some(id) = record.header(H_EVENT_ID) else {
        return Err(format!(
            "the record has no {H_EVENT_ID} header, so no pgcdc Kafka sink wrote it; \
             list in [deliver] topics only topics a pgcdc Kafka sink writes"
        ));
    };
    let Some(value) = record.value else {
        return Ok(Decoded::Tombstone);
    };
    if value.len() > MAX_VALUE_BYTES {
        return Err(format!(
            "the record's value is {} bytes, more than the {MAX_VALUE_BYTES} pgcdc deliver reads",
            value.len()
        ));
    }
    let json: Value = serde_json::from_slice(value).map_err(|e| {
        format!("the record's value is not JSON ({e}); a pgcdc Kafka sink with format = \"native\" writes JSON")
    })?;
    let mut event = if json.get("source").is_some_and(Value::is_object) {
        debezium(&json, record, id)?
    } else {
        serde_json::from_value::<ChangeEvent>(json).map_err(|e| {
            format!(
                "the record's value is not a native pgcdc event ({e}); write the topic with a \
                 pgcdc Kafka sink with format = \"native\" and no transform"
            )
        })?
    };
    if event.id.as_str() != id {
        return Err(format!(
            "the record's {H_EVENT_ID} header ({id}) is not the id of the event it holds ({}); \
             a Kafka sink with a transform writes its output, not the event: drop its transform",
            event.id
        ));
    }
    // The journal's events carry no trigger: this process's own triggers name it,
    // exactly as `pgcdc run` would.
    event.trigger = None;
    let table = record
        .header(H_TABLE)
        .map(str::to_owned)
        .unwrap_or_else(|| event.qualified_table());
    Ok(Decoded::Event(Box::new(event), table))
}

/// A Debezium envelope back into the native event, as far as it holds it.
fn debezium(json: &Value, record: &RawRecord<'_>, id: &str) -> Result<ChangeEvent, String> {
    let bad = |what: &str| format!("the record's Debezium envelope has no valid {what}");
    let source = &json["source"];
    let op = match json["op"].as_str() {
        Some("c") => Op::Insert,
        Some("u") => Op::Update,
        Some("d") => Op::Delete,
        Some("r") => Op::Read,
        Some("t") => Op::Truncate,
        _ => return Err(bad("op (c, u, d, r, t)")),
    };
    let schema = source["schema"]
        .as_str()
        .ok_or_else(|| bad("source.schema"))?;
    let table = source["table"]
        .as_str()
        .ok_or_else(|| bad("source.table"))?;
    let lsn = match record.header(H_LSN).map(str::parse::<Lsn>) {
        Some(Ok(lsn)) => lsn,
        _ => Lsn(source["lsn"].as_u64().ok_or_else(|| bad("source.lsn"))?),
    };
    let row = |v: &Value| -> Result<Option<Row>, String> {
        match v {
            Value::Null => Ok(None),
            Value::Object(m) => Ok(Some(m.clone().into_iter().collect())),
            _ => Err(bad("before/after row")),
        }
    };
    let old = row(&json["before"])?;
    let mut new = row(&json["after"])?;
    let mut unchanged_toast = Vec::new();
    if let Some(new) = new.as_mut() {
        new.retain(|col, v| {
            let placeholder = v.as_str() == Some(UNAVAILABLE);
            if placeholder {
                unchanged_toast.push(col.to_string());
            }
            !placeholder
        });
    }
    let key = match record.key {
        None => None,
        Some(k) => match serde_json::from_slice::<Value>(k) {
            Ok(Value::Object(m)) => Some(m.into_iter().collect()),
            _ => None,
        },
    };
    let commit_time = source["ts_us"]
        .as_i64()
        .and_then(chrono::DateTime::from_timestamp_micros)
        .map(|t| Name::from(t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()));
    Ok(ChangeEvent {
        id: EventId::from_string(id.to_owned()),
        op,
        schema: Name::from(schema),
        table: Name::from(table),
        key,
        old,
        new,
        trigger: None,
        lsn,
        xid: source["txId"].as_u64().and_then(|x| u32::try_from(x).ok()),
        commit_time,
        unchanged_toast,
        columns: None,
        previous: None,
        origin: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event() -> ChangeEvent {
        let row = |v: Value| v.as_object().cloned().map(|m| m.into_iter().collect());
        ChangeEvent {
            id: EventId::from_position(Lsn(0x1A2B), 3),
            op: Op::Update,
            schema: "public".into(),
            table: "permits".into(),
            key: row(json!({"id": 7})),
            old: row(json!({"id": 7, "status": "pending"})),
            new: row(json!({"id": 7, "status": "approved", "fee": "12.50"})),
            trigger: Some("permitApproved".into()),
            lsn: Lsn(0x1A2B),
            xid: Some(731),
            commit_time: Some("2026-11-26T10:00:00.123456Z".into()),
            unchanged_toast: vec!["notes".into()],
            columns: None,
            previous: None,
            origin: Default::default(),
        }
    }

    fn raw<'a>(id: Option<&'a str>, value: Option<&'a [u8]>) -> RawRecord<'a> {
        RawRecord {
            headers: id
                .map(|id| vec![(H_EVENT_ID, Some(id.as_bytes()))])
                .unwrap_or_default(),
            key: Some(b"{\"id\":7}"),
            value,
        }
    }

    #[test]
    fn native_round_trips_old_toast_and_position_but_not_the_trigger() {
        let e = event();
        let bytes = serde_json::to_vec(&e).unwrap_or_default();
        let Ok(Decoded::Event(got, table)) = decode(&raw(Some(e.id.as_str()), Some(&bytes))) else {
            panic!("not decoded");
        };
        assert_eq!(table, "public.permits");
        assert_eq!(*got, ChangeEvent { trigger: None, ..e });
    }

    #[test]
    fn foreign_records_are_named() {
        let e = event();
        let bytes = serde_json::to_vec(&e).unwrap_or_default();
        let err = |r: RawRecord<'_>| decode(&r).err().unwrap_or_default();
        assert!(err(raw(None, Some(&bytes))).contains("no pgcdc-event-id header"));
        assert!(err(raw(Some("x"), Some(b"not json"))).contains("not JSON"));
        assert!(err(raw(Some("x"), Some(b"{\"a\":1}"))).contains("not a native pgcdc event"));
        assert!(err(raw(Some("other"), Some(&bytes))).contains("is not the id"));
        assert!(matches!(
            decode(&raw(Some("x"), None)),
            Ok(Decoded::Tombstone)
        ));
    }

    #[test]
    fn debezium_envelope_is_read_back() {
        let e = event();
        let src = pgcdc_schema::debezium::DebeziumSource {
            name: "pgcdc".into(),
            db: "portal".into(),
            version: "t".into(),
        };
        let options = pgcdc_schema::debezium::DebeziumOptions {
            before: pgcdc_schema::debezium::BeforeImage::Known,
            schemas: false,
        };
        let bytes = pgcdc_schema::debezium::to_vec(&e, &src, options, 0).unwrap_or_default();
        let Ok(Decoded::Event(got, _)) = decode(&raw(Some(e.id.as_str()), Some(&bytes))) else {
            panic!("not decoded");
        };
        assert_eq!(got.op, Op::Update);
        assert_eq!(got.old, e.old);
        assert_eq!(got.new, e.new);
        assert_eq!(got.key, e.key);
        assert_eq!(got.unchanged_toast, e.unchanged_toast);
        assert_eq!(got.lsn, e.lsn);
        assert_eq!(got.xid, e.xid);
        assert_eq!(got.commit_time, e.commit_time);
    }
}
