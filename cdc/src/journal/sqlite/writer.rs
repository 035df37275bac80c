//! The single writer of the SQLite journal (owned by the journal thread).

use std::path::{Path, PathBuf};

use pgcdc_schema::Lsn;
use rusqlite::{params, Connection};

use super::blocks::{self, BlockWriter, Stored};
use super::wal::{self, Checkpointer};
use super::{
    begin_immediate, meta_get, meta_set, open_conn, read_head, relations, resync, row_state,
    store_error, Durability, JOURNAL_FILE,
};
use crate::journal::record::Encoder;
use crate::journal::{
    Access, AppendOutcome, Appended, JournalEntry, JournalError, JournalHead, JournalWriter,
    MetaKey, OldTracking, ResyncProgress,
};

/// The identity of a file on disk (device, inode): a file removed or replaced under
/// an open connection has another one, or none.
fn file_identity(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok((m.dev(), m.ino()))
}

pub(super) struct SqliteWriter {
    pub(super) conn: Connection,
    path: PathBuf,
    /// (commit LSN, seq) of the last journaled change.
    last: Option<(u64, u32)>,
    head: JournalHead,
    tracking: OldTracking,
    /// (device, inode) of the file at open: checked before each durable head is published.
    file: (u64, u64),
    /// The staging of streamed transactions (its own file), opened on first use.
    staging: Option<(Connection, PathBuf)>,
    /// Makes the records (knows the relation versions stored).
    encoder: Encoder,
    /// Where the last append stored its entries (see `take_appended`).
    appended: Vec<Appended>,
    /// Copies the WAL into the file off this writer's path during bulk appends
    /// (see `wal.rs`).
    pub(super) checkpointer: Checkpointer,
    /// The connection's `wal_autocheckpoint` is raised for bulk appends.
    bulk: bool,
}

impl SqliteWriter {
    /// Opens (or creates) the journal in `dir`.
    pub(super) fn open(dir: &Path) -> Result<Self, JournalError> {
        let (conn, path) = open_conn(dir, Access::Create, Durability::Fsync)?;
        let err = |source| store_error(&path, source);
        let last = blocks::last(&conn)
            .map_err(err)?
            .map(|(_, lsn, seq)| (lsn, seq));
        let head = read_head(&conn).map_err(err)?;
        let encoder = Encoder::new(relations(&conn, &path)?);
        let file = file_identity(&path).map_err(|e| JournalError::StateDir {
            path: dir.to_path_buf(),
            message: format!("cannot stat {JOURNAL_FILE} after opening it ({e})"),
        })?;
        let checkpointer = Checkpointer::start(dir)?;
        Ok(SqliteWriter {
            checkpointer,
            bulk: false,
            conn,
            path,
            last,
            head,
            tracking: OldTracking::new(),
            file,
            staging: None,
            encoder,
            appended: Vec::new(),
        })
    }

    fn sqlite(&self, source: rusqlite::Error) -> JournalError {
        store_error(&self.path, source)
    }
}

impl JournalWriter for SqliteWriter {
    fn set_old_tracking(&mut self, tracking: OldTracking) {
        self.tracking = tracking;
    }

    fn used_bytes(&self) -> Result<u64, JournalError> {
        super::used_bytes(&self.conn).map_err(|source| self.sqlite(source))
    }

    fn last_position(&self) -> Option<(u64, u32)> {
        self.last
    }

    fn head(&self) -> JournalHead {
        self.head
    }

    fn meta(&self, key: &MetaKey) -> Result<Option<String>, JournalError> {
        meta_get(&self.conn, key).map_err(|source| self.sqlite(source))
    }

    fn set_meta(&mut self, key: &MetaKey, value: &str) -> Result<(), JournalError> {
        meta_set(&self.conn, key, value).map_err(|source| self.sqlite(source))
    }

    fn table_oids(&self) -> Result<Vec<(String, String)>, JournalError> {
        super::table_oids(&self.conn).map_err(|source| self.sqlite(source))
    }

