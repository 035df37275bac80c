//! The journal: a durable, append-only log of change events in one SQLite
//! file (WAL mode, `synchronous=FULL`) under `state.dir`, plus one cursor per
//! sink.
//!
//! ```text
//!  reader ──JournalWriter::append (one SQLite txn per batch, fsync)──▶ events
//!                                  └─ meta.confirmed_lsn (same txn) ──▶ slot feedback
//!  sink runner ◀── JournalReader::read_batch(cursor) ── events
//!  sink runner ──JournalReader::advance_cursor (monotonic)──▶ cursors
//! ```
//!
//! Positions: `pos` is the journal's own sequence (1, 2, ...). Streamed
//! changes are also keyed by (commit LSN, ordinal in the transaction); the
//! writer skips any change at or before the last journaled one, so a replay
//! from the slot after a crash never duplicates an entry.
//!
//! Errors are definite (`JournalError`): a disk or SQLite failure stops pgcdc,
//! which restarts from the slot without loss.

use std::path::{Path, PathBuf};
use std::time::Duration;

use pgcdc_schema::{ChangeEvent, Lsn};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

/// A journal failure.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// SQLite failed.
    #[error("journal {path}: {source}")]
    Sqlite {
        /// The journal file.
        path: PathBuf,
        /// The SQLite error.
        source: rusqlite::Error,
    },
    /// The state directory cannot be used.
    #[error("state dir {path}: {message}")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The journal file was removed or replaced while pgcdc had it open: what this
    /// process writes no longer reaches the file the next start reads.
    #[error("journal {path}: {message}")]
    Replaced {
        /// The journal file.
        path: PathBuf,
        /// What happened and what to do.
        message: String,
    },
    /// An entry could not be (de)serialized.
    #[error("journal entry at pos {pos}: {source}")]
    Corrupt {
        /// Journal position.
        pos: i64,
        /// The JSON error.
        source: serde_json::Error,
    },
}

/// File name of the journal inside `state.dir`.
pub const JOURNAL_FILE: &str = "journal.db";

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
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    sink TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    at TEXT NOT NULL,
    status INTEGER,
    error TEXT,
    latency_ms INTEGER NOT NULL,
    outcome TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_event ON audit(event_id);
CREATE INDEX IF NOT EXISTS audit_sink_at ON audit(sink, at);
";

/// One change to append: its ordinal in the transaction and the event.
#[derive(Debug, Clone)]
pub struct JournalEntry {
    /// The captured table this change belongs to, `schema.table` as `source.tables` names
    /// it: sinks and triggers route by it, so a renamed table reaches the same sinks
    /// while its events carry the new name.
    pub table: String,
    /// Ordinal of the change in its transaction.
    pub seq: u32,
    /// Commit time in Unix microseconds (for lag and time-based resets).
    pub commit_time_unix_us: Option<i64>,
    /// The event.
    pub event: ChangeEvent,
}

/// An event read back, with its journal position.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    /// Journal position.
    pub pos: i64,
    /// The event.
    pub event: ChangeEvent,
    /// Only this sink receives it (a targeted resync); None: every sink.
    pub target: Option<String>,
    /// The captured table it belongs to (see [`JournalEntry::table`]).
    pub table: String,
}

/// What one journal transaction writes besides streamed changes: resync chunks.
#[derive(Debug, Clone, Default)]
pub struct ResyncChunk {
    /// The chunk's `read` events.
    pub entries: Vec<JournalEntry>,
    /// Only this sink receives them (None: every sink).
    pub target: Option<String>,
    /// Progress recorded in the same transaction.
    pub progress: ResyncProgress,
}

/// How far the journal is durable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JournalHead {
    /// Position of the last entry (0 when empty).
    pub pos: i64,
    /// WAL position up to which everything of ours is journaled; reported to the slot.
    pub confirmed_lsn: Lsn,
}

/// What one `append` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Entries written.
    pub appended: usize,
    /// Entries skipped because they were journaled before (replay after restart).
    pub skipped: usize,
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

fn open_conn(
    dir: &Path,
    read_only: bool,
    durability: Durability,
) -> Result<(Connection, PathBuf), JournalError> {
    let path = dir.join(JOURNAL_FILE);
    if !read_only {
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
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let err = |source| JournalError::Sqlite {
        path: path.clone(),
        source,
    };
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
    Ok((conn, path))
}

fn meta_get(conn: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()
}

fn meta_set(conn: &Connection, key: &str, value: &str) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO meta(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )?;
    Ok(())
}

