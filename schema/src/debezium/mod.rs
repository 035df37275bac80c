//! The Debezium PostgreSQL connector's change-event envelope, as its Kafka
//! Connect JSON converter writes it, so consumers written for Debezium (Flink
//! `debezium-json`, ksqlDB, Materialize, ClickHouse, JDBC sinks) read pgcdc's
//! Kafka records unchanged.
//!
//! ```text
//!  ChangeEvent ──payload()──▶ {before, after, source, op, ts_*, transaction}
//!      │                        (schemas.enable=false: the record value)
//!      └──connect_schema──▶ {"schema": Envelope schema, "payload": ...}
//!                               (schemas.enable=true: `debezium-schema`)
//! ```
//!
//! What Debezium does by default and pgcdc does too: `source.lsn` is the change's
//! own WAL position and `source.sequence` `["<last commit LSN>","<change LSN>"]`;
//! `before` is what Postgres sent (null for an update under the default replica
//! identity, the key columns for a delete); json/jsonb values are JSON text;
//! snapshot rows are marked `first`/`true`/`last`/... and resync rows
//! `incremental`; the key is null for a table without a primary key. Column
//! values keep pgcdc's typed encoding (see README, "Debezium format"), which is
//! Debezium's with `decimal.handling.mode=string`,
//! `time.precision.mode=isostring` and `binary.handling.mode=base64`.

use std::borrow::Cow;

use serde::Serialize;
use serde_json::Value;

use crate::event::Row;
use crate::json_write;
use crate::packed::Bad;
use crate::row::Cell;
use crate::{ChangeEvent, OldSent, Op};

mod connect_schema;
mod json_text;
mod write;

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

/// What `before` holds for an update or delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BeforeImage {
    /// What Postgres sent, as Debezium: the whole row under REPLICA IDENTITY FULL;
    /// otherwise null for an update and the key columns for a delete.
    #[default]
    Postgres,
    /// What pgcdc knows: Postgres' old row merged with the columns pgcdc remembers
    /// for tables triggers watch (the native event's `old`).
    Known,
}

/// How to render: the sink's choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DebeziumOptions {
    /// What `before` holds.
    pub before: BeforeImage,
    /// Wrap key and value as the JSON converter does with `schemas.enable=true`.
    pub schemas: bool,
}

/// Debezium's one-letter operation code.
pub fn op_code(op: Op) -> &'static str {
    match op {
        Op::Insert => "c",
        Op::Update => "u",
        Op::Delete => "d",
        Op::Read => "r",
        Op::Truncate => "t",
        // Never in an envelope: see `to_vec`.
        Op::Schema => "schema",
    }
}

/// The record value of `event` as a JSON value; `now_ms` is the top-level `ts_ms`
/// (processing time). A schema event has no Debezium envelope: it is the native
/// event (Debezium's schema history records DDL text, which pgoutput does not carry).
pub fn envelope(
    event: &ChangeEvent,
    source: &DebeziumSource,
    options: DebeziumOptions,
    now_ms: i64,
) -> Value {
    if event.op == Op::Schema {
        return serde_json::to_value(event).unwrap_or(Value::Null);
    }
    let payload =
        serde_json::to_value(Envelope::new(event, source, options, now_ms)).unwrap_or(Value::Null);
    if options.schemas {
        serde_json::json!({
            "schema": connect_schema::envelope(event, source),
            "payload": payload,
        })
    } else {
        payload
    }
}

/// The record value of `event`, serialized.
pub fn to_vec(
    event: &ChangeEvent,
    source: &DebeziumSource,
    options: DebeziumOptions,
    now_ms: i64,
) -> Result<Vec<u8>, serde_json::Error> {
    // `write_value` makes room for the common path.
    let mut out = Vec::new();
    write_value(event, source, options, now_ms, &mut out)?;
    Ok(out)
}

