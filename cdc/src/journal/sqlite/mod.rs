//! The embedded state store: one SQLite file, `journal.db` in `state.dir` (WAL
//! mode), holding the events, cursors, DLQ, row state, resync queue and meta;
//! the delivery audit log in `audit.db` beside it, so that `journal.max_bytes`
//! (pages in use of `journal.db`) measures the journal and not the record of
//! delivery attempts.
//!
//! Files: `mod.rs` (opening, schema, events, meta, the `StateStore` impl),
//! `writer.rs` (the single appender), `wal.rs` (its WAL checkpoint thread), then
//! one file per kind of state.

use std::cell::{OnceCell, RefCell};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pgcdc_schema::event::Name;
use pgcdc_schema::Lsn;
use pgcdc_sinks::{Attempt, BatchAttempt};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::meta::TABLE_OID_PREFIX;
use super::record::{Decoder, Relation};
use super::{
    Access, Backend, CursorInfo, CursorState, DlqEntry, DlqError, DlqRecord, DlqSelector, DlqState,
    DroppedCursor, JournalError, JournalHead, JournalWriter, MetaKey, OrphanedCursor, ResetError,
    ResetTarget, ResyncInfo, ResyncKind, ResyncRequestError, StateStore, StoredEvent,
};

mod audit;
mod blocks;
mod checkpoint;
mod dlq;
mod known_keys;
mod resync;
mod row_state;
mod staging;
mod wal;
mod writer;

// `events.payload` is declared TEXT, as the first releases made it: v1 records
// (JSON) are stored as text, v2 records (`journal::record`) as blobs, which
// SQLite keeps as they are whatever the column's declared type. So a journal of
// an earlier release needs no rewrite: its records read as they are, and new
// ones follow them. `relations` holds the relation versions v2 records name.

/// File name of the journal inside `state.dir`.
pub(crate) const JOURNAL_FILE: &str = "journal.db";
/// File name of the delivery audit log inside `state.dir`.
const AUDIT_FILE: &str = "audit.db";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    pos INTEGER PRIMARY KEY,
    commit_lsn INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    commit_time_us INTEGER,
    tbl TEXT NOT NULL,
    payload TEXT NOT NULL,
    target TEXT
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cursors (
    sink TEXT PRIMARY KEY,
    pos INTEGER NOT NULL,
    generation INTEGER NOT NULL DEFAULT 0,
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE TABLE IF NOT EXISTS dlq (
    id INTEGER PRIMARY KEY,
    sink TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    row_key TEXT NOT NULL,
    pos INTEGER NOT NULL,
    item TEXT NOT NULL,
    state TEXT NOT NULL,
    error TEXT,
    replay INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX IF NOT EXISTS dlq_sink_row ON dlq(sink, row_key, id);
CREATE TABLE IF NOT EXISTS relations (
    id INTEGER PRIMARY KEY,
    body TEXT NOT NULL
);
";

/// The SQLite store in a state directory.
pub(crate) struct Sqlite {
    dir: PathBuf,
}

impl Sqlite {
    /// The store in `dir` (nothing is opened yet).
    pub(crate) fn new(dir: &Path) -> Sqlite {
        Sqlite {
            dir: dir.to_path_buf(),
        }
    }
}

impl Backend for Sqlite {
    fn open(&self, access: Access) -> Result<Box<dyn StateStore>, JournalError> {
        Ok(Box::new(SqliteStore::open(&self.dir, access)?))
    }

    fn writer(&self) -> Result<Box<dyn JournalWriter>, JournalError> {
        Ok(Box::new(writer::SqliteWriter::open(&self.dir)?))
    }

    fn exists(&self) -> bool {
        self.dir.join(JOURNAL_FILE).exists()
    }

    fn describe(&self) -> String {
        self.dir.join(JOURNAL_FILE).display().to_string()
    }
}

/// Opens an IMMEDIATE transaction on `conn`, the file at `path`: the write lock is
/// taken up front, waiting on the busy timeout. A deferred transaction that reads
/// before writing fails at once with SQLITE_BUSY when another connection committed in
/// between.
fn begin_immediate<'c>(
    conn: &'c mut Connection,
    path: &Path,
) -> Result<rusqlite::Transaction<'c>, JournalError> {
    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(|source| store_error(path, source))
}

