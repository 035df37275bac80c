//! WAL checkpoints of bulk copies off the writer's path.
//!
//! SQLite copies the WAL's pages into `journal.db` (a checkpoint) in whichever
//! connection commits once the WAL holds 1,000 pages: the journal writer, as a
//! rule, in the middle of appending. For a snapshot or resync copy that was 15%
//! of the writer's time, with its `fsync`s. While it appends such chunks (an
//! append that carries resync progress), the writer raises its own threshold to
//! [`BACKSTOP_PAGES`], counts the bytes it commits and, every
//! [`CHECKPOINT_BYTES`], nudges a thread of its own that runs a `PASSIVE`
//! checkpoint on its own connection while the writer goes on appending.
//!
//! ```text
//!  bulk append: wal_autocheckpoint = BACKSTOP_PAGES; commit ─▶ bytes since the
//!               last nudge >= CHECKPOINT_BYTES ─▶ nudge (never waits)
//!  pgcdc-checkpoint: nudge ─▶ PRAGMA wal_checkpoint(PASSIVE) ─▶ wait for the next
//!  streamed changes: wal_autocheckpoint = 1000 (SQLite's own, in the writer)
//! ```
//!
//! Streamed changes keep SQLite's checkpoints: a checkpoint thread beside their
//! small, frequent commits measured about 5% slower. The stream keeps both
//! cores busy, and the writer's own time did not fall while the thread added
//! its own (docs/benchmarks.md). The WAL stays bounded whatever happens to the
//! thread: past [`BACKSTOP_PAGES`] the writer checkpoints by itself.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::{connect, Durability, JOURNAL_FILE};
use crate::journal::JournalError;

/// The writer nudges the checkpointer after committing this much (about the
/// 1,000 pages at which SQLite would checkpoint by itself).
pub(super) const CHECKPOINT_BYTES: u64 = 4 << 20;
/// The writer's `wal_autocheckpoint` during bulk appends: 4,096 pages (16 MiB
/// at the default page size), reached only when the checkpointer falls behind.
pub(super) const BACKSTOP_PAGES: i64 = 4096;
/// SQLite's default `wal_autocheckpoint`, the writer's for streamed changes.
pub(super) const DEFAULT_PAGES: i64 = 1000;

/// The checkpoint thread of a writer; stopped and joined when dropped.
pub(super) struct Checkpointer {
    nudge: Option<SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
    /// Bytes committed since the last nudge.
    since: u64,
    /// Checkpoints run (for tests and logs).
    runs: Arc<AtomicU64>,
}

impl Checkpointer {
    /// Starts the thread with a connection of its own to the journal in `dir`.
    pub(super) fn start(dir: &Path) -> Result<Checkpointer, JournalError> {
        let (conn, path) = connect(dir, JOURNAL_FILE, false, Durability::Fsync)?;
        // One nudge waiting is enough: a checkpoint copies everything committed.
        let (nudge, nudged) = sync_channel::<()>(1);
        let runs = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&runs);
        let thread = std::thread::Builder::new()
            .name("pgcdc-checkpoint".into())
            .spawn(move || {
                while nudged.recv().is_ok() {
                    let r = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                        Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
                    });
                    counted.fetch_add(1, Ordering::Relaxed);
                    match r {
                        Ok((wal, copied)) => {
                            tracing::trace!(wal, copied, "journal WAL checkpoint");
                        }
                        // Busy or failing: the next nudge tries again, and past the
                        // backstop the writer checkpoints by itself.
                        Err(e) => tracing::debug!(path = %path.display(), error = %e,
                            "journal WAL checkpoint did not run"),
                    }
                }
            })
            .map_err(|e| JournalError::StateDir {
                path: dir.to_path_buf(),
                message: format!("cannot start the WAL checkpoint thread ({e})"),
            })?;
        Ok(Checkpointer {
            nudge: Some(nudge),
            thread: Some(thread),
            since: 0,
            runs,
        })
    }

    /// The writer committed `bytes`: nudges the thread every [`CHECKPOINT_BYTES`].
    pub(super) fn committed(&mut self, bytes: u64) {
        self.since += bytes;
        if self.since < CHECKPOINT_BYTES {
            return;
        }
        self.since = 0;
        if let Some(nudge) = &self.nudge {
            match nudge.try_send(()) {
                // Full: a checkpoint is already due, and it copies this commit too.
                Ok(()) | Err(TrySendError::Full(())) => {}
                Err(TrySendError::Disconnected(())) => {
                    tracing::warn!("the journal's WAL checkpoint thread stopped; SQLite checkpoints in the writer from now on");
                    self.nudge = None;
                }
            }
        }
    }

    /// How many checkpoints the thread ran.
    #[cfg(test)]
    pub(super) fn runs(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop.
        self.nudge = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        tracing::debug!(
            runs = self.runs.load(Ordering::Relaxed),
            "journal WAL checkpoint thread stopped"
        );
    }
}
