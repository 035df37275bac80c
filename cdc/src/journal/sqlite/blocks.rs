//! The events of the SQLite journal, stored in blocks: one row of
//! `event_blocks` holds up to [`BLOCK_EVENTS`] events in position order (or
//! [`BLOCK_BYTES`] of them), so that appending and reading back cost one
//! statement per block instead of one per event (the per-row insert and step
//! were about a third of the journal's cost).
//!
//! ```text
//!  event_blocks(last_pos PK, first_pos, count, first_lsn, first_time_us,
//!               last_lsn, last_seq, min_lsn, min_time_us, max_time_us, body)
//!  body   = event*
//!  event  = pos delta varint (from the previous event, the first's from first_pos - 1)
//!           commit LSN varint, seq varint, flags u8,
//!           [commit time zigzag] [table text] [target text], record bytes
//!  flags  = 1 commit time, 2 table (else the previous event's), 4 target
//! ```
//!
//! A body is stored as written, or packed ([`pack`]) when that saves room: a
//! mark no unpacked body starts with (a position delta of 2^64 - 1, which
//! releases before packing reject as "position delta out of range"), a codec
//! byte (1: LZ4 block), the body's length as a varint, then the compressed
//! bytes. Blocks of a backlog or a snapshot (rows of one table, alike) pack to
//! a third or less; each is written twice (the WAL, then the database file)
//! and synced, so bytes not written are the journal's largest saving.
//!
//! The columns answer what the store asks without opening a body: the head
//! (`MAX(last_pos)`), the oldest entry, which block holds a position, the
//! newest block with an event before an LSN or time, what pruning may delete
//! (`max_time_us` is null when an event has no commit time: never pruned by
//! time, as such an event was not). A position's event never changes, and a
//! block once written is only ever deleted whole.
//!
//! Journals of earlier releases kept one row per event in `events`; opening one
//! moves those rows into blocks ([`migrate`]), records as they were stored (v1
//! JSON text or v2 bytes: the decoder reads both).
//!
//! `events` keeps one row, the head mark ([`mark_head`]): at the head position,
//! with the last event's LSN and seq, and a record of a format no earlier release
//! reads. A release before blocks that opens this journal (a downgrade) so sees
//! the true head and continues positions from it, and a sink runner of it that
//! is behind the head stops at the mark with "a newer release wrote this
//! journal" instead of skipping the events it cannot see.

use pgcdc_schema::packed::{put_bytes, put_str, put_varint, put_zigzag, varint_into, Bad, Reader};
use rusqlite::blob::ZeroBlob;
use rusqlite::{params, Connection, DatabaseName};

/// Most events in one block.
pub(super) const BLOCK_EVENTS: usize = 256;

/// A block closes once its body reaches this many bytes: a runner reading a few
/// events of a block reads the whole body.
pub(super) const BLOCK_BYTES: usize = 64 << 10;

/// A body over this many bytes (a block of one wide row) is written in place
/// (see [`BlockWriter::flush`]). Not smaller: writing in place writes the
/// pages twice (zeros, then the body), which made 4 MB rows 20% slower.
const PLACED_BYTES: usize = 8 << 20;

/// Bodies from this many bytes up to [`PACK_MAX`] are packed when packing saves
/// at least an eighth: a live event's block of a few hundred bytes saves little.
const PACK_MIN: usize = 1 << 10;

/// Larger bodies (a block of one wide row) stay as they are: packing would hold
/// a second copy of the row in memory, writing and reading.
const PACK_MAX: usize = 1 << 20;

/// The start of a packed body: the varint of `u64::MAX`, as no unpacked body
/// starts (its first position delta is small).
pub(super) const PACKED: &[u8] = b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01";

