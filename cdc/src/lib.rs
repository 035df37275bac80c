//! pgcdc: change-data-capture from Postgres logical replication.
//!
//! ```text
//!  portal Postgres ──WAL──▶ replication (CopyBoth) ──▶ pgoutput (pure decoder)
//!                                                          │
//!                            pipeline::changes (typed ChangeEvent, EventId)
//!                                                          ▼
//!                    journal (SQLite, durable) ──▶ slot confirmed_flush_lsn
//!                                                          │ per-sink cursor
//!                                                          ▼
//!                                           pipeline::runner ──▶ sinks
//! ```

pub mod admin;
pub mod cli;
pub mod config;
pub mod fd_limit;
pub mod journal;
pub mod metrics;
pub mod pgoutput;
pub mod pipeline;
pub mod replication;
pub mod source;
pub mod status;
