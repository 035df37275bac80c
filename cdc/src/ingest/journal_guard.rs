//! The journal and the replication slot belong together, or pgcdc refuses to start.
//!
//! The slot forgets what it confirmed: a journal that is not the one that fed it
//! (deleted, truncated, replaced, restored from an older backup, another state dir)
//! would resume from the slot's position and skip everything in between without
//! a word. So the journal records the slot it follows (meta `slot`, and
//! `slot_created_lsn`, the slot's position when pgcdc created or adopted it), and
//! at start:
//!
//! - pgcdc only ever confirms to the slot what the journal holds, so the slot's
//!   `confirmed_flush_lsn` must not be past the journal's confirmed LSN (or the
//!   recorded creation LSN, for a slot not yet streamed from): if it is, refuse;
//! - a new journal (no meta at all) facing an existing slot: refuse, since nothing
//!   tells whether the slot moved on (the fix names the deliberate ways out);
//! - a journal recording another slot name: refuse;
//! - a journal written by the release before this check (meta `system_id` but no
//!   `slot`): adopted when the slot is not past it, recording the missing meta;
//! - the recorded slot is gone while the journal holds changes: the slot is lost,
//!   and `source.on_slot_lost` decides (see `slot_loss`).
//!
//! While running, `JournalWriter::check_intact` stops pgcdc when the journal file is
//! removed or replaced, before anything more is confirmed to the slot.

use std::path::Path;

use anyhow::bail;
use pgcdc_schema::Lsn;

use crate::journal::{JournalError, JournalWriter, MetaKey};

/// What the journal held when it was opened, before this start wrote to it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Prior {
    /// No meta and no entries: created just now, or emptied.
    fresh: bool,
}

impl Prior {
    /// Reads it; call before anything is written at start.
    pub(crate) fn read(writer: &dyn JournalWriter) -> Result<Prior, JournalError> {
        let fresh = writer.meta(&MetaKey::SystemId)?.is_none()
            && writer.meta(&MetaKey::Slot)?.is_none()
            && writer.head() == Default::default();
        Ok(Prior { fresh })
    }
}

/// What start should do about the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlotPlan {
    /// The slot exists and belongs to this journal.
    Use,
    /// The slot is missing: create it (then call [`created`]).
    Create,
    /// The slot this journal followed is gone: changes since the journal's position
    /// are lost to it; `source.on_slot_lost` decides (see `slot_loss`).
    Lost,
}

fn fix(slot: &str) -> String {
    format!(
        "restore the state dir that belongs to this slot (with pgcdc stopped); or, to start over on \
         purpose and accept the gap, drop the slot (SELECT pg_drop_replication_slot('{slot}');), start \
         pgcdc (it creates a new slot; snapshot = \"initial\" copies the tables), and re-send the current \
         rows with `pgcdc resync --table SCHEMA.TABLE`"
    )
}