fn meta_prefixed(conn: &Connection, prefix: &str) -> rusqlite::Result<Vec<(String, String)>> {
    let mut stmt = conn.prepare(
        "SELECT key, value FROM meta WHERE substr(key, 1, length(?1)) = ?1 ORDER BY key",
    )?;
    let rows = stmt.query_map([prefix], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

/// The identity of a file on disk (device, inode): a file removed or replaced under
/// an open connection has another one, or none.
fn file_identity(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok((m.dev(), m.ino()))
}

fn used_bytes(conn: &Connection) -> rusqlite::Result<u64> {
    conn.query_row(
        "SELECT (p.page_count - f.freelist_count) * s.page_size \
         FROM pragma_page_count() p, pragma_freelist_count() f, pragma_page_size() s",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n.max(0) as u64)
}

fn read_head(conn: &Connection) -> rusqlite::Result<JournalHead> {
    let pos: i64 = conn.query_row("SELECT COALESCE(MAX(pos), 0) FROM events", [], |r| r.get(0))?;
    let confirmed = meta_get(conn, "confirmed_lsn")?
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0);
    Ok(JournalHead {
        pos,
        confirmed_lsn: Lsn(confirmed),
    })
}

/// The single writer of the journal (owned by the journal thread).
pub struct JournalWriter {
    conn: Connection,
    path: PathBuf,
    /// (commit LSN, seq) of the last journaled change.
    last: Option<(u64, u32)>,
    head: JournalHead,
    tracking: OldTracking,
    /// (device, inode) of the file at open: checked before each durable head is published.
    file: (u64, u64),
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

impl JournalWriter {
    /// Opens (or creates) the journal in `dir`.
    pub fn open(dir: &Path) -> Result<Self, JournalError> {
        let (conn, path) = open_conn(dir, false, Durability::Fsync)?;
        let err = |source| JournalError::Sqlite {
            path: path.clone(),
            source,
        };
        let last = conn
            .query_row(
                "SELECT commit_lsn, seq FROM events ORDER BY pos DESC LIMIT 1",
                [],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u32)),
            )
            .optional()
            .map_err(err)?;
        let head = read_head(&conn).map_err(err)?;
        let file = file_identity(&path).map_err(|e| JournalError::StateDir {
            path: dir.to_path_buf(),
            message: format!("cannot stat {JOURNAL_FILE} after opening it ({e})"),
        })?;
        Ok(JournalWriter {
            conn,
            path,
            last,
            head,
            tracking: OldTracking::new(),
            file,
        })
    }

    /// Remember these columns per table to fill `.old` (see `row_state`).
    pub fn set_old_tracking(&mut self, tracking: OldTracking) {
        self.tracking = tracking;
    }

    /// Bytes of live data in the journal file (pages in use; freed pages do not count,
    /// so pruning makes room even though the file does not shrink).
    pub fn used_bytes(&self) -> Result<u64, JournalError> {
        used_bytes(&self.conn).map_err(|source| self.sqlite(source))
    }

    /// (commit LSN, seq) of the last journaled change: later entries must sort after it.
    pub fn last_position(&self) -> Option<(u64, u32)> {
        self.last
    }

    /// What is durable now.
    pub fn head(&self) -> JournalHead {
        self.head
    }

    /// Reads a metadata value.
    pub fn meta(&self, key: &str) -> Result<Option<String>, JournalError> {
        meta_get(&self.conn, key).map_err(|source| self.sqlite(source))
    }

    /// Writes a metadata value (durably, on its own).
    pub fn set_meta(&mut self, key: &str, value: &str) -> Result<(), JournalError> {
        meta_set(&self.conn, key, value).map_err(|source| self.sqlite(source))
    }

    /// Metadata entries whose key starts with `prefix`, by key.
    pub(crate) fn meta_prefixed(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, String)>, JournalError> {
        meta_prefixed(&self.conn, prefix).map_err(|source| self.sqlite(source))
    }

    /// Whether the file at the journal's path is still the one this writer opened. A
    /// journal deleted (`rm journal.db*`, the state dir moved) or replaced while pgcdc
    /// runs keeps taking writes through the open descriptor, but the next start would
    /// read another file: nothing more may be confirmed to the slot.
    pub(crate) fn check_file(&self) -> Result<(), JournalError> {
        let replaced = |what: String| {
            JournalError::Replaced {
            path: self.path.clone(),
            message: format!(
                "{what} while pgcdc was writing it; pgcdc stops before confirming anything more to the \
                 replication slot. Put the journal back (restore the state dir) or, to start over on \
                 purpose, see \"journal and slot\" in the README"
            ),
        }
        };
        match file_identity(&self.path) {
            Ok(id) if id == self.file => Ok(()),
            Ok(_) => Err(replaced("the file was replaced by another one".into())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(replaced(
                "the file was removed (or its directory moved)".into(),
            )),
            Err(e) => Err(replaced(format!("the file cannot be checked ({e})"))),
        }
    }

    fn sqlite(&self, source: rusqlite::Error) -> JournalError {
        JournalError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Removes up to `limit` entries that every sink's cursor has passed and that
    /// committed before `before_unix_us`. Returns how many. The newest entry always
    /// stays: positions continue from it.
    pub fn prune(&mut self, before_unix_us: i64, limit: usize) -> Result<usize, JournalError> {
        self.conn
            .execute(
                "DELETE FROM events WHERE pos IN (SELECT pos FROM events \
                 WHERE pos <= (SELECT COALESCE(MIN(pos), 0) FROM cursors) \
                 AND pos < (SELECT MAX(pos) FROM events) \
                 AND commit_time_us < ?1 ORDER BY pos LIMIT ?2)",
                params![before_unix_us, limit as i64],
            )
            .map_err(|source| self.sqlite(source))
    }

    /// Appends `entries` and, in the same transaction, moves the confirmed LSN
    /// forward to `confirm` (never back). Durable when this returns.
    pub fn append(
        &mut self,
        entries: &[JournalEntry],
        confirm: Option<Lsn>,
    ) -> Result<AppendOutcome, JournalError> {
        let all: Vec<(&JournalEntry, Option<&str>)> = entries.iter().map(|e| (e, None)).collect();
        self.append_with(&all, confirm, &[])
    }

    /// Like [`JournalWriter::append`], with a target sink per entry and resync progress
    /// written in the same transaction.
    pub fn append_with(
        &mut self,
        entries: &[(&JournalEntry, Option<&str>)],
        confirm: Option<Lsn>,
        progress: &[ResyncProgress],
    ) -> Result<AppendOutcome, JournalError> {
        let mut outcome = AppendOutcome::default();
        // IMMEDIATE: take the write lock up front (waiting on busy_timeout). A deferred
        // transaction that reads row state before writing fails at once with
        // SQLITE_BUSY when a sink runner committed in between.
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|source| JournalError::Sqlite {
                path: self.path.clone(),
                source,
            })?;
        let mut last = self.last;
        let mut pos = self.head.pos;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO events(pos, commit_lsn, seq, commit_time_us, tbl, payload, target) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(|source| JournalError::Sqlite {
                    path: self.path.clone(),
                    source,
                })?;
            for &(entry, target) in entries {
                let position = (entry.event.lsn.0, entry.seq);
                if last.is_some_and(|l| position <= l) {
                    outcome.skipped += 1;
                    continue;
                }
                let filled;
                let event = if self.tracking.contains_key(&entry.table) {
                    let mut event = entry.event.clone();
                    row_state::apply(&tx, &self.tracking, &entry.table, &mut event).map_err(
                        |source| JournalError::Sqlite {
                            path: self.path.clone(),
                            source,
                        },
                    )?;
                    filled = event;
                    &filled
                } else {
                    &entry.event
                };
                let payload =
                    serde_json::to_string(event).map_err(|source| JournalError::Corrupt {
                        pos: pos + 1,
                        source,
                    })?;
                pos += 1;
                insert
                    .execute(params![
                        pos,
                        position.0 as i64,
                        position.1,
                        entry.commit_time_unix_us,
                        entry.table,
                        payload,
                        target
                    ])
                    .map_err(|source| JournalError::Sqlite {
                        path: self.path.clone(),
                        source,
                    })?;
                last = Some(position);
                outcome.appended += 1;
            }
        }
        for p in progress {
            resync::apply_progress(&tx, p).map_err(|source| JournalError::Sqlite {
                path: self.path.clone(),
                source,
            })?;
        }
        let mut confirmed = self.head.confirmed_lsn;
        if let Some(c) = confirm.filter(|c| *c > confirmed) {
            meta_set(&tx, "confirmed_lsn", &c.0.to_string()).map_err(|source| {
                JournalError::Sqlite {
                    path: self.path.clone(),
                    source,
                }
            })?;
            confirmed = c;
        }
        tx.commit().map_err(|source| JournalError::Sqlite {
            path: self.path.clone(),
            source,
        })?;
        self.last = last;
        self.head = JournalHead {
            pos,
            confirmed_lsn: confirmed,
        };
        Ok(outcome)
    }
}