/// The codec byte after [`PACKED`]: an LZ4 block.
const LZ4: u8 = 1;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS event_blocks (
    last_pos INTEGER PRIMARY KEY,
    first_pos INTEGER NOT NULL,
    count INTEGER NOT NULL,
    first_lsn INTEGER NOT NULL,
    first_time_us INTEGER,
    last_lsn INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    min_lsn INTEGER NOT NULL,
    min_time_us INTEGER,
    max_time_us INTEGER,
    body BLOB NOT NULL
);
";

/// One stored event, borrowed from its block's body.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Stored<'a> {
    pub(super) pos: i64,
    pub(super) commit_lsn: u64,
    pub(super) seq: u32,
    pub(super) commit_time_us: Option<i64>,
    pub(super) table: &'a str,
    pub(super) target: Option<&'a str>,
    pub(super) record: &'a [u8],
}

const F_TIME: u8 = 1;
const F_TABLE: u8 = 2;
const F_TARGET: u8 = 4;

/// The block being built by an append.
#[derive(Default)]
pub(super) struct BlockWriter {
    body: Vec<u8>,
    count: usize,
    first: Option<(i64, u64, Option<i64>)>,
    last: (i64, u64, u32),
    min_lsn: u64,
    min_time: Option<i64>,
    max_time: Option<i64>,
    untimed: bool,
    table: String,
    /// Bytes stored by `flush` so far (packed bodies by their packed size).
    flushed: u64,
    /// The packed body of the block being flushed.
    packed: Vec<u8>,
}

impl BlockWriter {
    /// Adds an event (positions increase).
    pub(super) fn push(&mut self, e: &Stored<'_>) {
        self.head(e);
        put_bytes(&mut self.body, e.record);
    }

    /// Adds an event whose record `encode` appends to the body (`e.record` is not
    /// read): a record is written once, in place, never in a buffer of its own as
    /// well (a wide row's record is as large as the row). `about` is about the
    /// record's length: room is made for the record at once, and for its length
    /// before it.
    pub(super) fn push_encoded(
        &mut self,
        e: &Stored<'_>,
        about: usize,
        encode: impl FnOnce(&mut Vec<u8>),
    ) {
        self.head(e);
        let mut len = [0u8; 10];
        let room = varint_into(&mut len, about as u64);
        self.body.reserve(room + about);
        let at = self.body.len();
        self.body.extend_from_slice(&len[..room]);
        encode(&mut self.body);
        let n = varint_into(&mut len, (self.body.len() - at - room) as u64);
        // Only a length of another size than the room left moves the record.
        match n.cmp(&room) {
            std::cmp::Ordering::Equal => {}
            std::cmp::Ordering::Less => {
                self.body.drain(at..at + room - n);
            }
            std::cmp::Ordering::Greater => {
                self.body.splice(at..at, std::iter::repeat_n(0, n - room));
            }
        }
        self.body[at..at + n].copy_from_slice(&len[..n]);
    }

    /// Writes the part of an event before its record.
    fn head(&mut self, e: &Stored<'_>) {
        let prev = match self.first {
            None => {
                self.first = Some((e.pos, e.commit_lsn, e.commit_time_us));
                self.min_lsn = e.commit_lsn;
                self.table.clear();
                e.pos - 1
            }
            Some(_) => self.last.0,
        };
        put_varint(&mut self.body, (e.pos - prev) as u64);
        put_varint(&mut self.body, e.commit_lsn);
        put_varint(&mut self.body, u64::from(e.seq));
        let same_table = self.count > 0 && self.table == e.table;
        let flags = if e.commit_time_us.is_some() {
            F_TIME
        } else {
            0
        } | if same_table { 0 } else { F_TABLE }
            | if e.target.is_some() { F_TARGET } else { 0 };
        self.body.push(flags);
        if let Some(t) = e.commit_time_us {
            put_zigzag(&mut self.body, t);
        }
        if !same_table {
            put_str(&mut self.body, e.table);
            self.table.clear();
            self.table.push_str(e.table);
        }
        if let Some(t) = e.target {
            put_str(&mut self.body, t);
        }
        self.count += 1;
        self.last = (e.pos, e.commit_lsn, e.seq);
        self.min_lsn = self.min_lsn.min(e.commit_lsn);
        match e.commit_time_us {
            Some(t) => {
                self.min_time = Some(self.min_time.map_or(t, |m| m.min(t)));
                self.max_time = Some(self.max_time.map_or(t, |m| m.max(t)));
            }
            None => self.untimed = true,
        }
    }