/// Maps a SQLite error on the file at `path` to a [`JournalError`].
fn store_error(path: &Path, source: rusqlite::Error) -> JournalError {
    JournalError::Store {
        at: path.display().to_string(),
        source: Box::new(source),
    }
}

/// How hard a connection's commits wait for the disk. The writer's commits back what
/// the slot is told (`FULL`: fsync per commit). Cursors, DLQ and audit records only
/// need atomicity: a commit lost to a power cut (never to a process crash, in WAL
/// mode) rolls a cursor back with its DLQ records, and the events are delivered
/// again, which at-least-once allows (`NORMAL`: no fsync on the delivery path).
#[derive(Debug, Clone, Copy)]
enum Durability {
    Fsync,
    Atomic,
}

/// Opens `file` in `dir` in WAL mode with the lock wait below.
fn connect(
    dir: &Path,
    file: &str,
    create: bool,
    durability: Durability,
) -> Result<(Connection, PathBuf), JournalError> {
    let path = dir.join(file);
    if create {
        std::fs::create_dir_all(dir).map_err(|e| JournalError::StateDir {
            path: dir.to_path_buf(),
            message: format!("cannot create it ({e}); set [state] dir to a writable directory"),
        })?;
    } else if !path.exists() {
        return Err(JournalError::StateDir {
            path: dir.to_path_buf(),
            message: format!(
                "no journal ({JOURNAL_FILE}) here yet; run `pgcdc run` first or check [state] dir"
            ),
        });
    }
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let err = |source| store_error(&path, source);
    let conn = Connection::open_with_flags(&path, flags).map_err(err)?;
    conn.busy_handler(Some(wait_for_lock)).map_err(err)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(err)?;
    let synchronous = match durability {
        Durability::Fsync => "FULL",
        Durability::Atomic => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", synchronous)
        .map_err(err)?;
    Ok((conn, path))
}

/// Opens the journal file, creating or migrating its tables.
fn open_conn(
    dir: &Path,
    access: Access,
    durability: Durability,
) -> Result<(Connection, PathBuf), JournalError> {
    let (conn, path) = connect(dir, JOURNAL_FILE, access == Access::Create, durability)?;
    let err = |source| store_error(&path, source);
    conn.execute_batch(SCHEMA).map_err(err)?;
    conn.execute_batch(row_state::SCHEMA).map_err(err)?;
    conn.execute_batch(resync::SCHEMA).map_err(err)?;
    // Journals made before resync have no `target` column (NULL: every sink).
    let has_target: bool = conn
        .query_row(
            "SELECT COUNT(*) > 0 FROM pragma_table_info('events') WHERE name = 'target'",
            [],
            |r| r.get(0),
        )
        .map_err(err)?;
    if !has_target {
        conn.execute_batch("ALTER TABLE events ADD COLUMN target TEXT")
            .map_err(err)?;
    }
    audit::move_out_of_journal(&conn, &dir.join(AUDIT_FILE)).map_err(err)?;
    conn.execute_batch(blocks::SCHEMA).map_err(err)?;
    let moved = blocks::migrate(&conn).map_err(err)?;
    if moved > 0 {
        tracing::info!(
            events = moved,
            journal = %path.display(),
            "moved the journal's events into blocks (the format of this release)"
        );
    }
    Ok((conn, path))
}

/// While another connection holds the write lock: retry every 250 µs for up to
/// 30 s. SQLite's own busy timeout sleeps in steps of up to 100 ms, which a
/// runner's cursor commit would wait out behind a few milliseconds of audit writes.
fn wait_for_lock(tries: i32) -> bool {
    const STEP: Duration = Duration::from_micros(250);
    const LIMIT: i32 = 120_000; // 30 s
    if tries >= LIMIT {
        return false;
    }
    std::thread::sleep(STEP);
    true
}

fn meta_get(conn: &Connection, key: &MetaKey) -> rusqlite::Result<Option<String>> {
    conn.query_row(
        "SELECT value FROM meta WHERE key = ?1",
        [key.as_stored()],
        |r| r.get(0),
    )
    .optional()
}

fn meta_set(conn: &Connection, key: &MetaKey, value: &str) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO meta(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![key.as_stored(), value],
    )?;
    Ok(())
}

