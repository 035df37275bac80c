//! The delivery audit log in SQLite: every attempt, queryable by event or by sink
//! and time. In a file of its own (`audit.db`), opened on first use: its pages are
//! not the journal's, so `journal.max_bytes` does not count them (the attempts of a
//! sink retrying against a full journal would otherwise keep it full), and its
//! writes never wait on the journal's lock. A batch a sink settled as a whole
//! (Kafka) is one `audit_batch` row, its delivery ids in a blob; the queries
//! answer for each id as for a single attempt (`journal::audit`).

use std::path::Path;

use pgcdc_sinks::{Attempt, AttemptTime, BatchAttempt, CorruptIds};
use rusqlite::{params, Connection};

use super::{connect, store_error, Durability, SqliteStore, AUDIT_FILE};
use crate::journal::audit::{self as shared, outcome_parse, outcome_str, BatchRow};
use crate::journal::JournalError;

/// The audit table, in the schema `{db}`.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS {db}.audit (
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
CREATE INDEX IF NOT EXISTS {db}.audit_event ON audit(event_id);
CREATE INDEX IF NOT EXISTS {db}.audit_sink_at ON audit(sink, at);
";

pub(super) fn schema(db: &str) -> String {
    SCHEMA.replace("{db}", db)
}

/// The audit file's migrations after the first (`SCHEMA`, which files of earlier
/// releases hold at `user_version` 0), in order; `user_version` counts the ones
/// applied. Never edit one that shipped: add the next.
const MIGRATIONS: &[&str] = &[
    // 1: one row per batch a sink settled as a whole; `min_id`/`max_id` bound
    // its delivery ids (byte order) so a lookup by event reads few blobs.
    "
CREATE TABLE IF NOT EXISTS audit_batch (
    id INTEGER PRIMARY KEY,
    sink TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    at TEXT NOT NULL,
    latency_ms INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    events INTEGER NOT NULL,
    min_id TEXT NOT NULL,
    max_id TEXT NOT NULL,
    ids BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_batch_range ON audit_batch(max_id, min_id);
CREATE INDEX IF NOT EXISTS audit_batch_sink_at ON audit_batch(sink, at);
",
];

/// Makes the audit file's tables and applies the migrations it lacks, under the
/// write lock (sessions opening together do not race).
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let version = |conn: &Connection| -> rusqlite::Result<usize> {
        let v: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        Ok(v.max(0) as usize)
    };
    if version(conn)? >= MIGRATIONS.len() {
        return Ok(());
    }
    let tx = rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
    let from = version(&tx)?;
    if from < MIGRATIONS.len() {
        tx.execute_batch(&schema("main"))?;
        for sql in &MIGRATIONS[from..] {
            tx.execute_batch(sql)?;
        }
        tx.pragma_update(None, "user_version", MIGRATIONS.len() as i64)?;
    }
    tx.commit()
}

/// Journals of earlier releases kept the audit table in `journal.db`: moves its rows
/// to `audit_path` and drops it there, once. The two files do not commit atomically
/// together: a crash in between leaves the rows in both, and the next open moves
/// them again (an attempt listed twice; none lost).
pub(super) fn move_out_of_journal(conn: &Connection, audit_path: &Path) -> rusqlite::Result<()> {
    let present = |conn: &Connection| -> rusqlite::Result<bool> {
        conn.query_row(
            "SELECT COUNT(*) > 0 FROM main.sqlite_master WHERE type = 'table' AND name = 'audit'",
            [],
            |r| r.get(0),
        )
    };
    if !present(conn)? {
        return Ok(());
    }
    // Made here with its table (a session that may not create files attaches it next).
    {
        let audit = Connection::open(audit_path)?;
        audit.pragma_update(None, "journal_mode", "WAL")?;
        migrate(&audit)?;
    }
    conn.execute(
        "ATTACH DATABASE ?1 AS moved_audit",
        [audit_path.to_string_lossy()],
    )?;
    let moved = (|| {
        // IMMEDIATE: the check below and the move hold the write lock together.
        let tx =
            rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
        // Another process may have moved it meanwhile.
        if present(&tx)? {
            tx.execute_batch(
                "INSERT INTO moved_audit.audit(event_id, sink, attempt, at, status, error, latency_ms, outcome) \
                 SELECT event_id, sink, attempt, at, status, error, latency_ms, outcome FROM main.audit ORDER BY id; \
                 DROP TABLE main.audit;",
            )?;
        }
        tx.commit()
    })();
    let detached = conn.execute_batch("DETACH DATABASE moved_audit");
    moved.and(detached)
}

