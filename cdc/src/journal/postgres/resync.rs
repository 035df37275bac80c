//! Resync requests and their progress in Postgres.

use tokio_postgres::Row;

use super::{Pg, NOW_TEXT};
use crate::journal::{JournalError, ResyncInfo, ResyncKind, ResyncProgress, ResyncRequestError};

const COLUMNS: &str =
    "id, kind, tbl, sink, where_sql, state, last_key, rows, chunks, error, created_at, updated_at";

fn info(pg: &Pg, r: &Row) -> Result<ResyncInfo, JournalError> {
    Ok(ResyncInfo {
        id: pg.get(r, 0)?,
        kind: pg.get(r, 1)?,
        table: pg.get(r, 2)?,
        sink: pg.get(r, 3)?,
        r#where: pg.get(r, 4)?,
        state: pg.get(r, 5)?,
        last_key: pg.get(r, 6)?,
        rows: pg.get(r, 7)?,
        chunks: pg.get(r, 8)?,
        error: pg.get(r, 9)?,
        created_at: pg.get(r, 10)?,
        updated_at: pg.get(r, 11)?,
    })
}

/// Records a chunk's progress (inside the writer's append transaction). A resync
/// cancelled meanwhile stays cancelled.
pub(super) fn apply_progress(pg: &Pg, p: &ResyncProgress) -> Result<(), JournalError> {
    pg.execute(
        &format!(
            "UPDATE resyncs SET last_key = COALESCE($2, last_key), rows = rows + $3, chunks = chunks + 1, \
             state = CASE WHEN $4 THEN 'done' ELSE 'running' END, updated_at = {NOW_TEXT} \
             WHERE id = $1 AND state IN ('pending', 'running')"
        ),
        &[&p.id, &p.last_key, &p.rows, &p.done],
    )?;
    Ok(())
}

/// Queues a resync of `table` (for `sink`, or every sink). Refused while one of the
/// same table and target is queued or running.
pub(super) fn request(
    pg: &Pg,
    kind: ResyncKind,
    table: &str,
    sink: Option<&str>,
    where_sql: Option<&str>,
) -> Result<ResyncInfo, ResyncRequestError> {
    pg.write(|pg| {
        // Two requests at once: the second waits here and then sees the first.
        pg.query_one(
            "SELECT pg_advisory_xact_lock(hashtext('pgcdc resync ' || $1::text))::text",
            &[&table],
        )?;
        let active = pg.query_opt(
            "SELECT id, state FROM resyncs WHERE tbl = $1 AND sink IS NOT DISTINCT FROM $2 \
             AND state IN ('pending', 'running') ORDER BY id LIMIT 1",
            &[&table, &sink],
        )?;
        if let Some(active) = active {
            return Err(ResyncRequestError::AlreadyActive {
                id: pg.get(&active, 0)?,
                table: table.to_string(),
                state: pg.get(&active, 1)?,
            });
        }
        let row = pg.query_one(
            &format!(
                "INSERT INTO resyncs(kind, tbl, sink, where_sql, state) \
                 VALUES ($1, $2, $3, $4, 'pending') RETURNING {COLUMNS}"
            ),
            &[&kind.as_str(), &table, &sink, &where_sql],
        )?;
        Ok(info(pg, &row)?)
    })
}

/// Cancels the queued or running resyncs of `table` (of `sink` only, when given).
/// Returns the ids cancelled.
pub(super) fn cancel(pg: &Pg, table: &str, sink: Option<&str>) -> Result<Vec<i64>, JournalError> {
    pg.write(|pg| {
        let rows = pg.query(
            &format!(
                "UPDATE resyncs SET state = 'cancelled', updated_at = {NOW_TEXT} \
                 WHERE tbl = $1 AND ($2::text IS NULL OR sink IS NOT DISTINCT FROM $2) \
                 AND state IN ('pending', 'running') RETURNING id"
            ),
            &[&table, &sink],
        )?;
        rows.iter().map(|r| pg.get(r, 0)).collect()
    })
}

/// Marks a resync failed, with the reason.
pub(super) fn fail(pg: &Pg, id: i64, error: &str) -> Result<(), JournalError> {
    pg.write_one(
        &format!(
            "UPDATE resyncs SET state = 'failed', error = $2, updated_at = {NOW_TEXT} \
             WHERE id = $1 AND state IN ('pending', 'running')"
        ),
        &[&id, &error],
    )?;
    Ok(())
}

/// One resync.
pub(super) fn one(pg: &Pg, id: i64) -> Result<Option<ResyncInfo>, JournalError> {
    match pg.query_opt(
        &format!("SELECT {COLUMNS} FROM resyncs WHERE id = $1"),
        &[&id],
    )? {
        Some(r) => Ok(Some(info(pg, &r)?)),
        None => Ok(None),
    }
}

/// The oldest queued or running resync: the next one to work on.
pub(super) fn next(pg: &Pg) -> Result<Option<ResyncInfo>, JournalError> {
    match pg.query_opt(
        &format!(
            "SELECT {COLUMNS} FROM resyncs WHERE state IN ('pending', 'running') ORDER BY id LIMIT 1"
        ),
        &[],
    )? {
        Some(r) => Ok(Some(info(pg, &r)?)),
        None => Ok(None),
    }
}

/// Active resyncs and the `recent` latest finished ones, newest first.
pub(super) fn list(pg: &Pg, recent: usize) -> Result<Vec<ResyncInfo>, JournalError> {
    let rows = pg.query(
        &format!(
            "SELECT {COLUMNS} FROM resyncs WHERE state IN ('pending', 'running') \
             OR id IN (SELECT id FROM resyncs WHERE state NOT IN ('pending', 'running') \
             ORDER BY id DESC LIMIT $1) ORDER BY id DESC"
        ),
        &[&(recent.min(i64::MAX as usize) as i64)],
    )?;
    rows.iter().map(|r| info(pg, r)).collect()
}