    /// Whether the block is full.
    pub(super) fn full(&self) -> bool {
        self.count >= BLOCK_EVENTS || self.body.len() >= BLOCK_BYTES
    }

    /// Bytes stored so far.
    pub(super) fn flushed(&self) -> u64 {
        self.flushed
    }

    /// Stores the block (if it holds any event) and starts the next.
    pub(super) fn flush(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        let Some((first_pos, first_lsn, first_time)) = self.first.take() else {
            return Ok(());
        };
        let (last_pos, last_lsn, last_seq) = self.last;
        // A large body is written into its place after the insert: bound as a
        // value, SQLite would copy it twice (the bound copy and the record it
        // makes of the row) before writing its pages.
        let placed = (self.body.len() > PLACED_BYTES)
            .then(|| i32::try_from(self.body.len()).ok())
            .flatten();
        let packed = pack(&self.body, &mut self.packed);
        let stored = packed.map_or(self.body.len(), <[u8]>::len);
        let body: &dyn rusqlite::ToSql = match (placed, &packed) {
            (Some(len), _) => &ZeroBlob(len),
            (None, Some(packed)) => packed,
            (None, None) => &self.body,
        };
        conn.prepare_cached(
            "INSERT INTO event_blocks(last_pos, first_pos, count, first_lsn, first_time_us, \
             last_lsn, last_seq, min_lsn, min_time_us, max_time_us, body) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )?
        .execute(params![
            last_pos,
            first_pos,
            self.count as i64,
            first_lsn as i64,
            first_time,
            last_lsn as i64,
            last_seq,
            self.min_lsn as i64,
            self.min_time,
            if self.untimed { None } else { self.max_time },
            body,
        ])?;
        if placed.is_some() {
            let mut blob =
                conn.blob_open(DatabaseName::Main, "event_blocks", "body", last_pos, false)?;
            blob.write_all_at(&self.body, 0)?;
            blob.close()?;
        }
        self.flushed += stored as u64;
        self.body.clear();
        // A wide row's room does not stay for the blocks after it.
        self.body.shrink_to(2 * BLOCK_BYTES);
        if self.packed.len() > 2 * BLOCK_BYTES {
            self.packed = Vec::new();
        }
        self.count = 0;
        self.min_time = None;
        self.max_time = None;
        self.untimed = false;
        Ok(())
    }
}

/// `body` packed (in `out`), when that saves at least an eighth of it (see the
/// module doc); None leaves the body to be stored as it is. `out` keeps its
/// length from one block to the next: only growth is zeroed.
fn pack<'a>(body: &[u8], out: &'a mut Vec<u8>) -> Option<&'a [u8]> {
    if !(PACK_MIN..=PACK_MAX).contains(&body.len()) {
        return None;
    }
    let mut varint = [0u8; 10];
    let n = varint_into(&mut varint, body.len() as u64);
    let len = &varint[..n];
    let at = PACKED.len() + 1 + len.len();
    let room = at + lz4_flex::block::get_maximum_output_size(body.len());
    if out.len() < room {
        out.resize(room, 0);
    }
    out[..PACKED.len()].copy_from_slice(PACKED);
    out[PACKED.len()] = LZ4;
    out[PACKED.len() + 1..at].copy_from_slice(len);
    match lz4_flex::block::compress_into(body, &mut out[at..room]) {
        Ok(n) if at + n <= body.len() - body.len() / 8 => Some(&out[..at + n]),
        _ => None,
    }
}

