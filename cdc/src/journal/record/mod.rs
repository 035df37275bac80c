//! The journal's record format, shared by both stores.
//!
//! **v1** (releases before this one, still read): the JSON of
//! `pgcdc_schema::event::Journaled`, about 130 bytes of column types in every record besides the
//! row's names and values. It starts with `{`.
//!
//! **v2** (written now): binary, starting with the byte `2`.
//!
//! ```text
//!  2 | relation id (varint) | op (u8) | flags (u16 LE) | commit LSN (varint)
//!    | id: ordinal in the transaction (varint) when it is the positional id,
//!          else its text
//!    | [xid] [commit time: 0 + Unix µs | 1 + text] [trigger]
//!    | [change LSN, last commit LSN: commit LSN minus it, wrapping]
//!    | [snapshot mark] [old sent] [unchanged TOAST: column refs]
//!    | [columns, previous: JSON text, schema events only]
//!    | [key] [old] [new]: count, then (column ref, value) in the row's order
//! ```
//!
//! A *relation version* is the schema, table and columns (name and type, in
//! table order) that events carry in `Origin::column_types`; each one is
//! stored once, in its own table, and records name it by id. A column ref is
//! the column's index in its relation plus one, or 0 followed by the name
//! (a row can hold a column its relation does not list: an event built
//! without column types). Values keep their JSON number text, so a decoded
//! event is equal to the appended one and renders byte for byte the same.
//!
//! Text is length-prefixed; integers are LEB128 varints (signed ones
//! zigzag); values are `pgcdc_schema::packed`. A row the reader built is
//! already packed with its relation's column refs, so it is appended as its
//! bytes; a row read back is those bytes again (`Row::read_packed`), rendered
//! without a `serde_json::Value` unless something asks for a value.

use std::collections::HashMap;
use std::sync::Arc;

use pgcdc_schema::event::{
    from_stored_json, Column, ColumnTypes, Name, OldSent, Origin, Row, SnapshotMark,
};
use pgcdc_schema::packed::{put_str, put_value, put_varint, put_zigzag, Bad, Reader};
use pgcdc_schema::row::Names;
use pgcdc_schema::{ChangeEvent, EventId, Lsn, Op};
use serde::{Deserialize, Serialize};

/// The first byte of a v2 record.
const V2: u8 = 2;

const F_KEY: u16 = 1;
const F_OLD: u16 = 1 << 1;
const F_NEW: u16 = 1 << 2;
const F_TRIGGER: u16 = 1 << 3;
const F_XID: u16 = 1 << 4;
const F_TIME: u16 = 1 << 5;
const F_TOAST: u16 = 1 << 6;
const F_COLUMNS: u16 = 1 << 7;
const F_PREVIOUS: u16 = 1 << 8;
const F_CHANGE_LSN: u16 = 1 << 9;
const F_LAST_COMMIT: u16 = 1 << 10;
const F_SNAPSHOT: u16 = 1 << 11;
const F_OLD_SENT: u16 = 1 << 12;
const F_NO_PK: u16 = 1 << 13;
/// The id is `<commit LSN>-<ordinal>` (every streamed change's).
const F_ID_POSITIONAL: u16 = 1 << 14;

/// One version of a table's columns, as events carry them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct Relation {
    /// Schema of the table (shared with the events decoded with this version).
    pub(crate) schema: Name,
    /// Table name (shared with the events decoded with this version).
    pub(crate) table: Name,
    /// (column name, type name), in table order.
    pub(crate) columns: ColumnTypes,
    /// The column names, shared by the rows decoded with this version.
    #[serde(skip)]
    names: Names,
}

