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
    /// The slot `slot`, lost as `loss`, seen on `host`, with the journal at `journaled`.
    pub(crate) fn new(
        slot: &str,
        loss: Loss,
        host: String,
        journaled: pgcdc_schema::Lsn,
    ) -> SlotLost {
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

/// Keys checked against the table per query.
const KEY_BATCH: usize = 1_000;

/// What a recovery needs besides the journal queue.
pub(crate) struct Recovery<'a> {
    /// The source.
    pub url: &'a crate::replication::SourceUrl,
    /// The slot to recreate.
    pub slot: &'a str,
    /// `source.failover_slot`.
    pub failover_slot: Option<bool>,
    /// The state store (resyncs are queued there).
    pub store: &'a crate::journal::Store,
    /// The captured tables.
    pub tables: Vec<pgcdc_schema::TableName>,
}

/// Why a recovery could not finish.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// The source failed (transient or not, as the error says).
    #[error(transparent)]
    Source(#[from] ReplicationError),
    /// The journal failed.
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    /// The journal thread is gone.
    #[error("the journal writer stopped")]
    JournalGone,
    /// The new slot starts before what the journal holds.
    #[error(
        "the recreated slot {slot} starts at {at}, before what the journal already holds (up to \
         {journaled}): the new primary's history is behind the old one's (it had not received \
         everything when it was promoted), so changes journaled from the old primary after {at} \
         are not in the new primary's history and new ones would collide with their positions — \
         fix: drop the slot, point [state] dir at a new directory and start with \
         snapshot = \"initial\" (sinks receive every row again)"
    )]
    Behind {
        /// The slot.
        slot: String,
        /// Its consistent point.
        at: pgcdc_schema::Lsn,
        /// The journal's confirmed LSN.
        journaled: pgcdc_schema::Lsn,
    },
}

