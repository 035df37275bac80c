//! The dead-letter queue in SQLite, and the batch commit that writes DLQ rows and
//! advances the cursor in one transaction.

use std::collections::HashSet;

use rusqlite::{params, OptionalExtension};

use super::SqliteStore;
use crate::journal::{DlqEntry, DlqError, DlqRecord, DlqSelector, DlqState, JournalError};

fn entries(
    s: &SqliteStore,
    sql: &str,
    args: impl rusqlite::Params,
) -> Result<Vec<DlqEntry>, JournalError> {
    let mut stmt = s.conn.prepare_cached(sql).map_err(|e| s.sqlite(e))?;
    let rows = stmt
        .query_map(args, |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, Option<String>>(6)?,
                r.get::<_, bool>(7)?,
                r.get::<_, String>(8)?,
            ))
        })
        .map_err(|e| s.sqlite(e))?;
    let mut out = Vec::new();
    for row in rows {
        let (id, delivery_id, row_key, pos, item, state, error, replay, created_at) =
            row.map_err(|e| s.sqlite(e))?;
        let item = pgcdc_schema::event::from_stored_json(&item)
            .map_err(|source| JournalError::Corrupt { pos, source })?;
        out.push(DlqEntry {
            id,
            delivery_id,
            row: row_key,
            pos,
            item,
            state: DlqState::parse(&state),
            error,
            replay,
            created_at,
        });
    }
    Ok(out)
}

/// Rows of the sink with items in the DLQ, and those of them being replayed.
pub(super) fn rows(
    s: &SqliteStore,
    sink: &str,
) -> Result<(HashSet<String>, HashSet<String>), JournalError> {
    let mut stmt = s
        .conn
        .prepare_cached("SELECT row_key, MAX(replay) FROM dlq WHERE sink = ?1 GROUP BY row_key")
        .map_err(|e| s.sqlite(e))?;
    let rows = stmt
        .query_map([sink], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?))
        })
        .map_err(|e| s.sqlite(e))?;
    let (mut all, mut replaying) = (HashSet::new(), HashSet::new());
    for row in rows {
        let (key, replay) = row.map_err(|e| s.sqlite(e))?;
        if replay {
            replaying.insert(key.clone());
        }
        all.insert(key);
    }
    Ok((all, replaying))
}

/// In one transaction: adds `records` to the DLQ (marked for replay when their row is
/// being replayed) and moves the sink's cursor forward to `cursor` — unless an operator
/// reset the cursor meanwhile (its generation is no longer `generation`).
pub(super) fn commit_batch(
    s: &mut SqliteStore,
    sink: &str,
    cursor: i64,
    generation: i64,
    records: &[DlqRecord],
    replaying: &HashSet<String>,
) -> Result<(), JournalError> {
    s.write(|tx, err| {
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO dlq(sink, delivery_id, row_key, pos, item, state, error, replay) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .map_err(err)?;
            for r in records {
                let item = serde_json::to_string(&r.item)
                    .map_err(|source| JournalError::Corrupt { pos: r.pos, source })?;
                insert
                    .execute(params![
                        sink,
                        r.item.delivery_id(),
                        r.item.row,
                        r.pos,
                        item,
                        r.state.as_str(),
                        r.error,
                        replaying.contains(&r.item.row),
                    ])
                    .map_err(err)?;
            }
        }
        super::checkpoint::advance_cursor(tx, sink, cursor, Some(generation)).map_err(err)?;
        Ok(())
    })
}

/// Every DLQ item of the sink, in order.
pub(super) fn list(s: &SqliteStore, sink: &str) -> Result<Vec<DlqEntry>, JournalError> {
    entries(
        s,
        "SELECT id, delivery_id, row_key, pos, item, state, error, replay, created_at \
             FROM dlq WHERE sink = ?1 ORDER BY id",
        [sink],
    )
}

/// Number of DLQ items of the sink.
pub(super) fn count(s: &SqliteStore, sink: &str) -> Result<i64, JournalError> {
    s.conn
        .query_row("SELECT COUNT(*) FROM dlq WHERE sink = ?1", [sink], |r| {
            r.get(0)
        })
        .map_err(|e| s.sqlite(e))
}