impl Relation {
    /// The stored form (JSON text).
    pub(crate) fn to_stored(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads the stored form.
    pub(crate) fn from_stored(text: &str) -> Result<Relation, serde_json::Error> {
        let mut rel: Relation = serde_json::from_str(text)?;
        rel.names = names_of(&rel.columns);
        Ok(rel)
    }

    fn matches(&self, event: &ChangeEvent) -> bool {
        self.table == event.table
            && self.schema == event.schema
            && (Arc::ptr_eq(&self.columns, &event.origin.column_types)
                || self.columns == event.origin.column_types)
    }

    fn of(event: &ChangeEvent) -> Relation {
        let columns = &event.origin.column_types;
        // A packed row's names are the reader's for this relation: shared, so
        // later rows are seen to match by pointer.
        let names = [&event.new, &event.old, &event.key]
            .into_iter()
            .flatten()
            .find_map(|row| row.packed().map(|(names, _, _)| names.clone()))
            .filter(|names| same_names(names, columns))
            .unwrap_or_else(|| names_of(columns));
        Relation {
            schema: event.schema.clone(),
            table: event.table.clone(),
            columns: columns.clone(),
            names,
        }
    }

    /// Whether a packed row with column names `names` can be written as it is
    /// (its column refs are this version's).
    fn takes(&self, names: &Names) -> bool {
        Arc::ptr_eq(&self.names, names) || same_names(names, &self.columns)
    }
}

fn same_names(names: &[Name], columns: &ColumnTypes) -> bool {
    names.len() == columns.len()
        && names
            .iter()
            .zip(columns.iter())
            .all(|(n, (c, _))| **n == **c)
}

/// Encodes events for the single writer; knows every relation version stored.
/// Versions first seen in a batch are *fresh*: the writer stores them in the
/// batch's transaction ([`Encoder::fresh`]) and then keeps or drops them
/// ([`Encoder::settle`]).
#[derive(Default)]
pub(crate) struct Encoder {
    /// Versions by table name, newest last.
    by_table: HashMap<Name, Vec<(Arc<Relation>, i64)>>,
    next_id: i64,
    fresh: Vec<(i64, Arc<Relation>)>,
    /// The last commit time text and its Unix µs (a transaction's events share it).
    time: Option<(String, Option<i64>)>,
}

impl Encoder {
    /// An encoder that knows the stored versions (id, relation).
    pub(crate) fn new(stored: Vec<(i64, Relation)>) -> Encoder {
        let mut enc = Encoder {
            next_id: 1,
            ..Encoder::default()
        };
        for (id, rel) in stored {
            enc.next_id = enc.next_id.max(id + 1);
            enc.by_table
                .entry(rel.table.clone())
                .or_default()
                .push((Arc::new(rel), id));
        }
        enc
    }

    /// Versions first used since the last [`Encoder::settle`], to store with the batch.
    pub(crate) fn fresh(&self) -> impl Iterator<Item = (i64, &Relation)> {
        self.fresh.iter().map(|(id, rel)| (*id, rel.as_ref()))
    }

    /// After the batch: its fresh versions are stored (`committed`), or were not and
    /// are forgotten (their ids are used again).
    pub(crate) fn settle(&mut self, committed: bool) {
        let fresh = std::mem::take(&mut self.fresh);
        if committed {
            return;
        }
        for (id, rel) in fresh {
            if let Some(versions) = self.by_table.get_mut(&rel.table) {
                versions.retain(|(_, i)| *i != id);
            }
            self.next_id = self.next_id.min(id);
        }
    }

    fn relation(&mut self, event: &ChangeEvent) -> (Arc<Relation>, i64) {
        if let Some(versions) = self.by_table.get(&*event.table) {
            if let Some((rel, id)) = versions.iter().rev().find(|(r, _)| r.matches(event)) {
                return (rel.clone(), *id);
            }
        }
        let rel = Arc::new(Relation::of(event));
        let id = self.next_id;
        self.next_id += 1;
        self.fresh.push((id, rel.clone()));
        self.by_table
            .entry(event.table.clone())
            .or_default()
            .push((rel.clone(), id));
        (rel, id)
    }