/// `source.on_slot_lost = "resync"`, after the slot is recreated at `at` (its
/// consistent point): queues a resync of every table to every sink, and journals a
/// delete (just before `at`) for every key pgcdc knows that the table no longer has.
/// Checked after the slot exists: a row deleted later arrives as a delete from the
/// stream, a row inserted later as an insert after ours.
pub(crate) async fn resync_all(
    rec: &Recovery<'_>,
    at: pgcdc_schema::Lsn,
    journal: &super::journal_thread::JournalSender,
) -> Result<(), RecoveryError> {
    use super::changes::EventTable;
    use super::journal_thread::JournalCommand;
    use crate::journal::{Access, JournalEntry, ResyncKind, ResyncRequestError};
    use pgcdc_schema::event::Name;

    // Just before the slot's first change. Repeated after a crash, deletes already
    // journaled are skipped by position.
    let before = pgcdc_schema::Lsn(at.0.saturating_sub(1));
    let client = crate::replication::connect_sql(rec.url).await?;
    let mut seq: u32 = 0;
    let now = chrono::Utc::now();
    let now_text = Name::from(now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
    for table in &rec.tables {
        let name = table.to_string();
        let store = rec.store.clone();
        let known = {
            let name = name.clone();
            tokio::task::spawn_blocking(move || store.open(Access::Create)?.known_keys(&name))
                .await
                .map_err(|_| RecoveryError::JournalGone)??
        };
        let mut gone = Vec::new();
        for batch in known.chunks(KEY_BATCH) {
            gone.extend(missing_keys(&client, table, batch).await?);
        }
        tracing::warn!(table = %name, known = known.len(), gone = gone.len(), "slot lost: deleting the rows that vanished meanwhile, then resyncing the table");
        let (identity, names) = (Name::from(name.as_str()), EventTable::of(table));
        for key in gone {
            let event = pgcdc_schema::event::ChangeEvent {
                id: pgcdc_schema::EventId::from_position(before, seq),
                op: pgcdc_schema::Op::Delete,
                schema: names.schema.clone(),
                table: names.table.clone(),
                key: Some(key.clone()),
                old: Some(key),
                new: None,
                trigger: None,
                lsn: before,
                xid: None,
                commit_time: Some(now_text.clone()),
                unchanged_toast: Vec::new(),
                columns: None,
                previous: None,
                origin: Default::default(),
            };
            let entry = JournalEntry {
                table: identity.clone(),
                seq,
                commit_time_unix_us: Some(now.timestamp_micros()),
                event,
            };
            seq = seq.saturating_add(1);
            journal
                .send(JournalCommand::Change(Box::new(entry)))
                .await
                .map_err(|_| RecoveryError::JournalGone)?;
        }
    }
    journal
        .send(JournalCommand::Confirm(before))
        .await
        .map_err(|_| RecoveryError::JournalGone)?;
    // Queued after the deletes are on their way: the resync's reads come later in the stream.
    let store = rec.store.clone();
    let names: Vec<String> = rec.tables.iter().map(ToString::to_string).collect();
    tokio::task::spawn_blocking(move || -> Result<(), crate::journal::JournalError> {
        let mut journal = store.open(Access::Create)?;
        for table in names {
            match journal.request_resync(ResyncKind::Resync, &table, None, None) {
                Ok(_) | Err(ResyncRequestError::AlreadyActive { .. }) => {}
                Err(ResyncRequestError::Journal(e)) => return Err(e),
            }
        }
        Ok(())
    })
    .await
    .map_err(|_| RecoveryError::JournalGone)??;
    journal
        .send(JournalCommand::RecoveryDone)
        .await
        .map_err(|_| RecoveryError::JournalGone)?;
    crate::health::health().set_slot_lost(false);
    tracing::warn!(slot = rec.slot, at = %at, tables = rec.tables.len(), "slot lost: recreated; every table is resynced to every sink (source.on_slot_lost = \"resync\")");
    Ok(())
}

/// The keys of `batch` that `table` no longer has (compared column by column, typed by the table).
async fn missing_keys(
    client: &Client,
    table: &pgcdc_schema::TableName,
    batch: &[pgcdc_schema::event::Row],
) -> Result<Vec<pgcdc_schema::event::Row>, ReplicationError> {
    let Some(first) = batch.first() else {
        return Ok(Vec::new());
    };
    let cols: Vec<String> = first.keys().map(|c| pgcdc_schema::quote_ident(c)).collect();
    let t = table.quoted();
    let pairs = cols
        .iter()
        .map(|c| format!("t.{c} = r.{c}"))
        .collect::<Vec<_>>()
        .join(" AND ");
    let sql = format!(
        "SELECT k.i FROM jsonb_array_elements($1::text::jsonb) WITH ORDINALITY AS k(v, i) \
         CROSS JOIN LATERAL jsonb_populate_record(NULL::{t}, k.v) AS r \
         WHERE NOT EXISTS (SELECT 1 FROM {t} t WHERE {pairs})"
    );
    let json = serde_json::to_string(batch).unwrap_or_default();
    let rows = client
        .query(&sql, &[&json])
        .await
        .map_err(ReplicationError::Sql)?;
    Ok(rows
        .iter()
        .filter_map(|r| r.get::<_, i64>(0).checked_sub(1))
        .filter_map(|i| batch.get(usize::try_from(i).ok()?).cloned())
        .collect())
}

/// The recreated slot must start after what the journal holds; if not, it is dropped
/// again (a slot behind the journal would be taken for ours at the next start).
pub(crate) async fn check_ahead(
    client: &Client,
    slot: &str,
    at: pgcdc_schema::Lsn,
    journaled: pgcdc_schema::Lsn,
) -> Result<(), RecoveryError> {
    if at.0.saturating_sub(1) > journaled.0 {
        return Ok(());
    }
    client
        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .map_err(ReplicationError::Sql)?;
    Err(RecoveryError::Behind {
        slot: slot.to_owned(),
        at,
        journaled,
    })
}

/// Recreates the slot after a loss (on whichever host is the primary now) and
/// records it; returns its consistent point.
pub(crate) async fn recreate(
    rec: &Recovery<'_>,
    journal: &super::journal_thread::JournalSender,
) -> Result<pgcdc_schema::Lsn, RecoveryError> {
    let mut conn = crate::replication::ReplicationConnection::connect(rec.url).await?;
    let client = crate::replication::connect_sql(rec.url).await?;
    if find_loss(&client, rec.slot).await? == Some(Loss::WalLost) {
        client
            .execute("SELECT pg_drop_replication_slot($1)", &[&rec.slot])
            .await
            .map_err(ReplicationError::Sql)?;
    }
    let major = conn.server_major().unwrap_or(0);
    let failover = rec
        .failover_slot
        .unwrap_or(major >= crate::source::failover::FAILOVER_MAJOR);
    let created = conn.create_slot(rec.slot, false, failover).await?;
    conn.close().await;
    let at = pgcdc_schema::Lsn(created.consistent_point);
    let (tx, rx) = tokio::sync::oneshot::channel();
    journal
        .send(super::journal_thread::JournalCommand::Sync(tx))
        .await
        .map_err(|_| RecoveryError::JournalGone)?;
    let journaled = rx
        .await
        .map_err(|_| RecoveryError::JournalGone)?
        .confirmed_lsn;
    check_ahead(&client, rec.slot, at, journaled).await?;
    journal
        .send(super::journal_thread::JournalCommand::RecordSlot(
            rec.slot.to_owned(),
            at,
        ))
        .await
        .map_err(|_| RecoveryError::JournalGone)?;
    tracing::warn!(slot = rec.slot, at = %at, failover, "slot lost: recreated");
    Ok(at)
}
