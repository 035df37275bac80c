//! The journal writer thread: drains the reader's bounded command queue in
//! batches, writes each batch in one SQLite transaction, then publishes the
//! new durable head (which the reader reports to the slot and the sink
//! runners wait on).
//!
//! Before each head is published the journal file is checked to still be the
//! one that was opened: a journal removed or replaced under a running pgcdc
//! stops it before anything more is confirmed to the slot.
//!
//! Memory: the queue is bounded by commands and by bytes. Each change takes
//! permits for its estimated size from a byte budget before it is queued and
//! gives them back once its batch is written, so what waits in the queue or in
//! the batch being written stays under [`QUEUE_BYTES`] however large the rows
//! (one row larger than the whole budget waits for an empty queue and goes
//! alone). A batch also closes at [`BATCH_BYTES`].
//!
//! Batch size: a batch takes what is queued when the thread comes for it. While
//! the reader catches up on a backlog (the changes committed a second or more
//! ago) it also waits a few milliseconds for more, up to half the sink
//! runners' memory tail ([`JournalReceiver::take_batch`]): without that, each
//! batch held what arrived during the last commit's `fsync`, and a stream paid
//! a commit, an `fsync` and a wake-up of every runner per few hundred changes.
//! Live changes are written as soon as they come.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use pgcdc_schema::event::Column;
use pgcdc_schema::{Lsn, TableName};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};

use crate::journal::{
    approx_bytes, Access, JournalEntry, JournalError, JournalHead, JournalWriter, MetaKey, Recent,
    ResyncChunk, ResyncProgress, StagingOp, Store,
};

/// What the reader asks of the journal, in stream order.
#[derive(Debug)]
pub(crate) enum JournalCommand {
    /// Append one change.
    Change(Box<JournalEntry>),
    /// Everything before this is complete up to WAL position `end_lsn` (a COMMIT's
    /// end, or a keepalive's WAL end while no transaction is open).
    Confirm(Lsn),
    /// Reply once everything sent before is durable.
    Sync(oneshot::Sender<JournalHead>),
    /// Append a resync chunk's read events with its progress; reply once durable.
    Resync(Box<ResyncChunk>, oneshot::Sender<()>),
    /// Check that the journal file is still the one open (sent every second).
    Check,
    /// The slot was recreated at this position (after a lost slot): recorded in the
    /// journal's meta, as at a first start (`journal_guard::created`), with its
    /// recovery pending until `RecoveryDone`.
    RecordSlot(String, Lsn),
    /// The lost slot's recovery is done (deletes journaled, resyncs queued).
    RecoveryDone,
    /// A captured table's columns as of the transaction committing at the position:
    /// stored once that transaction is confirmed (see `changes::shapes`).
    Shape(String, Lsn, Vec<Column>),
    /// Stage a streamed transaction's message, or discard staged ones (written after
    /// the batch's changes, in order; see `journal::staging`).
    Stage(StagingOp),
}

/// Most commands written in one SQLite transaction: bounds memory and latency.
pub(crate) const MAX_BATCH: usize = 5_000;

/// Capacity of the reader → writer queue.
pub(crate) const QUEUE_CAPACITY: usize = 8_192;

/// Estimated bytes of changes queued for, or in the batch being written by, the
/// journal thread at most (besides one change larger than this, which goes alone).
pub(crate) const QUEUE_BYTES: usize = 16 << 20;

/// A batch closes once its changes reach this many (estimated) bytes.
pub(crate) const BATCH_BYTES: usize = 8 << 20;

/// While the reader catches up on a backlog, a batch waits this long at most for
/// more changes (see [`JournalReceiver::take_batch`]).
const GATHER_WAIT: std::time::Duration = std::time::Duration::from_millis(10);

/// How often the queue is looked at while a batch gathers; a look that finds
/// nothing new ends the wait.
const GATHER_STEP: std::time::Duration = std::time::Duration::from_millis(1);

/// A gathering batch is written once it holds this many (estimated) bytes: half
/// the sink runners' memory tail, so that a runner at the head reads the next
/// batch from memory while the one after it is appended.
const GATHER_BYTES: usize = crate::journal::RECENT_BYTES / 2;

/// Changes committed this long before the journal thread takes them are a
/// backlog (a start after downtime, a burst the stream is behind on): their
/// latency is the lag, not the few milliseconds a batch gathers.
const BACKLOG_AGE_US: i64 = 1_000_000;