/// The next items to replay, in order.
pub(super) fn replay_batch(
    s: &SqliteStore,
    sink: &str,
    limit: usize,
) -> Result<Vec<DlqEntry>, JournalError> {
    entries(
        s,
        "SELECT id, delivery_id, row_key, pos, item, state, error, replay, created_at \
             FROM dlq WHERE sink = ?1 AND replay = 1 ORDER BY id LIMIT ?2",
        params![sink, limit as i64],
    )
}

/// After a replay: removes the delivered items; failed ones stay with their new state
/// and error, and every later item of their rows stops replaying (order holds).
pub(super) fn settle(
    s: &mut SqliteStore,
    sink: &str,
    delivered: &[i64],
    failed: &[(i64, String, DlqState, Option<String>)],
) -> Result<(), JournalError> {
    s.write(|tx, err| {
        for id in delivered {
            tx.execute(
                "DELETE FROM dlq WHERE id = ?1 AND sink = ?2",
                params![id, sink],
            )
            .map_err(err)?;
        }
        for (id, row, state, error) in failed {
            tx.execute(
                "UPDATE dlq SET state = ?1, error = COALESCE(?2, error), replay = 0 WHERE id = ?3",
                params![state.as_str(), error, id],
            )
            .map_err(err)?;
            tx.execute(
                "UPDATE dlq SET replay = 0 WHERE sink = ?1 AND row_key = ?2",
                params![sink, row],
            )
            .map_err(err)?;
        }
        Ok(())
    })
}

fn find(s: &SqliteStore, sink: &str, id: &str) -> Result<Option<(i64, String)>, JournalError> {
    s.conn
        .query_row(
            "SELECT id, row_key FROM dlq WHERE sink = ?1 AND delivery_id = ?2",
            [sink, id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(|e| s.sqlite(e))
}

/// Marks items for replay: all of them, or one item and the items parked behind it.
/// Returns how many were marked.
pub(super) fn request_replay(
    s: &mut SqliteStore,
    sink: &str,
    sel: &DlqSelector,
) -> Result<usize, DlqError> {
    let n = match sel {
        DlqSelector::All => s
            .conn
            .execute("UPDATE dlq SET replay = 1 WHERE sink = ?1", [sink])
            .map_err(|e| s.sqlite(e))?,
        DlqSelector::One(id) => {
            let (dlq_id, row) = find(s, sink, id)?.ok_or_else(|| DlqError::NotFound {
                sink: sink.to_string(),
                id: id.clone(),
            })?;
            let head: Option<String> = s
                    .conn
                    .query_row(
                        "SELECT delivery_id FROM dlq WHERE sink = ?1 AND row_key = ?2 AND id < ?3 AND replay = 0 ORDER BY id LIMIT 1",
                        params![sink, row, dlq_id],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(|e| s.sqlite(e))?;
            if let Some(head) = head {
                return Err(DlqError::ParkedBehind {
                    id: id.clone(),
                    head,
                });
            }
            s.conn
                .execute(
                    "UPDATE dlq SET replay = 1 WHERE sink = ?1 AND row_key = ?2 AND id >= ?3",
                    params![sink, row, dlq_id],
                )
                .map_err(|e| s.sqlite(e))?
        }
    };
    Ok(n)
}

/// Removes items for good (an operator's decision). Returns how many.
pub(super) fn drop(s: &mut SqliteStore, sink: &str, sel: &DlqSelector) -> Result<usize, DlqError> {
    let n = match sel {
        DlqSelector::All => s
            .conn
            .execute("DELETE FROM dlq WHERE sink = ?1", [sink])
            .map_err(|e| s.sqlite(e))?,
        DlqSelector::One(id) => {
            let n = s
                .conn
                .execute(
                    "DELETE FROM dlq WHERE sink = ?1 AND delivery_id = ?2",
                    [sink, id.as_str()],
                )
                .map_err(|e| s.sqlite(e))?;
            if n == 0 {
                return Err(DlqError::NotFound {
                    sink: sink.to_string(),
                    id: id.clone(),
                });
            }
            n
        }
    };
    Ok(n)
}
