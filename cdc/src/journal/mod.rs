//! The state store: every piece of pgcdc's durable state behind one API. The
//! journal (a durable, append-only log of change events), one cursor per sink,
//! the dead-letter queue, the delivery audit log, row state, resync requests
//! and their progress, and typed metadata ([`MetaKey`]).
//!
//! ```text
//!  config [state] ──Store::from_config (the one place that picks an implementation)
//!                        │
//!  journal thread ◀── Store::writer ── Box<dyn JournalWriter>: the single appender
//!      append (one txn per batch: events, row state, resync progress,
//!              confirmed LSN) ──▶ events ──▶ slot feedback
//!      stage (after each batch: streamed transactions' messages, `staging`)
//!  sink runners, audit writer,
//!  resync driver, admin, cli ◀── Store::open ── Box<dyn StateStore>: one session
//!      read_batch(cursor) ◀── events
//!      commit_batch (DLQ rows + monotonic, generation-guarded cursor) ──▶ cursors
//! ```
//!
//! Implementations: [`sqlite`] (embedded: `journal.db` and `audit.db` in
//! `state.dir`) and [`postgres`] (tables in `state.schema` of the database at
//! `state.url`), picked in [`Store::from_config`]; nothing outside this folder
//! knows a table or a column of either ([`testing`] holds the one repair tests
//! need).
//!
//! Positions: `pos` is the journal's own sequence (1, 2, ...). Streamed
//! changes are also keyed by (commit LSN, ordinal in the transaction); the
//! writer skips any change at or before the last journaled one, so a replay
//! from the slot after a crash never duplicates an entry.
//!
//! Errors are definite (`JournalError`): a disk or store failure stops pgcdc,
//! which restarts from the slot without loss.

use std::path::PathBuf;
use std::sync::Arc;

use pgcdc_schema::row::Name;
use pgcdc_schema::{ChangeEvent, Lsn};

mod audit;
mod checkpoint;
mod dlq;
mod meta;
pub(crate) mod postgres;
mod recent;
mod record;
mod resync;
mod row_state;
pub(crate) mod sqlite;
mod staging;
mod store;
pub mod testing;

pub use checkpoint::{CursorState, DroppedCursor, OrphanedCursor, ResetError, ResetTarget};
pub use dlq::{DlqEntry, DlqError, DlqRecord, DlqSelector, DlqState};
pub use meta::MetaKey;
pub(crate) use postgres::lease::{LeaseRow, LeaseSession};
pub(crate) use recent::approx_bytes;
pub(crate) use recent::RECENT_BYTES;
pub use recent::{Appended, Recent, RecentReader, Shared};
pub use resync::ResyncProgress;
pub use resync::{ResyncInfo, ResyncKind, ResyncRequestError};
pub use row_state::{fill_toast_of, OldTracking, Tracked};
pub use staging::{StagedMessage, StagingOp};
pub(crate) use store::Backend;
pub use store::JournalWriter;
pub use store::StateStore;

/// A state store failure.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The store (the SQLite file, a database) failed.
    #[error("journal {at}: {source}")]
    Store {
        /// Where the store is (a file path; never a secret).
        at: String,
        /// The store's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The state directory cannot be used.
    #[error("state dir {path}: {message}")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The journal was removed or replaced while pgcdc had it open: what this
    /// process writes no longer reaches the store the next start reads.
    #[error("journal {path}: {message}")]
    Replaced {
        /// The journal file.
        path: PathBuf,
        /// What happened and what to do.
        message: String,
    },
    /// An entry could not be (de)serialized.
    #[error("journal entry at pos {pos}: {source}")]
    Corrupt {
        /// Journal position.
        pos: i64,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// A write carried a fencing epoch that is no longer the lease's: another
    /// process took over, and this one wrote nothing.
    #[error(
        "lost leadership: this pgcdc writes with epoch {epoch} but the state store's lease is at {}; \
         another pgcdc took over, and nothing was written",
        current.map_or("nothing".to_string(), |c| c.to_string())
    )]
    Fenced {
        /// This process's epoch.
        epoch: i64,
        /// The lease's epoch (None: no lease row).
        current: Option<i64>,
    },
    /// A blocking task that used the store panicked or was cancelled.
    #[error("journal task failed: {0}")]
    Task(String),
}