/// Appends the record value of `event` to `out` (see [`to_vec`]). On `Err`
/// `out` may hold part of it: the caller drops what it appended.
pub fn write_value(
    event: &ChangeEvent,
    source: &DebeziumSource,
    options: DebeziumOptions,
    now_ms: i64,
    out: &mut Vec<u8>,
) -> Result<(), serde_json::Error> {
    if event.op == Op::Schema {
        return serde_json::to_writer(out, event);
    }
    if options.schemas {
        serde_json::to_writer(out, &envelope(event, source, options, now_ms))
    } else {
        // The common path, written straight from the event.
        out.reserve(event.packed_bytes() + 1024);
        Envelope::new(event, source, options, now_ms)
            .write_json(out)
            .map_err(<serde_json::Error as serde::ser::Error>::custom)
    }
}

/// The record key: the primary key columns (`{"id":42}`), or None (a null key) for a
/// table without a primary key and for a truncate, as Debezium.
pub fn key(
    event: &ChangeEvent,
    source: &DebeziumSource,
    options: DebeziumOptions,
) -> Option<Value> {
    let image = key_image(event)?;
    let payload = serde_json::to_value(image).unwrap_or(Value::Null);
    Some(if options.schemas {
        serde_json::json!({
            "schema": connect_schema::key(event, source),
            "payload": payload,
        })
    } else {
        payload
    })
}

/// The record key, serialized (see [`key`]).
pub fn key_to_vec(
    event: &ChangeEvent,
    source: &DebeziumSource,
    options: DebeziumOptions,
) -> Option<Result<Vec<u8>, serde_json::Error>> {
    let mut out = Vec::with_capacity(64);
    write_key(event, source, options, &mut out).map(|r| r.map(|()| out))
}

/// Appends the record key to `out`; None (nothing appended) for a null key (see
/// [`key`]). On `Err` `out` may hold part of it.
pub fn write_key(
    event: &ChangeEvent,
    source: &DebeziumSource,
    options: DebeziumOptions,
    out: &mut Vec<u8>,
) -> Option<Result<(), serde_json::Error>> {
    if options.schemas {
        return key(event, source, options).map(|k| serde_json::to_writer(out, &k));
    }
    // The common path, written straight from the key row.
    key_image(event).map(|image| {
        image
            .write_json(out)
            .map_err(<serde_json::Error as serde::ser::Error>::custom)
    })
}

/// The key columns in the key's order, json/jsonb values as text.
fn key_image(event: &ChangeEvent) -> Option<KeyImage<'_>> {
    if event.origin.no_primary_key || matches!(event.op, Op::Truncate | Op::Schema) {
        return None;
    }
    Some(KeyImage {
        row: event.key.as_ref()?,
        types: &event.origin.column_types,
    })
}

/// An update that changed the primary key, as Debezium writes it: a delete of the
/// old key (`before` = the old row as Postgres sent it) and a create of the new one.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyChange {
    /// The `d` record's event (its key is the old key).
    pub delete: ChangeEvent,
    /// The `c` record's event.
    pub create: ChangeEvent,
}

/// Splits an update whose primary key changed into Debezium's delete and create;
/// None for any other change. Postgres sends the old key only when it changed
/// (or the whole old row under REPLICA IDENTITY FULL).
pub fn key_change(event: &ChangeEvent) -> Option<KeyChange> {
    if event.op != Op::Update || event.origin.no_primary_key || event.origin.old_sent.is_none() {
        return None;
    }
    let key = event.key.as_ref()?;
    let old = event.old.as_ref()?;
    // Most updates keep their key: compared without decoding the rows.
    if key.agrees_with(old) != Some(false) {
        return None;
    }
    let old_key: Row = key
        .keys()
        .map(|k| old.get(k).map(|v| (k.clone(), v.clone())))
        .collect::<Option<Row>>()?;
    if &old_key == key {
        return None;
    }
    let mut delete = event.clone();
    delete.op = Op::Delete;
    delete.key = Some(old_key);
    delete.new = None;
    delete.unchanged_toast = Vec::new();
    let mut create = event.clone();
    create.op = Op::Insert;
    create.old = None;
    create.origin.old_sent = None;
    Some(KeyChange { delete, create })
}

#[derive(Serialize)]
struct Envelope<'a> {
    before: Option<Image<'a>>,
    after: Option<Image<'a>>,
    source: Source<'a>,
    op: &'static str,
    ts_ms: i64,
    ts_us: i64,
    ts_ns: i64,
    transaction: Option<()>,
}

