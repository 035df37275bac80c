//! Cursors in SQLite: the one place a cursor advances (`advance_cursor`), operator
//! resets (which bump the generation), drops and orphans.

use pgcdc_schema::Lsn;
use rusqlite::{params, OptionalExtension};

use super::{blocks, damaged_block, record_bytes, SqliteStore};
use crate::journal::{
    CursorInfo, CursorState, DroppedCursor, JournalError, OrphanedCursor, ResetError, ResetTarget,
    StateStore,
};

pub(super) fn orphaned(
    s: &SqliteStore,
    configured: &[String],
) -> Result<Vec<OrphanedCursor>, JournalError> {
    let cursors = s.cursors()?;
    let head = s.head()?.pos;
    let floor = crate::journal::pruning_floor(&cursors, configured, head);
    let mut out = Vec::new();
    for c in cursors.iter().filter(|c| !configured.contains(&c.sink)) {
        let held = if floor > c.pos {
            count_between(s, c.pos, floor)?
        } else {
            0
        };
        out.push(OrphanedCursor {
            sink: c.sink.clone(),
            cursor: c.pos,
            lag_events: c.lag_events,
            held_events: held,
        });
    }
    Ok(out)
}

/// How many events the journal holds at positions `after < pos <= upto`: whole
/// blocks by their count, the (at most two) blocks across a bound by their events.
fn count_between(s: &SqliteStore, after: i64, upto: i64) -> Result<i64, JournalError> {
    let err = |e| s.sqlite(e);
    let mut stmt = s
        .conn
        .prepare_cached(
            "SELECT first_pos, last_pos, count, body FROM event_blocks \
             WHERE last_pos > ?1 AND first_pos <= ?2",
        )
        .map_err(err)?;
    let mut rows = stmt.query(params![after, upto]).map_err(err)?;
    let mut held = 0i64;
    let mut buf = Vec::new();
    while let Some(row) = rows.next().map_err(err)? {
        let (first, last): (i64, i64) = (row.get(0).map_err(err)?, row.get(1).map_err(err)?);
        if first > after && last <= upto {
            held += row.get::<_, i64>(2).map_err(err)?;
            continue;
        }
        let body = record_bytes(row.get_ref(3).map_err(err)?).map_err(err)?;
        for e in blocks::events(first, body, &mut buf) {
            let e = e.map_err(|(pos, m)| damaged_block(pos, m))?;
            held += i64::from(e.pos > after && e.pos <= upto);
        }
    }
    Ok(held)
}

/// The position of the newest event whose commit LSN (or time) is before `value`:
/// in the newest block holding one.
fn newest_before(s: &SqliteStore, by_time: bool, value: i64) -> Result<Option<i64>, JournalError> {
    let err = |e| s.sqlite(e);
    let sql = if by_time {
        "SELECT first_pos, body FROM event_blocks WHERE min_time_us < ?1 ORDER BY last_pos DESC LIMIT 1"
    } else {
        "SELECT first_pos, body FROM event_blocks WHERE min_lsn < ?1 ORDER BY last_pos DESC LIMIT 1"
    };
    let mut stmt = s.conn.prepare_cached(sql).map_err(err)?;
    let mut rows = stmt.query([value]).map_err(err)?;
    let Some(row) = rows.next().map_err(err)? else {
        return Ok(None);
    };
    let first: i64 = row.get(0).map_err(err)?;
    let body = record_bytes(row.get_ref(1).map_err(err)?).map_err(err)?;
    let mut found = None;
    for e in blocks::events(first, body, &mut Vec::new()) {
        let e = e.map_err(|(pos, m)| damaged_block(pos, m))?;
        let before = if by_time {
            e.commit_time_us.is_some_and(|t| t < value)
        } else {
            (e.commit_lsn as i64) < value
        };
        if before {
            found = Some(e.pos);
        }
    }
    Ok(found)
}

/// The commit time of the first event after position `pos`, if any.
fn first_time_after(s: &SqliteStore, pos: i64) -> Result<Option<i64>, JournalError> {
    let err = |e| s.sqlite(e);
    let mut stmt = s
        .conn
        .prepare_cached(
            "SELECT first_pos, first_time_us, body FROM event_blocks \
             WHERE last_pos > ?1 ORDER BY last_pos LIMIT 1",
        )
        .map_err(err)?;
    let mut rows = stmt.query([pos]).map_err(err)?;
    let Some(row) = rows.next().map_err(err)? else {
        return Ok(None);
    };
    let first: i64 = row.get(0).map_err(err)?;
    if first > pos {
        return row.get(1).map_err(err);
    }
    let body = record_bytes(row.get_ref(2).map_err(err)?).map_err(err)?;
    for e in blocks::events(first, body, &mut Vec::new()) {
        let e = e.map_err(|(at, m)| damaged_block(at, m))?;
        if e.pos > pos {
            return Ok(e.commit_time_us);
        }
    }
    Ok(None)
}

