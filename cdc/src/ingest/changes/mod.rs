//! Turns decoded pgoutput messages into journal entries: typed values, the
//! row key, old/new images and the event id from (commit LSN, ordinal).
//!
//! Kept free of I/O except the catalog look-up on a Relation message, so the
//! mapping rules are unit-tested on constructed messages.

use std::collections::HashMap;

use pgcdc_schema::event::{
    pg_micros_to_rfc3339, pg_micros_to_unix_micros, Column, ColumnTypes, Name, Row,
};
use pgcdc_schema::row::{Names, Packer};
use pgcdc_schema::value::PgType;
use pgcdc_schema::{ChangeEvent, EventId, Lsn, OldSent, Op, Origin, SnapshotMark};
use serde_json::Value;

use crate::journal::JournalEntry;
use crate::pgoutput::{Datum, OldTuple, Relation, Tuple};
use pgcdc_schema::TableName;

mod shapes;
use shapes::Seen;
pub(crate) use shapes::Shapes;

/// What the decoder knows of one relation (table) in this session.
#[derive(Debug, Clone)]
pub(crate) struct RelationInfo {
    /// The table.
    pub(crate) name: TableName,
    /// Columns in table order: name and decoding kind.
    pub(crate) columns: Vec<(String, PgType)>,
    /// Each column's type as Postgres names it (`int4`), in table order.
    pub(crate) type_names: Vec<String>,
    /// Indices of the key columns (primary key, else the replica identity columns).
    pub(crate) key: Vec<usize>,
    /// The key is the primary key (not replica identity columns).
    pub(crate) has_primary_key: bool,
    /// The captured table (as `source.tables` names it) this relation's changes belong
    /// to, matched by OID; None: a table of the publication that pgcdc does not capture.
    pub(crate) identity: Option<TableName>,
    /// `identity` as text (what journal entries name their table by), made once.
    identity_text: Name,
    /// The table's schema and name as its events carry them.
    event_table: EventTable,
    /// Each column's type name, shared by every event of this relation.
    pub(crate) column_types: ColumnTypes,
    /// The column names, shared by the rows built for this relation.
    pub(crate) names: Names,
}

impl RelationInfo {
    /// Builds the info from a Relation message, the resolved column kinds, the primary key
    /// and the captured table the relation's OID belongs to.
    pub(crate) fn new(
        rel: &Relation,
        kinds: Vec<PgType>,
        type_names: Vec<String>,
        primary_key: &[String],
        identity: Option<TableName>,
    ) -> Self {
        let name = TableName {
            schema: rel.namespace.clone(),
            table: rel.name.clone(),
        };
        let columns: Vec<(String, PgType)> = rel
            .columns
            .iter()
            .zip(kinds)
            .map(|(c, k)| (c.name.clone(), k))
            .collect();
        // Under the default replica identity the message's key flags are the primary
        // key as of the change (the historic catalog); the catalog look-up is today's
        // and may already show a later key change. Other identities flag other columns
        // (all, or an index's), so there the primary key comes from the catalog.
        // The catalog's order is the key's (index order) whenever it names the same
        // columns, so snapshot and stream agree on the key's shape.
        let by_catalog: Vec<usize> = primary_key
            .iter()
            .filter_map(|k| columns.iter().position(|(n, _)| n == k))
            .collect();
        let flagged: Vec<usize> =
            if rel.replica_identity == crate::pgoutput::ReplicaIdentity::Default {
                (0..rel.columns.len())
                    .filter(|&i| rel.columns[i].is_key)
                    .collect()
            } else {
                Vec::new()
            };
        let same_columns = {
            let (mut a, mut b) = (by_catalog.clone(), flagged.clone());
            a.sort_unstable();
            b.sort_unstable();
            a == b
        };
        let mut key = if flagged.is_empty() || same_columns {
            by_catalog
        } else {
            flagged
        };
        let has_primary_key = !key.is_empty();
        if key.is_empty() {
            key = rel
                .columns
                .iter()
                .enumerate()
                .filter(|(_, c)| c.is_key)
                .map(|(i, _)| i)
                .collect();
        }
        RelationInfo {
            column_types: column_types(&columns),
            names: column_names(&columns),
            identity_text: Name::from(
                identity
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
            ),
            event_table: EventTable::of(&name),
            identity,
            name,
            columns,
            type_names,
            key,
            has_primary_key,
        }
    }

