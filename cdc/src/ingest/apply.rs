//! Applying one decoded pgoutput message: the decoder's state, the change it
//! makes, and the journal command it sends. A live session
//! ([`super::reader`]) and a staged transaction's replay
//! ([`super::streaming`]) both go through [`handle`], so a streamed
//! transaction is journaled exactly as an unstreamed one.

use pgcdc_schema::event::Name;
use pgcdc_schema::{Lsn, TableName};
use tokio::sync::oneshot;

use super::changes::{ChangeBuilder, ChangeError, EventTable, RelationInfo};
use super::journal_thread::{JournalCommand, JournalSender};
use super::reader_config::ReaderConfig;
use super::reader_error::ReaderError;
use super::watermark::{self, Watermark};
use crate::ingest::catalog::Catalog;
use crate::journal::{JournalHead, ResyncChunk, ResyncProgress};
use crate::pgoutput::Message;
use crate::source::ddl_capture;
use crate::source::identity::Capture;

pub(super) async fn send(journal: &JournalSender, cmd: JournalCommand) -> Result<(), ReaderError> {
    journal
        .send(cmd)
        .await
        .map_err(|_| ReaderError::JournalGone)
}

pub(super) async fn sync(journal: &JournalSender) -> Result<JournalHead, ReaderError> {
    let (tx, rx) = oneshot::channel();
    send(journal, JournalCommand::Sync(tx)).await?;
    rx.await.map_err(|_| ReaderError::JournalGone)
}

/// What the reader keeps across messages: the decoder's relations and transaction,
/// and the captured relations.
pub(super) struct SessionState<'a> {
    pub(super) builder: &'a mut ChangeBuilder,
    pub(super) capture: &'a mut Capture,
    /// The slot's recorded creation point (see `ReaderConfig::slot_floor`).
    pub(super) floor: Lsn,
}