/// A command with the budget it holds until its batch is written.
#[derive(Debug)]
struct Queued {
    cmd: JournalCommand,
    bytes: usize,
    permit: Option<OwnedSemaphorePermit>,
}

/// The journal thread has stopped (its own error says why).
#[derive(Debug)]
pub(crate) struct JournalGone;

/// The reader's end of the command queue (bounded by count and by bytes).
#[derive(Debug, Clone)]
pub(crate) struct JournalSender {
    tx: mpsc::Sender<Queued>,
    budget: Arc<Semaphore>,
}

/// The journal thread's end of the command queue.
#[derive(Debug)]
pub(crate) struct JournalReceiver {
    rx: mpsc::Receiver<Queued>,
}

impl JournalReceiver {
    /// The next batch's commands into `out`: `first`, what is queued behind it
    /// (up to [`MAX_BATCH`] commands or [`BATCH_BYTES`]), and, while the reader
    /// catches up on a backlog, what it queues in the next few milliseconds (up
    /// to [`GATHER_BYTES`]). Without that wait each batch held what arrived during
    /// the last commit's `fsync`: 300-450 changes on the stream benchmark, some
    /// runs 33, each batch a commit and a wake-up of every sink runner.
    /// `pause` waits [`GATHER_STEP`] (tests: queues what arrives meanwhile).
    fn take_batch(
        &mut self,
        first: Queued,
        now_unix_us: i64,
        out: &mut Vec<Queued>,
        mut pause: impl FnMut(),
    ) {
        let mut bytes = first.bytes;
        out.push(first);
        self.drain(out, &mut bytes);
        let deadline = std::time::Instant::now() + GATHER_WAIT;
        // Checked again after every pause: a live change or a command someone
        // waits on ends the wait.
        while backlog(out, now_unix_us) && out.len() < MAX_BATCH && bytes < GATHER_BYTES {
            let before = out.len();
            pause();
            self.drain(out, &mut bytes);
            if out.len() == before || std::time::Instant::now() >= deadline {
                return;
            }
        }
    }

    /// Moves what is queued into `out`, up to [`MAX_BATCH`] commands or
    /// [`BATCH_BYTES`] (`bytes` counts the batch's).
    fn drain(&mut self, out: &mut Vec<Queued>, bytes: &mut usize) {
        while out.len() < MAX_BATCH && *bytes < BATCH_BYTES {
            let Ok(q) = self.rx.try_recv() else {
                return;
            };
            *bytes += q.bytes;
            out.push(q);
        }
    }
}

/// Whether the batch so far is part of a backlog: only changes (and what comes
/// with them), the last committed [`BACKLOG_AGE_US`] ago or more. A command
/// that someone waits on (a sync, a resync chunk) is written at once.
fn backlog(batch: &[Queued], now_unix_us: i64) -> bool {
    let mut last_commit = None;
    for q in batch {
        match &q.cmd {
            JournalCommand::Change(e) => last_commit = e.commit_time_unix_us,
            JournalCommand::Confirm(_) | JournalCommand::Check | JournalCommand::Stage(_) => {}
            _ => return false,
        }
    }
    last_commit.is_some_and(|at| now_unix_us.saturating_sub(at) >= BACKLOG_AGE_US)
}

/// The reader → journal thread queue.
pub(crate) fn queue() -> (JournalSender, JournalReceiver) {
    let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
    let budget = Arc::new(Semaphore::new(QUEUE_BYTES));
    (JournalSender { tx, budget }, JournalReceiver { rx })
}

impl JournalSender {
    /// Queues `cmd`, first waiting until the byte budget has room for it.
    pub(crate) async fn send(&self, cmd: JournalCommand) -> Result<(), JournalGone> {
        let bytes = cmd.approx_bytes();
        let permit = if bytes == 0 {
            None
        } else {
            // Capped at the whole budget: a huge change waits for an empty queue.
            let want = u32::try_from(bytes.min(QUEUE_BYTES)).unwrap_or(u32::MAX);
            Some(
                self.budget
                    .clone()
                    .acquire_many_owned(want)
                    .await
                    .map_err(|_| JournalGone)?,
            )
        };
        self.tx
            .send(Queued { cmd, bytes, permit })
            .await
            .map_err(|_| JournalGone)
    }

    /// Queues `cmd` (one that carries no change) unless the queue is full.
    pub(crate) fn try_send(&self, cmd: JournalCommand) -> Result<(), JournalGone> {
        self.tx
            .try_send(Queued {
                cmd,
                bytes: 0,
                permit: None,
            })
            .map_err(|_| JournalGone)
    }
}