fn table_oids(conn: &Connection) -> rusqlite::Result<Vec<(String, String)>> {
    let mut stmt = conn.prepare(
        "SELECT key, value FROM meta WHERE substr(key, 1, length(?1)) = ?1 ORDER BY key",
    )?;
    let rows = stmt.query_map([TABLE_OID_PREFIX], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (key, value) = row?;
        if let Some(table) = key.strip_prefix(TABLE_OID_PREFIX) {
            out.push((table.to_string(), value));
        }
    }
    Ok(out)
}

/// Pages in use of the journal file (freed pages do not count, so pruning makes room
/// even though the file does not shrink). The audit log has a file of its own.
fn used_bytes(conn: &Connection) -> rusqlite::Result<u64> {
    conn.query_row(
        "SELECT (p.page_count - f.freelist_count) * s.page_size \
         FROM pragma_page_count() p, pragma_freelist_count() f, pragma_page_size() s",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n.max(0) as u64)
}

/// The stored body of relation version `id` (see `journal::record`).
fn relation_body(conn: &Connection, id: i64) -> rusqlite::Result<Option<String>> {
    conn.query_row("SELECT body FROM relations WHERE id = ?1", [id], |r| {
        r.get(0)
    })
    .optional()
}

/// Every stored relation version, for the writer's encoder.
fn relations(conn: &Connection, path: &Path) -> Result<Vec<(i64, Relation)>, JournalError> {
    let err = |source| store_error(path, source);
    let mut stmt = conn
        .prepare("SELECT id, body FROM relations ORDER BY id")
        .map_err(err)?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
        .map_err(err)?;
    let mut out = Vec::new();
    for row in rows {
        let (id, body) = row.map_err(err)?;
        let rel = Relation::from_stored(&body).map_err(|e| JournalError::Store {
            at: path.display().to_string(),
            source: format!("relation version {id} cannot be read ({e}); the journal is damaged")
                .into(),
        })?;
        out.push((id, rel));
    }
    Ok(out)
}

/// A block whose body cannot be read past position `pos`.
fn damaged_block(pos: i64, message: pgcdc_schema::packed::Bad) -> JournalError {
    JournalError::Corrupt {
        pos,
        source: serde::de::Error::custom(format!(
            "the journal's block holding it is damaged ({message})"
        )),
    }
}

/// A record's bytes as SQLite holds them: text (v1) or a blob (v2).
fn record_bytes<'a>(v: rusqlite::types::ValueRef<'a>) -> rusqlite::Result<&'a [u8]> {
    match v {
        rusqlite::types::ValueRef::Text(b) | rusqlite::types::ValueRef::Blob(b) => Ok(b),
        other => Err(rusqlite::Error::InvalidColumnType(
            1,
            "payload".into(),
            other.data_type(),
        )),
    }
}

fn read_head(conn: &Connection) -> rusqlite::Result<JournalHead> {
    let pos = blocks::last(conn)?.map_or(0, |(pos, _, _)| pos);
    let confirmed = meta_get(conn, &MetaKey::ConfirmedLsn)?
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0);
    Ok(JournalHead {
        pos,
        confirmed_lsn: Lsn(confirmed),
    })
}