    /// Appends the v2 record of `event` to `out`.
    pub(crate) fn encode(&mut self, event: &ChangeEvent, out: &mut Vec<u8>) {
        let (rel, rel_id) = self.relation(event);
        let o = &event.origin;
        let ordinal = positional_ordinal(&event.id, event.lsn);
        let time = event.commit_time.as_deref().map(|t| self.time_micros(t));
        let mut flags = 0u16;
        for (set, flag) in [
            (event.key.is_some(), F_KEY),
            (event.old.is_some(), F_OLD),
            (event.new.is_some(), F_NEW),
            (event.trigger.is_some(), F_TRIGGER),
            (event.xid.is_some(), F_XID),
            (event.commit_time.is_some(), F_TIME),
            (!event.unchanged_toast.is_empty(), F_TOAST),
            (event.columns.is_some(), F_COLUMNS),
            (event.previous.is_some(), F_PREVIOUS),
            (o.change_lsn.is_some(), F_CHANGE_LSN),
            (o.last_commit_lsn.is_some(), F_LAST_COMMIT),
            (o.snapshot.is_some(), F_SNAPSHOT),
            (o.old_sent.is_some(), F_OLD_SENT),
            (o.no_primary_key, F_NO_PK),
            (ordinal.is_some(), F_ID_POSITIONAL),
        ] {
            if set {
                flags |= flag;
            }
        }
        out.push(V2);
        put_varint(out, rel_id as u64);
        out.push(op_code(event.op));
        out.extend_from_slice(&flags.to_le_bytes());
        put_varint(out, event.lsn.0);
        match ordinal {
            Some(n) => put_varint(out, u64::from(n)),
            None => put_str(out, event.id.as_str()),
        }
        if let Some(xid) = event.xid {
            put_varint(out, u64::from(xid));
        }
        if let (Some(text), Some(micros)) = (&event.commit_time, time) {
            match micros {
                Some(us) => {
                    out.push(0);
                    put_zigzag(out, us);
                }
                None => {
                    out.push(1);
                    put_str(out, text);
                }
            }
        }
        if let Some(t) = &event.trigger {
            put_str(out, t);
        }
        for lsn in [o.change_lsn, o.last_commit_lsn].into_iter().flatten() {
            put_varint(out, event.lsn.0.wrapping_sub(lsn.0));
        }
        if let Some(mark) = o.snapshot {
            out.push(mark_code(mark));
        }
        if let Some(sent) = o.old_sent {
            out.push(match sent {
                OldSent::Full => 0,
                OldSent::Key => 1,
            });
        }
        if !event.unchanged_toast.is_empty() {
            put_varint(out, event.unchanged_toast.len() as u64);
            let mut hint = 0;
            for name in &event.unchanged_toast {
                hint = put_column(out, &rel, name, hint);
            }
        }
        for cols in [&event.columns, &event.previous].into_iter().flatten() {
            put_str(out, &serde_json::to_string(cols).unwrap_or_default());
        }
        for row in [&event.key, &event.old, &event.new].into_iter().flatten() {
            put_varint(out, row.len() as u64);
            if let Some((_, _, bytes)) = row.packed().filter(|(n, _, _)| rel.takes(n)) {
                out.extend_from_slice(bytes);
                continue;
            }
            let mut hint = 0;
            for (name, v) in row {
                hint = put_column(out, &rel, name, hint);
                put_value(out, v);
            }
        }
    }

    /// Unix µs of an RFC 3339 commit time, when it renders back as the same text.
    fn time_micros(&mut self, text: &str) -> Option<i64> {
        if let Some((t, us)) = &self.time {
            if t == text {
                return *us;
            }
        }
        let us = chrono::NaiveDateTime::parse_from_str(text, TIME_FORMAT)
            .ok()
            .map(|t| t.and_utc().timestamp_micros())
            .filter(|us| render_time(*us).as_deref() == Some(text));
        self.time = Some((text.to_string(), us));
        us
    }
}

/// The commit time's form (`pgcdc_schema::event::pg_micros_to_rfc3339`).
const TIME_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.6fZ";

fn render_time(unix_us: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_micros(unix_us).map(|t| t.format(TIME_FORMAT).to_string())
}

/// Writes the ref of column `name` (its index plus one, or 0 and the name), looking
/// at `hint` first: rows list their columns in table order. Returns the next hint.
fn put_column(out: &mut Vec<u8>, rel: &Relation, name: &str, hint: usize) -> usize {
    let found = match rel.columns.get(hint) {
        Some((n, _)) if n == name => Some(hint),
        _ => rel.columns.iter().position(|(n, _)| n == name),
    };
    match found {
        Some(i) => {
            put_varint(out, i as u64 + 1);
            i + 1
        }
        None => {
            put_varint(out, 0);
            put_str(out, name);
            hint
        }
    }
}

/// The ordinal of a positional id (`EventId::from_position(lsn, n)`), if `id` is one.
fn positional_ordinal(id: &EventId, lsn: Lsn) -> Option<u32> {
    let b = id.as_str().as_bytes();
    let upper_hex = |s: &[u8]| s.iter().all(|c| matches!(c, b'0'..=b'9' | b'A'..=b'F'));
    if b.len() != 25 || b[16] != b'-' || !upper_hex(&b[..16]) || !upper_hex(&b[17..]) {
        return None;
    }
    let text = id.as_str();
    let at = u64::from_str_radix(&text[..16], 16).ok()?;
    (at == lsn.0).then(|| u32::from_str_radix(&text[17..], 16).ok())?
}

fn op_code(op: Op) -> u8 {
    match op {
        Op::Insert => 0,
        Op::Update => 1,
        Op::Delete => 2,
        Op::Truncate => 3,
        Op::Read => 4,
        Op::Schema => 5,
    }
}

const OPS: [Op; 6] = [
    Op::Insert,
    Op::Update,
    Op::Delete,
    Op::Truncate,
    Op::Read,
    Op::Schema,
];

const MARKS: [SnapshotMark; 6] = [
    SnapshotMark::First,
    SnapshotMark::FirstInDataCollection,
    SnapshotMark::True,
    SnapshotMark::LastInDataCollection,
    SnapshotMark::Last,
    SnapshotMark::Incremental,
];

fn mark_code(mark: SnapshotMark) -> u8 {
    MARKS.iter().position(|m| *m == mark).unwrap_or(2) as u8
}

/// The relation versions a reader has seen, by id: stored once, never changed, so
/// kept for the session's life.
#[derive(Default)]
pub(crate) struct Decoder {
    relations: HashMap<i64, Arc<Relation>>,
    /// The last commit time rendered (Unix µs, text).
    time: Option<(i64, Name)>,
}

/// Why a record cannot be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RecordError {
    /// The bytes are not a record of a known format.
    #[error("{0}")]
    Corrupt(serde_json::Error),
    /// The store failed while loading a relation version.
    #[error(transparent)]
    Store(super::JournalError),
}

