//! Decoder for the `pgoutput` logical replication message format, protocol
//! versions 1 and 2 (PostgreSQL docs, "Logical Replication Message Formats").
//!
//! Input is the payload of one `XLogData` (`'w'`) CopyData message, i.e. the
//! bytes starting at the pgoutput tag byte; output is a typed [`Message`]:
//! Begin, Commit, Origin, Relation, Type, Insert, Update, Delete, Truncate,
//! logical decoding Message and (protocol v2, `streaming 'on'`) Stream Start,
//! Stream Stop, Stream Commit and Stream Abort.
//!
//! Inside a streamed block (between Stream Start and Stream Stop) Relation,
//! Type, Insert, Update, Delete, Truncate and Message carry the transaction id
//! of the (sub)transaction they belong to right after the tag; the decoder is
//! stateless, so the caller says which it is reading: [`decode_bytes`] outside
//! a stream, [`decode_stream_bytes`] inside one.
//!
//! The reader asks for protocol v2 with streaming when `source.streaming` is
//! set (see `replication::conn`); `ingest::streaming` stages the blocks until
//! their Stream Commit.
//!
//! The decoder is pure: no I/O, no async, no global state, and it never
//! panics on any input. Every length, count and string is bounds-checked;
//! counts read from the wire never drive an allocation larger than the bytes
//! still in the message. [`decode_bytes`] slices datum payloads out of the
//! caller's buffer without copying; [`decode`] copies the slice once first.
//!
//! Errors ([`DecodeError`]) are all definite: the same bytes always fail the
//! same way, so retrying cannot help; the caller should stop the stream and
//! report the LSN. Kinds:
//! - `Empty`: no tag byte;
//! - `Truncated` / `Unterminated`: a field runs past the end of the message;
//! - `UnsupportedMessage`: a tag from a later protocol version (two-phase)
//!   or one that pgoutput does not define;
//! - `UnknownTag`: an unknown datum kind, tuple marker or replica identity;
//! - `InvalidUtf8`, `NegativeLength`: malformed strings and lengths;
//! - `TrailingBytes`: the message has bytes after its last field.
//!
//! Strings are returned as sent; the namespace of a `pg_catalog` relation or
//! type is the empty string, as pgoutput sends it.

mod reader;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_encoder;
#[cfg(test)]
mod tests_fuzz;
#[cfg(test)]
pub(crate) mod tests_generator;

use bytes::Bytes;

use reader::Reader;