    /// The columns as a schema event describes them.
    pub(crate) fn described(&self) -> Vec<Column> {
        self.columns
            .iter()
            .enumerate()
            .map(|(i, (name, _))| Column {
                name: name.clone(),
                type_name: self.type_names.get(i).cloned().unwrap_or_default(),
                key: self.key.contains(&i),
            })
            .collect()
    }
}

/// The column names, to be shared by the rows built with `columns`.
pub(crate) fn column_names(columns: &[(String, PgType)]) -> Names {
    columns
        .iter()
        .map(|(n, _)| Name::from(n.as_str()))
        .collect()
}

/// Each column's type name (what `Origin::column_types` holds).
pub(crate) fn column_types(columns: &[(String, PgType)]) -> ColumnTypes {
    columns
        .iter()
        .map(|(name, kind)| (name.clone(), kind.name()))
        .collect()
}

/// A table's schema and name as its events carry them: made once, shared by
/// the events (a reference count each, not two strings).
#[derive(Debug, Clone)]
pub(crate) struct EventTable {
    pub(crate) schema: Name,
    pub(crate) table: Name,
}

impl EventTable {
    pub(crate) fn of(table: &TableName) -> EventTable {
        EventTable {
            schema: Name::from(table.schema.as_str()),
            table: Name::from(table.table.as_str()),
        }
    }
}

/// The transaction being decoded.
#[derive(Debug, Clone)]
pub(crate) struct TxnState {
    /// Commit LSN (Begin's final LSN).
    pub(crate) commit_lsn: Lsn,
    /// Transaction id.
    pub(crate) xid: u32,
    /// Commit time, µs since 2000-01-01.
    pub(crate) commit_time: i64,
    /// Commit time as RFC 3339 (formatted once per transaction, shared by its events).
    pub(crate) commit_time_text: Name,
    /// Ordinal of the next change.
    pub(crate) next_seq: u32,
    /// End LSN of the transaction committed before this one, if this session saw it.
    pub(crate) last_commit_lsn: Option<Lsn>,
}

/// Why a message could not be turned into an event (definite: the stream is inconsistent).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ChangeError {
    /// A row change referenced a relation never described in this session.
    #[error("change for unknown relation OID {0} (no Relation message came before it)")]
    UnknownRelation(u32),
    /// A row change came outside BEGIN/COMMIT.
    #[error("row change outside a transaction")]
    NoTransaction,
    /// A tuple did not match its relation's column count.
    #[error("tuple of {table} has {got} columns, the relation has {want}")]
    ColumnCount {
        /// Table.
        table: TableName,
        /// Columns in the tuple.
        got: usize,
        /// Columns in the relation.
        want: usize,
    },
}

/// What one row change is, before the transaction's position is added.
struct Built {
    op: Op,
    key: Option<Row>,
    old: Option<Row>,
    new: Option<Row>,
    unchanged_toast: Vec<String>,
    old_sent: Option<OldSent>,
}

/// Decodes row changes into journal entries.
#[derive(Default)]
pub(crate) struct ChangeBuilder {
    relations: HashMap<u32, RelationInfo>,
    txn: Option<TxnState>,
    /// Captured tables' columns, to see schema changes (outlives a reconnect).
    shapes: Shapes,
    /// WAL start of the message being decoded (the change's own LSN).
    at: Option<Lsn>,
    /// End LSN of the last COMMIT seen (Debezium's "last commit LSN"); kept across
    /// reconnects, as the stream resumes right after it.
    last_commit_end: Option<Lsn>,
}

/// What a Relation message brought.
#[derive(Debug, Default)]
pub(crate) struct RelationOutcome {
    /// A schema event to journal (the table's columns changed).
    pub(crate) event: Option<JournalEntry>,
    /// A new shape to store once its transaction (committing at the `Lsn`) is confirmed.
    pub(crate) stage: Option<(String, Lsn, Vec<Column>)>,
}

impl ChangeBuilder {
    /// Forgets the session's relations and any open transaction (on reconnect).
    pub(crate) fn reset(&mut self) {
        self.relations.clear();
        self.txn = None;
        self.at = None;
    }

    /// The WAL start of the message about to be decoded: the next change's own LSN.
    pub(crate) fn message_at(&mut self, at: Lsn) {
        self.at = Some(at);
    }

    /// Starts from the shapes the store holds (at process start).
    pub(crate) fn with_shapes(shapes: Shapes) -> ChangeBuilder {
        ChangeBuilder {
            shapes,
            ..ChangeBuilder::default()
        }
    }

