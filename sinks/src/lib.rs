//! pgcdc-sinks: where journaled events go.
//!
//! ```text
//!  journal ──(runner reads a batch after the sink's cursor)──▶ Sink::deliver
//!                                                                │ Ok = durable at the destination
//!  cursor advances ◀─────────────────────────────────────────────┘
//! ```
//!
//! A sink reports durability explicitly: `deliver` returns `Ok` only when every
//! event of the batch is durable at the destination (or dead-lettered), and only
//! then does the runner move the cursor.

pub mod stdout;

use std::future::Future;

use pgcdc_schema::ChangeEvent;

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

/// A delivery destination.
pub trait Sink: Send + 'static {
    /// The sink's configured name.
    fn name(&self) -> &str;

    /// Delivers a batch in order. `Ok` means every event is durable at the destination.
    fn deliver(&mut self, events: &[ChangeEvent]) -> impl Future<Output = Result<(), SinkError>> + Send;
}
