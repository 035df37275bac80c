//! Resync requests and their progress, in the state store: the CLI and the
//! admin API insert a request, the running pgcdc polls for it, and each
//! chunk's progress is written in the same transaction as the chunk's `read`
//! events, so a restart resumes after the last journaled chunk, never before
//! or after it.
//!
//! States: `pending` → `running` → `done` | `cancelled` | `failed`.

use super::JournalError;

/// Why a resync request was refused.
#[derive(Debug, thiserror::Error)]
pub enum ResyncRequestError {
    /// The journal failed.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// A resync of the same table for the same target is already queued or running.
    #[error("resync {id} of {table} is already {state}; wait for it (pgcdc status) or cancel it with `pgcdc resync --cancel --table {table}`")]
    AlreadyActive {
        /// Its id.
        id: i64,
        /// Table.
        table: String,
        /// pending or running.
        state: String,
    },
}

/// Where a resync comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ResyncKind {
    /// An operator's (or a schedule's) request.
    Resync,
    /// The initial snapshot, continued with watermarks after a restart.
    Snapshot,
}

impl ResyncKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ResyncKind::Resync => "resync",
            ResyncKind::Snapshot => "snapshot",
        }
    }
}

/// One resync and how far it got.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ResyncInfo {
    /// Id (also part of the read events' ids).
    pub id: i64,
    /// resync or snapshot.
    pub kind: String,
    /// `schema.table`.
    pub table: String,
    /// Only this sink receives the rows (None: every sink).
    pub sink: Option<String>,
    /// Extra SQL condition on the rows.
    pub r#where: Option<String>,
    /// pending, running, done, cancelled or failed.
    pub state: String,
    /// Key (JSON object) of the last journaled row: the next chunk starts after it.
    pub last_key: Option<String>,
    /// Rows journaled so far.
    pub rows: i64,
    /// Chunks journaled so far.
    pub chunks: i64,
    /// Why it failed.
    pub error: Option<String>,
    /// When it was requested.
    pub created_at: String,
    /// When it last changed.
    pub updated_at: String,
}

/// A chunk's progress, written with its events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResyncProgress {
    /// The resync.
    pub id: i64,
    /// Key (JSON) of the chunk's last row as selected (None: the chunk was empty).
    pub last_key: Option<String>,
    /// Rows journaled from this chunk.
    pub rows: i64,
    /// Whether this was the last chunk.
    pub done: bool,
}