/// Whether opening a session may create the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Create it when missing (what `pgcdc run` and its tasks do).
    Create,
    /// It must exist already: a command that finds none says to run pgcdc first.
    Existing,
}

/// The configured state store: opens sessions and the writer. Cheap to clone; made
/// once from the config and handed to every task that needs the store.
#[derive(Clone)]
pub struct Store(Arc<dyn Backend>, Arc<Recent>);

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Store").field(&self.0.describe()).finish()
    }
}

impl Store {
    /// The store `[state]` selects: the one place that picks an implementation.
    pub(crate) fn from_config(state: &crate::config::StateConfig) -> Store {
        match state.url() {
            Ok(Some(url)) => Store::postgres(url, &state.schema),
            // A bad url was refused when the config was loaded.
            Ok(None) | Err(_) => Store::sqlite(&state.dir),
        }
    }

    /// The store in `schema` of the Postgres database at `url`.
    pub fn postgres(url: crate::replication::SourceUrl, schema: &str) -> Store {
        Store(
            Arc::new(postgres::Postgres::new(url, schema)),
            Arc::default(),
        )
    }

    /// Makes every write of this store's sessions and writer (open or opened later)
    /// check that the lease's epoch is `epoch`, and fail with
    /// [`JournalError::Fenced`] otherwise (None: no check). The hook for
    /// high availability; only the Postgres store has a lease.
    pub fn set_fence(&self, epoch: Option<i64>) -> Result<(), JournalError> {
        self.0.set_fence(epoch)
    }

    /// The embedded SQLite store in `dir` (for tools and tests that have a state
    /// directory rather than a config).
    pub fn sqlite(dir: &std::path::Path) -> Store {
        Store(Arc::new(sqlite::Sqlite::new(dir)), Arc::default())
    }

    /// Opens a session (a connection) on the store.
    pub fn open(&self, access: Access) -> Result<Box<dyn StateStore>, JournalError> {
        self.0.open(access)
    }

    /// Opens the single writer (the journal thread's).
    pub fn writer(&self) -> Result<Box<dyn JournalWriter>, JournalError> {
        self.0.writer()
    }

    /// Whether the store has been created (by a `pgcdc run`).
    pub fn exists(&self) -> bool {
        self.0.exists()
    }

    /// Where the store is, for messages (never a secret).
    pub fn describe(&self) -> String {
        self.0.describe()
    }

    /// The events this process journaled last, shared by this store's clones:
    /// the journal thread keeps them, sink runners read them (see [`Recent`]).
    pub fn recent(&self) -> &Arc<Recent> {
        &self.1
    }
}

/// One change to append: its ordinal in the transaction and the event.
#[derive(Debug, Clone)]
pub struct JournalEntry {
    /// The captured table this change belongs to, `schema.table` as `source.tables` names
    /// it: sinks and triggers route by it, so a renamed table reaches the same sinks
    /// while its events carry the new name. Shared by the relation's entries.
    pub table: Name,
    /// Ordinal of the change in its transaction.
    pub seq: u32,
    /// Commit time in Unix microseconds (for lag and time-based resets).
    pub commit_time_unix_us: Option<i64>,
    /// The event.
    pub event: ChangeEvent,
}

/// For tests: an insert into `public.t` at commit LSN `lsn` whose one column
/// `v` holds `text_bytes` bytes of text.
#[cfg(test)]
pub(crate) fn insert_entry(lsn: u64, text_bytes: usize) -> JournalEntry {
    let mut row = serde_json::Map::new();
    row.insert(
        "v".into(),
        serde_json::Value::String("x".repeat(text_bytes)),
    );
    insert_into("t", lsn, None, row.into())
}

/// For tests: an insert into `public.<table>` at commit LSN `lsn` (first in its
/// transaction) with `key` and the new row `new`.
#[cfg(test)]
pub(crate) fn insert_into(
    table: &str,
    lsn: u64,
    key: Option<pgcdc_schema::event::Row>,
    new: pgcdc_schema::event::Row,
) -> JournalEntry {
    use pgcdc_schema::{EventId, Op};
    JournalEntry {
        table: format!("public.{table}").into(),
        seq: 0,
        commit_time_unix_us: None,
        event: ChangeEvent {
            id: EventId::from_position(Lsn(lsn), 0),
            op: Op::Insert,
            schema: "public".into(),
            table: table.into(),
            key,
            old: None,
            new: Some(new),
            trigger: None,
            lsn: Lsn(lsn),
            xid: None,
            commit_time: None,
            unchanged_toast: vec![],
            columns: None,
            previous: None,
            origin: Default::default(),
        },
    }
}

