//! The journal writer thread: drains the reader's bounded command queue in
//! batches, writes each batch in one SQLite transaction, then publishes the
//! new durable head (which the reader reports to the slot and the sink
//! runners wait on).
//!
//! Before each head is published the journal file is checked to still be the
//! one that was opened: a journal removed or replaced under a running pgcdc
//! stops it before anything more is confirmed to the slot.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use pgcdc_schema::Lsn;
use tokio::sync::{mpsc, oneshot, watch};

use crate::journal::{
    JournalEntry, JournalError, JournalHead, JournalWriter, ResyncChunk, ResyncProgress,
};

/// What the reader asks of the journal, in stream order.
#[derive(Debug)]
pub enum JournalCommand {
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
}

/// Most commands written in one SQLite transaction: bounds memory and latency.
pub const MAX_BATCH: usize = 5_000;

/// Capacity of the reader → writer queue.
pub const QUEUE_CAPACITY: usize = 8_192;

/// How often entries past the retention are pruned, and how many at most per round.
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);
const PRUNE_LIMIT: usize = 50_000;

/// How full the journal is, against `journal.max_bytes`: the writer measures, the
/// reader pauses while it is full.
#[derive(Debug, Default)]
pub struct JournalFill {
    used: AtomicU64,
    max: Option<u64>,
}

impl JournalFill {
    /// A fill gauge with this limit (None: never full).
    pub fn new(max: Option<u64>) -> Self {
        JournalFill {
            used: AtomicU64::new(0),
            max,
        }
    }

    /// Whether the journal holds `max_bytes` or more.
    pub fn is_full(&self) -> bool {
        self.max
            .is_some_and(|max| self.used.load(Ordering::Relaxed) >= max)
    }

    fn measure(&self, writer: &JournalWriter) -> Result<(), JournalError> {
        if self.max.is_some() {
            self.used.store(writer.used_bytes()?, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Runs the writer until the command queue closes. Blocking: run on its own thread.
pub fn run(
    mut writer: JournalWriter,
    mut rx: mpsc::Receiver<JournalCommand>,
    head_tx: watch::Sender<JournalHead>,
    retention: std::time::Duration,
    fill: Arc<JournalFill>,
) -> Result<(), JournalError> {
    fill.measure(&writer)?;
    let mut last_prune = std::time::Instant::now();
    let mut entries: Vec<(JournalEntry, Option<String>)> = Vec::with_capacity(MAX_BATCH);
    let mut syncs: Vec<oneshot::Sender<JournalHead>> = Vec::new();
    let mut chunks_done: Vec<oneshot::Sender<()>> = Vec::new();
    let mut progress: Vec<ResyncProgress> = Vec::new();
    while let Some(first) = rx.blocking_recv() {
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
            };
        take(first, &mut entries);
        let mut taken = 1;
        while taken < MAX_BATCH {
            match rx.try_recv() {
                Ok(cmd) => take(cmd, &mut entries),
                Err(_) => break,
            }
            taken += 1;
        }
        let refs: Vec<(&JournalEntry, Option<&str>)> =
            entries.iter().map(|(e, t)| (e, t.as_deref())).collect();
        let outcome = if refs.is_empty() && progress.is_empty() && confirm.is_none() {
            // A sync or a check alone: nothing to write.
            Default::default()
        } else {
            writer.append_with(&refs, confirm, &progress)?
        };
        progress.clear();
        if outcome.skipped > 0 {
            tracing::debug!(
                skipped = outcome.skipped,
                "skipped changes already journaled (replay after restart)"
            );
        }
        entries.clear();
        // Written to a file the next start will not read? Then stop before the reader can
        // report it to the slot (the replies below are never sent; the reader sees the
        // writer gone and pgcdc exits with this error).
        writer.check_file()?;
        let head = writer.head();
        head_tx.send_replace(head);
        for reply in syncs.drain(..) {
            let _ = reply.send(head);
        }
        for reply in chunks_done.drain(..) {
            let _ = reply.send(());
        }
        fill.measure(&writer)?;
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
                fill.measure(&writer)?;
            }
        }
    }
    Ok(())
}
