//! pgcdc: change-data-capture from Postgres logical replication.
//!
//! ```text
//!  portal Postgres ──WAL──▶ replication (CopyBoth) ──▶ pgoutput (pure decoder)
//!                                                          │
//!        ingest/: reader ─▶ changes (typed ChangeEvent, EventId) ─▶ journal thread
//!                 (resync driver, snapshot and watermark windows beside it)
//!                                                          ▼
//!                    journal/ (state store; SQLite) ──▶ slot confirmed_flush_lsn
//!                                                          │ per-sink cursor
//!                                                          ▼
//!        deliver/: runner ─▶ plan (triggers, filter, transform; jq sandbox) ─▶ sinks
//! ```
//!
//! `engine` wires the two sides together (startup, tasks, shutdown); `cli/` and
//! `admin/` sit on top. `ingest/` and `deliver/` never import each other: they
//! meet at the journal and its head watch.

pub mod admin;
pub mod cli;
pub mod config;
pub mod deliver;
pub mod engine;
pub mod fd_limit;
pub mod ha;
pub mod health;
pub mod ingest;
pub mod journal;
pub mod metrics;
pub mod ops;
pub mod pgoutput;
pub mod replication;
pub mod source;
pub mod status;
pub(crate) mod supervise;