/// See [`crate::journal::testing::restore_cursor`].
pub(crate) fn restore_cursor(dir: &Path, sink: &str, pos: i64) -> Result<bool, JournalError> {
    let (conn, path) = open_conn(dir, Access::Existing, Durability::Atomic)?;
    let n = conn
        .execute(
            "UPDATE cursors SET pos = ?2 WHERE sink = ?1",
            params![sink, pos],
        )
        .map_err(|e| store_error(&path, e))?;
    Ok(n == 1)
}

/// A session on the SQLite store (one per sink runner, and for `status`).
pub(crate) struct SqliteStore {
    conn: Connection,
    path: PathBuf,
    /// The audit log's connection, opened on first use.
    audit: OnceCell<Connection>,
    /// The staging's connection, opened on first use.
    staging: OnceCell<(Connection, PathBuf)>,
    /// The relation versions read so far.
    decoder: RefCell<Decoder>,
    /// The packed block read last, unpacked.
    unpacked: RefCell<Vec<u8>>,
}

type SqlErr<'a> = &'a dyn Fn(rusqlite::Error) -> JournalError;

impl SqliteStore {
    /// Opens the journal for reading and cursor updates.
    fn open(dir: &Path, access: Access) -> Result<Self, JournalError> {
        let (conn, path) = open_conn(dir, access, Durability::Atomic)?;
        Ok(SqliteStore {
            conn,
            path,
            audit: OnceCell::new(),
            staging: OnceCell::new(),
            decoder: RefCell::new(Decoder::default()),
            unpacked: RefCell::new(Vec::new()),
        })
    }

    fn sqlite(&self, source: rusqlite::Error) -> JournalError {
        store_error(&self.path, source)
    }

    /// Runs `f` in one IMMEDIATE transaction (the write lock is taken up front, waiting
    /// on the busy timeout) and commits it when `f` succeeds. `f` gets the transaction
    /// and the mapping of SQLite errors to [`JournalError`].
    fn write<T>(
        &mut self,
        f: impl FnOnce(&rusqlite::Transaction<'_>, SqlErr<'_>) -> Result<T, JournalError>,
    ) -> Result<T, JournalError> {
        let path = self.path.clone();
        let err = move |source| store_error(&path, source);
        let tx = begin_immediate(&mut self.conn, &self.path)?;
        let out = f(&tx, &err)?;
        tx.commit().map_err(&err)?;
        Ok(out)
    }

    fn create_cursor(&self, sink: &str) -> Result<(), JournalError> {
        self.conn
            .execute(
                "INSERT INTO cursors(sink, pos) VALUES (?1, 0) ON CONFLICT(sink) DO NOTHING",
                [sink],
            )
            .map_err(|e| self.sqlite(e))?;
        Ok(())
    }
}