impl RecordError {
    /// As a [`super::JournalError`] for the record at `pos`.
    pub(crate) fn at(self, pos: i64) -> super::JournalError {
        match self {
            RecordError::Corrupt(source) => super::JournalError::Corrupt { pos, source },
            RecordError::Store(e) => e,
        }
    }
}

fn bad(message: Bad) -> RecordError {
    RecordError::Corrupt(serde::de::Error::custom(message))
}

impl Decoder {
    /// The event of a record of either format. `load` reads a relation version the
    /// decoder has not seen yet from the store.
    pub(crate) fn decode(
        &mut self,
        bytes: &[u8],
        load: impl FnOnce(i64) -> Result<Option<String>, super::JournalError>,
    ) -> Result<ChangeEvent, RecordError> {
        match bytes.first() {
            Some(b'{') => {
                let text = std::str::from_utf8(bytes)
                    .map_err(|e| bad(format!("v1 record is not UTF-8: {e}")))?;
                from_stored_json(text).map_err(RecordError::Corrupt)
            }
            Some(&V2) => self.decode_v2(bytes, load),
            Some(v) => Err(bad(format!(
                "record format {v} is unknown to this pgcdc: a newer release wrote this \
                 journal; run that release (or a later one)"
            ))),
            None => Err(bad("empty record".into())),
        }
    }

    fn relation(
        &mut self,
        id: i64,
        load: impl FnOnce(i64) -> Result<Option<String>, super::JournalError>,
    ) -> Result<Arc<Relation>, RecordError> {
        if let Some(rel) = self.relations.get(&id) {
            return Ok(rel.clone());
        }
        let text = load(id)
            .map_err(RecordError::Store)?
            .ok_or_else(|| bad(format!("relation version {id} is not in the store")))?;
        let rel = Arc::new(
            Relation::from_stored(&text).map_err(|e| bad(format!("relation version {id}: {e}")))?,
        );
        self.relations.insert(id, rel.clone());
        Ok(rel)
    }

    fn decode_v2(
        &mut self,
        bytes: &[u8],
        load: impl FnOnce(i64) -> Result<Option<String>, super::JournalError>,
    ) -> Result<ChangeEvent, RecordError> {
        let mut r = Reader::new(&bytes[1..]);
        let rel_id = r.varint().map_err(bad)? as i64;
        let rel = self.relation(rel_id, load)?;
        self.read_v2(&mut r, &rel).map_err(bad)
    }

