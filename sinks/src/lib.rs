//! pgcdc-sinks: where journaled events go.
//!
//! ```text
//!  journal ─▶ runner: select + transform ─▶ [Outgoing] ─▶ Sink::deliver ─▶ [ItemResult]
//!                                                            │ attempts ─▶ AuditLog
//!  cursor advances (with DLQ entries, one SQLite txn) ◀──────┘
//! ```
//!
//! A sink reports durability explicitly: `deliver` returns one `ItemResult`
//! per item, and only delivered or dead-lettered items let the cursor move.
//! A sink may split delivery in two (`submit`, then `settle`: Kafka), so the
//! runner books the previous batch while the destination works on this one.

pub mod audit;
pub mod http;
pub mod kafka;
pub mod retry;
pub mod stdout;

use std::future::Future;
use std::sync::Arc;

use pgcdc_schema::ChangeEvent;
use serde::{Deserialize, Serialize};

pub use audit::{
    Attempt, AttemptOutcome, AttemptTime, AuditLog, AuditQueues, BatchAttempt, CorruptIds,
    DeliveryIds, ParseAttemptTimeError,
};

/// A configuration mistake in a sink's own keys, naming the key path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    /// Full key path, e.g. `sink[1].retry.max_attempts`.
    pub key: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// A delivery failure that the sink could not absorb by retrying; the runner stops.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Writing to the destination failed for good (e.g. stdout closed).
    #[error("sink {sink}: {message}")]
    Definite {
        /// Sink name.
        sink: String,
        /// What failed and what to do.
        message: String,
    },
}

/// One thing to deliver: an event after the sink's selection and transform.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outgoing {
    /// The event (with `trigger` set when a trigger selected it).
    pub event: Arc<ChangeEvent>,
    /// What to send: the transform's output, or the native event without a transform.
    pub body: serde_json::Value,
    /// Index of this body among the transform's outputs for the event (0 for the first).
    pub part: u32,
    /// Row identity (`schema.table` + key JSON): items of one row are delivered in order.
    pub row: String,
}

impl Outgoing {
    /// Stable id of this delivery: the event id, suffixed `.N` for a transform's later outputs.
    /// Used as `Idempotency-Key` / `webhook-id`, the same on every retry and replay.
    pub fn delivery_id(&self) -> String {
        self.delivery().to_string()
    }

    /// The delivery id, to be written where it is wanted (see [`Outgoing::delivery_id`]).
    pub fn delivery(&self) -> impl std::fmt::Display + '_ {
        DeliveryId(self)
    }
}

/// [`Outgoing::delivery`].
struct DeliveryId<'a>(&'a Outgoing);

impl std::fmt::Display for DeliveryId<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.part {
            0 => f.write_str(self.0.event.id.as_str()),
            part => write!(f, "{}.{part}", self.0.event.id),
        }
    }
}

/// What became of one item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemResult {
    /// Durable at the destination.
    Delivered,
    /// Failed definitely or exhausted its retries: goes to the DLQ with this error.
    DeadLettered {
        /// The last error.
        error: String,
    },
    /// Not attempted because an earlier item of the same row failed in this batch.
    Parked,
}

/// A delivery destination.
pub trait Sink: Send + 'static {
    /// The sink's configured name.
    fn name(&self) -> &str;

    /// Delivers a batch, keeping the order of items of one row. Returns one result per
    /// item, in input order. `Err` only for failures that must stop the sink.
    fn deliver(
        &mut self,
        items: &[Outgoing],
    ) -> impl Future<Output = Result<Vec<ItemResult>, SinkError>> + Send;

    /// Two-phase delivery, first half: hands a batch over (render, enqueue)
    /// without waiting for its outcome, so the runner can book the previous batch
    /// (cursor, DLQ, metrics) while the destination works; `settle` then waits for
    /// it. `false`: this sink does not split delivery, and `settle` does it all.
    /// The runner calls `settle` with the same items before anything else.
    fn submit(
        &mut self,
        items: &[Outgoing],
    ) -> impl Future<Output = Result<bool, SinkError>> + Send {
        let _ = items;
        async { Ok(false) }
    }

    /// Two-phase delivery, second half: the results of the batch `submit` handed
    /// over (or, when it did not, of delivering `items` now), as `deliver` returns them.
    fn settle(
        &mut self,
        items: &[Outgoing],
    ) -> impl Future<Output = Result<Vec<ItemResult>, SinkError>> + Send {
        self.deliver(items)
    }

    /// How many journal events the runner reads per batch for this sink.
    fn batch_size(&self) -> usize {
        1_000
    }

    /// Whether items need `body` when there is no transform (the native event as
    /// JSON). A sink that renders its own format from `event` says no, and the
    /// runner leaves `body` null.
    fn wants_native_body(&self) -> bool {
        true
    }

    /// Where the destination itself says delivery stands, if it keeps its own
    /// record (Kafka's progress topic). The runner resumes there instead of at
    /// its local cursor (`local`). Called once, before the first `deliver`.
    fn resume(
        &mut self,
        local: &Checkpoint,
    ) -> impl Future<Output = Result<Option<Checkpoint>, SinkError>> + Send {
        let _ = local;
        async { Ok(None) }
    }

    /// Called after each batch is settled and before the local cursor moves to
    /// `at`: a sink that keeps its own record makes it durable here.
    fn checkpoint(
        &mut self,
        at: &Checkpoint,
    ) -> impl Future<Output = Result<(), SinkError>> + Send {
        let _ = at;
        async { Ok(()) }
    }

    /// Called once when the runner stops cleanly between batches (shutdown).
    fn close(&mut self) -> impl Future<Output = Result<(), SinkError>> + Send {
        async { Ok(()) }
    }
}

/// A journal position a sink has delivered through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Every journal event up to this position is settled at the destination (0: none).
    pub pos: i64,
    /// Id of the journal event at `pos` (empty for 0), so a different journal is noticed.
    pub event_id: String,
    /// The cursor's generation: an operator's checkpoint reset raises it, and a
    /// destination's record from an older generation no longer wins.
    #[serde(default)]
    pub generation: i64,
}