impl StateStore for SqliteStore {
    fn staged(
        &self,
        xid: u32,
        after_seq: i64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<crate::journal::StagedMessage>, JournalError> {
        let (conn, path) = match self.staging.get() {
            Some(open) => open,
            None => {
                let dir = self.path.parent().unwrap_or(Path::new("."));
                let open = staging::open(dir)?;
                self.staging.get_or_init(|| open)
            }
        };
        staging::page(conn, xid, after_seq, limit, max_bytes).map_err(|e| store_error(path, e))
    }

    fn head(&self) -> Result<JournalHead, JournalError> {
        read_head(&self.conn).map_err(|e| self.sqlite(e))
    }

    fn read_batch(
        &self,
        pos: i64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredEvent>, JournalError> {
        let mut out = Vec::new();
        self.read_batch_into(pos, limit, max_bytes, &mut out)?;
        Ok(out)
    }

    fn read_batch_into(
        &self,
        pos: i64,
        limit: usize,
        max_bytes: usize,
        out: &mut Vec<StoredEvent>,
    ) -> Result<(), JournalError> {
        debug_assert!(out.is_empty(), "read_batch_into appends to an empty buffer");
        // Sized for a full batch at once (a Kafka sink's 5,000 events: 2.7 MB),
        // not grown by doubling past it.
        out.reserve(limit.min(8192));
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT first_pos, body FROM event_blocks WHERE last_pos > ?1 ORDER BY last_pos",
            )
            .map_err(|e| self.sqlite(e))?;
        let mut rows = stmt.query(params![pos]).map_err(|e| self.sqlite(e))?;
        let mut bytes = 0usize;
        let mut decoder = self.decoder.borrow_mut();
        let mut unpacked = self.unpacked.borrow_mut();
        let mut table: Option<Name> = None;
        'blocks: while let Some(row) = rows.next().map_err(|e| self.sqlite(e))? {
            if out.len() >= limit {
                break;
            }
            let first_pos: i64 = row.get(0).map_err(|e| self.sqlite(e))?;
            // Decoded from SQLite's own buffer (or, packed, unpacked once).
            let body = record_bytes(row.get_ref(1).map_err(|e| self.sqlite(e))?)
                .map_err(|e| self.sqlite(e))?;
            for stored in blocks::events(first_pos, body, &mut unpacked) {
                let stored = stored.map_err(|(at, e)| damaged_block(at, e))?;
                if stored.pos <= pos {
                    continue;
                }
                bytes = bytes.saturating_add(stored.record.len());
                if out.len() >= limit || (!out.is_empty() && bytes > max_bytes) {
                    break 'blocks;
                }
                let event = decoder
                    .decode(stored.record, |id| {
                        relation_body(&self.conn, id).map_err(|e| self.sqlite(e))
                    })
                    .map_err(|e| e.at(stored.pos))?;
                let table = match &table {
                    Some(t) if **t == *stored.table => t.clone(),
                    _ => table.insert(Name::from(stored.table)).clone(),
                };
                out.push(StoredEvent {
                    pos: stored.pos,
                    seq: stored.seq,
                    event,
                    target: stored.target.map(str::to_string),
                    table,
                });
            }
        }
        Ok(())
    }

    fn event_id_at(&self, pos: i64) -> Result<Option<String>, JournalError> {
        Ok(self
            .read_batch(pos - 1, 1, usize::MAX)?
            .into_iter()
            .find(|e| e.pos == pos)
            .map(|e| e.event.id.as_str().to_string()))
    }

    fn used_bytes(&self) -> Result<u64, JournalError> {
        used_bytes(&self.conn).map_err(|e| self.sqlite(e))
    }

    fn size_bytes(&self) -> u64 {
        let wal = self.path.with_extension("db-wal");
        [self.path.as_path(), wal.as_path()]
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }

    fn meta(&self, key: &MetaKey) -> Result<Option<String>, JournalError> {
        meta_get(&self.conn, key).map_err(|e| self.sqlite(e))
    }

    fn delete_meta(&mut self, key: &MetaKey) -> Result<(), JournalError> {
        self.conn
            .execute("DELETE FROM meta WHERE key = ?1", [key.as_stored()])
            .map_err(|e| self.sqlite(e))?;
        Ok(())
    }

    fn table_oids(&self) -> Result<Vec<(String, String)>, JournalError> {
        table_oids(&self.conn).map_err(|e| self.sqlite(e))
    }

    fn known_keys(&self, table: &str) -> Result<Vec<pgcdc_schema::event::Row>, JournalError> {
        known_keys::known_keys(self, table)
    }

    fn cursor(&mut self, sink: &str) -> Result<i64, JournalError> {
        Ok(self.cursor_state(sink)?.pos)
    }

    /// Read first, made (at 0) only when missing: an INSERT, even one that changes
    /// nothing, waits for the write lock, which the journal thread holds for most
    /// of a backlog's drain, and runners ask every batch.
    fn cursor_state(&mut self, sink: &str) -> Result<CursorState, JournalError> {
        if let Some(state) = checkpoint::find(self, sink)? {
            return Ok(state);
        }
        self.create_cursor(sink)?;
        checkpoint::state(self, sink)
    }