/// Removes a sink's cursor and its DLQ items, so the journal no longer keeps
/// entries for it. None when the sink has no cursor. The caller refuses this for
/// a configured sink (its runner would recreate the cursor at the journal start).
pub(super) fn drop(s: &mut SqliteStore, sink: &str) -> Result<Option<DroppedCursor>, JournalError> {
    s.write(|tx, err| {
        let cursor: Option<i64> = tx
            .query_row("SELECT pos FROM cursors WHERE sink = ?1", [sink], |r| {
                r.get(0)
            })
            .optional()
            .map_err(err)?;
        let Some(cursor) = cursor else {
            return Ok(None);
        };
        tx.execute("DELETE FROM cursors WHERE sink = ?1", [sink])
            .map_err(err)?;
        let dlq_items = tx
            .execute("DELETE FROM dlq WHERE sink = ?1", [sink])
            .map_err(err)? as i64;
        Ok(Some(DroppedCursor { cursor, dlq_items }))
    })
}

/// The sink's cursor and its generation (the cursor exists).
pub(super) fn state(s: &SqliteStore, sink: &str) -> Result<CursorState, JournalError> {
    find(s, sink)?.ok_or_else(|| s.sqlite(rusqlite::Error::QueryReturnedNoRows))
}

/// The sink's cursor, if it has one.
pub(super) fn find(s: &SqliteStore, sink: &str) -> Result<Option<CursorState>, JournalError> {
    s.conn
        .prepare_cached("SELECT pos, generation FROM cursors WHERE sink = ?1")
        .and_then(|mut stmt| {
            stmt.query_row([sink], |r| {
                Ok(CursorState {
                    pos: r.get(0)?,
                    generation: r.get(1)?,
                })
            })
            .optional()
        })
        .map_err(|e| s.sqlite(e))
}

/// Moves the sink's cursor (back or forward) and bumps its generation. Returns the
/// new cursor: the sink next delivers the entries after it.
pub(super) fn reset(
    s: &mut SqliteStore,
    sink: &str,
    target: ResetTarget,
) -> Result<CursorState, ResetError> {
    let head = s.head()?.pos;
    let oldest: Option<(i64, i64, Option<i64>)> = s
        .conn
        .query_row(
            "SELECT first_pos, first_lsn, first_time_us FROM event_blocks ORDER BY last_pos LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()
        .map_err(|e| s.sqlite(e))?;
    // Positions start at 1: an oldest entry past 1 means older entries were pruned.
    let pruned = oldest.is_some_and(|(pos, _, _)| pos > 1);
    let refuse = |target: String, oldest: String| ResetError::BeyondRetention {
        sink: sink.to_string(),
        target,
        oldest,
    };
    let before = |by_time: bool, value: i64| -> Result<i64, JournalError> {
        let found = newest_before(s, by_time, value)?;
        // Nothing before the target: start before the oldest retained entry.
        Ok(found.unwrap_or_else(|| oldest.map_or(head, |(pos, _, _)| pos - 1)))
    };
    let pos = match target {
        ResetTarget::Latest => head,
        ResetTarget::Lsn(lsn) => {
            if let Some((_, first, _)) = oldest.filter(|_| pruned) {
                if (lsn.0 as i64) < first {
                    return Err(refuse(
                        format!("LSN {lsn}"),
                        format!("LSN {}", Lsn(first as u64)),
                    ));
                }
            }
            before(false, lsn.0 as i64)?
        }
        ResetTarget::Time(us) => {
            if let Some((_, _, Some(first))) = oldest.filter(|_| pruned) {
                if us < first {
                    let text = |t: i64| {
                        chrono::DateTime::from_timestamp_micros(t)
                            .map_or(t.to_string(), |d| d.to_rfc3339())
                    };
                    return Err(refuse(text(us), text(first)));
                }
            }
            before(true, us)?
        }
    };
    s.conn
            .execute(
                "INSERT INTO cursors(sink, pos, generation) VALUES (?1, ?2, 1) \
                 ON CONFLICT(sink) DO UPDATE SET pos = excluded.pos, generation = cursors.generation + 1, \
                 updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
                params![sink, pos],
            )
            .map_err(|e| s.sqlite(e))?;
    Ok(state(s, sink)?)
}

/// Moves `sink`'s cursor forward to `pos`, never back, creating it if missing; with
/// `generation`, only while no operator reset has bumped it since (a batch in flight
/// cannot overwrite a reset). The one place cursors advance. Returns rows changed.
pub(super) fn advance_cursor(
    conn: &rusqlite::Connection,
    sink: &str,
    pos: i64,
    generation: Option<i64>,
) -> rusqlite::Result<usize> {
    conn.execute(
        "INSERT INTO cursors(sink, pos) VALUES (?1, ?2) \
         ON CONFLICT(sink) DO UPDATE SET pos = excluded.pos, \
         updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') \
         WHERE excluded.pos > cursors.pos AND (?3 IS NULL OR cursors.generation = ?3)",
        params![sink, pos, generation],
    )
}

/// Every sink's cursor with its lag.
pub(super) fn cursors(s: &SqliteStore) -> Result<Vec<CursorInfo>, JournalError> {
    let head = s.head()?.pos;
    let mut stmt = s
        .conn
        .prepare("SELECT sink, pos FROM cursors ORDER BY sink")
        .map_err(|e| s.sqlite(e))?;
    let rows: Vec<(String, i64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(|e| s.sqlite(e))?
        .collect::<Result<_, _>>()
        .map_err(|e| s.sqlite(e))?;
    let mut out = Vec::with_capacity(rows.len());
    for (sink, pos) in rows {
        let oldest = first_time_after(s, pos)?;
        out.push(CursorInfo {
            sink,
            pos,
            lag_events: (head - pos).max(0),
            oldest_pending_unix_us: oldest,
        });
    }
    Ok(out)
}
