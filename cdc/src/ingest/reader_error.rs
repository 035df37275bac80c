//! Why the reader stops, and which of those are transient (reconnect) or definite.

use pgcdc_schema::{Lsn, TableName};

use super::changes::ChangeError;
use crate::pgoutput;
use crate::replication::ReplicationError;

/// Why the reader stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReaderError {
    /// The replication connection failed definitely.
    #[error(transparent)]
    Replication(#[from] ReplicationError),
    /// A pgoutput message could not be decoded.
    #[error("cannot decode pgoutput message at {lsn}: {source}")]
    Decode {
        /// Where.
        lsn: Lsn,
        /// Why.
        source: pgoutput::DecodeError,
    },
    /// A protocol v2 stream message arrived on a protocol v1 stream.
    #[error(
        "the server sent a streamed-transaction message at {lsn}, but pgcdc asked for protocol \
         version 1 without streaming; pgcdc stops rather than misread it — fix: report this \
         (the server or a proxy in between ignored the replication options)"
    )]
    UnexpectedStream {
        /// Where.
        lsn: Lsn,
    },
    /// Streamed-transaction messages out of the order protocol v2 sends them in.
    #[error(
        "the server's streamed-transaction messages are out of order at {lsn}: {what}; pgcdc stops \
         rather than journal a transaction it may hold only part of (nothing of it is confirmed to \
         the slot) — fix: restart pgcdc, and report this if it happens again (set \
         source.streaming = false to go without streaming meanwhile)"
    )]
    StreamOrder {
        /// Where.
        lsn: Lsn,
        /// What was wrong.
        what: String,
    },
    /// The staged messages of a streamed transaction could not be read back.
    #[error("reading the staged messages of streamed transaction {xid}: {source}")]
    Staging {
        /// The transaction.
        xid: u32,
        /// The store's error.
        source: crate::journal::JournalError,
    },
    /// A change did not fit the session's relations.
    #[error("inconsistent change at {lsn}: {source}")]
    Change {
        /// Where.
        lsn: Lsn,
        /// Why.
        source: ChangeError,
    },
    /// The stream described a relation that is neither captured nor known to be skipped.
    #[error(
        "the stream at {lsn} carries changes of table {table} (OID {oid}), which publication \
         {publication} did not hold when pgcdc started and which is not a captured table; pgcdc \
         stops rather than skip changes it cannot place (nothing past them is confirmed to the slot) \
         — fix: add it to source.tables if it should be captured; otherwise restart pgcdc: the \
         publication's tables are then looked up again (a captured table re-created under its \
         configured name is captured, other tables are listed and skipped)"
    )]
    UnplacedRelation {
        /// Where.
        lsn: Lsn,
        /// The relation's OID.
        oid: u32,
        /// Its name.
        table: TableName,
        /// The publication.
        publication: String,
    },
    /// The source is another database system than the one the journal follows.
    #[error(
        "the source at {url} is database system {found}, but the journal follows system \
         {expected}: source.url now leads to a different database (a promoted standby keeps the \
         system identifier, so this is not a failover of the original); pgcdc stops rather than \
         mix two databases' changes — fix: point source.url back at the original database or its \
         standbys, or use a new [state] dir to follow this one from scratch"
    )]
    OtherSystem {
        /// The source, as configured (password masked).
        url: String,
        /// The journal's system identifier.
        expected: String,
        /// The source's.
        found: String,
    },
    /// The slot was confirmed past what the journal holds.
    #[error(
        "replication slot {slot} reports changes confirmed up to {slot_confirmed}, but the journal \
         holds them only up to {journal}: something other than this pgcdc advanced the slot (or it \
         was re-created elsewhere); streaming from it would skip the changes in between — fix: stop \
         the other consumer of slot {slot}; to start over on purpose, drop the slot and resync"
    )]
    SlotAhead {
        /// The slot.
        slot: String,
        /// Its confirmed_flush_lsn.
        slot_confirmed: Lsn,
        /// The journal's confirmed LSN (or the slot's recorded creation point).
        journal: Lsn,
    },
    /// The slot is gone (e.g. after a failover on PostgreSQL < 17) or has lost WAL.
    #[error(transparent)]
    SlotLost(#[from] super::slot_loss::SlotLost),
    /// Recovering from a lost slot (`source.on_slot_lost = "resync"`) failed.
    #[error("recovering from the lost slot: {0}")]
    Recovery(#[from] super::slot_loss::RecoveryError),
    /// The journal thread is gone (it logs its own error).
    #[error("the journal writer stopped")]
    JournalGone,
}

impl ReaderError {
    pub(super) fn is_transient(&self) -> bool {
        match self {
            ReaderError::Replication(e)
            | ReaderError::Recovery(super::slot_loss::RecoveryError::Source(e)) => {
                // 55006: slot active — our own walsender from before a crash may linger briefly.
                e.is_transient() || e.sqlstate() == Some("55006")
            }
            _ => false,
        }
    }
}
