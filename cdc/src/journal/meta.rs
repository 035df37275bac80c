//! Metadata keys: the store's small facts about itself and its source. Typed, so
//! no module spells a key, and each implementation stores them as it likes.

/// A metadata entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MetaKey {
    /// The source's system identifier (IDENTIFY_SYSTEM) the journal belongs to.
    SystemId,
    /// WAL position up to which everything is journaled (the writer keeps it).
    ConfirmedLsn,
    /// The slot pgcdc created (the previous release's record; `teardown` drops it).
    CreatedSlot,
    /// The publication pgcdc created (`teardown` drops it).
    CreatedPublication,
    /// The slot this journal follows.
    Slot,
    /// Where that slot started when it was created or adopted.
    SlotCreatedLsn,
    /// A lost slot was recreated at this position and its recovery (deletes, resyncs)
    /// is not done yet; empty when none is pending.
    SlotRecoveryAt,
    /// The OID a configured table name (`schema.table`) captured.
    TableOid(String),
    /// A captured table's columns as last journaled (JSON), to see schema changes.
    TableShape(String),
}

/// Stored key of [`MetaKey::TableOid`] entries: this prefix and the table name.
pub(crate) const TABLE_OID_PREFIX: &str = "table_oid:";

impl MetaKey {
    /// The key as stored. The strings are the journal format of earlier releases:
    /// they never change.
    pub(crate) fn as_stored(&self) -> std::borrow::Cow<'static, str> {
        use std::borrow::Cow::{Borrowed, Owned};
        match self {
            MetaKey::SystemId => Borrowed("system_id"),
            MetaKey::ConfirmedLsn => Borrowed("confirmed_lsn"),
            MetaKey::CreatedSlot => Borrowed("created_slot"),
            MetaKey::CreatedPublication => Borrowed("created_publication"),
            MetaKey::Slot => Borrowed("slot"),
            MetaKey::SlotCreatedLsn => Borrowed("slot_created_lsn"),
            MetaKey::SlotRecoveryAt => Borrowed("slot_recovery_at"),
            MetaKey::TableOid(table) => Owned(format!("{TABLE_OID_PREFIX}{table}")),
            MetaKey::TableShape(table) => Owned(format!("table_shape:{table}")),
        }
    }
}
