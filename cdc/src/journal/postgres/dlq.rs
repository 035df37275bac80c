//! The dead-letter queue (and the batch commit that writes DLQ rows and advances
//! the cursor in one transaction), in Postgres.

use std::collections::HashSet;

use tokio_postgres::Row;

use super::{Params, Pg, NOW_TEXT};
use crate::journal::{DlqEntry, DlqError, DlqRecord, DlqSelector, DlqState, JournalError};

const COLUMNS: &str = "id, delivery_id, row_key, pos, item, state, error, replay, created_at";

fn entry(pg: &Pg, r: &Row) -> Result<DlqEntry, JournalError> {
    let pos: i64 = pg.get(r, 3)?;
    let item: &[u8] = pg.get(r, 4)?;
    let item = std::str::from_utf8(item)
        .map_err(|e| JournalError::Corrupt {
            pos,
            source: serde::de::Error::custom(format!("DLQ item is not UTF-8: {e}")),
        })
        .and_then(|text| {
            pgcdc_schema::event::from_stored_json(text)
                .map_err(|source| JournalError::Corrupt { pos, source })
        })?;
    Ok(DlqEntry {
        id: pg.get(r, 0)?,
        delivery_id: pg.get(r, 1)?,
        row: pg.get(r, 2)?,
        pos,
        item,
        state: DlqState::parse(pg.get(r, 5)?),
        error: pg.get(r, 6)?,
        replay: pg.get(r, 7)?,
        created_at: pg.get(r, 8)?,
    })
}

fn entries(pg: &Pg, sql: &str, params: Params<'_>) -> Result<Vec<DlqEntry>, JournalError> {
    pg.query(sql, params)?
        .iter()
        .map(|r| entry(pg, r))
        .collect()
}

/// Rows of the sink with items in the DLQ, and those of them being replayed.
pub(super) fn rows(
    pg: &Pg,
    sink: &str,
) -> Result<(HashSet<String>, HashSet<String>), JournalError> {
    let rows = pg.query(
        "SELECT row_key, bool_or(replay) FROM dlq WHERE sink = $1 GROUP BY row_key",
        &[&sink],
    )?;
    let (mut all, mut replaying) = (HashSet::new(), HashSet::new());
    for row in &rows {
        let key: String = pg.get(row, 0)?;
        if pg.get::<bool>(row, 1)? {
            replaying.insert(key.clone());
        }
        all.insert(key);
    }
    Ok((all, replaying))
}

/// In one transaction: adds `records` to the DLQ (marked for replay when their row is
/// being replayed) and moves the sink's cursor forward to `cursor`, unless an operator
/// reset the cursor meanwhile (its generation is no longer `generation`).
pub(super) fn commit_batch(
    pg: &Pg,
    sink: &str,
    cursor: i64,
    generation: i64,
    records: &[DlqRecord],
    replaying: &HashSet<String>,
) -> Result<(), JournalError> {
    let mut delivery_ids = Vec::with_capacity(records.len());
    let mut row_keys = Vec::with_capacity(records.len());
    let mut positions = Vec::with_capacity(records.len());
    let mut items = Vec::with_capacity(records.len());
    let mut states = Vec::with_capacity(records.len());
    let mut errors = Vec::with_capacity(records.len());
    let mut replays = Vec::with_capacity(records.len());
    for r in records {
        let item = serde_json::to_vec(&r.item)
            .map_err(|source| JournalError::Corrupt { pos: r.pos, source })?;
        delivery_ids.push(r.item.delivery_id());
        row_keys.push(r.item.row.as_str());
        positions.push(r.pos);
        items.push(item);
        states.push(r.state.as_str());
        errors.push(r.error.as_deref());
        replays.push(replaying.contains(&r.item.row));
    }
    let batch = |pg: &Pg| {
        if !records.is_empty() {
            pg.execute(
                "INSERT INTO dlq(sink, delivery_id, row_key, pos, item, state, error, replay) \
                 SELECT $1, * FROM unnest($2::text[], $3::text[], $4::int8[], $5::bytea[], \
                 $6::text[], $7::text[], $8::bool[])",
                &[
                    &sink,
                    &delivery_ids,
                    &row_keys,
                    &positions,
                    &items,
                    &states,
                    &errors,
                    &replays,
                ],
            )?;
        }
        advance_cursor(pg, sink, cursor, generation)?;
        Ok::<_, JournalError>(())
    };
    // Without DLQ rows it only moves the cursor forward: twice is once.
    if records.is_empty() {
        pg.write_idempotent(batch)
    } else {
        pg.write(batch)
    }
}