    /// Whether the file at the journal's path is still the one this writer opened. A
    /// journal deleted (`rm journal.db*`, the state dir moved) or replaced while pgcdc
    /// runs keeps taking writes through the open descriptor, but the next start would
    /// read another file: nothing more may be confirmed to the slot.
    fn check_intact(&self) -> Result<(), JournalError> {
        let replaced = |what: String| {
            JournalError::Replaced {
            path: self.path.clone(),
            message: format!(
                "{what} while pgcdc was writing it; pgcdc stops before confirming anything more to the \
                 replication slot. Put the journal back (restore the state dir) or, to start over on \
                 purpose, see \"journal and slot\" in the README"
            ),
        }
        };
        match file_identity(&self.path) {
            Ok(id) if id == self.file => Ok(()),
            Ok(_) => Err(replaced("the file was replaced by another one".into())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(replaced(
                "the file was removed (or its directory moved)".into(),
            )),
            Err(e) => Err(replaced(format!("the file cannot be checked ({e})"))),
        }
    }

    fn stage(&mut self, ops: &[crate::journal::StagingOp]) -> Result<(), JournalError> {
        let (conn, path) = match &mut self.staging {
            Some(open) => open,
            None => {
                let dir = self.path.parent().unwrap_or(Path::new("."));
                self.staging.insert(super::staging::open(dir)?)
            }
        };
        let err = |source| store_error(path, source);
        let tx = begin_immediate(conn, path)?;
        super::staging::apply(&tx, ops).map_err(err)?;
        tx.commit().map_err(err)
    }

    /// Removes, oldest first and up to `limit`, the events every cursor has passed
    /// that committed before the cutoff, never the newest: a block all of whose
    /// events go is deleted, one that keeps some is written again without them.
    fn prune(&mut self, before_unix_us: i64, limit: usize) -> Result<usize, JournalError> {
        let path = self.path.clone();
        let err = move |source| store_error(&path, source);
        let tx = begin_immediate(&mut self.conn, &self.path)?;
        let Some((head, _, _)) = blocks::last(&tx).map_err(&err)? else {
            return Ok(0);
        };
        let floor: i64 = tx
            .query_row("SELECT COALESCE(MIN(pos), 0) FROM cursors", [], |r| {
                r.get(0)
            })
            .map_err(&err)?;
        let mut removed = 0usize;
        // Candidates are read a page at a time (the loop changes the table).
        let mut after = 0i64;
        while removed < limit {
            let page: Vec<(i64, i64, i64, Option<i64>)> = tx
                .prepare_cached(
                    "SELECT last_pos, first_pos, count, max_time_us FROM event_blocks \
                     WHERE last_pos > ?1 AND first_pos <= ?2 AND first_pos < ?3 \
                     AND min_time_us < ?4 ORDER BY last_pos LIMIT 64",
                )
                .and_then(|mut stmt| {
                    stmt.query_map(params![after, floor, head, before_unix_us], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                    })?
                    .collect()
                })
                .map_err(&err)?;
            let Some(&(last, ..)) = page.last() else {
                break;
            };
            after = last;
            for (last_pos, first_pos, count, max_time) in page {
                let left = limit - removed;
                if left == 0 {
                    break;
                }
                let whole = last_pos <= floor
                    && last_pos < head
                    && max_time.is_some_and(|t| t < before_unix_us)
                    && count as usize <= left;
                if whole {
                    tx.execute("DELETE FROM event_blocks WHERE last_pos = ?1", [last_pos])
                        .map_err(&err)?;
                    removed += count as usize;
                    continue;
                }
                let body: Vec<u8> = tx
                    .query_row(
                        "SELECT body FROM event_blocks WHERE last_pos = ?1",
                        [last_pos],
                        |r| r.get(0),
                    )
                    .map_err(&err)?;
                let mut kept = BlockWriter::default();
                let mut gone = 0usize;
                for e in blocks::events(first_pos, &body, &mut Vec::new()) {
                    let e = e.map_err(|(pos, m)| super::damaged_block(pos, m))?;
                    let passed = e.pos <= floor
                        && e.pos < head
                        && e.commit_time_us.is_some_and(|t| t < before_unix_us);
                    if passed && gone < left {
                        gone += 1;
                    } else {
                        kept.push(&e);
                    }
                }
                if gone > 0 {
                    // What stays ends at or before `last_pos`: never ahead of the paging.
                    tx.execute("DELETE FROM event_blocks WHERE last_pos = ?1", [last_pos])
                        .map_err(&err)?;
                    kept.flush(&tx).map_err(&err)?;
                    removed += gone;
                }
            }
        }
        tx.commit().map_err(&err)?;
        Ok(removed)
    }

