//! Streamed transactions staged until they end (protocol v2, `source.streaming`).
//!
//! Postgres sends a transaction larger than `logical_decoding_work_mem` in blocks
//! before it commits. Each data message of a block is staged here as the raw
//! pgoutput bytes it came in, keyed by (top-level xid, seq) and tagged with its
//! subtransaction, so that memory holds none of it whole. At Stream Commit the
//! reader replays the staged messages in `seq` order through the path a plain
//! transaction takes; at Stream Abort (of the transaction or of one
//! subtransaction) exactly its rows go.
//!
//! Stored in the state store (the journal's own transactions) by the writer,
//! read back in pages by a session. What is staged belongs to one replication
//! session: after a reconnect Postgres sends every open transaction again from
//! its start, so a new session clears the staging first ([`StagingOp::Clear`]).

use pgcdc_schema::Lsn;

/// One staged message of a streamed transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedMessage {
    /// Top-level transaction id.
    pub xid: u32,
    /// The (sub)transaction the message belongs to (`xid` itself for the top level).
    pub subxid: u32,
    /// Order inside the transaction (increasing, not dense).
    pub seq: i64,
    /// WAL position the message was sent at (the change's own LSN).
    pub lsn: Lsn,
    /// The pgoutput message as sent inside the stream (tag, xid, body).
    pub body: Vec<u8>,
}

/// A change to the staging, applied in order by [`super::JournalWriter::stage`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StagingOp {
    /// Stage one message.
    Put(StagedMessage),
    /// Discard a transaction's messages: all of them (`subxid` None), or those of
    /// one aborted subtransaction.
    Discard {
        /// Top-level transaction id.
        xid: u32,
        /// The subtransaction (None: the whole transaction).
        subxid: Option<u32>,
    },
    /// Discard everything staged (a new replication session starts).
    Clear,
}

impl StagingOp {
    /// Bytes of message this op carries (0 for the discards).
    pub fn body_len(&self) -> usize {
        match self {
            StagingOp::Put(m) => m.body.len(),
            StagingOp::Discard { .. } | StagingOp::Clear => 0,
        }
    }
}