/// Checks the journal against the slot (`slot_confirmed`: its `confirmed_flush_lsn`,
/// None when the slot does not exist) before the slot is used or created.
pub(crate) fn check(
    writer: &mut dyn JournalWriter,
    prior: Prior,
    state_dir: &Path,
    slot: &str,
    slot_confirmed: Option<Lsn>,
) -> anyhow::Result<SlotPlan> {
    let recorded = writer.meta(&MetaKey::Slot)?;
    let created_at = writer
        .meta(&MetaKey::SlotCreatedLsn)?
        .and_then(|v| v.parse::<u64>().ok())
        .map(Lsn);
    let head = writer.head();
    let dir = state_dir.display();
    if let Some(recorded) = recorded.as_deref().filter(|r| *r != slot) {
        bail!(
            "the journal in {dir} follows replication slot {recorded}, but source.slot is {slot} — fix: \
             set source.slot = \"{recorded}\" again, or point [state] dir at a new directory to follow \
             slot {slot} from scratch"
        );
    }
    let Some(confirmed) = slot_confirmed else {
        if head.confirmed_lsn > Lsn(0) {
            return Ok(SlotPlan::Lost);
        }
        return Ok(SlotPlan::Create);
    };
    match (recorded.is_some(), created_at) {
        // The slot pgcdc created: it may be at its creation point, or at what the journal holds.
        (true, Some(created)) => {
            let reach = head.confirmed_lsn.max(created);
            if confirmed > reach {
                bail!(
                    "the journal in {dir} does not match replication slot {slot}: the slot has confirmed \
                     changes up to {confirmed}, but this journal holds them only up to {reach}. The changes \
                     in between were confirmed from a journal that is not this one (restored from an \
                     older backup, or replaced); starting would skip them silently — fix: {}",
                    fix(slot)
                );
            }
        }
        // Recorded before the creation, which a crash interrupted: nothing streamed yet.
        (true, None) if head.confirmed_lsn == Lsn(0) => adopt(writer, slot, confirmed)?,
        (true, None) | (false, _) if prior.fresh => bail!(
            "the journal in {dir} is new or empty, but replication slot {slot} exists (confirmed up to \
             {confirmed}): the journal that fed it is gone (deleted, truncated, or [state] dir points \
             elsewhere; a relative dir is taken from the config file's directory), and starting would \
             skip every change the slot confirmed without a word — fix: {}",
            fix(slot)
        ),
        // A journal of the previous release (or an interrupted first start): adopt the slot
        // when it is not past the journal.
        _ => {
            let legacy_created = writer.meta(&MetaKey::CreatedSlot)?.as_deref() == Some(slot)
                && head.confirmed_lsn == Lsn(0);
            if confirmed > head.confirmed_lsn && !legacy_created {
                bail!(
                    "the journal in {dir} does not match replication slot {slot}: the slot has \
                     confirmed changes up to {confirmed}, but this journal holds them only up to {} — \
                     fix: {}",
                    head.confirmed_lsn,
                    fix(slot)
                );
            }
            adopt(writer, slot, confirmed)?;
            tracing::info!(slot, at = %confirmed, "journal records the slot it follows (adopted)");
        }
    }
    Ok(SlotPlan::Use)
}

/// Where the slot was when pgcdc created or adopted it (0 when not recorded): the slot
/// may be confirmed up to here before the journal holds anything.
pub(crate) fn slot_floor(writer: &dyn JournalWriter) -> Result<Lsn, JournalError> {
    Ok(writer
        .meta(&MetaKey::SlotCreatedLsn)?
        .and_then(|v| v.parse::<u64>().ok())
        .map(Lsn)
        .unwrap_or_default())
}

/// A lost slot's recovery still to do (see `slot_loss`), recorded with the new slot.
pub(crate) fn recovery_pending(writer: &dyn JournalWriter) -> Result<Option<Lsn>, JournalError> {
    Ok(writer
        .meta(&MetaKey::SlotRecoveryAt)?
        .and_then(|v| v.parse::<u64>().ok())
        .map(Lsn))
}

/// Records (Some) or clears (None) a pending recovery.
pub(crate) fn set_recovery(
    writer: &mut dyn JournalWriter,
    at: Option<Lsn>,
) -> Result<(), JournalError> {
    writer.set_meta(
        &MetaKey::SlotRecoveryAt,
        &at.map(|l| l.0.to_string()).unwrap_or_default(),
    )
}

fn adopt(writer: &mut dyn JournalWriter, slot: &str, at: Lsn) -> Result<(), JournalError> {
    writer.set_meta(&MetaKey::Slot, slot)?;
    writer.set_meta(&MetaKey::SlotCreatedLsn, &at.0.to_string())
}

/// Before creating the slot: records it as the journal's, so a crash right after the
/// creation finds a journal that claims it.
pub(crate) fn creating(writer: &mut dyn JournalWriter, slot: &str) -> Result<(), JournalError> {
    writer.set_meta(&MetaKey::Slot, slot)
}

