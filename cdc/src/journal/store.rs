//! The state store's API: what every implementation provides.
//!
//! Synchronous on purpose: the journal thread and the blocking tasks of the sink
//! runners, the audit writer, the resync driver and the admin API call it, each
//! on a thread of its own. An implementation over a network client runs that
//! client on a runtime or thread of its own.
//!
//! Trait objects, not generics: the handles are held by many tasks and moved
//! into `spawn_blocking` closures; `Box<dyn StateStore>` keeps those call sites
//! free of type parameters, and a virtual call costs nothing next to a
//! transaction.

use std::collections::HashSet;

use pgcdc_schema::Lsn;
use pgcdc_sinks::{Attempt, BatchAttempt};

use super::{
    Access, AppendOutcome, Appended, CursorInfo, CursorState, DlqEntry, DlqError, DlqRecord,
    DlqSelector, DlqState, DroppedCursor, JournalEntry, JournalError, JournalHead, MetaKey,
    OldTracking, OrphanedCursor, ResetError, ResetTarget, ResyncInfo, ResyncKind, ResyncProgress,
    ResyncRequestError, StagedMessage, StagingOp, StoredEvent,
};

/// An implementation of the store: opens sessions and the writer.
pub(crate) trait Backend: Send + Sync {
    /// Opens a session (one connection).
    fn open(&self, access: Access) -> Result<Box<dyn StateStore>, JournalError>;
    /// Opens the single writer of the journal.
    fn writer(&self) -> Result<Box<dyn JournalWriter>, JournalError>;
    /// Whether the store has been created.
    fn exists(&self) -> bool;
    /// Where the store is, for messages (never a secret).
    fn describe(&self) -> String;
    /// Fences every later write with `epoch` (see [`super::Store::set_fence`]).
    fn set_fence(&self, epoch: Option<i64>) -> Result<(), JournalError> {
        match epoch {
            None => Ok(()),
            Some(_) => Err(JournalError::Store {
                at: self.describe(),
                source: "this state store has no lease to fence writes with; set [state] url \
                         to keep the state in Postgres"
                    .into(),
            }),
        }
    }
}

/// The single writer of the journal (owned by the journal thread). It alone appends
/// events and keeps the row state; everything it writes in one `append` commits
/// together.
pub trait JournalWriter: Send {
    /// Remember these columns per table to fill `.old` (see `row_state`).
    fn set_old_tracking(&mut self, tracking: OldTracking);

    /// Appends `entries` (each with its target sink, None: every sink), records resync
    /// `progress` and moves the confirmed LSN forward to `confirm` (never back), all in
    /// one transaction. Entries at or before the last journaled position are skipped.
    /// Durable when this returns.
    fn append(
        &mut self,
        entries: &[(&JournalEntry, Option<&str>)],
        confirm: Option<Lsn>,
        progress: &[ResyncProgress],
    ) -> Result<AppendOutcome, JournalError>;

    /// Where the last successful `append` stored its entries, in order (taken:
    /// a second call gives nothing). What the journal thread keeps in memory for
    /// the sink runners ([`super::Recent`]); a writer that does not say keeps
    /// them reading the store.
    fn take_appended(&mut self) -> Vec<Appended> {
        Vec::new()
    }

    /// Applies `ops` to the staging of streamed transactions, in order, in one
    /// transaction (see `journal::staging`). Durable when this returns.
    fn stage(&mut self, ops: &[StagingOp]) -> Result<(), JournalError>;

    /// Removes up to `limit` entries that every sink's cursor has passed and that
    /// committed before `before_unix_us`. Returns how many. The newest entry always
    /// stays: positions continue from it.
    fn prune(&mut self, before_unix_us: i64, limit: usize) -> Result<usize, JournalError>;

    /// What is durable now.
    fn head(&self) -> JournalHead;

    /// (commit LSN, seq) of the last journaled change: later entries must sort after it.
    fn last_position(&self) -> Option<(u64, u32)>;

    /// Bytes the journal's data occupies: what `journal.max_bytes` limits.
    fn used_bytes(&self) -> Result<u64, JournalError>;

    /// Whether the store is still the one this writer opened: one removed or replaced
    /// while pgcdc runs must not be confirmed to the slot.
    fn check_intact(&self) -> Result<(), JournalError>;

    /// Reads a metadata value.
    fn meta(&self, key: &MetaKey) -> Result<Option<String>, JournalError>;

