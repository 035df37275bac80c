//! WAL -> journal: the reader (replication session, decoding into changes,
//! the bounded queue to the journal thread), the journal thread and its guard,
//! the catalog look-ups the decoder needs, and the whole snapshot/resync
//! machinery (watermark windows, the resync driver, the initial snapshot, the
//! scheduler that queues resyncs).
//!
//! ```text
//!  ReplicationStream ─▶ reader ─(bounded by count and bytes)─▶ journal thread ─▶ journal
//!        ▲ status (durable LSN)   │ watermarks                        │ watch(head)
//!        └────────────────────────┘   ▲                               ▼
//!                      resync driver ─┘ (chunks between watermarks)  deliver/
//! ```
//!
//! Nothing here imports `deliver/`: the two sides meet at the journal and the
//! head watch.

mod apply;
pub(crate) mod catalog;
pub(crate) mod changes;
mod copy_text;
pub(crate) mod journal_guard;
pub(crate) mod journal_thread;
mod placement;
pub(crate) mod reader;
pub(crate) mod reader_config;
pub(crate) mod reader_error;
pub(crate) mod resync;
pub(crate) mod scheduler;
pub(crate) mod slot_loss;
pub(crate) mod snapshot;
mod streaming;
mod visibility;
pub(crate) mod watermark;