impl JournalCommand {
    /// Rough heap size of the changes this command carries (0 for the others).
    fn approx_bytes(&self) -> usize {
        match self {
            JournalCommand::Change(e) => approx_bytes(&e.event),
            JournalCommand::Resync(chunk, _) => {
                chunk.entries.iter().map(|e| approx_bytes(&e.event)).sum()
            }
            // The message's bytes and the op around them.
            JournalCommand::Stage(op) => 64 + op.body_len(),
            JournalCommand::Confirm(_)
            | JournalCommand::Sync(_)
            | JournalCommand::Check
            | JournalCommand::RecordSlot(..)
            | JournalCommand::RecoveryDone
            | JournalCommand::Shape(..) => 0,
        }
    }
}

/// How often entries past the retention are pruned, and how many at most per round.
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);
const PRUNE_LIMIT: usize = 50_000;

/// How full the journal is, against `journal.max_bytes`: the writer measures, the
/// reader pauses while it is full.
#[derive(Debug, Default)]
pub(crate) struct JournalFill {
    used: AtomicU64,
    max: Option<u64>,
}

impl JournalFill {
    /// A fill gauge with this limit (None: never full).
    pub(crate) fn new(max: Option<u64>) -> Self {
        JournalFill {
            used: AtomicU64::new(0),
            max,
        }
    }

    /// Whether the journal holds `max_bytes` or more.
    pub(crate) fn is_full(&self) -> bool {
        self.max
            .is_some_and(|max| self.used.load(Ordering::Relaxed) >= max)
    }