/// `source`, in the field order of Debezium's `io.debezium.connector.postgresql.Source`
/// schema (the JSON converter writes a struct's fields in schema order).
#[derive(Serialize)]
struct Source<'a> {
    version: &'a str,
    connector: &'static str,
    name: &'a str,
    ts_ms: Option<i64>,
    snapshot: &'static str,
    db: &'a str,
    sequence: String,
    ts_us: Option<i64>,
    ts_ns: Option<i64>,
    schema: &'a str,
    table: &'a str,
    #[serde(rename = "txId")]
    tx_id: Option<u32>,
    lsn: u64,
    xmin: Option<()>,
}

/// `before` or `after`: a row in table column order, json/jsonb values as JSON text,
/// and Debezium's placeholder for each unchanged TOAST column.
struct Image<'a> {
    row: &'a Row,
    /// Only these columns (the key columns Postgres sent), when set.
    only: Option<&'a Row>,
    toast: &'a [String],
    types: &'a [(String, String)],
}

/// What an image shows for a column.
enum Shown<'a> {
    /// The column's value (json/jsonb as text).
    Value(json_text::Text<'a>),
    /// An unchanged TOAST value: Debezium's placeholder.
    Unavailable,
}

impl<'a> Image<'a> {
    /// Calls `f` with each column the image shows, in table order, given the
    /// row's `cells`.
    fn walk<E>(
        &self,
        cells: &[(Cow<'_, str>, Cell<'a>)],
        mut f: impl FnMut(&str, Shown<'a>) -> Result<(), E>,
    ) -> Result<(), E> {
        let wanted = |col: &str| self.only.is_none_or(|only| only.contains_key(col));
        if self.types.is_empty() {
            // An event journaled before column types were recorded.
            for (k, cell) in cells.iter().filter(|(k, _)| wanted(k)) {
                f(
                    k,
                    Shown::Value(json_text::Text {
                        cell: *cell,
                        ty: "",
                    }),
                )?;
            }
            for col in self.toast {
                f(col, Shown::Unavailable)?;
            }
            return Ok(());
        }
        // A row's columns come in table order, so each is looked for where the
        // last one was found first.
        let mut next = 0;
        for (col, ty) in self.types {
            if !wanted(col) {
                continue;
            }
            let found = match cells.get(next) {
                Some((name, _)) if name == col => Some(next),
                _ => cells.iter().position(|(name, _)| name == col),
            };
            match found {
                Some(at) => {
                    next = at + 1;
                    f(
                        col,
                        Shown::Value(json_text::Text {
                            cell: cells[at].1,
                            ty,
                        }),
                    )?;
                }
                None if self.toast.contains(col) => f(col, Shown::Unavailable)?,
                // Not sent (a key-only old row): left out, as Debezium's docs show.
                None => {}
            }
        }
        Ok(())
    }

    /// Appends the image as JSON (the bytes its `Serialize` writes).
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), Bad> {
        let cells = self.row.cells()?;
        out.push(b'{');
        let mut first = true;
        self.walk(&cells, |col, shown| {
            if !std::mem::take(&mut first) {
                out.push(b',');
            }
            json_write::write_str(out, col);
            out.push(b':');
            match shown {
                Shown::Value(text) => text.write_json(out),
                Shown::Unavailable => {
                    json_write::write_str(out, UNAVAILABLE_VALUE);
                    Ok(())
                }
            }
        })?;
        out.push(b'}');
        Ok(())
    }
}

impl Serialize for Image<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeMap};
        let cells = self.row.cells().map_err(S::Error::custom)?;
        let mut map = s.serialize_map(None)?;
        self.walk(&cells, |col, shown| match shown {
            Shown::Value(text) => map.serialize_entry(col, &text),
            Shown::Unavailable => map.serialize_entry(col, UNAVAILABLE_VALUE),
        })?;
        map.end()
    }
}

/// The record key's payload: the key row in its own column order, json/jsonb
/// values as text.
#[derive(Clone, Copy)]
struct KeyImage<'a> {
    row: &'a Row,
    types: &'a [(String, String)],
}

