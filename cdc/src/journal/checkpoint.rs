//! Operator resets of a sink's cursor: to a WAL position, a commit time, or the
//! journal head. A reset bumps the cursor's generation, so a running sink
//! runner notices it, rereads its cursor, and does not overwrite it with the
//! position of a batch it was delivering.

use pgcdc_schema::Lsn;
use rusqlite::{params, OptionalExtension};

use super::{JournalError, JournalReader};

/// Where to move a cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTarget {
    /// Re-deliver from the first transaction committed at or after this LSN.
    Lsn(Lsn),
    /// Re-deliver from the first transaction committed at or after this time (Unix µs).
    Time(i64),
    /// Skip to the journal head: deliver only what comes next.
    Latest,
}

/// Why a reset was refused.
#[derive(Debug, thiserror::Error)]
pub enum ResetError {
    /// The journal failed.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The target is older than what the journal still holds.
    #[error(
        "{target} is older than the journal's retention (its oldest entry committed at {oldest}); \
         the changes before it are gone from the journal: use `pgcdc resync --table ... --sink {sink}` \
         to send the tables' current rows instead"
    )]
    BeyondRetention {
        /// Sink.
        sink: String,
        /// The requested target, as text.
        target: String,
        /// The oldest retained position, as text.
        oldest: String,
    },
}

/// The cursor of a sink that is no longer configured: it pins the journal, since
/// pruning keeps everything after the lowest cursor.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OrphanedCursor {
    /// The sink's name.
    pub sink: String,
    /// Its cursor.
    pub cursor: i64,
    /// Journal entries after its cursor.
    pub lag_events: i64,
    /// Entries every configured sink has passed that are kept only for this cursor.
    pub held_events: i64,
}

/// What `drop_cursor` removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DroppedCursor {
    /// The cursor's position when it was dropped.
    pub cursor: i64,
    /// DLQ items of the sink removed with it.
    pub dlq_items: i64,
}

/// A cursor's position and generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CursorState {
    /// Last journal position the sink has finished with.
    pub pos: i64,
    /// Incremented by every operator reset.
    pub generation: i64,
}

impl JournalReader {
    /// Cursors of sinks not in `configured`, and how much journal each holds back.
    pub fn orphaned_cursors(
        &self,
        configured: &[String],
    ) -> Result<Vec<OrphanedCursor>, JournalError> {
        let cursors = self.cursors()?;
        let head = self.head()?.pos;
        // Where pruning could go without the orphans: the lowest configured cursor
        // (a configured sink without a row yet starts at 0 and holds everything).
        let floor = configured
            .iter()
            .map(|name| {
                cursors
                    .iter()
                    .find(|c| &c.sink == name)
                    .map_or(0, |c| c.pos)
            })
            .min()
            .unwrap_or(head);
        let mut out = Vec::new();
        for c in cursors.iter().filter(|c| !configured.contains(&c.sink)) {
            let held: i64 = if floor > c.pos {
                self.conn
                    .query_row(
                        "SELECT COUNT(*) FROM events WHERE pos > ?1 AND pos <= ?2",
                        params![c.pos, floor],
                        |r| r.get(0),
                    )
                    .map_err(|e| self.sqlite(e))?
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

    /// Removes a sink's cursor and its DLQ items, so the journal no longer keeps
    /// entries for it. None when the sink has no cursor. The caller refuses this for
    /// a configured sink (its runner would recreate the cursor at the journal start).
    pub fn drop_cursor(&mut self, sink: &str) -> Result<Option<DroppedCursor>, JournalError> {
        self.write(|tx, err| {
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

    /// The sink's cursor and its generation (created at the journal start for a new sink).
    pub fn cursor_state(&self, sink: &str) -> Result<CursorState, JournalError> {
        self.cursor(sink)?;
        self.conn
            .query_row(
                "SELECT pos, generation FROM cursors WHERE sink = ?1",
                [sink],
                |r| {
                    Ok(CursorState {
                        pos: r.get(0)?,
                        generation: r.get(1)?,
                    })
                },
            )
            .map_err(|e| self.sqlite(e))
    }

    /// Moves the sink's cursor (back or forward) and bumps its generation. Returns the
    /// new cursor: the sink next delivers the entries after it.
    pub fn reset_cursor(&self, sink: &str, target: ResetTarget) -> Result<CursorState, ResetError> {
        let head = self.head()?.pos;
        let oldest: Option<(i64, i64, Option<i64>)> = self
            .conn
            .query_row(
                "SELECT pos, commit_lsn, commit_time_us FROM events ORDER BY pos LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(|e| self.sqlite(e))?;
        // Positions start at 1: an oldest entry past 1 means older entries were pruned.
        let pruned = oldest.is_some_and(|(pos, _, _)| pos > 1);
        let refuse = |target: String, oldest: String| ResetError::BeyondRetention {
            sink: sink.to_string(),
            target,
            oldest,
        };
        let before = |column: &str, value: i64| -> Result<i64, JournalError> {
            let sql = format!("SELECT MAX(pos) FROM events WHERE {column} < ?1");
            let found: Option<i64> = self
                .conn
                .query_row(&sql, [value], |r| r.get(0))
                .map_err(|e| self.sqlite(e))?;
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
                before("commit_lsn", lsn.0 as i64)?
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
                before("commit_time_us", us)?
            }
        };
        self.conn
            .execute(
                "INSERT INTO cursors(sink, pos, generation) VALUES (?1, ?2, 1) \
                 ON CONFLICT(sink) DO UPDATE SET pos = excluded.pos, generation = cursors.generation + 1, \
                 updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
                params![sink, pos],
            )
            .map_err(|e| self.sqlite(e))?;
        Ok(self.cursor_state(sink)?)
    }
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
