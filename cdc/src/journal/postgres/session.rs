//! A session on the Postgres store: events, metadata and cursors here; the DLQ,
//! audit log and resyncs in their own files.

use std::collections::HashSet;

use pgcdc_schema::event::Name;
use pgcdc_schema::Lsn;
use pgcdc_sinks::{Attempt, BatchAttempt};

use super::relations::relation_body;
use super::{audit, dlq, resync, Pg, NOW_TEXT};
use crate::journal::meta::TABLE_OID_PREFIX;
use crate::journal::record::Decoder;
use crate::journal::{
    CursorInfo, CursorState, DlqEntry, DlqError, DlqRecord, DlqSelector, DlqState, DroppedCursor,
    JournalError, JournalHead, MetaKey, OrphanedCursor, ResetError, ResetTarget, ResyncInfo,
    ResyncKind, ResyncRequestError, StateStore, StoredEvent,
};

pub(super) struct PgStore {
    pub(super) pg: Pg,
    /// The relation versions read so far.
    pub(super) decoder: std::cell::RefCell<Decoder>,
}

impl PgStore {
    pub(super) fn new(pg: Pg) -> PgStore {
        PgStore {
            pg,
            decoder: std::cell::RefCell::new(Decoder::default()),
        }
    }
}

pub(super) fn meta_get(pg: &Pg, key: &MetaKey) -> Result<Option<String>, JournalError> {
    let key = key.as_stored();
    match pg.query_opt("SELECT value FROM meta WHERE key = $1", &[&key.as_ref()])? {
        Some(row) => Ok(Some(pg.get(&row, 0)?)),
        None => Ok(None),
    }
}

pub(super) fn meta_set(pg: &Pg, key: &MetaKey, value: &str) -> Result<(), JournalError> {
    let key = key.as_stored();
    pg.execute(
        "INSERT INTO meta(key, value) VALUES ($1, $2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        &[&key.as_ref(), &value],
    )?;
    Ok(())
}

pub(super) fn table_oids(pg: &Pg) -> Result<Vec<(String, String)>, JournalError> {
    let rows = pg.query(
        "SELECT key, value FROM meta WHERE starts_with(key, $1) ORDER BY key",
        &[&TABLE_OID_PREFIX],
    )?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let key: String = pg.get(row, 0)?;
        if let Some(table) = key.strip_prefix(TABLE_OID_PREFIX) {
            out.push((table.to_string(), pg.get(row, 1)?));
        }
    }
    Ok(out)
}

pub(super) fn read_head(pg: &Pg) -> Result<JournalHead, JournalError> {
    let row = pg.query_one(
        "SELECT (SELECT COALESCE(MAX(pos), 0) FROM events), \
         (SELECT value FROM meta WHERE key = 'confirmed_lsn')",
        &[],
    )?;
    let confirmed: Option<String> = pg.get(&row, 1)?;
    Ok(JournalHead {
        pos: pg.get(&row, 0)?,
        confirmed_lsn: Lsn(confirmed.and_then(|s| s.parse().ok()).unwrap_or(0)),
    })
}

/// Bytes the journal's data occupies, as the writer counts them (see `writer`).
pub(super) fn used_bytes(pg: &Pg) -> Result<u64, JournalError> {
    let row = pg.query_one("SELECT journal_bytes FROM stats WHERE id = 1", &[])?;
    Ok(pg.get::<i64>(&row, 0)?.max(0) as u64)
}

impl PgStore {
    fn create_cursor(&self, sink: &str) -> Result<(), JournalError> {
        self.pg.write_one(
            "INSERT INTO cursors(sink, pos) VALUES ($1, 0) ON CONFLICT(sink) DO NOTHING",
            &[&sink],
        )?;
        Ok(())
    }

