//! The single writer of the Postgres journal (owned by the journal thread): one
//! transaction per batch, the events in one multi-row INSERT (arrays unnested),
//! row state, resync progress and the confirmed LSN beside them.
//!
//! Its own writes must not feed the slot. When the state database is the source
//! database, every commit here adds WAL; the walsender then sends a keepalive
//! past it, which the reader confirms, which would be written here again: a
//! loop of tiny transactions on an idle source. So a confirmation that comes
//! alone (no events, no progress) is written at most once per
//! [`CONFIRM_ALONE_EVERY`]; meanwhile it waits in memory and is neither
//! durable nor reported to the slot (the slot only holds a little more WAL).

use std::time::{Duration, Instant};

use pgcdc_schema::Lsn;

use super::relations::relations;
use super::session::{meta_get, meta_set, read_head, table_oids, used_bytes};
use super::{message, resync, Pg};
use crate::journal::record::Encoder;
use crate::journal::row_state::{self, Lookup, Remember};
use crate::journal::{
    AppendOutcome, Appended, JournalEntry, JournalError, JournalHead, JournalWriter, MetaKey,
    OldTracking, ResyncProgress,
};

/// How often a confirmation alone (see the module doc) is written.
const CONFIRM_ALONE_EVERY: Duration = Duration::from_secs(1);
/// How often `check_intact` asks the database (it runs after every batch).
const INTACT_EVERY: Duration = Duration::from_secs(1);
/// What an event row costs beside its payload (columns, tuple header, index entry):
/// counted with the payload against `journal.max_bytes`.
const ROW_OVERHEAD: i64 = 96;

pub(super) struct PgWriter {
    pg: Pg,
    /// (commit LSN, seq) of the last journaled change.
    last: Option<(u64, u32)>,
    head: JournalHead,
    tracking: OldTracking,
    /// The store's identity at open: another one under the same name (the schema
    /// dropped and made again) must not be confirmed to the slot.
    store_id: Option<String>,
    /// `stats.journal_bytes`, kept here too: only this writer changes it.
    bytes: i64,
    /// A confirmation not written yet (see the module doc), and when the last was.
    pending_confirm: Option<Lsn>,
    confirm_written: Instant,
    intact_checked: std::cell::Cell<Option<Instant>>,
    /// Makes the records (knows the relation versions stored).
    encoder: Encoder,
    /// Where the last append stored its entries (see `take_appended`).
    appended: Vec<Appended>,
}

/// What is durable: the last position, the head, the byte count.
type Durable = (Option<(u64, u32)>, JournalHead, i64);

fn durable(pg: &Pg) -> Result<Durable, JournalError> {
    let last = match pg.query_opt(
        "SELECT commit_lsn, seq FROM events ORDER BY pos DESC LIMIT 1",
        &[],
    )? {
        Some(r) => Some((pg.get::<i64>(&r, 0)? as u64, pg.get::<i32>(&r, 1)? as u32)),
        None => None,
    };
    Ok((last, read_head(pg)?, used_bytes(pg)? as i64))
}

impl PgWriter {
    pub(super) fn open(pg: Pg) -> Result<PgWriter, JournalError> {
        let (last, head, bytes) = durable(&pg)?;
        let store_id = store_id(&pg)?;
        let encoder = Encoder::new(relations(&pg)?);
        Ok(PgWriter {
            pg,
            last,
            head,
            tracking: OldTracking::new(),
            store_id,
            bytes,
            pending_confirm: None,
            confirm_written: Instant::now() - CONFIRM_ALONE_EVERY,
            intact_checked: std::cell::Cell::new(None),
            encoder,
            appended: Vec::new(),
        })
    }
}

fn store_id(pg: &Pg) -> Result<Option<String>, JournalError> {
    match pg.query_opt("SELECT value FROM meta WHERE key = 'store_id'", &[])? {
        Some(r) => Ok(Some(pg.get(&r, 0)?)),
        None => Ok(None),
    }
}

