//! What the reader is started with: the source, the slot, what is captured,
//! and the shared state it reports to. Its own file so that the reader and
//! the staged-transaction replay (`streaming`) both take it from here.

use std::time::Duration;

use pgcdc_schema::{Lsn, TableName};

use super::watermark::Windows;
use crate::replication::SourceUrl;
use crate::source::identity::Capture;

/// What the reader needs to run.
pub(crate) struct ReaderConfig {
    /// Captured tables' columns as stored (schema changes are seen against them).
    pub(crate) shapes: std::collections::HashMap<String, Vec<pgcdc_schema::event::Column>>,
    /// Source connection.
    pub(crate) url: SourceUrl,
    /// Slot name.
    pub(crate) slot: String,
    /// Publication name.
    pub(crate) publication: String,
    /// What is captured, by relation OID (resolved at start).
    pub(crate) capture: Capture,
    /// Interval of standby status updates.
    pub(crate) status_interval: Duration,
    /// Interval of WAL heartbeat messages (None: off).
    pub(crate) heartbeat: Option<Duration>,
    /// The resync window the watermarks in the stream refer to.
    pub(crate) windows: Windows,
    /// The journal's fill against `journal.max_bytes`: the reader pauses while full.
    pub(crate) fill: std::sync::Arc<super::journal_thread::JournalFill>,
    /// The source's system identifier the journal records: every connect must match it.
    pub(crate) system_id: String,
    /// Where the slot was when pgcdc created or adopted it: it may be confirmed up to
    /// here even when the journal holds nothing yet.
    pub(crate) slot_floor: Lsn,
    /// What to do when the slot is lost.
    pub(crate) on_slot_lost: crate::config::OnSlotLost,
    /// `source.failover_slot`, for a slot recreated after a loss.
    pub(crate) failover_slot: Option<bool>,
    /// The state store (resyncs after a lost slot are queued there).
    pub(crate) store: crate::journal::Store,
    /// The slot was found lost at start and recreated at this position: the
    /// recovery's resync and deletes are still to do (`source.on_slot_lost = "resync"`).
    pub(crate) recover_at: Option<Lsn>,
    /// `source.streaming`: protocol v2, large transactions staged until they end.
    pub(crate) streaming: bool,
}

impl ReaderConfig {
    pub(super) fn recovery(&self, capture: &Capture) -> super::slot_loss::Recovery<'_> {
        let mut tables: Vec<TableName> = capture.tables.values().cloned().collect();
        tables.sort_by_key(ToString::to_string);
        tables.dedup();
        super::slot_loss::Recovery {
            url: &self.url,
            slot: &self.slot,
            failover_slot: self.failover_slot,
            store: &self.store,
            tables,
        }
    }
}
