//! Resync requests and their progress in SQLite.

use rusqlite::{params, OptionalExtension};

use super::SqliteStore;
use crate::journal::{JournalError, ResyncInfo, ResyncKind, ResyncProgress, ResyncRequestError};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS resyncs (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    tbl TEXT NOT NULL,
    sink TEXT,
    where_sql TEXT,
    state TEXT NOT NULL,
    last_key TEXT,
    rows INTEGER NOT NULL DEFAULT 0,
    chunks INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX IF NOT EXISTS resyncs_state ON resyncs(state, id);
";

const COLUMNS: &str =
    "id, kind, tbl, sink, where_sql, state, last_key, rows, chunks, error, created_at, updated_at";

fn info(r: &rusqlite::Row<'_>) -> rusqlite::Result<ResyncInfo> {
    Ok(ResyncInfo {
        id: r.get(0)?,
        kind: r.get(1)?,
        table: r.get(2)?,
        sink: r.get(3)?,
        r#where: r.get(4)?,
        state: r.get(5)?,
        last_key: r.get(6)?,
        rows: r.get(7)?,
        chunks: r.get(8)?,
        error: r.get(9)?,
        created_at: r.get(10)?,
        updated_at: r.get(11)?,
    })
}

/// Records a chunk's progress (inside the writer's append transaction). A resync
/// cancelled meanwhile stays cancelled.
pub(super) fn apply_progress(
    tx: &rusqlite::Transaction<'_>,
    p: &ResyncProgress,
) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE resyncs SET last_key = COALESCE(?2, last_key), rows = rows + ?3, chunks = chunks + 1, \
         state = CASE WHEN ?4 THEN 'done' ELSE 'running' END, \
         updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') \
         WHERE id = ?1 AND state IN ('pending', 'running')",
        params![p.id, p.last_key, p.rows, p.done],
    )?;
    Ok(())
}

/// Queues a resync of `table` (for `sink`, or every sink). Refused while one of the
/// same table and target is queued or running.
pub(super) fn request(
    s: &mut SqliteStore,
    kind: ResyncKind,
    table: &str,
    sink: Option<&str>,
    where_sql: Option<&str>,
) -> Result<ResyncInfo, ResyncRequestError> {
    let outcome = s.write(|tx, err| {
            let active: Option<(i64, String)> = tx
                .query_row(
                    "SELECT id, state FROM resyncs WHERE tbl = ?1 AND sink IS ?2 \
                     AND state IN ('pending', 'running') ORDER BY id LIMIT 1",
                    params![table, sink],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(err)?;
            if let Some((id, state)) = active {
                return Ok(Err((id, state)));
            }
            tx.execute(
                "INSERT INTO resyncs(kind, tbl, sink, where_sql, state) VALUES (?1, ?2, ?3, ?4, 'pending')",
                params![kind.as_str(), table, sink, where_sql],
            )
            .map_err(err)?;
            Ok(Ok(tx.last_insert_rowid()))
        })?;
    match outcome {
        Ok(id) => one(s, id)?.ok_or_else(|| {
            ResyncRequestError::Journal(s.sqlite(rusqlite::Error::QueryReturnedNoRows))
        }),
        Err((id, state)) => Err(ResyncRequestError::AlreadyActive {
            id,
            table: table.to_string(),
            state,
        }),
    }
}

/// Cancels the queued or running resyncs of `table` (of `sink` only, when given).
/// Returns the ids cancelled.
pub(super) fn cancel(
    s: &mut SqliteStore,
    table: &str,
    sink: Option<&str>,
) -> Result<Vec<i64>, JournalError> {
    s.write(|tx, err| {
            let mut stmt = tx
                .prepare(
                    "UPDATE resyncs SET state = 'cancelled', updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') \
                     WHERE tbl = ?1 AND (?2 IS NULL OR sink IS ?2) AND state IN ('pending', 'running') RETURNING id",
                )
                .map_err(err)?;
            let ids = stmt
                .query_map(params![table, sink], |r| r.get(0))
                .map_err(err)?
                .collect::<Result<Vec<i64>, _>>()
                .map_err(err)?;
            Ok(ids)
        })
}

/// Marks a resync failed, with the reason.
pub(super) fn fail(s: &mut SqliteStore, id: i64, error: &str) -> Result<(), JournalError> {
    s.write(|tx, err| {
            tx.execute(
                "UPDATE resyncs SET state = 'failed', error = ?2, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') \
                 WHERE id = ?1 AND state IN ('pending', 'running')",
                params![id, error],
            )
            .map_err(err)?;
            Ok(())
        })
}

/// One resync.
pub(super) fn one(s: &SqliteStore, id: i64) -> Result<Option<ResyncInfo>, JournalError> {
    s.conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM resyncs WHERE id = ?1"),
            [id],
            info,
        )
        .optional()
        .map_err(|e| s.sqlite(e))
}

/// The oldest queued or running resync: the next one to work on.
pub(super) fn next(s: &SqliteStore) -> Result<Option<ResyncInfo>, JournalError> {
    s.conn
            .query_row(
                &format!(
                    "SELECT {COLUMNS} FROM resyncs WHERE state IN ('pending', 'running') ORDER BY id LIMIT 1"
                ),
                [],
                info,
            )
            .optional()
            .map_err(|e| s.sqlite(e))
}

/// Active resyncs and the `recent` latest finished ones, newest first.
pub(super) fn list(s: &SqliteStore, recent: usize) -> Result<Vec<ResyncInfo>, JournalError> {
    let mut stmt = s
            .conn
            .prepare(&format!(
                "SELECT {COLUMNS} FROM resyncs WHERE state IN ('pending', 'running') \
                 OR id IN (SELECT id FROM resyncs WHERE state NOT IN ('pending', 'running') ORDER BY id DESC LIMIT ?1) \
                 ORDER BY id DESC"
            ))
            .map_err(|e| s.sqlite(e))?;
    let rows = stmt
        .query_map([recent as i64], info)
        .map_err(|e| s.sqlite(e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| s.sqlite(e))?;
    Ok(rows)
}