/// Fills `event.old` from the remembered row and remembers the new values, inside the
/// append transaction.
fn apply_row_state(
    pg: &Pg,
    tracking: &OldTracking,
    table: &str,
    event: &mut pgcdc_schema::ChangeEvent,
) -> Result<(), JournalError> {
    let Some(tracked) = tracking.get(table) else {
        return Ok(());
    };
    let row_key = match row_state::lookup(event) {
        Lookup::Nothing => return Ok(()),
        Lookup::ForgetTable => {
            pg.execute("DELETE FROM row_state WHERE tbl = $1", &[&table])?;
            return Ok(());
        }
        Lookup::Row(row_key) => row_key,
    };
    let remembered = match pg.query_opt(
        "SELECT cols FROM row_state WHERE tbl = $1 AND row_key = $2",
        &[&table, &row_key],
    )? {
        Some(r) => row_state::parse(pg.get(&r, 0)?),
        None => None,
    };
    let forget = |key: &str| {
        pg.execute(
            "DELETE FROM row_state WHERE tbl = $1 AND row_key = $2",
            &[&table, &key],
        )
    };
    match row_state::merge(tracked, row_key, remembered, event) {
        Remember::Nothing => {}
        Remember::Forget(key) => {
            forget(&key)?;
        }
        Remember::Put {
            row_key,
            cols,
            moved_from,
        } => {
            pg.execute(
                "INSERT INTO row_state(tbl, row_key, cols) VALUES ($1, $2, $3) \
                 ON CONFLICT(tbl, row_key) DO UPDATE SET cols = excluded.cols",
                &[&table, &row_key, &cols],
            )?;
            if let Some(old) = moved_from {
                forget(&old)?;
            }
        }
    }
    Ok(())
}

/// An append's rows, column by column (one array parameter each).
#[derive(Default)]
struct Columns<'a> {
    pos: Vec<i64>,
    lsn: Vec<i64>,
    seq: Vec<i32>,
    time: Vec<Option<i64>>,
    table: Vec<&'a str>,
    payload: Vec<Vec<u8>>,
    target: Vec<Option<&'a str>>,
}

impl JournalWriter for PgWriter {
    fn set_old_tracking(&mut self, tracking: OldTracking) {
        self.tracking = tracking;
    }

    fn used_bytes(&self) -> Result<u64, JournalError> {
        Ok(self.bytes.max(0) as u64)
    }

    fn last_position(&self) -> Option<(u64, u32)> {
        self.last
    }

    fn head(&self) -> JournalHead {
        self.head
    }

    fn meta(&self, key: &MetaKey) -> Result<Option<String>, JournalError> {
        meta_get(&self.pg, key)
    }

    fn set_meta(&mut self, key: &MetaKey, value: &str) -> Result<(), JournalError> {
        self.pg.write(|pg| meta_set(pg, key, value))
    }

    fn table_oids(&self) -> Result<Vec<(String, String)>, JournalError> {
        table_oids(&self.pg)
    }

    /// Whether the schema still holds the store this writer opened: one dropped and
    /// made again (or restored from elsewhere) while pgcdc runs must not be confirmed to.
    fn check_intact(&self) -> Result<(), JournalError> {
        if self
            .intact_checked
            .get()
            .is_some_and(|at| at.elapsed() < INTACT_EVERY)
        {
            return Ok(());
        }
        let now = store_id(&self.pg).map_err(|e| {
            message(
                &self.pg.at,
                format!(
                    "the state tables cannot be read any more ({e}); pgcdc stops before confirming \
                     anything more to the replication slot"
                ),
            )
        })?;
        if now != self.store_id {
            return Err(message(
                &self.pg.at,
                "the state schema was replaced while pgcdc was writing it; pgcdc stops before \
                 confirming anything more to the replication slot. Restore it, or to start over \
                 on purpose see \"journal and slot\" in the README"
                    .into(),
            ));
        }
        self.intact_checked.set(Some(Instant::now()));
        Ok(())
    }

