//! The dead-letter queue: items a sink could not deliver, and the later items
//! of the same row parked behind them, in order, until an operator replays
//! or drops them. Nothing leaves the DLQ without an operator saying so.

use std::collections::HashSet;

use pgcdc_sinks::Outgoing;
use rusqlite::{params, OptionalExtension};

use super::{JournalError, JournalReader};

/// Why an item is in the DLQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DlqState {
    /// Failed definitely or exhausted its retries.
    Dead,
    /// Waiting behind an earlier failed item of the same row.
    Parked,
}

impl DlqState {
    fn as_str(self) -> &'static str {
        match self {
            DlqState::Dead => "dead",
            DlqState::Parked => "parked",
        }
    }

    fn parse(s: &str) -> DlqState {
        if s == "dead" {
            DlqState::Dead
        } else {
            DlqState::Parked
        }
    }
}

/// An item to put in the DLQ.
#[derive(Debug, Clone)]
pub struct DlqRecord {
    /// The item.
    pub item: Outgoing,
    /// Journal position of its event.
    pub pos: i64,
    /// Dead or parked.
    pub state: DlqState,
    /// The last error (dead items).
    pub error: Option<String>,
}

/// An item in the DLQ.
#[derive(Debug, Clone)]
pub struct DlqEntry {
    /// Order in the DLQ.
    pub id: i64,
    /// Delivery id (event id, `.N` for later transform outputs).
    pub delivery_id: String,
    /// Row identity.
    pub row: String,
    /// Journal position of its event.
    pub pos: i64,
    /// The item as it will be sent again.
    pub item: Outgoing,
    /// Dead or parked.
    pub state: DlqState,
    /// The last error.
    pub error: Option<String>,
    /// Replay requested and pending.
    pub replay: bool,
    /// When it entered the DLQ.
    pub created_at: String,
}

/// Which DLQ items an operator means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DlqSelector {
    /// One item by delivery id.
    One(String),
    /// Every item of the sink.
    All,
}

/// Why an operator's DLQ request was refused.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    /// The journal failed.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// No such item.
    #[error("sink {sink} has no dead-lettered event {id}; list them with `pgcdc dlq list --sink {sink}`")]
    NotFound {
        /// Sink.
        sink: String,
        /// Delivery id.
        id: String,
    },
    /// Replaying it alone would break the row's order.
    #[error("event {id} is parked behind {head} of the same row; replay {head} first (its parked followers go with it) or use --all")]
    ParkedBehind {
        /// Requested delivery id.
        id: String,
        /// The row's first item in the DLQ.
        head: String,
    },
}

impl JournalReader {
    fn entries(
        &self,
        sql: &str,
        args: impl rusqlite::Params,
    ) -> Result<Vec<DlqEntry>, JournalError> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(|e| self.sqlite(e))?;
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
            .map_err(|e| self.sqlite(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, delivery_id, row_key, pos, item, state, error, replay, created_at) =
                row.map_err(|e| self.sqlite(e))?;
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
    pub fn dlq_rows(&self, sink: &str) -> Result<(HashSet<String>, HashSet<String>), JournalError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT row_key, MAX(replay) FROM dlq WHERE sink = ?1 GROUP BY row_key")
            .map_err(|e| self.sqlite(e))?;
        let rows = stmt
            .query_map([sink], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?))
            })
            .map_err(|e| self.sqlite(e))?;
        let (mut all, mut replaying) = (HashSet::new(), HashSet::new());
        for row in rows {
            let (key, replay) = row.map_err(|e| self.sqlite(e))?;
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
    pub fn commit_batch(
        &mut self,
        sink: &str,
        cursor: i64,
        generation: i64,
        records: &[DlqRecord],
        replaying: &HashSet<String>,
    ) -> Result<(), JournalError> {
        self.write(|tx, err| {
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
    pub fn dlq_list(&self, sink: &str) -> Result<Vec<DlqEntry>, JournalError> {
        self.entries(
            "SELECT id, delivery_id, row_key, pos, item, state, error, replay, created_at \
             FROM dlq WHERE sink = ?1 ORDER BY id",
            [sink],
        )
    }

    /// Number of DLQ items of the sink.
    pub fn dlq_count(&self, sink: &str) -> Result<i64, JournalError> {
        self.conn
            .query_row("SELECT COUNT(*) FROM dlq WHERE sink = ?1", [sink], |r| {
                r.get(0)
            })
            .map_err(|e| self.sqlite(e))
    }

    /// The next items to replay, in order.
    pub fn dlq_replay_batch(
        &self,
        sink: &str,
        limit: usize,
    ) -> Result<Vec<DlqEntry>, JournalError> {
        self.entries(
            "SELECT id, delivery_id, row_key, pos, item, state, error, replay, created_at \
             FROM dlq WHERE sink = ?1 AND replay = 1 ORDER BY id LIMIT ?2",
            params![sink, limit as i64],
        )
    }

    /// After a replay: removes the delivered items; failed ones stay with their new state
    /// and error, and every later item of their rows stops replaying (order holds).
    pub fn dlq_settle(
        &mut self,
        sink: &str,
        delivered: &[i64],
        failed: &[(i64, String, DlqState, Option<String>)],
    ) -> Result<(), JournalError> {
        self.write(|tx, err| {
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

    fn find(&self, sink: &str, id: &str) -> Result<Option<(i64, String)>, JournalError> {
        self.conn
            .query_row(
                "SELECT id, row_key FROM dlq WHERE sink = ?1 AND delivery_id = ?2",
                [sink, id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(|e| self.sqlite(e))
    }

    /// Marks items for replay: all of them, or one item and the items parked behind it.
    /// Returns how many were marked.
    pub fn dlq_request_replay(&self, sink: &str, sel: &DlqSelector) -> Result<usize, DlqError> {
        let n = match sel {
            DlqSelector::All => self
                .conn
                .execute("UPDATE dlq SET replay = 1 WHERE sink = ?1", [sink])
                .map_err(|e| self.sqlite(e))?,
            DlqSelector::One(id) => {
                let (dlq_id, row) = self.find(sink, id)?.ok_or_else(|| DlqError::NotFound {
                    sink: sink.to_string(),
                    id: id.clone(),
                })?;
                let head: Option<String> = self
                    .conn
                    .query_row(
                        "SELECT delivery_id FROM dlq WHERE sink = ?1 AND row_key = ?2 AND id < ?3 AND replay = 0 ORDER BY id LIMIT 1",
                        params![sink, row, dlq_id],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(|e| self.sqlite(e))?;
                if let Some(head) = head {
                    return Err(DlqError::ParkedBehind {
                        id: id.clone(),
                        head,
                    });
                }
                self.conn
                    .execute(
                        "UPDATE dlq SET replay = 1 WHERE sink = ?1 AND row_key = ?2 AND id >= ?3",
                        params![sink, row, dlq_id],
                    )
                    .map_err(|e| self.sqlite(e))?
            }
        };
        Ok(n)
    }

    /// Removes items for good (an operator's decision). Returns how many.
    pub fn dlq_drop(&self, sink: &str, sel: &DlqSelector) -> Result<usize, DlqError> {
        let n = match sel {
            DlqSelector::All => self
                .conn
                .execute("DELETE FROM dlq WHERE sink = ?1", [sink])
                .map_err(|e| self.sqlite(e))?,
            DlqSelector::One(id) => {
                let n = self
                    .conn
                    .execute(
                        "DELETE FROM dlq WHERE sink = ?1 AND delivery_id = ?2",
                        [sink, id.as_str()],
                    )
                    .map_err(|e| self.sqlite(e))?;
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
}