    /// Writes a metadata value (durably, on its own).
    fn set_meta(&mut self, key: &MetaKey, value: &str) -> Result<(), JournalError>;

    /// Every [`MetaKey::TableOid`] entry: (configured table name, value).
    fn table_oids(&self) -> Result<Vec<(String, String)>, JournalError>;
}

/// One session on the store: reads events, keeps cursors, DLQ, audit log, resync
/// queue and metadata. Many may be open at once (one per sink runner, the admin API,
/// a CLI command).
pub trait StateStore: Send {
    // --- events ---

    /// The durable head.
    fn head(&self) -> Result<JournalHead, JournalError>;

    /// Up to `limit` events after `pos`, in journal order, stopping before the one
    /// that would take their stored records past `max_bytes`; the first event
    /// always comes, however large, so one huge row passes alone.
    fn read_batch(
        &self,
        pos: i64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredEvent>, JournalError>;

    /// [`StateStore::read_batch`], appended to `out` (empty: a buffer kept from
    /// the batch before, so that a stream's batches do not each take fresh memory
    /// for it).
    fn read_batch_into(
        &self,
        pos: i64,
        limit: usize,
        max_bytes: usize,
        out: &mut Vec<StoredEvent>,
    ) -> Result<(), JournalError> {
        out.extend(self.read_batch(pos, limit, max_bytes)?);
        Ok(())
    }

    /// Up to `limit` events after `pos`, in journal order.
    fn read_after(&self, pos: i64, limit: usize) -> Result<Vec<StoredEvent>, JournalError> {
        self.read_batch(pos, limit, usize::MAX)
    }

    /// Up to `limit` staged messages of transaction `xid` after `after_seq`, in `seq`
    /// order, stopping before the one that would take their bytes past `max_bytes`;
    /// the first always comes (see `journal::staging`).
    fn staged(
        &self,
        xid: u32,
        after_seq: i64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<StagedMessage>, JournalError>;

    /// The id of the event at `pos`, if the journal (still) holds it.
    fn event_id_at(&self, pos: i64) -> Result<Option<String>, JournalError>;

    /// Bytes the journal's data occupies (what `journal.max_bytes` limits).
    fn used_bytes(&self) -> Result<u64, JournalError>;

    /// Size of the store on disk, in bytes (0 when it is not on this machine).
    fn size_bytes(&self) -> u64;

    // --- metadata ---

    /// Reads a metadata value.
    fn meta(&self, key: &MetaKey) -> Result<Option<String>, JournalError>;

    /// Fails with [`JournalError::Fenced`] unless this process still holds the lease
    /// its writes are fenced with (always Ok without a fence).
    fn check_fence(&self) -> Result<(), JournalError> {
        Ok(())
    }

    /// Removes a metadata value (an operator's or a test's repair).
    fn delete_meta(&mut self, key: &MetaKey) -> Result<(), JournalError>;

    /// Every [`MetaKey::TableOid`] entry: (configured table name, value).
    fn table_oids(&self) -> Result<Vec<(String, String)>, JournalError>;

    // --- known keys ---

    /// Every key of `table` (configured name, as in [`JournalEntry::table`]) the store
    /// knows to be live, each once: the keys whose latest journaled event is neither a
    /// delete nor a truncate, and the keys in the row state. After a lost slot they are
    /// checked against the table (`ingest::slot_loss`): a key that is gone was deleted
    /// while no slot held the changes. Keys spelled with their members in another order
    /// count once.
    fn known_keys(&self, table: &str) -> Result<Vec<pgcdc_schema::event::Row>, JournalError>;

    // --- cursors ---

    /// The sink's cursor, created at 0 (the start of the journal) for a new sink.
    fn cursor(&mut self, sink: &str) -> Result<i64, JournalError>;

    /// The sink's cursor and its generation (created at the journal start for a new sink).
    fn cursor_state(&mut self, sink: &str) -> Result<CursorState, JournalError>;

    /// Every sink's cursor with its lag.
    fn cursors(&self) -> Result<Vec<CursorInfo>, JournalError>;

    /// Cursors of sinks not in `configured`, and how much journal each holds back.
    fn orphaned_cursors(&self, configured: &[String]) -> Result<Vec<OrphanedCursor>, JournalError>;

    /// Removes a sink's cursor and its DLQ items, so the journal no longer keeps
    /// entries for it. None when the sink has no cursor. The caller refuses this for
    /// a configured sink (its runner would recreate the cursor at the journal start).
    fn drop_cursor(&mut self, sink: &str) -> Result<Option<DroppedCursor>, JournalError>;

    /// Moves the sink's cursor (back or forward) and bumps its generation. Returns the
    /// new cursor: the sink next delivers the entries after it.
    fn reset_cursor(&mut self, sink: &str, target: ResetTarget) -> Result<CursorState, ResetError>;

    /// In one transaction: adds `records` to the DLQ (marked for replay when their row is
    /// being replayed) and moves the sink's cursor forward to `cursor`, never back, and
    /// only while no operator reset bumped its generation past `generation`. The one
    /// way a cursor advances.
    fn commit_batch(
        &mut self,
        sink: &str,
        cursor: i64,
        generation: i64,
        records: &[DlqRecord],
        replaying: &HashSet<String>,
    ) -> Result<(), JournalError>;

    // --- dead-letter queue ---

    /// Rows of the sink with items in the DLQ, and those of them being replayed.
    fn dlq_rows(&self, sink: &str) -> Result<(HashSet<String>, HashSet<String>), JournalError>;

    /// Every DLQ item of the sink, in order.
    fn dlq_list(&self, sink: &str) -> Result<Vec<DlqEntry>, JournalError>;

    /// Number of DLQ items of the sink.
    fn dlq_count(&self, sink: &str) -> Result<i64, JournalError>;

    /// The next items to replay, in order.
    fn dlq_replay_batch(&self, sink: &str, limit: usize) -> Result<Vec<DlqEntry>, JournalError>;

    /// After a replay: removes the delivered items; failed ones stay with their new state
    /// and error, and every later item of their rows stops replaying (order holds).
    fn dlq_settle(
        &mut self,
        sink: &str,
        delivered: &[i64],
        failed: &[(i64, String, DlqState, Option<String>)],
    ) -> Result<(), JournalError>;

    /// Marks items for replay: all of them, or one item and the items parked behind it.
    /// Returns how many were marked.
    fn dlq_request_replay(&mut self, sink: &str, sel: &DlqSelector) -> Result<usize, DlqError>;

    /// Removes items for good (an operator's decision). Returns how many.
    fn dlq_drop(&mut self, sink: &str, sel: &DlqSelector) -> Result<usize, DlqError>;

    // --- delivery audit log ---

    /// Stores attempts (one transaction).
    fn audit_insert(&mut self, attempts: &[Attempt]) -> Result<(), JournalError>;

    /// Stores batches settled as a whole, one row each (one transaction). The
    /// queries below answer for each of their ids as for a single attempt.
    fn audit_insert_batches(&mut self, batches: &[BatchAttempt]) -> Result<(), JournalError>;

    /// Every attempt for one event (its delivery ids `ID` and `ID.N`), oldest first.
    fn audit_by_event(&self, event_id: &str) -> Result<Vec<Attempt>, JournalError>;

    /// Attempts of one sink since an RFC 3339 time (UTC, `Z`), oldest first, at most `limit`.
    fn audit_by_sink(
        &self,
        sink: &str,
        since: &str,
        limit: usize,
    ) -> Result<Vec<Attempt>, JournalError>;

    /// Removes attempts (and batches) older than `before` (RFC 3339). Returns how many rows.
    fn audit_prune(&mut self, before: &str) -> Result<usize, JournalError>;

    // --- resync queue and progress ---

    /// Queues a resync of `table` (for `sink`, or every sink). Refused while one of the
    /// same table and target is queued or running.
    fn request_resync(
        &mut self,
        kind: ResyncKind,
        table: &str,
        sink: Option<&str>,
        where_sql: Option<&str>,
    ) -> Result<ResyncInfo, ResyncRequestError>;

    /// Cancels the queued or running resyncs of `table` (of `sink` only, when given).
    /// Returns the ids cancelled.
    fn cancel_resync(&mut self, table: &str, sink: Option<&str>) -> Result<Vec<i64>, JournalError>;

    /// Marks a resync failed, with the reason.
    fn fail_resync(&mut self, id: i64, error: &str) -> Result<(), JournalError>;

    /// One resync.
    fn resync(&self, id: i64) -> Result<Option<ResyncInfo>, JournalError>;

    /// The oldest queued or running resync: the next one to work on.
    fn next_resync(&self) -> Result<Option<ResyncInfo>, JournalError>;

    /// Active resyncs and the `recent` latest finished ones, newest first.
    fn resyncs(&self, recent: usize) -> Result<Vec<ResyncInfo>, JournalError>;
}
