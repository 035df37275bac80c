//! pgcdc-schema: the I/O-free vocabulary shared by the engine and the sinks.
//!
//! ```text
//!  pgoutput tuple (text datums) ──packed::pack_text──▶ Row (packed bytes)
//!                                                         │  unpacked to serde_json::Value
//!                                                         │  (value::decode_text's) on read
//!  Begin/Commit position (Lsn, seq) ──EventId──▶ ChangeEvent (native event JSON)
//! ```
//!
//! Nothing here touches sockets, files or tokio; the one exception is
//! `mapping::sandbox`, which runs jq in child processes over pipes.

pub mod debezium;
pub mod event;
pub mod json_write;
pub mod lsn;
pub mod mapping;
pub mod packed;
pub mod row;
pub mod secret;
pub mod table;
pub mod value;

pub use event::{ChangeEvent, EventId, OldSent, Op, Origin, SnapshotMark};
pub use lsn::Lsn;
pub use secret::Secret;
pub use table::{quote_ident, quote_literal, TableName};