/// One decoded pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Start of a transaction ('B').
    Begin {
        /// LSN of the transaction's commit record.
        final_lsn: u64,
        /// Commit time in microseconds since 2000-01-01 00:00:00 UTC.
        commit_time: i64,
        /// Transaction id.
        xid: u32,
    },
    /// End of a transaction ('C').
    Commit {
        /// Unused by PostgreSQL 15; kept so nothing is lost.
        flags: u8,
        /// LSN of the commit record.
        commit_lsn: u64,
        /// LSN just past the commit record; the position to confirm.
        end_lsn: u64,
        /// Commit time in microseconds since 2000-01-01 00:00:00 UTC.
        commit_time: i64,
    },
    /// Replication origin of the current transaction ('O').
    Origin {
        /// LSN of the commit on the origin server.
        commit_lsn: u64,
        /// Origin name.
        name: String,
    },
    /// Table schema, sent before the first change to a table ('R').
    Relation(Relation),
    /// A user-defined type referenced by a relation ('Y').
    Type {
        /// Type OID.
        id: u32,
        /// Schema name (empty for `pg_catalog`).
        namespace: String,
        /// Type name.
        name: String,
    },
    /// Row inserted ('I').
    Insert {
        /// OID of the relation, as in a prior [`Message::Relation`].
        relation_id: u32,
        /// The new row.
        new: Tuple,
    },
    /// Row updated ('U').
    Update {
        /// OID of the relation, as in a prior [`Message::Relation`].
        relation_id: u32,
        /// Old key or row; absent when the key did not change and replica
        /// identity is not FULL.
        old: Option<OldTuple>,
        /// The new row.
        new: Tuple,
    },
    /// Row deleted ('D').
    Delete {
        /// OID of the relation, as in a prior [`Message::Relation`].
        relation_id: u32,
        /// Old key or row.
        old: OldTuple,
    },
    /// Tables truncated ('T').
    Truncate {
        /// Bit 1: CASCADE; bit 2: RESTART IDENTITY.
        options: u8,
        /// OIDs of the truncated relations.
        relation_ids: Vec<u32>,
    },
    /// Logical decoding message from `pg_logical_emit_message` ('M').
    Message {
        /// Whether the message was emitted inside a transaction.
        transactional: bool,
        /// LSN of the message.
        lsn: u64,
        /// Prefix given by the emitter.
        prefix: String,
        /// Raw content.
        content: Bytes,
    },
    /// Start of a block of a streamed, still uncommitted transaction ('S', v2).
    StreamStart {
        /// Top-level transaction id the block belongs to.
        xid: u32,
        /// Whether this is the transaction's first block.
        first_segment: bool,
    },
    /// End of a streamed block ('E', v2); other transactions may follow.
    StreamStop,
    /// A streamed transaction committed ('c', v2): its blocks now apply.
    StreamCommit {
        /// Top-level transaction id.
        xid: u32,
        /// Unused by PostgreSQL; kept so nothing is lost.
        flags: u8,
        /// LSN of the commit record.
        commit_lsn: u64,
        /// LSN just past the commit record; the position to confirm.
        end_lsn: u64,
        /// Commit time in microseconds since 2000-01-01 00:00:00 UTC.
        commit_time: i64,
    },
    /// A streamed transaction, or one of its subtransactions, aborted ('A', v2).
    StreamAbort {
        /// Top-level transaction id.
        xid: u32,
        /// The aborted subtransaction; equal to `xid` when the whole
        /// transaction aborted. (Protocol v4's abort LSN and time are not
        /// requested, so not decoded.)
        subxid: u32,
    },
}

/// A message read inside a streamed block: the (sub)transaction it belongs to
/// and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamedMessage {
    /// Transaction id sent before the message body; None for the messages
    /// that carry none (Origin, the Stream messages themselves, and Begin or
    /// Commit, which a well-behaved server never sends inside a stream).
    pub xid: Option<u32>,
    /// The message itself.
    pub message: Message,
}

/// Schema of one table as sent in a Relation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// Relation OID.
    pub(crate) id: u32,
    /// Schema name (empty for `pg_catalog`).
    pub(crate) namespace: String,
    /// Table name.
    pub(crate) name: String,
    /// Which old-row columns Update and Delete carry.
    pub(crate) replica_identity: ReplicaIdentity,
    /// Columns in tuple order.
    pub(crate) columns: Vec<Column>,
}

/// A table's `REPLICA IDENTITY` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// Primary key ('d').
    Default,
    /// No old values ('n').
    Nothing,
    /// All columns ('f').
    Full,
    /// A chosen unique index ('i').
    Index,
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Part of the replica identity key (flag bit 1).
    pub(crate) is_key: bool,
    /// Column name.
    pub(crate) name: String,
    /// Type OID.
    pub(crate) type_oid: u32,
    /// Type modifier (`atttypmod`), -1 when none.
    pub(crate) type_modifier: i32,
}

/// Old values carried by Update and Delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// Replica identity key columns only ('K'); other columns are Null.
    Key(Tuple),
    /// The whole old row, replica identity FULL ('O').
    Full(Tuple),
}

/// Column values of one row, in relation column order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuple(pub(crate) Vec<Datum>);

/// One column value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datum {
    /// SQL NULL ('n').
    Null,
    /// A TOASTed value that did not change and was not sent ('u').
    UnchangedToast,
    /// Text output format ('t').
    Text(Bytes),
    /// Binary output format ('b').
    Binary(Bytes),
}

impl Datum {
    /// The value's length in bytes (0 for null and unchanged TOAST).
    pub fn len(&self) -> usize {
        match self {
            Datum::Text(b) | Datum::Binary(b) => b.len(),
            Datum::Null | Datum::UnchangedToast => 0,
        }
    }