    fn cursor_row(&self, sink: &str) -> Result<CursorState, JournalError> {
        let row = self.pg.query_one(
            "SELECT pos, generation FROM cursors WHERE sink = $1",
            &[&sink],
        )?;
        Ok(CursorState {
            pos: self.pg.get(&row, 0)?,
            generation: self.pg.get(&row, 1)?,
        })
    }

    /// Where `reset_cursor` puts the cursor.
    fn reset_position(&self, sink: &str, target: ResetTarget) -> Result<i64, ResetError> {
        let pg = &self.pg;
        let head = read_head(pg)?.pos;
        let oldest = pg.query_opt(
            "SELECT pos, commit_lsn, commit_time_us FROM events ORDER BY pos LIMIT 1",
            &[],
        )?;
        let oldest: Option<(i64, i64, Option<i64>)> = match &oldest {
            Some(r) => Some((pg.get(r, 0)?, pg.get(r, 1)?, pg.get(r, 2)?)),
            None => None,
        };
        // Positions start at 1: an oldest entry past 1 means older entries were pruned.
        let pruned = oldest.is_some_and(|(pos, _, _)| pos > 1);
        let refuse = |target: String, oldest: String| ResetError::BeyondRetention {
            sink: sink.to_string(),
            target,
            oldest,
        };
        let before = |sql: &str, value: i64| -> Result<i64, JournalError> {
            let row = pg.query_one(sql, &[&value])?;
            let found: Option<i64> = pg.get(&row, 0)?;
            // Nothing before the target: start before the oldest retained entry.
            Ok(found.unwrap_or_else(|| oldest.map_or(head, |(pos, _, _)| pos - 1)))
        };
        Ok(match target {
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
                before(
                    "SELECT MAX(pos) FROM events WHERE commit_lsn < $1",
                    lsn.0 as i64,
                )?
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
                before("SELECT MAX(pos) FROM events WHERE commit_time_us < $1", us)?
            }
        })
    }
}

impl StateStore for PgStore {
    fn check_fence(&self) -> Result<(), JournalError> {
        // An empty write: its transaction checks the lease's epoch first.
        self.pg.write(|_| Ok::<(), JournalError>(()))
    }

    fn head(&self) -> Result<JournalHead, JournalError> {
        read_head(&self.pg)
    }