impl<'a> KeyImage<'a> {
    /// The key's columns as Debezium shows them, in the key's order.
    fn texts(&self) -> Result<Vec<(Cow<'a, str>, json_text::Text<'a>)>, Bad> {
        let types = self.types;
        Ok(self
            .row
            .cells()?
            .into_iter()
            .map(|(col, cell)| {
                let ty = types
                    .iter()
                    .find(|(c, _)| *c == col)
                    .map_or("", |(_, t)| t.as_str());
                (col, json_text::Text { cell, ty })
            })
            .collect())
    }

    /// Appends the key as JSON (the bytes its `Serialize` writes).
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), Bad> {
        out.push(b'{');
        for (i, (col, text)) in self.texts()?.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            json_write::write_str(out, col);
            out.push(b':');
            text.write_json(out)?;
        }
        out.push(b'}');
        Ok(())
    }
}

impl Serialize for KeyImage<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeMap};
        let texts = self.texts().map_err(S::Error::custom)?;
        let mut map = s.serialize_map(Some(texts.len()))?;
        for (col, text) in &texts {
            map.serialize_entry(col, text)?;
        }
        map.end()
    }
}

/// A commit time's Unix microseconds. The events of one transaction share their
/// commit time, so the last one parsed on this thread is kept.
fn commit_micros(text: &str) -> Option<i64> {
    thread_local! {
        static LAST: std::cell::RefCell<(String, Option<i64>)> =
            const { std::cell::RefCell::new((String::new(), None)) };
    }
    LAST.with_borrow_mut(|(last, us)| {
        if last != text {
            *us = chrono::DateTime::parse_from_rfc3339(text)
                .ok()
                .map(|t| t.timestamp_micros());
            last.clear();
            last.push_str(text);
        }
        *us
    })
}

impl<'a> Envelope<'a> {
    fn new(
        event: &'a ChangeEvent,
        source: &'a DebeziumSource,
        options: DebeziumOptions,
        now_ms: i64,
    ) -> Envelope<'a> {
        let commit_us = event.commit_time.as_deref().and_then(commit_micros);
        let origin = &event.origin;
        let types = &origin.column_types[..];
        let change_lsn = origin.change_lsn.unwrap_or(event.lsn);
        Envelope {
            before: before(event, options.before).map(|(row, only)| Image {
                row,
                only,
                toast: &[],
                types,
            }),
            after: event.new.as_ref().map(|row| Image {
                row,
                only: None,
                toast: &event.unchanged_toast,
                types,
            }),
            source: Source {
                version: &source.version,
                connector: "postgresql",
                name: &source.name,
                ts_ms: commit_us.map(|us| us / 1000),
                snapshot: match (event.op, origin.snapshot) {
                    (Op::Read, Some(mark)) => mark.as_str(),
                    (Op::Read, None) => "true",
                    _ => "false",
                },
                db: &source.db,
                sequence: sequence(origin.last_commit_lsn.map(|l| l.0), change_lsn.0),
                ts_us: commit_us,
                ts_ns: commit_us.map(|us| us.saturating_mul(1000)),
                schema: &event.schema,
                table: &event.table,
                tx_id: event.xid,
                lsn: change_lsn.0,
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

/// `before`: the old row and, when Postgres sent only the key, the key columns to keep.
fn before(event: &ChangeEvent, image: BeforeImage) -> Option<(&Row, Option<&Row>)> {
    let old = event.old.as_ref()?;
    if image == BeforeImage::Known {
        return Some((old, None));
    }
    match (event.op, event.origin.old_sent) {
        (Op::Update | Op::Delete, Some(OldSent::Full)) => Some((old, None)),
        // `old` may hold remembered columns merged in: keep what Postgres sent.
        (Op::Update | Op::Delete, Some(OldSent::Key)) => Some((old, event.key.as_ref())),
        // An update under the default identity: Postgres sent no old row.
        (Op::Update, None) => None,
        // A delete journaled before `old_sent` was recorded: as it was.
        (Op::Delete, None) => Some((old, None)),
        _ => None,
    }
}

/// `source.sequence`: the JSON text of `["<last commit LSN>","<change LSN>"]` in
/// decimal, null for an unknown last commit.
fn sequence(last_commit: Option<u64>, change: u64) -> String {
    match last_commit {
        Some(last) => format!("[\"{last}\",\"{change}\"]"),
        None => format!("[null,\"{change}\"]"),
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
pub(crate) mod golden;
