//! The dead-letter queue: items a sink could not deliver, and the later items
//! of the same row parked behind them, in order, until an operator replays
//! or drops them. Nothing leaves the DLQ without an operator saying so.

use pgcdc_sinks::Outgoing;

use super::JournalError;

/// Why an item is in the DLQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DlqState {
    /// Failed definitely or exhausted its retries.
    Dead,
    /// Waiting behind an earlier failed item of the same row.
    Parked,
}

impl DlqState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DlqState::Dead => "dead",
            DlqState::Parked => "parked",
        }
    }

    pub(crate) fn parse(s: &str) -> DlqState {
        if s == "dead" {
            DlqState::Dead
        } else {
            DlqState::Parked
        }
    }
}

/// An item to put in the DLQ.
#[derive(Debug, Clone)]
pub struct DlqRecord {
    /// The item.
    pub item: Outgoing,
    /// Journal position of its event.
    pub pos: i64,
    /// Dead or parked.
    pub state: DlqState,
    /// The last error (dead items).
    pub error: Option<String>,
}

/// An item in the DLQ.
#[derive(Debug, Clone)]
pub struct DlqEntry {
    /// Order in the DLQ.
    pub id: i64,
    /// Delivery id (event id, `.N` for later transform outputs).
    pub delivery_id: String,
    /// Row identity.
    pub row: String,
    /// Journal position of its event.
    pub pos: i64,
    /// The item as it will be sent again.
    pub item: Outgoing,
    /// Dead or parked.
    pub state: DlqState,
    /// The last error.
    pub error: Option<String>,
    /// Replay requested and pending.
    pub replay: bool,
    /// When it entered the DLQ.
    pub created_at: String,
}

/// Which DLQ items an operator means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DlqSelector {
    /// One item by delivery id.
    One(String),
    /// Every item of the sink.
    All,
}

/// Why an operator's DLQ request was refused.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    /// The journal failed.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// No such item.
    #[error("sink {sink} has no dead-lettered event {id}; list them with `pgcdc dlq list --sink {sink}`")]
    NotFound {
        /// Sink.
        sink: String,
        /// Delivery id.
        id: String,
    },
    /// Replaying it alone would break the row's order.
    #[error("event {id} is parked behind {head} of the same row; replay {head} first (its parked followers go with it) or use --all")]
    ParkedBehind {
        /// Requested delivery id.
        id: String,
        /// The row's first item in the DLQ.
        head: String,
    },
}