    fn staged(
        &self,
        xid: u32,
        after_seq: i64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<crate::journal::StagedMessage>, JournalError> {
        super::staging::page(&self.pg, xid, after_seq, limit, max_bytes)
    }

    fn read_batch(
        &self,
        pos: i64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredEvent>, JournalError> {
        let pg = &self.pg;
        let rows = pg.query(
            "SELECT pos, payload, target, tbl, seq FROM events WHERE pos > $1 ORDER BY pos LIMIT $2",
            &[&pos, &(limit.min(i64::MAX as usize) as i64)],
        )?;
        let mut out = Vec::with_capacity(rows.len());
        let mut bytes = 0usize;
        let mut decoder = self.decoder.borrow_mut();
        for row in &rows {
            let pos: i64 = pg.get(row, 0)?;
            let payload: &[u8] = pg.get(row, 1)?;
            bytes = bytes.saturating_add(payload.len());
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            let event = decoder
                .decode(payload, |id| relation_body(pg, id))
                .map_err(|e| e.at(pos))?;
            out.push(StoredEvent {
                pos,
                seq: pg.get::<i32>(row, 4)? as u32,
                event,
                target: pg.get(row, 2)?,
                table: Name::from(pg.get::<String>(row, 3)?),
            });
        }
        Ok(out)
    }

    fn event_id_at(&self, pos: i64) -> Result<Option<String>, JournalError> {
        Ok(self
            .read_batch(pos - 1, 1, usize::MAX)?
            .into_iter()
            .find(|e| e.pos == pos)
            .map(|e| e.event.id.as_str().to_string()))
    }

    fn used_bytes(&self) -> Result<u64, JournalError> {
        used_bytes(&self.pg)
    }

    fn size_bytes(&self) -> u64 {
        // The tables' size in the database (not on this machine's disk).
        self.pg
            .query_one(
                "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c \
                 WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'r'",
                &[],
            )
            .and_then(|row| self.pg.get::<i64>(&row, 0))
            .map_or(0, |n| n.max(0) as u64)
    }

    fn meta(&self, key: &MetaKey) -> Result<Option<String>, JournalError> {
        meta_get(&self.pg, key)
    }

    fn delete_meta(&mut self, key: &MetaKey) -> Result<(), JournalError> {
        let key = key.as_stored();
        self.pg
            .write_one("DELETE FROM meta WHERE key = $1", &[&key.as_ref()])?;
        Ok(())
    }

    fn table_oids(&self) -> Result<Vec<(String, String)>, JournalError> {
        table_oids(&self.pg)
    }

    fn known_keys(&self, table: &str) -> Result<Vec<pgcdc_schema::event::Row>, JournalError> {
        super::known_keys::known_keys(&self.pg, &self.decoder, table)
    }

    fn cursor(&mut self, sink: &str) -> Result<i64, JournalError> {
        Ok(self.cursor_state(sink)?.pos)
    }

    fn cursor_state(&mut self, sink: &str) -> Result<CursorState, JournalError> {
        self.create_cursor(sink)?;
        self.cursor_row(sink)
    }

    fn cursors(&self) -> Result<Vec<CursorInfo>, JournalError> {
        let pg = &self.pg;
        let head = read_head(pg)?.pos;
        let rows = pg.query(
            "SELECT c.sink, c.pos, (SELECT e.commit_time_us FROM events e WHERE e.pos > c.pos \
             ORDER BY e.pos LIMIT 1) FROM cursors c ORDER BY c.sink",
            &[],
        )?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let pos: i64 = pg.get(row, 1)?;
            out.push(CursorInfo {
                sink: pg.get(row, 0)?,
                pos,
                lag_events: (head - pos).max(0),
                oldest_pending_unix_us: pg.get(row, 2)?,
            });
        }
        Ok(out)
    }

    fn orphaned_cursors(&self, configured: &[String]) -> Result<Vec<OrphanedCursor>, JournalError> {
        let cursors = self.cursors()?;
        let head = self.head()?.pos;
        let floor = crate::journal::pruning_floor(&cursors, configured, head);
        let mut out = Vec::new();
        for c in cursors.iter().filter(|c| !configured.contains(&c.sink)) {
            let held = if floor > c.pos {
                let row = self.pg.query_one(
                    "SELECT COUNT(*) FROM events WHERE pos > $1 AND pos <= $2",
                    &[&c.pos, &floor],
                )?;
                self.pg.get::<i64>(&row, 0)?
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

    fn drop_cursor(&mut self, sink: &str) -> Result<Option<DroppedCursor>, JournalError> {
        self.pg.write(|pg| {
            let Some(row) = pg.query_opt(
                "DELETE FROM cursors WHERE sink = $1 RETURNING pos",
                &[&sink],
            )?
            else {
                return Ok(None);
            };
            let cursor: i64 = pg.get(&row, 0)?;
            let dlq_items = pg.execute("DELETE FROM dlq WHERE sink = $1", &[&sink])? as i64;
            Ok(Some(DroppedCursor { cursor, dlq_items }))
        })
    }

    fn reset_cursor(&mut self, sink: &str, target: ResetTarget) -> Result<CursorState, ResetError> {
        let pos = self.reset_position(sink, target)?;
        let row = self.pg.write(|pg| {
            pg.query_one(
                &format!(
                    "INSERT INTO cursors(sink, pos, generation) VALUES ($1, $2, 1) \
                     ON CONFLICT(sink) DO UPDATE SET pos = excluded.pos, \
                     generation = cursors.generation + 1, updated_at = {NOW_TEXT} \
                     RETURNING pos, generation"
                ),
                &[&sink, &pos],
            )
        })?;
        Ok(CursorState {
            pos: self.pg.get(&row, 0)?,
            generation: self.pg.get(&row, 1)?,
        })
    }

    fn commit_batch(
        &mut self,
        sink: &str,
        cursor: i64,
        generation: i64,
        records: &[DlqRecord],
        replaying: &HashSet<String>,
    ) -> Result<(), JournalError> {
        dlq::commit_batch(&self.pg, sink, cursor, generation, records, replaying)
    }

    fn dlq_rows(&self, sink: &str) -> Result<(HashSet<String>, HashSet<String>), JournalError> {
        dlq::rows(&self.pg, sink)
    }

    fn dlq_list(&self, sink: &str) -> Result<Vec<DlqEntry>, JournalError> {
        dlq::list(&self.pg, sink)
    }

    fn dlq_count(&self, sink: &str) -> Result<i64, JournalError> {
        let row = self
            .pg
            .query_one("SELECT COUNT(*) FROM dlq WHERE sink = $1", &[&sink])?;
        self.pg.get(&row, 0)
    }

    fn dlq_replay_batch(&self, sink: &str, limit: usize) -> Result<Vec<DlqEntry>, JournalError> {
        dlq::replay_batch(&self.pg, sink, limit)
    }

    fn dlq_settle(
        &mut self,
        sink: &str,
        delivered: &[i64],
        failed: &[(i64, String, DlqState, Option<String>)],
    ) -> Result<(), JournalError> {
        dlq::settle(&self.pg, sink, delivered, failed)
    }

    fn dlq_request_replay(&mut self, sink: &str, sel: &DlqSelector) -> Result<usize, DlqError> {
        dlq::request_replay(&self.pg, sink, sel)
    }

    fn dlq_drop(&mut self, sink: &str, sel: &DlqSelector) -> Result<usize, DlqError> {
        dlq::drop(&self.pg, sink, sel)
    }

    fn audit_insert(&mut self, attempts: &[Attempt]) -> Result<(), JournalError> {
        audit::audit_insert(&self.pg, attempts)
    }

    fn audit_insert_batches(&mut self, batches: &[BatchAttempt]) -> Result<(), JournalError> {
        audit::audit_insert_batches(&self.pg, batches)
    }

    fn audit_by_event(&self, event_id: &str) -> Result<Vec<Attempt>, JournalError> {
        audit::audit_by_event(&self.pg, event_id)
    }

    fn audit_by_sink(
        &self,
        sink: &str,
        since: &str,
        limit: usize,
    ) -> Result<Vec<Attempt>, JournalError> {
        audit::audit_by_sink(&self.pg, sink, since, limit)
    }

    fn audit_prune(&mut self, before: &str) -> Result<usize, JournalError> {
        audit::audit_prune(&self.pg, before)
    }

    fn request_resync(
        &mut self,
        kind: ResyncKind,
        table: &str,
        sink: Option<&str>,
        where_sql: Option<&str>,
    ) -> Result<ResyncInfo, ResyncRequestError> {
        resync::request(&self.pg, kind, table, sink, where_sql)
    }

    fn cancel_resync(&mut self, table: &str, sink: Option<&str>) -> Result<Vec<i64>, JournalError> {
        resync::cancel(&self.pg, table, sink)
    }

    fn fail_resync(&mut self, id: i64, error: &str) -> Result<(), JournalError> {
        resync::fail(&self.pg, id, error)
    }

    fn resync(&self, id: i64) -> Result<Option<ResyncInfo>, JournalError> {
        resync::one(&self.pg, id)
    }

    fn next_resync(&self) -> Result<Option<ResyncInfo>, JournalError> {
        resync::next(&self.pg)
    }

    fn resyncs(&self, recent: usize) -> Result<Vec<ResyncInfo>, JournalError> {
        resync::list(&self.pg, recent)
    }
}
