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

pub(crate) mod admin;
pub mod cli;
pub(crate) mod config;
pub mod deliver;
pub(crate) mod deliver_engine;
pub(crate) mod engine;
pub mod fd_limit;
pub(crate) mod ha;
pub(crate) mod health;
pub(crate) mod ingest;
pub mod journal;
pub(crate) mod metrics;
pub(crate) mod ops;
pub mod pgoutput;
pub mod replication;
pub(crate) mod sd_notify;
pub(crate) mod sink_build;
pub(crate) mod source;
pub(crate) mod status;
pub(crate) mod supervise;