    /// The stream resumes at `start` (see [`Shapes::rewind`]).
    pub(crate) fn rewind_shapes(&mut self, start: Lsn) {
        self.shapes.rewind(start);
    }

    /// Records a relation description; for a captured table whose columns changed,
    /// a schema event that takes the transaction's next ordinal.
    pub(crate) fn relation(&mut self, id: u32, info: RelationInfo) -> RelationOutcome {
        let out = match &info.identity {
            Some(identity) => self.shape(identity, &info.name, info.described()),
            None => RelationOutcome::default(),
        };
        self.relations.insert(id, info);
        out
    }

    /// A captured table's columns as `source.ddl_capture`'s message gives them at its
    /// DDL's commit: compared like a Relation message's.
    pub(crate) fn ddl(
        &mut self,
        identity: &TableName,
        name: &TableName,
        columns: Vec<Column>,
    ) -> RelationOutcome {
        self.shape(identity, name, columns)
    }

    fn shape(
        &mut self,
        identity: &TableName,
        name: &TableName,
        columns: Vec<Column>,
    ) -> RelationOutcome {
        let mut out = RelationOutcome::default();
        let Some(txn) = self.txn.as_mut() else {
            return out;
        };
        let table = identity.to_string();
        let seen = self.shapes.observe(&table, txn.commit_lsn, &columns);
        tracing::debug!(table = %table, at = %txn.commit_lsn, ?seen, ?columns, "table shape");
        if seen != Seen::Same {
            out.stage = Some((table.clone(), txn.commit_lsn, columns.clone()));
        }
        if let Seen::Changed { previous } = seen {
            let seq = txn.next_seq;
            txn.next_seq += 1;
            let event_table = EventTable::of(name);
            out.event = Some(JournalEntry {
                table: Name::from(table),
                seq,
                commit_time_unix_us: Some(pg_micros_to_unix_micros(txn.commit_time)),
                event: ChangeEvent {
                    id: EventId::from_position(txn.commit_lsn, seq),
                    op: Op::Schema,
                    schema: event_table.schema,
                    table: event_table.table,
                    key: None,
                    old: None,
                    new: None,
                    trigger: None,
                    lsn: txn.commit_lsn,
                    xid: Some(txn.xid),
                    commit_time: Some(txn.commit_time_text.clone()),
                    unchanged_toast: Vec::new(),
                    columns: Some(columns),
                    previous: Some(previous),
                    origin: Default::default(),
                },
            });
        }
        out
    }

    /// Whether a transaction is open.
    pub(crate) fn in_transaction(&self) -> bool {
        self.txn.is_some()
    }

    /// BEGIN.
    pub(crate) fn begin(&mut self, final_lsn: u64, xid: u32, commit_time: i64) {
        self.txn = Some(TxnState {
            commit_lsn: Lsn(final_lsn),
            xid,
            commit_time,
            commit_time_text: Name::from(pg_micros_to_rfc3339(commit_time)),
            next_seq: 0,
            last_commit_lsn: self.last_commit_end,
        });
    }

    /// COMMIT at `end_lsn`: closes the transaction.
    pub(crate) fn commit(&mut self, end_lsn: Lsn) {
        self.txn = None;
        self.last_commit_end = Some(end_lsn);
    }

    fn row(&self, info: &RelationInfo, tuple: &Tuple) -> Result<(Row, Vec<String>), ChangeError> {
        if tuple.0.len() != info.columns.len() {
            return Err(ChangeError::ColumnCount {
                table: info.name.clone(),
                got: tuple.0.len(),
                want: info.columns.len(),
            });
        }
        // The packed row is about as long as the values' text, a bytea's two
        // thirds of it (hex in, base64 kept): a wide value's row is allocated
        // once, at about its size.
        let size: usize = info
            .columns
            .iter()
            .zip(&tuple.0)
            .map(|((_, kind), datum)| match kind {
                PgType::Bytea => datum.len() / 3 * 2 + 4,
                _ => datum.len() + 4,
            })
            .sum();
        let mut row = Packer::new(info.names.clone(), size);
        let mut toast = Vec::new();
        for (i, ((name, kind), datum)) in info.columns.iter().zip(&tuple.0).enumerate() {
            match datum {
                Datum::Null => row.null(i),
                Datum::UnchangedToast => toast.push(name.clone()),
                Datum::Text(b) | Datum::Binary(b) => match std::str::from_utf8(b) {
                    Ok(s) => row.text(i, kind, s),
                    Err(_) => row.value(i, &Value::String(String::from_utf8_lossy(b).into_owned())),
                },
            }
        }
        Ok((row.finish(), toast))
    }

