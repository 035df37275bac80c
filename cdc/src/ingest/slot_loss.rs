//! A lost slot: missing on the source (after a failover to a standby that did not
//! have it: before PostgreSQL 17 slots are not copied to standbys, and on 17+ only
//! failover slots to standbys that synchronise them), or `wal_status = lost` (the
//! server removed WAL it still needed). Changes committed while no slot held them
//! never reach pgcdc; what happens then is `source.on_slot_lost`:
//!
//! - `fail` (default): stop, saying what happened and what to do;
//! - `resync`: recreate the slot and resync every table to every sink (see `recover`).
//!
//! Either way the loss is alerted: logged, counted (`pgcdc_slot_lost_total`) and
//! shown by `/readyz` until pgcdc recovers or stops.

use tokio_postgres::Client;

use crate::replication::ReplicationError;

/// How the slot was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// Not in `pg_replication_slots`.
    Missing,
    /// `wal_status = lost`.
    WalLost,
}

/// A lost slot, with what happened and what to do.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "replication slot {slot} {what} on the source ({host}): changes committed since pgcdc's last \
     position {journaled} may never reach it, and creating a new slot would skip them silently — \
     fix: set source.on_slot_lost = \"resync\" and restart, so pgcdc recreates the slot and resyncs \
     every table to every sink (deleting the rows that vanished meanwhile); or re-send by hand with \
     `pgcdc teardown`, a restart and `pgcdc resync --table ...`. To keep the slot across failovers, \
     use PostgreSQL 17+ failover slots (source.failover_slot) with standbys that have \
     sync_replication_slots = on"
)]
pub struct SlotLost {
    /// The slot.
    pub slot: String,
    /// How.
    pub loss: Loss,
    /// `what happened`, in words.
    what: &'static str,
    /// The host it was looked up on.
    pub host: String,
    /// What the journal holds.
    pub journaled: pgcdc_schema::Lsn,
}

impl SlotLost {
    fn new(slot: &str, loss: Loss, host: String, journaled: pgcdc_schema::Lsn) -> SlotLost {
        let what = match loss {
            Loss::Missing => {
                "is missing (dropped, or the source failed over to a standby that did not have it)"
            }
            Loss::WalLost => "has lost WAL it still needed (wal_status = lost)",
        };
        SlotLost {
            slot: slot.to_owned(),
            loss,
            what,
            host,
            journaled,
        }
    }
}

/// Looks the slot up; `Err(Some(loss))` when it is lost.
pub(crate) async fn find_loss(
    client: &Client,
    slot: &str,
) -> Result<Option<Loss>, ReplicationError> {
    let info = crate::source::slot_info(client, slot)
        .await
        .map_err(ReplicationError::Sql)?;
    Ok(match info {
        None => Some(Loss::Missing),
        Some(i) if i.wal_status.as_deref() == Some("lost") => Some(Loss::WalLost),
        Some(_) => None,
    })
}

/// Checks the slot before streaming; a lost one is alerted and returned as the error.
pub(crate) async fn check_slot(
    client: &Client,
    slot: &str,
    host: &str,
    journaled: pgcdc_schema::Lsn,
) -> Result<(), SlotLost> {
    match find_loss(client, slot).await {
        Ok(Some(loss)) => {
            let lost = SlotLost::new(slot, loss, host.to_owned(), journaled);
            alert(&lost);
            Err(lost)
        }
        // Could not look: START_REPLICATION will say what is wrong.
        Ok(None) | Err(_) => Ok(()),
    }
}

/// Log, metric, readiness.
pub(crate) fn alert(lost: &SlotLost) {
    tracing::error!(slot = %lost.slot, loss = ?lost.loss, host = %lost.host, journaled = %lost.journaled, "replication slot lost");
    crate::metrics::metrics().slot_lost.inc();
    crate::health::health().set_slot_lost(true);
}