    fn measure(&self, writer: &dyn JournalWriter) -> Result<(), JournalError> {
        if self.max.is_some() {
            self.used.store(writer.used_bytes()?, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Stores the shapes whose transactions are now confirmed. After the append, not in
/// it: a crash in between makes the reader see the change again (a second schema
/// event), never miss it.
fn store_confirmed_shapes(
    writer: &mut dyn JournalWriter,
    shapes: &mut Vec<(String, Lsn, Vec<Column>)>,
) -> Result<(), JournalError> {
    let confirmed = writer.head().confirmed_lsn;
    let mut result = Ok(());
    shapes.retain(|(table, at, columns)| {
        if *at >= confirmed || result.is_err() {
            return true;
        }
        let json = serde_json::to_string(columns).unwrap_or_default();
        result = writer.set_meta(&MetaKey::TableShape(table.clone()), &json);
        false
    });
    result
}

/// The shapes stored for `tables` (captured tables, `schema.table`).
pub(crate) fn durable_shapes<'a>(
    store: &Store,
    tables: impl Iterator<Item = &'a TableName>,
) -> Result<HashMap<String, Vec<Column>>, JournalError> {
    let session = store.open(Access::Create)?;
    let mut out = HashMap::new();
    for t in tables {
        let name = t.to_string();
        if out.contains_key(&name) {
            continue;
        }
        let stored = session.meta(&MetaKey::TableShape(name.clone()))?;
        // Unreadable: treated as never seen (the next Relation message stores it anew).
        if let Some(cols) = stored.and_then(|s| serde_json::from_str(&s).ok()) {
            out.insert(name, cols);
        }
    }
    Ok(out)
}

/// Runs the writer until the command queue closes. Blocking: run on its own thread.
pub(crate) fn run(
    mut writer: Box<dyn JournalWriter>,
    mut rx: JournalReceiver,
    head_tx: watch::Sender<JournalHead>,
    retention: std::time::Duration,
    fill: Arc<JournalFill>,
    recent: Arc<Recent>,
) -> Result<(), JournalError> {
    recent.clear();
    fill.measure(&*writer)?;
    let mut last_prune = std::time::Instant::now();
    let mut entries: Vec<(JournalEntry, Option<String>)> = Vec::with_capacity(MAX_BATCH);
    let mut syncs: Vec<oneshot::Sender<JournalHead>> = Vec::new();
    let mut chunks_done: Vec<oneshot::Sender<()>> = Vec::new();
    let mut progress: Vec<ResyncProgress> = Vec::new();
    let mut slots: Vec<(String, Lsn)> = Vec::new();
    let mut recovered = false;
    // New table shapes whose transactions are not confirmed yet (one per table).
    let mut shapes: Vec<(String, Lsn, Vec<Column>)> = Vec::new();
    // Staging ops of the batch, in order: written after its changes.
    let mut staging: Vec<StagingOp> = Vec::new();
    // The batch's budget, given back once it is written.
    let mut held: Vec<OwnedSemaphorePermit> = Vec::new();
    let mut batch: Vec<Queued> = Vec::new();
    while let Some(first) = rx.rx.blocking_recv() {
        let mut confirm: Option<Lsn> = None;
        let mut take =
            |cmd: JournalCommand, entries: &mut Vec<(JournalEntry, Option<String>)>| match cmd {
                JournalCommand::Change(e) => entries.push((*e, None)),
                JournalCommand::Confirm(lsn) => confirm = confirm.max(Some(lsn)),
                JournalCommand::Sync(reply) => syncs.push(reply),
                JournalCommand::Resync(chunk, reply) => {
                    let ResyncChunk {
                        entries: rows,
                        target,
                        progress: p,
                    } = *chunk;
                    entries.extend(rows.into_iter().map(|e| (e, target.clone())));
                    progress.push(p);
                    chunks_done.push(reply);
                }
                JournalCommand::Check => {}
                JournalCommand::RecordSlot(slot, at) => slots.push((slot, at)),
                JournalCommand::RecoveryDone => recovered = true,
                JournalCommand::Shape(table, at, columns) => {
                    shapes.retain(|(t, _, _)| *t != table);
                    shapes.push((table, at, columns));
                }
                JournalCommand::Stage(op) => staging.push(op),
            };
        let now = chrono::Utc::now().timestamp_micros();
        rx.take_batch(first, now, &mut batch, || std::thread::sleep(GATHER_STEP));
        for Queued { cmd, permit, .. } in batch.drain(..) {
            take(cmd, &mut entries);
            held.extend(permit);
        }
        let refs: Vec<(&JournalEntry, Option<&str>)> =
            entries.iter().map(|(e, t)| (e, t.as_deref())).collect();
        let outcome = if refs.is_empty() && progress.is_empty() && confirm.is_none() {
            // A sync or a check alone: nothing to write.
            Default::default()
        } else {
            let outcome = writer.append(&refs, confirm, &progress)?;
            if !refs.is_empty() {
                crate::metrics::journal_written(refs.len().saturating_sub(outcome.skipped));
            }
            outcome
        };
        let appended = writer.take_appended();
        progress.clear();
        // After the append: a streamed transaction's staged rows are discarded once its
        // changes are journaled (here, or in an earlier batch), never before.
        if !staging.is_empty() {
            writer.stage(&staging)?;
            staging.clear();
        }
        for (slot, at) in slots.drain(..) {
            super::journal_guard::created(&mut *writer, &slot, at)?;
            super::journal_guard::set_recovery(&mut *writer, Some(at))?;
        }
        if std::mem::take(&mut recovered) {
            super::journal_guard::set_recovery(&mut *writer, None)?;
        }
        store_confirmed_shapes(&mut *writer, &mut shapes)?;
        if outcome.skipped > 0 {
            tracing::debug!(
                skipped = outcome.skipped,
                "skipped changes already journaled (replay after restart)"
            );
        }
        // Written to a file the next start will not read? Then stop before the reader can
        // report it to the slot (the replies below are never sent; the reader sees the
        // writer gone and pgcdc exits with this error).
        writer.check_intact()?;
        // Durable: kept for the sink runners before they hear of the new head.
        recent.push(&mut entries, appended);
        entries.clear();
        held.clear();
        let head = writer.head();
        head_tx.send_replace(head);
        for reply in syncs.drain(..) {
            let _ = reply.send(head);
        }
        for reply in chunks_done.drain(..) {
            let _ = reply.send(());
        }
        fill.measure(&*writer)?;
        // Nothing queued: what the batch freed goes back (a wide row's values).
        if rx.rx.is_empty() {
            pgcdc_alloc::idle();
        }
        // A full journal prunes at every wake-up (the paused reader syncs every second).
        if last_prune.elapsed() >= PRUNE_EVERY || fill.is_full() {
            last_prune = std::time::Instant::now();
            let cutoff = chrono::Utc::now().timestamp_micros() - retention.as_micros() as i64;
            let removed = writer.prune(cutoff, PRUNE_LIMIT)?;
            if removed > 0 {
                tracing::info!(
                    removed,
                    "pruned journal entries past retention that every sink has passed"
                );
                fill.measure(&*writer)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn change(text_bytes: usize) -> JournalCommand {
        JournalCommand::Change(Box::new(crate::journal::insert_entry(1, text_bytes)))
    }

    /// A change committed at `commit_us`, queued without a budget (as a test's).
    fn queued(commit_us: i64, text_bytes: usize) -> Queued {
        let mut e = crate::journal::insert_entry(1, text_bytes);
        e.commit_time_unix_us = Some(commit_us);
        let cmd = JournalCommand::Change(Box::new(e));
        Queued {
            bytes: cmd.approx_bytes(),
            cmd,
            permit: None,
        }
    }

    /// The batch `take_batch` makes of what is queued, with `arrivals[i]` queued
    /// during its i-th pause; and how many pauses it made.
    fn take(now: i64, queued: Vec<Queued>, mut arrivals: Vec<Vec<Queued>>) -> (Vec<Queued>, usize) {
        let (tx, mut rx) = queue();
        for q in queued {
            assert!(tx.tx.try_send(q).is_ok());
        }
        let first = rx.rx.try_recv().expect("a first command");
        let mut out = Vec::new();
        let mut pauses = 0;
        arrivals.reverse();
        rx.take_batch(first, now, &mut out, || {
            pauses += 1;
            for q in arrivals.pop().unwrap_or_default() {
                assert!(tx.tx.try_send(q).is_ok());
            }
        });
        (out, pauses)
    }

    #[test]
    fn a_backlog_batch_waits_for_what_the_reader_queues_next() {
        let now = 1_800_000_000_000_000;
        let old = now - BACKLOG_AGE_US;
        let arrivals = || {
            (0..3)
                .map(|_| (0..5).map(|_| queued(old, 10)).collect())
                .collect()
        };
        // Changes of a backlog: what arrives during the pauses joins the batch,
        // until a pause brings nothing.
        let (batch, pauses) = take(now, vec![queued(old, 10), queued(old, 10)], arrivals());
        assert_eq!((batch.len(), pauses), (2 + 15, 4));
        // Live changes are written at once: what is queued, no pause.
        let fresh = now - BACKLOG_AGE_US / 2;
        let (batch, pauses) = take(now, vec![queued(old, 10), queued(fresh, 10)], arrivals());
        assert_eq!((batch.len(), pauses), (2, 0));
        // A sync someone waits on is not held back, queued first or arriving later;
        // nor is a live change that arrives.
        let sync = || Queued {
            cmd: JournalCommand::Sync(oneshot::channel().0),
            bytes: 0,
            permit: None,
        };
        let (batch, pauses) = take(now, vec![queued(old, 10), sync()], arrivals());
        assert_eq!((batch.len(), pauses), (2, 0));
        for last in [sync(), queued(fresh, 10)] {
            let arrivals = vec![vec![queued(old, 10)], vec![last], vec![queued(old, 10)]];
            let (batch, pauses) = take(now, vec![queued(old, 10)], arrivals);
            assert_eq!((batch.len(), pauses), (3, 2));
        }
        // The wait ends once the batch holds GATHER_BYTES.
        let big = GATHER_BYTES / 4;
        let arrivals = (0..10).map(|_| vec![queued(old, big)]).collect();
        let (batch, pauses) = take(now, vec![queued(old, big)], arrivals);
        assert_eq!((batch.len(), pauses), (4, 3));
    }

    #[tokio::test]
    async fn queued_bytes_hold_the_reader_back_until_written() {
        let (tx, mut rx) = queue();
        // Larger than the whole budget: it goes, alone.
        assert!(tx.send(change(QUEUE_BYTES + 1)).await.is_ok());
        // The next change waits for room; commands without rows do not.
        let next = tokio::time::timeout(Duration::from_millis(200), tx.send(change(10))).await;
        assert!(next.is_err(), "a change was queued past the byte budget");
        let (reply, _) = oneshot::channel();
        let sync =
            tokio::time::timeout(Duration::from_secs(5), tx.send(JournalCommand::Sync(reply)));
        assert!(matches!(sync.await, Ok(Ok(()))));
        // The writer is done with the big one: its budget comes back.
        let first = rx.rx.recv().await;
        assert!(first.is_some_and(|q| q.bytes > QUEUE_BYTES));
        let next = tokio::time::timeout(Duration::from_secs(5), tx.send(change(10))).await;
        assert!(matches!(next, Ok(Ok(()))));
    }
}