    /// Whether the value has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a message could not be decoded; every kind is definite (see module doc).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The message has no tag byte.
    #[error("empty pgoutput message")]
    Empty,
    /// A field runs past the end of the message.
    #[error(
        "truncated pgoutput {what}: needed {needed} bytes at offset {offset}, {available} left"
    )]
    Truncated {
        /// Field being read.
        what: &'static str,
        /// Offset of the field in the message.
        offset: usize,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes left in the message.
        available: usize,
    },
    /// A string has no NUL terminator before the end of the message.
    #[error("pgoutput {what} at offset {offset} has no NUL terminator")]
    Unterminated {
        /// Field being read.
        what: &'static str,
        /// Offset of the string in the message.
        offset: usize,
    },
    /// A message tag this decoder does not handle.
    #[error("unsupported pgoutput message tag {:?} ({})", char::from(*.0), describe_unsupported(*.0))]
    UnsupportedMessage(u8),
    /// An unknown tag byte inside a message.
    #[error("unknown pgoutput {what} tag {:?} at offset {offset}", char::from(*.tag))]
    UnknownTag {
        /// What the tag selects (datum kind, tuple marker, replica identity).
        what: &'static str,
        /// The byte found.
        tag: u8,
        /// Offset of the byte in the message.
        offset: usize,
    },
    /// A string is not valid UTF-8.
    #[error("pgoutput {what} is not valid UTF-8")]
    InvalidUtf8 {
        /// Field being read.
        what: &'static str,
    },
    /// A length field is negative.
    #[error("pgoutput {what} at offset {offset} has negative length {len}")]
    NegativeLength {
        /// Field being read.
        what: &'static str,
        /// Offset of the length in the message.
        offset: usize,
        /// The length found.
        len: i32,
    },
    /// Bytes left over after the message's last field.
    #[error("{count} trailing bytes at offset {offset} after pgoutput {message} message")]
    TrailingBytes {
        /// Message kind that was decoded.
        message: &'static str,
        /// Offset of the first extra byte.
        offset: usize,
        /// Number of extra bytes.
        count: usize,
    },
}

/// Names a tag that [`decode`] rejects, so the error says what was received.
fn describe_unsupported(tag: u8) -> &'static str {
    match tag {
        b'b' => "Begin Prepare, protocol v3 two-phase",
        b'P' => "Prepare, protocol v3 two-phase",
        b'K' => "Commit Prepared, protocol v3 two-phase",
        b'r' => "Rollback Prepared, protocol v3 two-phase",
        b'p' => "Stream Prepare, protocol v3 two-phase",
        b'w' | b'k' => "a CopyData wrapper; pass the XLogData payload instead",
        _ => "not a pgoutput message",
    }
}

/// Decodes one pgoutput message (an XLogData payload), copying it once.
pub fn decode(buf: &[u8]) -> Result<Message, DecodeError> {
    decode_bytes(&Bytes::copy_from_slice(buf))
}

/// Decodes one pgoutput message read outside a streamed block; datum and
/// message payloads share `buf`.
pub fn decode_bytes(buf: &Bytes) -> Result<Message, DecodeError> {
    decode_in(buf, false).map(|streamed| streamed.message)
}

/// Decodes one pgoutput message read inside a streamed block (after Stream
/// Start, before Stream Stop), where data messages carry their xid.
pub fn decode_stream_bytes(buf: &Bytes) -> Result<StreamedMessage, DecodeError> {
    decode_in(buf, true)
}

/// Tags whose messages carry a transaction id inside a streamed block.
const XID_IN_STREAM: &[u8] = b"RYIUDTM";