/// A stored body as written: a packed one unpacked into `buf`.
fn unpack<'a>(stored: &'a [u8], buf: &'a mut Vec<u8>) -> Result<&'a [u8], Bad> {
    let Some(rest) = stored.strip_prefix(PACKED) else {
        return Ok(stored);
    };
    let mut r = Reader::new(rest);
    let codec = r.u8()?;
    if codec != LZ4 {
        return Err(format!(
            "block packed with codec {codec}, which this release does not know: \
             a newer release wrote it"
        ));
    }
    let len = usize::try_from(r.varint()?)
        .ok()
        .filter(|&n| n <= PACK_MAX)
        .ok_or("packed block longer than any release packs")?;
    let data = &rest[r.at()..];
    // Only growth is zeroed: the bytes are written over.
    if buf.len() < len {
        buf.resize(len, 0);
    }
    match lz4_flex::block::decompress_into(data, &mut buf[..len]) {
        Ok(n) if n == len => Ok(&buf[..len]),
        Ok(n) => Err(format!("packed block unpacks to {n} bytes, not {len}")),
        Err(e) => Err(format!("packed block does not unpack: {e}")),
    }
}

/// The events of a block whose first position is `first_pos`, in order, from
/// its body as stored (`buf` holds it unpacked, when it was packed).
pub(super) fn events<'a>(first_pos: i64, stored: &'a [u8], buf: &'a mut Vec<u8>) -> Events<'a> {
    let (body, bad) = match unpack(stored, buf) {
        Ok(body) => (body, None),
        Err(e) => (&[][..], Some(e)),
    };
    Events {
        r: Reader::new(body),
        pos: first_pos - 1,
        table: "",
        bad,
    }
}

pub(super) struct Events<'a> {
    r: Reader<'a>,
    pos: i64,
    table: &'a str,
    /// Why the body does not unpack (reported as the first event).
    bad: Option<Bad>,
}

impl<'a> Events<'a> {
    fn read(&mut self) -> Result<Stored<'a>, Bad> {
        let r = &mut self.r;
        let delta = i64::try_from(r.varint()?).map_err(|_| "position delta out of range")?;
        self.pos = self.pos.checked_add(delta).ok_or("position out of range")?;
        let commit_lsn = r.varint()?;
        let seq = u32::try_from(r.varint()?).map_err(|_| "seq out of range")?;
        let flags = r.u8()?;
        let commit_time_us = if flags & F_TIME != 0 {
            Some(r.zigzag()?)
        } else {
            None
        };
        if flags & F_TABLE != 0 {
            self.table = r.str()?;
        }
        let target = if flags & F_TARGET != 0 {
            Some(r.str()?)
        } else {
            None
        };
        Ok(Stored {
            pos: self.pos,
            commit_lsn,
            seq,
            commit_time_us,
            table: self.table,
            target,
            record: r.bytes()?,
        })
    }
}

impl<'a> Iterator for Events<'a> {
    /// An event, or what is wrong with the body at the position after the last read.
    type Item = Result<Stored<'a>, (i64, Bad)>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.bad.take() {
            return Some(Err((self.pos + 1, e)));
        }
        if self.r.done() {
            return None;
        }
        let after = self.pos;
        let out = self.read().map_err(|e| (after + 1, e));
        if out.is_err() {
            // Nothing after a damaged event can be placed.
            self.r = Reader::new(&[]);
        }
        Some(out)
    }
}

/// The record of the head mark: its first byte is a record format no release
/// reads (v1 records start with `{`, v2 with 2).
pub(super) const HEAD_MARK: &[u8] = b"\xb1 events are in event_blocks";