/// A reader of the journal and keeper of sink cursors (one per sink runner,
/// and for `status`).
pub struct JournalReader {
    conn: Connection,
    path: PathBuf,
}

/// One sink's cursor and lag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorInfo {
    /// Sink name.
    pub sink: String,
    /// Last journal position the sink has finished with.
    pub pos: i64,
    /// Journal entries after the cursor.
    pub lag_events: i64,
    /// Commit time (Unix µs) of the oldest entry after the cursor.
    pub oldest_pending_unix_us: Option<i64>,
}

impl JournalReader {
    /// Opens the journal for reading and cursor updates; `create` makes it if missing.
    pub fn open(dir: &Path, create: bool) -> Result<Self, JournalError> {
        let (conn, path) = open_conn(dir, !create, Durability::Atomic)?;
        Ok(JournalReader { conn, path })
    }

    pub(crate) fn sqlite(&self, source: rusqlite::Error) -> JournalError {
        JournalError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Runs `f` in one IMMEDIATE transaction (the write lock is taken up front, waiting
    /// on the busy timeout) and commits it when `f` succeeds. `f` gets the transaction
    /// and the mapping of SQLite errors to [`JournalError`].
    pub(crate) fn write<T>(
        &mut self,
        f: impl FnOnce(
            &rusqlite::Transaction<'_>,
            &dyn Fn(rusqlite::Error) -> JournalError,
        ) -> Result<T, JournalError>,
    ) -> Result<T, JournalError> {
        let path = self.path.clone();
        let err = move |source| JournalError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(&err)?;
        let out = f(&tx, &err)?;
        tx.commit().map_err(&err)?;
        Ok(out)
    }

    /// The durable head.
    pub fn head(&self) -> Result<JournalHead, JournalError> {
        read_head(&self.conn).map_err(|e| self.sqlite(e))
    }

    /// Reads a metadata value.
    pub fn meta(&self, key: &str) -> Result<Option<String>, JournalError> {
        meta_get(&self.conn, key).map_err(|e| self.sqlite(e))
    }

    /// Metadata entries whose key starts with `prefix`, by key.
    pub(crate) fn meta_prefixed(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, String)>, JournalError> {
        meta_prefixed(&self.conn, prefix).map_err(|e| self.sqlite(e))
    }

    /// Up to `limit` events after `pos`, in journal order.
    pub fn read_after(&self, pos: i64, limit: usize) -> Result<Vec<StoredEvent>, JournalError> {
        self.read_batch(pos, limit, usize::MAX)
    }

    /// Up to `limit` events after `pos`, in journal order, stopping before the one
    /// that would take their stored JSON past `max_bytes`; the first event always
    /// comes, however large, so one huge row passes alone.
    pub fn read_batch(
        &self,
        pos: i64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredEvent>, JournalError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT pos, payload, target, tbl FROM events WHERE pos > ?1 ORDER BY pos LIMIT ?2",
            )
            .map_err(|e| self.sqlite(e))?;
        let mut rows = stmt
            .query(params![pos, limit as i64])
            .map_err(|e| self.sqlite(e))?;
        let mut out = Vec::with_capacity(limit.min(4096));
        let mut bytes = 0usize;
        while let Some(row) = rows.next().map_err(|e| self.sqlite(e))? {
            let pos: i64 = row.get(0).map_err(|e| self.sqlite(e))?;
            // Parsed from SQLite's own buffer: no copy of the payload text.
            let payload = row.get_ref(1).map_err(|e| self.sqlite(e))?;
            let payload = payload
                .as_str()
                .map_err(|e| self.sqlite(rusqlite::Error::from(e)))?;
            bytes = bytes.saturating_add(payload.len());
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            let event = pgcdc_schema::event::from_stored_json(payload)
                .map_err(|source| JournalError::Corrupt { pos, source })?;
            let target: Option<String> = row.get(2).map_err(|e| self.sqlite(e))?;
            let table: String = row.get(3).map_err(|e| self.sqlite(e))?;
            out.push(StoredEvent {
                pos,
                event,
                target,
                table,
            });
        }
        Ok(out)
    }

    /// The id of the event at `pos`, if the journal (still) holds it.
    pub fn event_id_at(&self, pos: i64) -> Result<Option<String>, JournalError> {
        let payload: Option<String> = self
            .conn
            .query_row("SELECT payload FROM events WHERE pos = ?1", [pos], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.sqlite(e))?;
        let Some(payload) = payload else {
            return Ok(None);
        };
        #[derive(serde::Deserialize)]
        struct Id {
            id: String,
        }
        let id: Id = serde_json::from_str(&payload)
            .map_err(|source| JournalError::Corrupt { pos, source })?;
        Ok(Some(id.id))
    }

    /// The sink's cursor, created at 0 (the start of the journal) for a new sink.
    pub fn cursor(&self, sink: &str) -> Result<i64, JournalError> {
        self.conn
            .execute(
                "INSERT INTO cursors(sink, pos) VALUES (?1, 0) ON CONFLICT(sink) DO NOTHING",
                [sink],
            )
            .map_err(|e| self.sqlite(e))?;
        self.conn
            .query_row("SELECT pos FROM cursors WHERE sink = ?1", [sink], |r| {
                r.get(0)
            })
            .map_err(|e| self.sqlite(e))
    }

    /// Moves the sink's cursor forward to `pos` (durably). Moving back is a no-op:
    /// only an operator's reset may rewind a cursor.
    pub fn advance_cursor(&self, sink: &str, pos: i64) -> Result<(), JournalError> {
        checkpoint::advance_cursor(&self.conn, sink, pos, None).map_err(|e| self.sqlite(e))?;
        Ok(())
    }

    /// Every sink's cursor with its lag.
    pub fn cursors(&self) -> Result<Vec<CursorInfo>, JournalError> {
        let head = self.head()?.pos;
        let mut stmt = self
            .conn
            .prepare("SELECT sink, pos FROM cursors ORDER BY sink")
            .map_err(|e| self.sqlite(e))?;
        let rows: Vec<(String, i64)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| self.sqlite(e))?
            .collect::<Result<_, _>>()
            .map_err(|e| self.sqlite(e))?;
        let mut out = Vec::with_capacity(rows.len());
        for (sink, pos) in rows {
            let oldest = self
                .conn
                .query_row(
                    "SELECT commit_time_us FROM events WHERE pos > ?1 ORDER BY pos LIMIT 1",
                    [pos],
                    |r| r.get::<_, Option<i64>>(0),
                )
                .optional()
                .map_err(|e| self.sqlite(e))?
                .flatten();
            out.push(CursorInfo {
                sink,
                pos,
                lag_events: (head - pos).max(0),
                oldest_pending_unix_us: oldest,
            });
        }
        Ok(out)
    }

    /// Bytes of live data in the journal (see [`JournalWriter::used_bytes`]).
    pub fn used_bytes(&self) -> Result<u64, JournalError> {
        used_bytes(&self.conn).map_err(|e| self.sqlite(e))
    }

    /// Size of the journal files on disk, in bytes.
    pub fn size_bytes(&self) -> u64 {
        let wal = self.path.with_extension("db-wal");
        [self.path.as_path(), wal.as_path()]
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }
}

mod audit;
mod checkpoint;
mod dlq;
pub use checkpoint::{CursorState, DroppedCursor, OrphanedCursor, ResetError, ResetTarget};
mod resync;
pub use resync::{ResyncInfo, ResyncKind, ResyncProgress, ResyncRequestError};
mod known_keys;
mod row_state;
pub use dlq::{DlqEntry, DlqError, DlqRecord, DlqSelector, DlqState};
pub use row_state::{OldTracking, Tracked};

#[cfg(test)]
mod tests;