    fn stage(&mut self, ops: &[crate::journal::StagingOp]) -> Result<(), JournalError> {
        // Not retried when cut at COMMIT (its puts would collide with themselves):
        // pgcdc stops, and the next session clears the staging anyway.
        self.pg.write(|pg| super::staging::apply(pg, ops))
    }

    fn prune(&mut self, before_unix_us: i64, limit: usize) -> Result<usize, JournalError> {
        // A range of positions from the oldest: every cursor is past it, the newest
        // entry stays (positions continue from it).
        let row = self.pg.write(|pg| {
            let row = pg.query_one(
                "WITH doomed AS (SELECT pos FROM events \
                   WHERE pos <= (SELECT COALESCE(MIN(pos), 0) FROM cursors) \
                   AND pos < (SELECT COALESCE(MAX(pos), 0) FROM events) \
                   AND commit_time_us < $1 ORDER BY pos LIMIT $2), \
                 gone AS (DELETE FROM events e USING doomed d WHERE e.pos = d.pos \
                   RETURNING octet_length(e.payload) AS n) \
                 SELECT COUNT(*), COALESCE(SUM(n), 0)::bigint FROM gone",
                &[&before_unix_us, &(limit.min(i64::MAX as usize) as i64)],
            )?;
            let (count, bytes): (i64, i64) = (pg.get(&row, 0)?, pg.get(&row, 1)?);
            let freed = bytes + count * ROW_OVERHEAD;
            if count > 0 {
                pg.execute(
                    "UPDATE stats SET journal_bytes = GREATEST(journal_bytes - $1, 0) WHERE id = 1",
                    &[&freed],
                )?;
            }
            Ok((count, freed))
        })?;
        self.bytes = (self.bytes - row.1).max(0);
        Ok(row.0 as usize)
    }

    /// A batch whose connection closed under it (the state database restarted) is
    /// written again on a new connection: whether its commit landed is unknown, so
    /// what is durable is read back first, and the changes already journaled are
    /// skipped as after any restart.
    fn append(
        &mut self,
        entries: &[(&JournalEntry, Option<&str>)],
        confirm: Option<Lsn>,
        progress: &[ResyncProgress],
    ) -> Result<AppendOutcome, JournalError> {
        self.appended.clear();
        let first = self.try_append(entries, confirm, progress);
        self.encoder.settle(first.is_ok());
        match first {
            Err(e) if self.pg.is_closed() => {
                tracing::warn!(error = %e, "state database connection lost during a journal batch; writing it again");
                self.pg.reconnect_if_closed()?;
                self.check_intact_now()?;
                let newest = entries.iter().map(|(e, _)| (e.event.lsn.0, e.seq)).max();
                let new_before = newest.filter(|n| self.last.is_none_or(|l| *n > l));
                let (last, head, bytes) = durable(&self.pg)?;
                (self.last, self.head, self.bytes) = (last, head, bytes);
                // Whether its relation versions landed is unknown as well.
                self.encoder = Encoder::new(relations(&self.pg)?);
                if new_before.is_some() && newest.is_some_and(|n| last.is_some_and(|l| l >= n)) {
                    // It landed: its resync progress too (never counted twice).
                    return Ok(AppendOutcome {
                        appended: 0,
                        skipped: entries.len(),
                    });
                }
                let again = self.try_append(entries, confirm, progress);
                self.encoder.settle(again.is_ok());
                again
            }
            other => other,
        }
    }

    fn take_appended(&mut self) -> Vec<Appended> {
        std::mem::take(&mut self.appended)
    }
}

impl PgWriter {
    fn check_intact_now(&self) -> Result<(), JournalError> {
        self.intact_checked.set(None);
        self.check_intact()
    }