/// An event read back, with its journal position.
///
/// A sink runner holds its events shared (`StoredEvent<Arc<ChangeEvent>>`): those
/// read from the store are wrapped on the runner's own thread, which frees them.
#[derive(Debug, Clone)]
pub struct StoredEvent<E = ChangeEvent> {
    /// Journal position.
    pub pos: i64,
    /// Ordinal of the change in its transaction (with `event.lsn`, its source position).
    pub seq: u32,
    /// The event: read from the store, or shared (`Arc`) with the journaled
    /// events kept in memory ([`Recent`]).
    pub event: E,
    /// Only this sink receives it (a targeted resync); None: every sink.
    pub target: Option<String>,
    /// The captured table it belongs to (see [`JournalEntry::table`]); consecutive
    /// events of one table share it.
    pub table: Name,
}

/// What one journal transaction writes besides streamed changes: resync chunks.
#[derive(Debug, Clone, Default)]
pub struct ResyncChunk {
    /// The chunk's `read` events.
    pub entries: Vec<JournalEntry>,
    /// Only this sink receives them (None: every sink).
    pub target: Option<String>,
    /// Progress recorded in the same transaction.
    pub progress: ResyncProgress,
}

/// How far the journal is durable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JournalHead {
    /// Position of the last entry (0 when empty).
    pub pos: i64,
    /// WAL position up to which everything of ours is journaled; reported to the slot.
    pub confirmed_lsn: Lsn,
}

/// What one `append` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Entries written.
    pub appended: usize,
    /// Entries skipped because they were journaled before (replay after restart).
    pub skipped: usize,
}

/// One sink's cursor and lag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorInfo {
    /// Sink name.
    pub sink: String,
    /// Last journal position the sink has finished with.
    pub pos: i64,
    /// Journal entries after the cursor.
    pub lag_events: i64,
    /// Commit time (Unix µs) of the oldest entry after the cursor.
    pub oldest_pending_unix_us: Option<i64>,
}

/// Where pruning could go without the orphaned cursors: the lowest cursor of a
/// configured sink (one without a row yet starts at 0 and holds everything), or
/// `head` when no sink is configured. Shared by every store's `orphaned_cursors`.
pub(crate) fn pruning_floor(cursors: &[CursorInfo], configured: &[String], head: i64) -> i64 {
    configured
        .iter()
        .map(|name| {
            cursors
                .iter()
                .find(|c| &c.sink == name)
                .map_or(0, |c| c.pos)
        })
        .min()
        .unwrap_or(head)
}

/// The live keys of one table, shared by every store's `known_keys`: from its
/// events, newest first as (op, key), each key whose newest event is neither a
/// delete nor a truncate (events without a key, truncates, do not count); and the
/// keys remembered in its row state (`remembered`, stored JSON). Each key once,
/// whatever the order of its members.
pub(crate) fn live_keys(
    newest_first: Vec<(pgcdc_schema::Op, Option<pgcdc_schema::event::Row>)>,
    remembered: &[String],
) -> Vec<pgcdc_schema::event::Row> {
    use pgcdc_schema::Op;
    use std::collections::{BTreeMap, HashSet};
    let canonical = |key: &pgcdc_schema::event::Row| {
        serde_json::to_string(&key.iter().collect::<BTreeMap<_, _>>()).unwrap_or_default()
    };
    let mut seen = HashSet::new();
    let mut keys = Vec::new();
    for (op, key) in newest_first {
        let Some(key) = key else { continue };
        if seen.insert(canonical(&key)) && !matches!(op, Op::Delete | Op::Truncate) {
            keys.push(key);
        }
    }
    keys.extend(
        remembered
            .iter()
            .filter_map(|t| serde_json::from_str::<pgcdc_schema::event::Row>(t).ok()),
    );
    // Events and row state may spell one key with its members in another order.
    keys.sort_by_key(|k| canonical(k));
    keys.dedup_by(|a, b| canonical(a) == canonical(b));
    keys
}