    fn cursors(&self) -> Result<Vec<CursorInfo>, JournalError> {
        checkpoint::cursors(self)
    }

    fn orphaned_cursors(&self, configured: &[String]) -> Result<Vec<OrphanedCursor>, JournalError> {
        checkpoint::orphaned(self, configured)
    }

    fn drop_cursor(&mut self, sink: &str) -> Result<Option<DroppedCursor>, JournalError> {
        checkpoint::drop(self, sink)
    }

    fn reset_cursor(&mut self, sink: &str, target: ResetTarget) -> Result<CursorState, ResetError> {
        checkpoint::reset(self, sink, target)
    }

    fn commit_batch(
        &mut self,
        sink: &str,
        cursor: i64,
        generation: i64,
        records: &[DlqRecord],
        replaying: &HashSet<String>,
    ) -> Result<(), JournalError> {
        dlq::commit_batch(self, sink, cursor, generation, records, replaying)
    }

    fn dlq_rows(&self, sink: &str) -> Result<(HashSet<String>, HashSet<String>), JournalError> {
        dlq::rows(self, sink)
    }

    fn dlq_list(&self, sink: &str) -> Result<Vec<DlqEntry>, JournalError> {
        dlq::list(self, sink)
    }

    fn dlq_count(&self, sink: &str) -> Result<i64, JournalError> {
        dlq::count(self, sink)
    }

    fn dlq_replay_batch(&self, sink: &str, limit: usize) -> Result<Vec<DlqEntry>, JournalError> {
        dlq::replay_batch(self, sink, limit)
    }

    fn dlq_settle(
        &mut self,
        sink: &str,
        delivered: &[i64],
        failed: &[(i64, String, DlqState, Option<String>)],
    ) -> Result<(), JournalError> {
        dlq::settle(self, sink, delivered, failed)
    }

    fn dlq_request_replay(&mut self, sink: &str, sel: &DlqSelector) -> Result<usize, DlqError> {
        dlq::request_replay(self, sink, sel)
    }

    fn dlq_drop(&mut self, sink: &str, sel: &DlqSelector) -> Result<usize, DlqError> {
        dlq::drop(self, sink, sel)
    }

    fn audit_insert(&mut self, attempts: &[Attempt]) -> Result<(), JournalError> {
        audit::insert(self, attempts)
    }

    fn audit_insert_batches(&mut self, batches: &[BatchAttempt]) -> Result<(), JournalError> {
        audit::insert_batches(self, batches)
    }

    fn audit_by_event(&self, event_id: &str) -> Result<Vec<Attempt>, JournalError> {
        audit::by_event(self, event_id)
    }

    fn audit_by_sink(
        &self,
        sink: &str,
        since: &str,
        limit: usize,
    ) -> Result<Vec<Attempt>, JournalError> {
        audit::by_sink(self, sink, since, limit)
    }

    fn audit_prune(&mut self, before: &str) -> Result<usize, JournalError> {
        audit::prune(self, before)
    }

    fn request_resync(
        &mut self,
        kind: ResyncKind,
        table: &str,
        sink: Option<&str>,
        where_sql: Option<&str>,
    ) -> Result<ResyncInfo, ResyncRequestError> {
        resync::request(self, kind, table, sink, where_sql)
    }

    fn cancel_resync(&mut self, table: &str, sink: Option<&str>) -> Result<Vec<i64>, JournalError> {
        resync::cancel(self, table, sink)
    }

    fn fail_resync(&mut self, id: i64, error: &str) -> Result<(), JournalError> {
        resync::fail(self, id, error)
    }

    fn resync(&self, id: i64) -> Result<Option<ResyncInfo>, JournalError> {
        resync::one(self, id)
    }

    fn next_resync(&self) -> Result<Option<ResyncInfo>, JournalError> {
        resync::next(self)
    }

    fn resyncs(&self, recent: usize) -> Result<Vec<ResyncInfo>, JournalError> {
        resync::list(self, recent)
    }
}

#[cfg(test)]
mod tests;
