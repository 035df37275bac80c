//! Journal -> sinks: one runner per sink (read a batch after its cursor,
//! select and map it through the sink's plan of triggers, filter and transform,
//! deliver, dead-letter or park, commit the cursor), and the audit writer that
//! records every delivery attempt.
//!
//! ```text
//!  journal ─read_batch(cursor)─▶ runner ─plan (jq sandbox)─▶ Sink ─▶ HTTP / Kafka / stdout
//!                                  │ cursor + DLQ (one txn)     │ attempts
//!                                  ▼                            ▼
//!                               journal                   audit writer ─▶ journal
//! ```
//!
//! Nothing here imports `ingest/`.

pub(crate) mod audit_writer;
pub(crate) mod group;
pub mod plan;
pub(crate) mod runner;