fn decode_in(buf: &Bytes, in_stream: bool) -> Result<StreamedMessage, DecodeError> {
    let mut r = Reader::new(buf);
    let tag = r.u8("message tag").map_err(|_| DecodeError::Empty)?;
    let xid = if in_stream && XID_IN_STREAM.contains(&tag) {
        Some(r.u32("streamed transaction id")?)
    } else {
        None
    };
    let (message, name) = match tag {
        b'B' => (decode_begin(&mut r)?, "Begin"),
        b'C' => (decode_commit(&mut r)?, "Commit"),
        b'O' => (decode_origin(&mut r)?, "Origin"),
        b'R' => (Message::Relation(decode_relation(&mut r)?), "Relation"),
        b'Y' => (decode_type(&mut r)?, "Type"),
        b'I' => (decode_insert(&mut r)?, "Insert"),
        b'U' => (decode_update(&mut r)?, "Update"),
        b'D' => (decode_delete(&mut r)?, "Delete"),
        b'T' => (decode_truncate(&mut r)?, "Truncate"),
        b'M' => (decode_logical_message(&mut r)?, "Message"),
        b'S' => (decode_stream_start(&mut r)?, "Stream Start"),
        b'E' => (Message::StreamStop, "Stream Stop"),
        b'c' => (decode_stream_commit(&mut r)?, "Stream Commit"),
        b'A' => (decode_stream_abort(&mut r)?, "Stream Abort"),
        other => return Err(DecodeError::UnsupportedMessage(other)),
    };
    r.finish(name)?;
    Ok(StreamedMessage { xid, message })
}

fn decode_stream_start(r: &mut Reader<'_>) -> Result<Message, DecodeError> {
    Ok(Message::StreamStart {
        xid: r.u32("Stream Start xid")?,
        first_segment: r.u8("Stream Start first-segment flag")? == 1,
    })
}

fn decode_stream_commit(r: &mut Reader<'_>) -> Result<Message, DecodeError> {
    Ok(Message::StreamCommit {
        xid: r.u32("Stream Commit xid")?,
        flags: r.u8("Stream Commit flags")?,
        commit_lsn: r.u64("Stream Commit LSN")?,
        end_lsn: r.u64("Stream Commit end LSN")?,
        commit_time: r.i64("Stream Commit time")?,
    })
}

fn decode_stream_abort(r: &mut Reader<'_>) -> Result<Message, DecodeError> {
    Ok(Message::StreamAbort {
        xid: r.u32("Stream Abort xid")?,
        subxid: r.u32("Stream Abort subtransaction xid")?,
    })
}

fn decode_begin(r: &mut Reader<'_>) -> Result<Message, DecodeError> {
    Ok(Message::Begin {
        final_lsn: r.u64("Begin final LSN")?,
        commit_time: r.i64("Begin commit time")?,
        xid: r.u32("Begin xid")?,
    })
}

fn decode_commit(r: &mut Reader<'_>) -> Result<Message, DecodeError> {
    Ok(Message::Commit {
        flags: r.u8("Commit flags")?,
        commit_lsn: r.u64("Commit LSN")?,
        end_lsn: r.u64("Commit end LSN")?,
        commit_time: r.i64("Commit time")?,
    })
}

fn decode_origin(r: &mut Reader<'_>) -> Result<Message, DecodeError> {
    Ok(Message::Origin {
        commit_lsn: r.u64("Origin commit LSN")?,
        name: r.cstr("Origin name")?,
    })
}

/// Smallest encoded column: flags, empty name's NUL, type OID, modifier.
const MIN_COLUMN_LEN: usize = 1 + 1 + 4 + 4;

fn decode_relation(r: &mut Reader<'_>) -> Result<Relation, DecodeError> {
    let id = r.u32("Relation OID")?;
    let namespace = r.cstr("Relation namespace")?;
    let name = r.cstr("Relation name")?;
    let offset = r.position();
    let replica_identity = match r.u8("Relation replica identity")? {
        b'd' => ReplicaIdentity::Default,
        b'n' => ReplicaIdentity::Nothing,
        b'f' => ReplicaIdentity::Full,
        b'i' => ReplicaIdentity::Index,
        tag => {
            return Err(DecodeError::UnknownTag {
                what: "replica identity",
                tag,
                offset,
            })
        }
    };
    let count = usize::from(r.u16("Relation column count")?);
    let mut columns = r.vec_for(count, MIN_COLUMN_LEN);
    for _ in 0..count {
        columns.push(Column {
            is_key: r.u8("column flags")? & 1 == 1,
            name: r.cstr("column name")?,
            type_oid: r.u32("column type OID")?,
            type_modifier: r.i32("column type modifier")?,
        });
    }
    Ok(Relation {
        id,
        namespace,
        name,
        replica_identity,
        columns,
    })
}