    /// The key columns of `row` (null where it lacks one).
    fn key_of(info: &RelationInfo, row: &Row) -> Row {
        if let Some(key) = row.project(&info.key) {
            return key;
        }
        let mut key = Row::with_capacity(info.key.len());
        for n in info.key.iter().filter_map(|&i| info.names.get(i)) {
            key.insert(n.clone(), row.get(n).cloned().unwrap_or(Value::Null));
        }
        key
    }

    fn entry(
        &mut self,
        relation_id: u32,
        build: impl FnOnce(&Self, &RelationInfo) -> Result<Built, ChangeError>,
    ) -> Result<Option<JournalEntry>, ChangeError> {
        let txn = self.txn.as_mut().ok_or(ChangeError::NoTransaction)?;
        let seq = txn.next_seq;
        txn.next_seq += 1;
        let txn = txn.clone();
        let info = self
            .relations
            .get(&relation_id)
            .ok_or(ChangeError::UnknownRelation(relation_id))?;
        if info.identity.is_none() {
            return Ok(None);
        }
        let Built {
            op,
            key,
            old,
            new,
            unchanged_toast,
            old_sent,
        } = build(self, info)?;
        let origin = Origin {
            change_lsn: self.at,
            last_commit_lsn: txn.last_commit_lsn,
            snapshot: None,
            old_sent,
            no_primary_key: !info.has_primary_key,
            column_types: info.column_types.clone(),
        };
        Ok(Some(JournalEntry {
            table: info.identity_text.clone(),
            seq,
            commit_time_unix_us: Some(pg_micros_to_unix_micros(txn.commit_time)),
            event: ChangeEvent {
                id: EventId::from_position(txn.commit_lsn, seq),
                op,
                schema: info.event_table.schema.clone(),
                table: info.event_table.table.clone(),
                key,
                old,
                new,
                trigger: None,
                lsn: txn.commit_lsn,
                xid: Some(txn.xid),
                commit_time: Some(txn.commit_time_text),
                unchanged_toast,
                columns: None,
                previous: None,
                origin,
            },
        }))
    }

    /// INSERT.
    pub(crate) fn insert(
        &mut self,
        relation_id: u32,
        new: &Tuple,
    ) -> Result<Option<JournalEntry>, ChangeError> {
        self.entry(relation_id, |b, info| {
            let (row, toast) = b.row(info, new)?;
            Ok(Built {
                op: Op::Insert,
                key: Some(Self::key_of(info, &row)),
                old: None,
                new: Some(row),
                unchanged_toast: toast,
                old_sent: None,
            })
        })
    }

    /// UPDATE: `old` is the key (`K`, key changed) or the full old row (`O`, REPLICA IDENTITY FULL).
    pub(crate) fn update(
        &mut self,
        relation_id: u32,
        old: Option<&OldTuple>,
        new: &Tuple,
    ) -> Result<Option<JournalEntry>, ChangeError> {
        self.entry(relation_id, |b, info| {
            let (row, toast) = b.row(info, new)?;
            let (old, old_sent) = match old {
                None => (None, None),
                Some(OldTuple::Full(t)) => (Some(b.row(info, t)?.0), Some(OldSent::Full)),
                Some(OldTuple::Key(t)) => (
                    Some(Self::key_of(info, &b.row(info, t)?.0)),
                    Some(OldSent::Key),
                ),
            };
            Ok(Built {
                op: Op::Update,
                key: Some(Self::key_of(info, &row)),
                old,
                new: Some(row),
                unchanged_toast: toast,
                old_sent,
            })
        })
    }

    /// DELETE: `old` is the key (default identity) or the full row (FULL).
    pub(crate) fn delete(
        &mut self,
        relation_id: u32,
        old: &OldTuple,
    ) -> Result<Option<JournalEntry>, ChangeError> {
        self.entry(relation_id, |b, info| {
            let (old, key, old_sent) = match old {
                OldTuple::Full(t) => {
                    let row = b.row(info, t)?.0;
                    let key = Self::key_of(info, &row);
                    (row, key, OldSent::Full)
                }
                OldTuple::Key(t) => {
                    let key = Self::key_of(info, &b.row(info, t)?.0);
                    (key.clone(), key, OldSent::Key)
                }
            };
            Ok(Built {
                op: Op::Delete,
                key: Some(key),
                old: Some(old),
                new: None,
                unchanged_toast: Vec::new(),
                old_sent: Some(old_sent),
            })
        })
    }