    fn read_v2(&mut self, r: &mut Reader<'_>, rel: &Relation) -> Result<ChangeEvent, Bad> {
        let op = *OPS.get(usize::from(r.u8()?)).ok_or("unknown op code")?;
        let flags = u16::from_le_bytes([r.u8()?, r.u8()?]);
        let has = |f: u16| flags & f != 0;
        let lsn = Lsn(r.varint()?);
        let id = if has(F_ID_POSITIONAL) {
            let n = u32::try_from(r.varint()?).map_err(|_| "ordinal out of range")?;
            EventId::from_position(lsn, n)
        } else {
            EventId::from_string(r.string()?)
        };
        let xid = if has(F_XID) {
            Some(u32::try_from(r.varint()?).map_err(|_| "xid out of range")?)
        } else {
            None
        };
        let commit_time = if has(F_TIME) {
            Some(match r.u8()? {
                0 => self.time_text(r.zigzag()?)?,
                1 => Name::from(r.str()?),
                t => return Err(format!("unknown commit time form {t}")),
            })
        } else {
            None
        };
        let trigger = has(F_TRIGGER).then(|| r.string()).transpose()?;
        let mut delta = |f: u16| -> Result<Option<Lsn>, Bad> {
            Ok(if has(f) {
                Some(Lsn(lsn.0.wrapping_sub(r.varint()?)))
            } else {
                None
            })
        };
        let change_lsn = delta(F_CHANGE_LSN)?;
        let last_commit_lsn = delta(F_LAST_COMMIT)?;
        let snapshot = if has(F_SNAPSHOT) {
            Some(
                *MARKS
                    .get(usize::from(r.u8()?))
                    .ok_or("unknown snapshot mark")?,
            )
        } else {
            None
        };
        let old_sent = if has(F_OLD_SENT) {
            Some(match r.u8()? {
                0 => OldSent::Full,
                1 => OldSent::Key,
                s => return Err(format!("unknown old-sent code {s}")),
            })
        } else {
            None
        };
        let mut unchanged_toast = Vec::new();
        if has(F_TOAST) {
            let n = r.count()?;
            unchanged_toast.reserve(n);
            for _ in 0..n {
                unchanged_toast.push(column_name(r, rel)?.to_string());
            }
        }
        let mut columns = |f: u16| -> Result<Option<Vec<Column>>, Bad> {
            if !has(f) {
                return Ok(None);
            }
            let text = r.str()?;
            serde_json::from_str(text)
                .map(Some)
                .map_err(|e| format!("schema event columns: {e}"))
        };
        let columns_now = columns(F_COLUMNS)?;
        let previous = columns(F_PREVIOUS)?;
        let mut row = |f: u16| -> Result<Option<Row>, Bad> {
            if !has(f) {
                return Ok(None);
            }
            let n = r.count()?;
            Row::read_packed(r, n, &rel.names).map(Some)
        };
        let key = row(F_KEY)?;
        let old = row(F_OLD)?;
        let new = row(F_NEW)?;
        if !r.done() {
            return Err("bytes left after the record".into());
        }
        Ok(ChangeEvent {
            id,
            op,
            schema: rel.schema.clone(),
            table: rel.table.clone(),
            key,
            old,
            new,
            trigger,
            lsn,
            xid,
            commit_time,
            unchanged_toast,
            columns: columns_now,
            previous,
            origin: Origin {
                change_lsn,
                last_commit_lsn,
                snapshot,
                old_sent,
                no_primary_key: has(F_NO_PK),
                column_types: rel.columns.clone(),
            },
        })
    }

    fn time_text(&mut self, unix_us: i64) -> Result<Name, Bad> {
        if let Some((us, text)) = &self.time {
            if *us == unix_us {
                return Ok(text.clone());
            }
        }
        let text = Name::from(render_time(unix_us).ok_or("commit time out of range")?);
        self.time = Some((unix_us, text.clone()));
        Ok(text)
    }
}

/// The column names of `columns`, to be shared by the rows decoded with them.
fn names_of(columns: &ColumnTypes) -> Names {
    columns
        .iter()
        .map(|(n, _)| Name::from(n.as_str()))
        .collect()
}

fn column_name(r: &mut Reader<'_>, rel: &Relation) -> Result<Name, Bad> {
    match r.varint()? {
        0 => r.string().map(Name::from),
        i => rel
            .names
            .get((i - 1) as usize)
            .cloned()
            .ok_or_else(|| format!("column {i} is past the relation's {}", rel.names.len())),
    }
}

/// The v1 record of `event` (what releases before v2 wrote), for tests and fixtures.
#[cfg(test)]
pub(crate) fn encode_v1(event: &ChangeEvent) -> String {
    serde_json::to_string(&pgcdc_schema::event::Journaled::of(event)).unwrap_or_default()
}

#[cfg(test)]
mod tests;