    fn append(
        &mut self,
        entries: &[(&JournalEntry, Option<&str>)],
        confirm: Option<Lsn>,
        progress: &[ResyncProgress],
    ) -> Result<AppendOutcome, JournalError> {
        self.appended.clear();
        let result = self.append_tx(entries, confirm, progress);
        // The batch's new relation versions are stored only if it committed.
        self.encoder.settle(result.is_ok());
        if result.is_err() {
            self.appended.clear();
        }
        result
    }

    fn take_appended(&mut self) -> Vec<Appended> {
        std::mem::take(&mut self.appended)
    }
}

impl SqliteWriter {
    fn append_tx(
        &mut self,
        entries: &[(&JournalEntry, Option<&str>)],
        confirm: Option<Lsn>,
        progress: &[ResyncProgress],
    ) -> Result<AppendOutcome, JournalError> {
        let mut outcome = AppendOutcome::default();
        let path = self.path.clone();
        let err = move |source| store_error(&path, source);
        // Snapshot and resync chunks (they carry progress) leave the WAL to the
        // checkpoint thread; streamed changes to SQLite (see `wal.rs`).
        let bulk = !progress.is_empty();
        if bulk != self.bulk {
            let pages = if bulk {
                wal::BACKSTOP_PAGES
            } else {
                wal::DEFAULT_PAGES
            };
            self.conn
                .pragma_update(None, "wal_autocheckpoint", pages)
                .map_err(&err)?;
            self.bulk = bulk;
        }
        let tx = begin_immediate(&mut self.conn, &self.path)?;
        let mut last = self.last;
        let mut pos = self.head.pos;
        let mut block = BlockWriter::default();
        for (index, &(entry, target)) in entries.iter().enumerate() {
            let position = (entry.event.lsn.0, entry.seq);
            if last.is_some_and(|l| position <= l) {
                outcome.skipped += 1;
                continue;
            }
            let filled = if self.tracking.contains_key(&*entry.table) {
                let mut event = entry.event.clone();
                row_state::apply(&tx, &self.tracking, &entry.table, &mut event).map_err(&err)?;
                Some(event)
            } else {
                None
            };
            let event = filled.as_ref().unwrap_or(&entry.event);
            pos += 1;
            let stored = Stored {
                pos,
                commit_lsn: position.0,
                seq: position.1,
                commit_time_us: entry.commit_time_unix_us,
                table: &entry.table,
                target,
                record: &[],
            };
            block.push_encoded(&stored, event.packed_bytes() + 64, |body| {
                self.encoder.encode(event, body)
            });
            if block.full() {
                block.flush(&tx).map_err(&err)?;
            }
            last = Some(position);
            outcome.appended += 1;
            self.appended.push(Appended {
                index,
                pos,
                filled: filled.map(Box::new),
            });
        }
        block.flush(&tx).map_err(&err)?;
        if let Some((lsn, seq)) = last.filter(|_| outcome.appended > 0) {
            blocks::mark_head(&tx, pos, lsn, seq).map_err(&err)?;
        }
        for (id, rel) in self.encoder.fresh() {
            tx.execute(
                "INSERT INTO relations(id, body) VALUES (?1, ?2)",
                params![id, rel.to_stored()],
            )
            .map_err(&err)?;
        }
        for p in progress {
            resync::apply_progress(&tx, p).map_err(&err)?;
        }
        let mut confirmed = self.head.confirmed_lsn;
        if let Some(c) = confirm.filter(|c| *c > confirmed) {
            meta_set(&tx, &MetaKey::ConfirmedLsn, &c.0.to_string()).map_err(&err)?;
            confirmed = c;
        }
        tx.commit().map_err(&err)?;
        if bulk {
            self.checkpointer.committed(block.flushed());
        }
        self.last = last;
        self.head = JournalHead {
            pos,
            confirmed_lsn: confirmed,
        };
        Ok(outcome)
    }
}
