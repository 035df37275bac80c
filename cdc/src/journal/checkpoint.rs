//! Operator resets of a sink's cursor: to a WAL position, a commit time, or the
//! journal head. A reset bumps the cursor's generation, so a running sink
//! runner notices it, rereads its cursor, and does not overwrite it with the
//! position of a batch it was delivering.

use pgcdc_schema::Lsn;

use super::JournalError;

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
    pub(crate) sink: String,
    /// Its cursor.
    pub(crate) cursor: i64,
    /// Journal entries after its cursor.
    pub(crate) lag_events: i64,
    /// Entries every configured sink has passed that are kept only for this cursor.
    pub(crate) held_events: i64,
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