/// Keeps `events`' one row, the head mark, at the newest event (see the module doc).
pub(super) fn mark_head(conn: &Connection, pos: i64, lsn: u64, seq: u32) -> rusqlite::Result<()> {
    conn.prepare_cached("DELETE FROM events")?.execute([])?;
    conn.prepare_cached(
        "INSERT INTO events(pos, commit_lsn, seq, tbl, payload) VALUES (?1, ?2, ?3, '', ?4)",
    )?
    .execute(params![pos, lsn as i64, seq, HEAD_MARK])?;
    Ok(())
}

/// The position of the newest event and its (commit LSN, seq), if any.
pub(super) fn last(conn: &Connection) -> rusqlite::Result<Option<(i64, u64, u32)>> {
    use rusqlite::OptionalExtension;
    conn.query_row(
        "SELECT last_pos, last_lsn, last_seq FROM event_blocks ORDER BY last_pos DESC LIMIT 1",
        [],
        |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64, r.get(2)?)),
    )
    .optional()
}

/// Moves the events of a journal of an earlier release (one row each in `events`)
/// into blocks, in one transaction. Nothing to do (and nothing written) when
/// `events` is empty.
pub(super) fn migrate(conn: &Connection) -> rusqlite::Result<usize> {
    let any = |c: &Connection| -> rusqlite::Result<bool> {
        c.query_row(
            "SELECT EXISTS(SELECT 1 FROM events WHERE payload IS NOT ?1)",
            [HEAD_MARK],
            |r| r.get(0),
        )
    };
    if !any(conn)? {
        return Ok(0);
    }
    let tx = rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
    // Another process may have moved them while this one waited for the lock.
    if !any(&tx)? {
        return Ok(0);
    }
    let mut moved = 0;
    {
        let mut stmt = tx.prepare(
            "SELECT pos, commit_lsn, seq, commit_time_us, tbl, payload, target \
             FROM events WHERE payload IS NOT ?1 ORDER BY pos",
        )?;
        let mut rows = stmt.query([HEAD_MARK])?;
        let mut block = BlockWriter::default();
        while let Some(row) = rows.next()? {
            let table: String = row.get(4)?;
            let target: Option<String> = row.get(6)?;
            let record = super::record_bytes(row.get_ref(5)?)?;
            block.push(&Stored {
                pos: row.get(0)?,
                commit_lsn: row.get::<_, i64>(1)? as u64,
                seq: row.get(2)?,
                commit_time_us: row.get(3)?,
                table: &table,
                target: target.as_deref(),
                record,
            });
            moved += 1;
            if block.full() {
                block.flush(&tx)?;
            }
        }
        block.flush(&tx)?;
    }
    if let Some((pos, lsn, seq)) = last(&tx)? {
        mark_head(&tx, pos, lsn, seq)?;
    }
    tx.commit()?;
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(
        pos: i64,
        table: &'static str,
        time: Option<i64>,
        target: Option<&'static str>,
    ) -> Stored<'static> {
        Stored {
            pos,
            commit_lsn: 1000 + pos as u64 / 3,
            seq: (pos % 3) as u32,
            commit_time_us: time,
            table,
            target,
            record: b"\x02record",
        }
    }

    #[test]
    fn a_block_reads_back_as_written_with_gaps_tables_targets_and_times() {
        let written = [
            event(5, "public.a", Some(-7), None),
            event(6, "public.a", Some(1_700_000_000_000_000), Some("kafka")),
            event(9, "public.b", None, None),
            event(10, "public.a", Some(3), None),
        ];
        let mut block = BlockWriter::default();
        for e in &written {
            block.push(e);
        }
        let mut buf = Vec::new();
        let read: Vec<Stored<'_>> = events(5, &block.body, &mut buf)
            .collect::<Result<_, _>>()
            .unwrap_or_default();
        assert_eq!(read, written);
        assert_eq!(block.min_time, Some(-7));
        assert!(block.untimed);
        let damaged = &block.body[..block.body.len() - 2];
        let mut buf = Vec::new();
        let out: Vec<_> = events(5, damaged, &mut buf).collect();
        assert_eq!(out.len(), 4);
        assert!(matches!(out[3], Err((10, _))), "{:?}", out[3]);
    }

    #[test]
    fn a_block_closes_at_its_event_or_byte_bound() {
        let mut block = BlockWriter::default();
        for pos in 1..BLOCK_EVENTS as i64 {
            block.push(&event(pos, "public.a", Some(1), None));
        }
        assert!(!block.full());
        block.push(&event(BLOCK_EVENTS as i64, "public.a", Some(1), None));
        assert!(block.full());
        let mut big = BlockWriter::default();
        let record = vec![0u8; BLOCK_BYTES];
        big.push(&Stored {
            record: &record,
            ..event(1, "public.a", None, None)
        });
        assert!(big.full());
    }

    /// A record encoded in place is stored as one handed over whole: the same
    /// body, whatever the length's size (one byte to three).
    #[test]
    fn a_record_encoded_in_place_is_stored_as_one_handed_over() {
        for len in [0usize, 1, 127, 128, 16_383, 16_384, 300_000] {
            let record: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let (mut handed, mut placed) = (BlockWriter::default(), BlockWriter::default());
            for pos in 1..=2 {
                let e = Stored {
                    record: &record,
                    ..event(pos, "public.a", Some(1), None)
                };
                handed.push(&e);
                // The length's room guessed right, too short and too long.
                for about in [len, 0, 1 << 30] {
                    let mut placed = BlockWriter::default();
                    placed.push_encoded(&Stored { record: &[], ..e }, about, |body| {
                        body.extend_from_slice(&record)
                    });
                    let mut handed = BlockWriter::default();
                    handed.push(&e);
                    assert_eq!(placed.body, handed.body, "{len}-byte record, {about}");
                }
                placed.push_encoded(&Stored { record: &[], ..e }, len, |body| {
                    body.extend_from_slice(&record)
                });
            }
            assert_eq!(placed.body, handed.body, "{len}-byte record");
        }
    }

    /// Blocks of alike rows (a snapshot's, a backlog's) are stored packed and
    /// read back as written; small, incompressible and wide bodies are stored as
    /// they are. A packed body that is cut, claims another length or names an
    /// unknown codec is reported as damaged at the block's first position, not
    /// read as events.
    #[test]
    fn alike_blocks_are_stored_packed_and_read_back_as_written() -> rusqlite::Result<()> {
        let conn = Connection::open_in_memory()?;
        conn.execute_batch(SCHEMA)?;
        let row = |pos: i64| format!("\x02permit {pos} status submitted fee {}.25", pos % 1000);
        let rows: Vec<String> = (1..=200).map(row).collect();
        // The first `n` rows, from position `first` on.
        let block_of = |first: i64, n: usize| {
            let mut block = BlockWriter::default();
            for (i, r) in rows.iter().take(n).enumerate() {
                block.push(&Stored {
                    record: r.as_bytes(),
                    ..event(first + i as i64, "public.permits", Some(7), None)
                });
            }
            block
        };
        let mut alike = block_of(1, 200);
        let written = alike.body.clone();
        alike.flush(&conn)?;
        // Incompressible: bytes of a pseudo-random sequence.
        let mut rng = crate::pgoutput::tests_generator::XorShift::new(7);
        let noise: Vec<u8> = (0..4000).map(|_| rng.byte()).collect();
        let mut random = BlockWriter::default();
        random.push(&Stored {
            record: &noise,
            ..event(201, "public.permits", Some(7), None)
        });
        let random_written = random.body.clone();
        random.flush(&conn)?;
        let mut small = BlockWriter::default();
        small.push(&event(202, "public.permits", Some(7), None));
        let small_written = small.body.clone();
        small.flush(&conn)?;
        let stored = |last: i64| -> rusqlite::Result<Vec<u8>> {
            conn.query_row(
                "SELECT body FROM event_blocks WHERE last_pos = ?1",
                [last],
                |r| r.get(0),
            )
        };
        let packed = stored(200)?;
        assert!(packed.starts_with(PACKED), "an alike block is packed");
        assert!(
            packed.len() * 3 < written.len(),
            "{} of {} bytes",
            packed.len(),
            written.len()
        );
        assert_eq!(alike.flushed(), packed.len() as u64);
        assert_eq!(stored(201)?, random_written, "incompressible: as written");
        assert_eq!(stored(202)?, small_written, "small: as written");
        let mut buf = Vec::new();
        // Positions and records as written: `n` rows from `first` on.
        let reads_as = |read: Vec<Stored<'_>>, first: i64, n: usize| {
            read.len() == n
                && read
                    .iter()
                    .zip(&rows)
                    .enumerate()
                    .all(|(i, (e, r))| e.record == r.as_bytes() && e.pos == first + i as i64)
        };
        let read = events(1, &packed, &mut buf).collect::<Result<_, _>>();
        assert!(reads_as(read.unwrap_or_default(), 1, 200));
        // A smaller packed block read into the same buffer reads as itself.
        let fewer = block_of(1001, 40).body;
        let fewer_packed = pack(&fewer, &mut Vec::new())
            .map(<[u8]>::to_vec)
            .unwrap_or_default();
        let again = events(1001, &fewer_packed, &mut buf).collect::<Result<_, _>>();
        assert!(reads_as(again.unwrap_or_default(), 1001, 40));
        // A wide body is not packed (it would be held twice).
        let mut wide = Vec::new();
        assert!(pack(&vec![b'a'; PACK_MAX + 1], &mut wide).is_none());
        assert!(pack(&vec![b'a'; PACK_MAX], &mut wide).is_some());

        let damaged = |body: &[u8]| -> Vec<Result<i64, (i64, Bad)>> {
            events(1, body, &mut Vec::new())
                .map(|e| e.map(|e| e.pos))
                .collect()
        };
        let cut = damaged(&packed[..packed.len() - 5]);
        // The length varint after the codec byte, one less.
        let mut short = packed.clone();
        short[PACKED.len() + 1] -= 1;
        let mut unknown = packed.clone();
        unknown[PACKED.len()] = 9;
        for (what, out) in [
            ("cut", cut),
            ("another length", damaged(&short)),
            ("unknown codec", damaged(&unknown)),
        ] {
            assert!(matches!(out.as_slice(), [Err((1, _))]), "{what}: {out:?}");
        }
        assert!(
            matches!(damaged(&unknown).as_slice(), [Err((1, m))] if m.contains("codec 9")),
            "unknown codec"
        );
        Ok(())
    }

    /// A body over `PLACED_BYTES` is written into its row after the insert: it
    /// reads back whole, as a small one does, and the columns are the block's.
    #[test]
    fn a_wide_body_is_written_in_place_and_reads_back_whole() -> rusqlite::Result<()> {
        let conn = Connection::open_in_memory()?;
        conn.execute_batch(SCHEMA)?;
        for (pos, len) in [
            (1i64, 100usize),
            (2, PLACED_BYTES + 1),
            (3, 3 * PLACED_BYTES),
        ] {
            let record: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
            let mut block = BlockWriter::default();
            block.push(&Stored {
                record: &record,
                ..event(pos, "public.a", Some(pos), None)
            });
            let written = block.body.clone();
            block.flush(&conn)?;
            let (body, count, first): (Vec<u8>, i64, i64) = conn.query_row(
                "SELECT body, count, first_pos FROM event_blocks WHERE last_pos = ?1",
                [pos],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            assert_eq!((count, first), (1, pos));
            assert!(body == written, "{len}-byte record read back changed");
            assert!(block.body.capacity() <= 2 * BLOCK_BYTES);
        }
        Ok(())
    }
}