fn decode_type(r: &mut Reader<'_>) -> Result<Message, DecodeError> {
    Ok(Message::Type {
        id: r.u32("Type OID")?,
        namespace: r.cstr("Type namespace")?,
        name: r.cstr("Type name")?,
    })
}

/// Reads the marker byte that introduces a tuple ('N', 'K' or 'O').
fn tuple_marker(r: &mut Reader<'_>, allowed: &[u8]) -> Result<u8, DecodeError> {
    let offset = r.position();
    let tag = r.u8("tuple marker")?;
    if allowed.contains(&tag) {
        Ok(tag)
    } else {
        Err(DecodeError::UnknownTag {
            what: "tuple marker",
            tag,
            offset,
        })
    }
}

fn decode_tuple(r: &mut Reader<'_>) -> Result<Tuple, DecodeError> {
    let count = usize::from(r.u16("tuple column count")?);
    // Each datum is at least its one kind byte.
    let mut datums = r.vec_for(count, 1);
    for _ in 0..count {
        let offset = r.position();
        let datum = match r.u8("datum kind")? {
            b'n' => Datum::Null,
            b'u' => Datum::UnchangedToast,
            b't' => Datum::Text(r.len_prefixed("text datum")?),
            b'b' => Datum::Binary(r.len_prefixed("binary datum")?),
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "datum kind",
                    tag,
                    offset,
                })
            }
        };
        datums.push(datum);
    }
    Ok(Tuple(datums))
}

fn old_tuple(marker: u8, tuple: Tuple) -> OldTuple {
    if marker == b'K' {
        OldTuple::Key(tuple)
    } else {
        OldTuple::Full(tuple)
    }
}

fn decode_insert(r: &mut Reader<'_>) -> Result<Message, DecodeError> {
    let relation_id = r.u32("Insert relation OID")?;
    tuple_marker(r, b"N")?;
    Ok(Message::Insert {
        relation_id,
        new: decode_tuple(r)?,
    })
}

fn decode_update(r: &mut Reader<'_>) -> Result<Message, DecodeError> {
    let relation_id = r.u32("Update relation OID")?;
    let mut old = None;
    let marker = tuple_marker(r, b"KON")?;
    if marker != b'N' {
        old = Some(old_tuple(marker, decode_tuple(r)?));
        tuple_marker(r, b"N")?;
    }
    Ok(Message::Update {
        relation_id,
        old,
        new: decode_tuple(r)?,
    })
}

fn decode_delete(r: &mut Reader<'_>) -> Result<Message, DecodeError> {
    let relation_id = r.u32("Delete relation OID")?;
    let marker = tuple_marker(r, b"KO")?;
    Ok(Message::Delete {
        relation_id,
        old: old_tuple(marker, decode_tuple(r)?),
    })
}

fn decode_truncate(r: &mut Reader<'_>) -> Result<Message, DecodeError> {
    let count = r.u32("Truncate relation count")?;
    let options = r.u8("Truncate options")?;
    let count = usize::try_from(count).unwrap_or(usize::MAX);
    let mut relation_ids = r.vec_for(count, 4);
    for _ in 0..count {
        relation_ids.push(r.u32("Truncate relation OID")?);
    }
    Ok(Message::Truncate {
        options,
        relation_ids,
    })
}

fn decode_logical_message(r: &mut Reader<'_>) -> Result<Message, DecodeError> {
    Ok(Message::Message {
        transactional: r.u8("Message flags")? & 1 == 1,
        lsn: r.u64("Message LSN")?,
        prefix: r.cstr("Message prefix")?,
        content: r.len_prefixed("Message content")?,
    })
}