    fn try_append(
        &mut self,
        entries: &[(&JournalEntry, Option<&str>)],
        confirm: Option<Lsn>,
        progress: &[ResyncProgress],
    ) -> Result<AppendOutcome, JournalError> {
        let mut outcome = AppendOutcome::default();
        let confirm = confirm.max(self.pending_confirm);
        let new = entries
            .iter()
            .filter(|(e, _)| self.last.is_none_or(|l| (e.event.lsn.0, e.seq) > l))
            .count();
        if new == 0 && progress.is_empty() {
            let nothing = AppendOutcome {
                appended: 0,
                skipped: entries.len(),
            };
            let Some(c) = confirm.filter(|c| *c > self.head.confirmed_lsn) else {
                return Ok(nothing);
            };
            if self.confirm_written.elapsed() < CONFIRM_ALONE_EVERY {
                self.pending_confirm = Some(c);
                return Ok(nothing);
            }
        }
        let tracking = &self.tracking;
        let encoder = &mut self.encoder;
        let mut last = self.last;
        let mut pos = self.head.pos;
        let mut added_bytes = 0i64;
        let mut appended = Vec::new();
        let confirmed = self.pg.write_no_retry(|pg| {
            let mut cols = Columns::default();
            for (index, &(entry, target)) in entries.iter().enumerate() {
                let position = (entry.event.lsn.0, entry.seq);
                if last.is_some_and(|l| position <= l) {
                    outcome.skipped += 1;
                    continue;
                }
                // Room for the rows at once: a wide row's are copied once.
                let mut payload = Vec::with_capacity(entry.event.packed_bytes() + 64);
                let filled = if tracking.contains_key(&*entry.table) {
                    let mut event = entry.event.clone();
                    apply_row_state(pg, tracking, &entry.table, &mut event)?;
                    encoder.encode(&event, &mut payload);
                    Some(event)
                } else {
                    encoder.encode(&entry.event, &mut payload);
                    None
                };
                pos += 1;
                appended.push(Appended {
                    index,
                    pos,
                    filled: filled.map(Box::new),
                });
                added_bytes += payload.len() as i64 + ROW_OVERHEAD;
                cols.pos.push(pos);
                cols.lsn.push(position.0 as i64);
                cols.seq.push(position.1 as i32);
                cols.time.push(entry.commit_time_unix_us);
                cols.table.push(&entry.table);
                cols.payload.push(payload);
                cols.target.push(target);
                last = Some(position);
                outcome.appended += 1;
            }
            let fresh: (Vec<i64>, Vec<String>) =
                encoder.fresh().map(|(id, rel)| (id, rel.to_stored())).unzip();
            if !fresh.0.is_empty() {
                pg.execute(
                    "INSERT INTO relations(id, body) SELECT * FROM unnest($1::int8[], $2::text[])",
                    &[&fresh.0, &fresh.1],
                )?;
            }
            if !cols.pos.is_empty() {
                pg.execute(
                    "INSERT INTO events(pos, commit_lsn, seq, commit_time_us, tbl, payload, target) \
                     SELECT * FROM unnest($1::int8[], $2::int8[], $3::int4[], $4::int8[], \
                     $5::text[], $6::bytea[], $7::text[])",
                    &[
                        &cols.pos,
                        &cols.lsn,
                        &cols.seq,
                        &cols.time,
                        &cols.table,
                        &cols.payload,
                        &cols.target,
                    ],
                )?;
                pg.execute(
                    "UPDATE stats SET journal_bytes = journal_bytes + $1 WHERE id = 1",
                    &[&added_bytes],
                )?;
            }
            for p in progress {
                resync::apply_progress(pg, p)?;
            }
            let mut confirmed = self.head.confirmed_lsn;
            if let Some(c) = confirm.filter(|c| *c > confirmed) {
                meta_set(pg, &MetaKey::ConfirmedLsn, &c.0.to_string())?;
                confirmed = c;
            }
            Ok::<_, JournalError>(confirmed)
        })?;
        self.confirm_written = Instant::now();
        self.pending_confirm = None;
        self.appended = appended;
        self.last = last;
        self.bytes += added_bytes;
        self.head = JournalHead {
            pos,
            confirmed_lsn: confirmed,
        };
        Ok(outcome)
    }
}