pub(super) async fn handle(
    message: Message,
    at: Lsn,
    state: &mut SessionState<'_>,
    catalog: &mut Catalog,
    cfg: &ReaderConfig,
    journal: &JournalSender,
) -> Result<(), ReaderError> {
    let builder = &mut *state.builder;
    builder.message_at(at);
    let change_err = |source| ReaderError::Change { lsn: at, source };
    let entry = match message {
        Message::Begin {
            final_lsn,
            commit_time,
            xid,
        } => {
            builder.begin(final_lsn, xid, commit_time);
            cfg.windows.on_begin(xid, Lsn(final_lsn), commit_time);
            None
        }
        Message::Commit { end_lsn, .. } => {
            builder.commit(Lsn(end_lsn));
            send(journal, JournalCommand::Confirm(Lsn(end_lsn))).await?;
            None
        }
        Message::Relation(rel) => {
            super::visibility::wait_for_stream(catalog.client(), &cfg.windows).await?;
            let mut kinds = Vec::with_capacity(rel.columns.len());
            let mut type_names = Vec::with_capacity(rel.columns.len());
            for c in &rel.columns {
                kinds.push(catalog.resolve_type(c.type_oid).await?);
                type_names.push(catalog.type_name(c.type_oid).await?);
            }
            let pk = catalog.primary_key(rel.id).await?;
            let identity = super::placement::place_relation(
                &rel,
                at,
                state.capture,
                catalog,
                &cfg.publication,
            )
            .await?;
            let info = RelationInfo::new(&rel, kinds, type_names, &pk, identity);
            let outcome = builder.relation(rel.id, info);
            if let Some((table, at, columns)) = outcome.stage {
                send(journal, JournalCommand::Shape(table, at, columns)).await?;
            }
            outcome.event
        }
        Message::Insert { relation_id, new } => {
            builder.insert(relation_id, &new).map_err(change_err)?
        }
        Message::Update {
            relation_id,
            old,
            new,
        } => builder
            .update(relation_id, old.as_ref(), &new)
            .map_err(change_err)?,
        Message::Delete { relation_id, old } => {
            builder.delete(relation_id, &old).map_err(change_err)?
        }
        Message::Truncate { relation_ids, .. } => {
            for id in relation_ids {
                if let Some(entry) = builder.truncate(id).map_err(change_err)? {
                    cfg.windows.on_change(&entry.event);
                    send(journal, JournalCommand::Change(Box::new(entry))).await?;
                }
            }
            None
        }
        Message::Message {
            prefix, content, ..
        } if prefix == watermark::PREFIX => {
            if let Watermark::High(window) = cfg.windows.on_message(&content) {
                journal_chunk(window, builder, journal)
                    .await
                    .map_err(|e| match e {
                        ChunkError::Change(source) => change_err(source),
                        ChunkError::Reader(e) => e,
                    })?;
            }
            None
        }
        Message::Message {
            prefix, content, ..
        } if prefix == ddl_capture::PREFIX => {
            // Written by source.ddl_capture's event trigger (inside the DDL's transaction).
            match serde_json::from_slice::<ddl_capture::DdlMessage>(&content) {
                Ok(ddl) => match state.capture.tables.get(&ddl.oid).cloned() {
                    Some(identity) => {
                        let name = TableName {
                            schema: ddl.schema,
                            table: ddl.table,
                        };
                        let outcome = builder.ddl(&identity, &name, ddl.columns);
                        if let Some((table, at, columns)) = outcome.stage {
                            send(journal, JournalCommand::Shape(table, at, columns)).await?;
                        }
                        outcome.event
                    }
                    // Another table's DDL: not captured.
                    None => None,
                },
                Err(e) => {
                    tracing::warn!(lsn = %at, error = %e, "unreadable source.ddl_capture message; the change will be seen at the table's next write");
                    None
                }
            }
        }
        Message::Origin { .. } | Message::Type { .. } | Message::Message { .. } => None,
        // `streaming::Streams::step` takes these; staged messages replayed from the
        // store are data messages only.
        Message::StreamStart { .. }
        | Message::StreamStop
        | Message::StreamCommit { .. }
        | Message::StreamAbort { .. } => {
            return Err(ReaderError::UnexpectedStream { lsn: at });
        }
    };
    if let Some(entry) = entry {
        cfg.windows.on_change(&entry.event);
        send(journal, JournalCommand::Change(Box::new(entry))).await?;
    }
    Ok(())
}

enum ChunkError {
    Change(ChangeError),
    Reader(ReaderError),
}

/// At a high watermark: journals the chunk rows no change touched inside the window,
/// as read events of the watermark's transaction, with the resync's progress.
async fn journal_chunk(
    mut window: Box<watermark::Window>,
    builder: &mut ChangeBuilder,
    journal: &JournalSender,
) -> Result<(), ChunkError> {
    let rows = window.surviving_rows();
    let column_types = window
        .rows
        .as_ref()
        .map(|c| c.column_types.clone())
        .unwrap_or_default();
    let identity = Name::from(window.table.to_string());
    let names = EventTable::of(&window.table);
    let mut entries = Vec::with_capacity(rows.len());
    for (key, row) in rows {
        entries.push(
            builder
                .read(window.resync_id, &identity, &names, key, row, &column_types)
                .map_err(ChunkError::Change)?,
        );
    }
    let (last_key, done) = window
        .rows
        .as_ref()
        .map_or((None, false), |c| (c.last_key.clone(), c.done));
    crate::metrics::metrics()
        .resync_rows
        .inc_by(entries.len() as u64);
    tracing::debug!(resync = window.resync_id, table = %window.table, rows = entries.len(), "resync chunk journaled");
    let progress = ResyncProgress {
        id: window.resync_id,
        last_key,
        rows: entries.len() as i64,
        done,
    };
    let reply = match window.done.take() {
        Some(reply) => reply,
        None => oneshot::channel().0,
    };
    let chunk = ResyncChunk {
        entries,
        target: window.target.clone(),
        progress,
    };
    send(journal, JournalCommand::Resync(Box::new(chunk), reply))
        .await
        .map_err(ChunkError::Reader)
}