/// The audit log's connection, opened (and its table made) on first use.
fn conn(s: &SqliteStore) -> Result<&Connection, JournalError> {
    if let Some(conn) = s.audit.get() {
        return Ok(conn);
    }
    let dir = s.path.parent().unwrap_or(Path::new("."));
    let (conn, path) = connect(dir, AUDIT_FILE, true, Durability::Atomic)?;
    migrate(&conn).map_err(|e| store_error(&path, e))?;
    Ok(s.audit.get_or_init(|| conn))
}

fn audit_error(s: &SqliteStore, source: rusqlite::Error) -> JournalError {
    let dir = s.path.parent().unwrap_or(Path::new("."));
    store_error(&dir.join(AUDIT_FILE), source)
}

/// Stores attempts (one transaction).
pub(super) fn insert(s: &SqliteStore, attempts: &[Attempt]) -> Result<(), JournalError> {
    let err = |e| audit_error(s, e);
    let tx = conn(s)?.unchecked_transaction().map_err(err)?;
    {
        let mut insert = tx
                .prepare_cached(
                    "INSERT INTO audit(event_id, sink, attempt, at, status, error, latency_ms, outcome) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .map_err(err)?;
        for a in attempts {
            insert
                .execute(params![
                    a.event_id,
                    a.sink,
                    a.attempt,
                    a.at.to_string(),
                    a.status,
                    a.error,
                    a.latency_ms as i64,
                    outcome_str(a.outcome)
                ])
                .map_err(err)?;
        }
    }
    tx.commit().map_err(err)
}

fn query(
    s: &SqliteStore,
    sql: &str,
    args: impl rusqlite::Params,
) -> Result<Vec<Attempt>, JournalError> {
    let mut stmt = conn(s)?
        .prepare_cached(sql)
        .map_err(|e| audit_error(s, e))?;
    let rows = stmt
        .query_map(args, |r| {
            Ok(Attempt {
                event_id: r.get(0)?,
                sink: r.get(1)?,
                attempt: r.get(2)?,
                at: attempt_time(r, 3)?,
                status: r.get(4)?,
                error: r.get(5)?,
                latency_ms: r.get::<_, i64>(6)?.max(0) as u64,
                outcome: outcome_parse(&r.get::<_, String>(7)?),
            })
        })
        .map_err(|e| audit_error(s, e))?;
    rows.collect::<Result<_, _>>()
        .map_err(|e| audit_error(s, e))
}

/// Stores batches, one row each (one transaction).
pub(super) fn insert_batches(
    s: &SqliteStore,
    batches: &[BatchAttempt],
) -> Result<(), JournalError> {
    let err = |e| audit_error(s, e);
    let tx = conn(s)?.unchecked_transaction().map_err(err)?;
    {
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO audit_batch(sink, attempt, at, latency_ms, outcome, events, min_id, max_id, ids) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .map_err(err)?;
        for b in batches.iter().filter(|b| !b.ids.is_empty()) {
            insert
                .execute(params![
                    b.sink,
                    b.attempt,
                    b.at.to_string(),
                    b.latency_ms.min(i64::MAX as u64) as i64,
                    outcome_str(b.outcome),
                    b.ids.len() as i64,
                    b.ids.min(),
                    b.ids.max(),
                    b.ids.as_bytes(),
                ])
                .map_err(err)?;
        }
    }
    tx.commit().map_err(err)
}

fn batch_rows(
    s: &SqliteStore,
    sql: &str,
    args: impl rusqlite::Params,
) -> Result<Vec<BatchRow>, JournalError> {
    let mut stmt = conn(s)?
        .prepare_cached(sql)
        .map_err(|e| audit_error(s, e))?;
    let rows = stmt
        .query_map(args, |r| {
            Ok(BatchRow {
                head: BatchAttempt {
                    sink: r.get(0)?,
                    attempt: r.get(1)?,
                    at: attempt_time(r, 2)?,
                    latency_ms: r.get::<_, i64>(3)?.max(0) as u64,
                    outcome: outcome_parse(&r.get::<_, String>(4)?),
                    ids: Default::default(),
                },
                ids: r.get(5)?,
            })
        })
        .map_err(|e| audit_error(s, e))?;
    rows.collect::<Result<_, _>>()
        .map_err(|e| audit_error(s, e))
}

/// The attempt time stored in column `i` (text, see `AttemptTime`).
fn attempt_time(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<AttemptTime> {
    r.get::<_, String>(i)?.parse().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn corrupt(s: &SqliteStore) -> impl Fn(CorruptIds) -> JournalError + '_ {
    move |e| {
        audit_error(
            s,
            rusqlite::Error::FromSqlConversionFailure(5, rusqlite::types::Type::Blob, Box::new(e)),
        )
    }
}

/// Every attempt for one event (its delivery ids `ID` and `ID.N`), oldest first.
pub(super) fn by_event(s: &SqliteStore, event_id: &str) -> Result<Vec<Attempt>, JournalError> {
    let single = query(
        s,
        "SELECT event_id, sink, attempt, at, status, error, latency_ms, outcome FROM audit \
             WHERE event_id = ?1 OR event_id LIKE ?1 || '.%' ORDER BY id",
        [event_id],
    )?;
    let batches = batch_rows(
        s,
        "SELECT sink, attempt, at, latency_ms, outcome, ids FROM audit_batch \
             WHERE max_id >= ?1 AND min_id <= ?2 ORDER BY id",
        params![event_id, shared::id_bound(event_id)],
    )?;
    shared::by_event(single, batches, event_id, corrupt(s))
}

/// Attempts of one sink since an RFC 3339 time (UTC, `Z`), oldest first, at most `limit`.
pub(super) fn by_sink(
    s: &SqliteStore,
    sink: &str,
    since: &str,
    limit: usize,
) -> Result<Vec<Attempt>, JournalError> {
    let limit = limit.min(i64::MAX as usize) as i64;
    let single = query(
        s,
        "SELECT event_id, sink, attempt, at, status, error, latency_ms, outcome FROM audit \
             WHERE sink = ?1 AND at >= ?2 ORDER BY id LIMIT ?3",
        params![sink, since, limit],
    )?;
    // Each row holds at least one id: `limit` rows are enough.
    let batches = batch_rows(
        s,
        "SELECT sink, attempt, at, latency_ms, outcome, ids FROM audit_batch \
             WHERE sink = ?1 AND at >= ?2 ORDER BY id LIMIT ?3",
        params![sink, since, limit],
    )?;
    shared::by_sink(single, batches, limit as usize, corrupt(s))
}

/// Removes attempts and batches older than `before` (RFC 3339). Returns how many rows.
pub(super) fn prune(s: &SqliteStore, before: &str) -> Result<usize, JournalError> {
    let conn = conn(s)?;
    let single = conn
        .execute("DELETE FROM audit WHERE at < ?1", [before])
        .map_err(|e| audit_error(s, e))?;
    let batches = conn
        .execute("DELETE FROM audit_batch WHERE at < ?1", [before])
        .map_err(|e| audit_error(s, e))?;
    Ok(single + batches)
}