    /// A row read by a resync chunk, journaled in the current (high watermark)
    /// transaction. Its id comes from the resync, the table and the key, so a chunk
    /// read again after a restart gives its rows the same ids. `identity` is the
    /// captured table as text, `table` its names as events carry them (both made
    /// once per chunk).
    pub(crate) fn read(
        &mut self,
        resync_id: i64,
        identity: &Name,
        table: &EventTable,
        key: Row,
        row: Row,
        column_types: &ColumnTypes,
    ) -> Result<JournalEntry, ChangeError> {
        let txn = self.txn.as_mut().ok_or(ChangeError::NoTransaction)?;
        let seq = txn.next_seq;
        txn.next_seq += 1;
        Ok(JournalEntry {
            table: identity.clone(),
            seq,
            commit_time_unix_us: Some(pg_micros_to_unix_micros(txn.commit_time)),
            event: read_event(
                resync_id,
                table,
                key,
                row,
                txn.commit_lsn,
                txn.commit_time_text.clone(),
                Origin {
                    snapshot: Some(SnapshotMark::Incremental),
                    column_types: column_types.clone(),
                    ..Origin::default()
                },
            ),
        })
    }

    /// TRUNCATE of one relation.
    pub(crate) fn truncate(
        &mut self,
        relation_id: u32,
    ) -> Result<Option<JournalEntry>, ChangeError> {
        self.entry(relation_id, |_, _| {
            Ok(Built {
                op: Op::Truncate,
                key: None,
                old: None,
                new: None,
                unchanged_toast: Vec::new(),
                old_sent: None,
            })
        })
    }
}

/// A row read by a resync or snapshot, as a `read` event.
pub(crate) fn read_event(
    resync_id: i64,
    table: &EventTable,
    key: Row,
    row: Row,
    lsn: Lsn,
    commit_time: Name,
    origin: Origin,
) -> ChangeEvent {
    ChangeEvent {
        id: read_event_id(resync_id, table, &key),
        op: Op::Read,
        schema: table.schema.clone(),
        table: table.table.clone(),
        key: Some(key),
        old: None,
        new: Some(row),
        trigger: None,
        lsn,
        xid: None,
        commit_time: Some(commit_time),
        unchanged_toast: Vec::new(),
        columns: None,
        previous: None,
        origin,
    }
}

/// Id of a resync's (or snapshot's) `read` event: `R` + the resync id + the first 32 hex
/// digits of SHA-256 over `schema.table` and the key JSON.
pub(crate) fn read_event_id(resync_id: i64, table: &EventTable, key: &Row) -> EventId {
    use sha2::{Digest, Sha256};
    thread_local! {
        /// The key's JSON, written into one buffer per thread (no string per row).
        static KEY_JSON: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let mut hash = Sha256::new();
    hash.update(table.schema.as_bytes());
    hash.update(b".");
    hash.update(table.table.as_bytes());
    hash.update([0u8]);
    KEY_JSON.with_borrow_mut(|json| {
        // The bytes `to_string(key)` gives, written without serde; as
        // `to_string(key).unwrap_or_default()` did, nothing for a key that fails.
        if key.write_json(json).is_ok() {
            hash.update(json.as_slice());
        }
        json.clear();
        json.shrink_to(4096);
    });
    let digest = hash.finalize();
    // Hex by hand: a snapshot makes one id per row, and `format!` showed in its
    // profile (per byte, then for the prefix).
    const HEX: &[u8; 16] = b"0123456789abcdef";
    const UPPER: &[u8; 16] = b"0123456789ABCDEF";
    let mut id = String::with_capacity(1 + 16 + 1 + 32);
    id.push('R');
    // As `{resync_id:08X}`: the two's-complement digits, at least eight.
    let bits = resync_id as u64;
    let digits = (16 - bits.leading_zeros() as usize / 4).max(8);
    for shift in (0..digits).rev() {
        id.push(char::from(UPPER[((bits >> (shift * 4)) & 0xf) as usize]));
    }
    id.push('-');
    for b in digest.iter().take(16) {
        id.push(char::from(HEX[usize::from(b >> 4)]));
        id.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    EventId::from_string(id)
}

#[cfg(test)]
mod tests;