/// Moves `sink`'s cursor forward to `pos`, never back, creating it if missing, and
/// only while no operator reset bumped its generation past `generation`. The one
/// place cursors advance.
fn advance_cursor(pg: &Pg, sink: &str, pos: i64, generation: i64) -> Result<u64, JournalError> {
    pg.execute(
        &format!(
            "INSERT INTO cursors(sink, pos) VALUES ($1, $2) \
             ON CONFLICT(sink) DO UPDATE SET pos = excluded.pos, updated_at = {NOW_TEXT} \
             WHERE excluded.pos > cursors.pos AND cursors.generation = $3"
        ),
        &[&sink, &pos, &generation],
    )
}

/// Every DLQ item of the sink, in order.
pub(super) fn list(pg: &Pg, sink: &str) -> Result<Vec<DlqEntry>, JournalError> {
    entries(
        pg,
        &format!("SELECT {COLUMNS} FROM dlq WHERE sink = $1 ORDER BY id"),
        &[&sink],
    )
}

/// The next items to replay, in order.
pub(super) fn replay_batch(
    pg: &Pg,
    sink: &str,
    limit: usize,
) -> Result<Vec<DlqEntry>, JournalError> {
    entries(
        pg,
        &format!("SELECT {COLUMNS} FROM dlq WHERE sink = $1 AND replay ORDER BY id LIMIT $2"),
        &[&sink, &(limit.min(i64::MAX as usize) as i64)],
    )
}

/// After a replay: removes the delivered items; failed ones stay with their new state
/// and error, and every later item of their rows stops replaying (order holds).
pub(super) fn settle(
    pg: &Pg,
    sink: &str,
    delivered: &[i64],
    failed: &[(i64, String, DlqState, Option<String>)],
) -> Result<(), JournalError> {
    // Deletes and flag updates: twice is once.
    pg.write_idempotent(|pg| {
        if !delivered.is_empty() {
            pg.execute(
                "DELETE FROM dlq WHERE sink = $1 AND id = ANY($2)",
                &[&sink, &delivered],
            )?;
        }
        for (id, row, state, error) in failed {
            pg.execute(
                "UPDATE dlq SET state = $1, error = COALESCE($2, error), replay = false WHERE id = $3",
                &[&state.as_str(), error, id],
            )?;
            pg.execute(
                "UPDATE dlq SET replay = false WHERE sink = $1 AND row_key = $2",
                &[&sink, row],
            )?;
        }
        Ok(())
    })
}

/// Marks items for replay: all of them, or one item and the items parked behind it.
/// Returns how many were marked.
pub(super) fn request_replay(pg: &Pg, sink: &str, sel: &DlqSelector) -> Result<usize, DlqError> {
    let n = match sel {
        DlqSelector::All => {
            pg.write_one("UPDATE dlq SET replay = true WHERE sink = $1", &[&sink])?
        }
        DlqSelector::One(id) => pg.write(|pg| {
            let found = pg.query_opt(
                "SELECT id, row_key FROM dlq WHERE sink = $1 AND delivery_id = $2",
                &[&sink, id],
            )?;
            let Some(found) = found else {
                return Err(DlqError::NotFound {
                    sink: sink.to_string(),
                    id: id.clone(),
                });
            };
            let (dlq_id, row): (i64, String) = (pg.get(&found, 0)?, pg.get(&found, 1)?);
            let head = pg.query_opt(
                "SELECT delivery_id FROM dlq WHERE sink = $1 AND row_key = $2 AND id < $3 \
                 AND NOT replay ORDER BY id LIMIT 1",
                &[&sink, &row, &dlq_id],
            )?;
            if let Some(head) = head {
                return Err(DlqError::ParkedBehind {
                    id: id.clone(),
                    head: pg.get(&head, 0)?,
                });
            }
            Ok(pg.execute(
                "UPDATE dlq SET replay = true WHERE sink = $1 AND row_key = $2 AND id >= $3",
                &[&sink, &row, &dlq_id],
            )?)
        })?,
    };
    Ok(n as usize)
}

/// Removes items for good (an operator's decision). Returns how many.
pub(super) fn drop(pg: &Pg, sink: &str, sel: &DlqSelector) -> Result<usize, DlqError> {
    let n = match sel {
        DlqSelector::All => pg.write_one("DELETE FROM dlq WHERE sink = $1", &[&sink])?,
        DlqSelector::One(id) => {
            let n = pg.write_one(
                "DELETE FROM dlq WHERE sink = $1 AND delivery_id = $2",
                &[&sink, id],
            )?;
            if n == 0 {
                return Err(DlqError::NotFound {
                    sink: sink.to_string(),
                    id: id.clone(),
                });
            }
            n
        }
    };
    Ok(n as usize)
}