/// After creating the slot: records its position.
pub(crate) fn created(
    writer: &mut dyn JournalWriter,
    slot: &str,
    consistent_point: Lsn,
) -> Result<(), JournalError> {
    adopt(writer, slot, consistent_point)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer() -> (tempfile::TempDir, Box<dyn JournalWriter>) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let w = crate::journal::Store::sqlite(dir.path())
            .writer()
            .unwrap_or_else(|e| panic!("{e}"));
        (dir, w)
    }

    fn run(w: &mut dyn JournalWriter, slot: Option<u64>) -> Result<SlotPlan, String> {
        let prior = Prior::read(w).map_err(|e| e.to_string())?;
        check(w, prior, Path::new("/state"), "pgcdc", slot.map(Lsn)).map_err(|e| e.to_string())
    }

    #[test]
    fn a_new_journal_creates_a_missing_slot_and_refuses_an_existing_one() {
        let (_d, mut w) = writer();
        assert_eq!(run(&mut *w, None), Ok(SlotPlan::Create));
        let (_d, mut w) = writer();
        let err = run(&mut *w, Some(0x500)).err().unwrap_or_default();
        assert!(
            err.contains("new or empty") && err.contains("pg_drop_replication_slot('pgcdc')"),
            "{err}"
        );
    }

    #[test]
    fn the_slot_may_be_at_its_creation_or_behind_the_journal_never_past_it() {
        let (_d, mut w) = writer();
        creating(&mut *w, "pgcdc").unwrap_or_else(|e| panic!("{e}"));
        created(&mut *w, "pgcdc", Lsn(0x100)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(run(&mut *w, Some(0x100)), Ok(SlotPlan::Use));
        w.append(&[], Some(Lsn(0x300)), &[])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(run(&mut *w, Some(0x200)), Ok(SlotPlan::Use));
        assert_eq!(run(&mut *w, Some(0x300)), Ok(SlotPlan::Use));
        let err = run(&mut *w, Some(0x301)).err().unwrap_or_default();
        assert!(err.contains("0/301") && err.contains("0/300"), "{err}");
        // Gone: lost (source.on_slot_lost decides).
        assert_eq!(run(&mut *w, None), Ok(SlotPlan::Lost));
        let err = check(
            &mut *w,
            Prior { fresh: false },
            Path::new("/s"),
            "other",
            Some(Lsn(1)),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("follows replication slot pgcdc"), "{err}");
    }

    #[test]
    fn a_crash_between_creating_and_recording_the_slot_adopts_it() {
        let (_d, mut w) = writer();
        creating(&mut *w, "pgcdc").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(run(&mut *w, Some(0x700)), Ok(SlotPlan::Use));
        assert_eq!(
            w.meta(&MetaKey::SlotCreatedLsn).ok().flatten().as_deref(),
            Some("1792")
        );
    }

    #[test]
    fn a_previous_release_journal_is_adopted_unless_the_slot_is_past_it() {
        let (_d, mut w) = writer();
        w.set_meta(&MetaKey::SystemId, "7")
            .unwrap_or_else(|e| panic!("{e}"));
        w.append(&[], Some(Lsn(0x300)), &[])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(run(&mut *w, Some(0x280)), Ok(SlotPlan::Use));
        assert_eq!(
            w.meta(&MetaKey::Slot).ok().flatten().as_deref(),
            Some("pgcdc")
        );

        let (_d, mut w) = writer();
        w.set_meta(&MetaKey::SystemId, "7")
            .unwrap_or_else(|e| panic!("{e}"));
        w.append(&[], Some(Lsn(0x300)), &[])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(run(&mut *w, Some(0x400)).is_err());

        // Created by the previous release, nothing confirmed yet.
        let (_d, mut w) = writer();
        w.set_meta(&MetaKey::SystemId, "7")
            .unwrap_or_else(|e| panic!("{e}"));
        w.set_meta(&MetaKey::CreatedSlot, "pgcdc")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(run(&mut *w, Some(0x400)), Ok(SlotPlan::Use));
    }
}
