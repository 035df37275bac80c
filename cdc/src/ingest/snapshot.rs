//! The initial snapshot (`source.snapshot = "initial"`): when pgcdc creates
//! the slot, it exports the slot's snapshot and copies every table under
//! `SET TRANSACTION SNAPSHOT`, chunk by chunk in primary-key order, as `read`
//! events journaled ahead of the stream (positions just before the slot's
//! consistent point). Each row is in the snapshot or in the stream, never
//! both missing, never stale.
//!
//! Each table is a resync of kind `snapshot`, queued *before* the slot is
//! created and advanced per chunk in the journal transaction of the chunk's
//! rows. The exported snapshot dies with the replication connection, so after
//! a crash the tables' remaining chunks are read by the resync driver with
//! watermarks (`ingest::resync`), which is just as exact.

use pgcdc_schema::{Lsn, Origin, SnapshotMark, TableName};

use pgcdc_schema::event::Row;

use super::resync::{chunk_sql, shape, ChunkStream, ResyncError};
use crate::config::Config;
use crate::ingest::catalog::Catalog;
use crate::ingest::changes::read_event;
use crate::journal::{
    Access, JournalEntry, JournalWriter, ResyncKind, ResyncProgress, ResyncRequestError, Store,
};
use crate::replication::{connect_sql, SourceUrl};

/// Queues one snapshot resync per captured table (kept if already queued). Called
/// before the slot is created: a crash after creating it leaves the work queued.
pub(crate) fn queue(config: &Config, store: &Store) -> Result<(), ResyncError> {
    let mut journal = store.open(Access::Create)?;
    let mut tables: Vec<String> = config.tables().iter().map(|t| t.to_string()).collect();
    tables.sort();
    for table in tables {
        match journal.request_resync(ResyncKind::Snapshot, &table, None, None) {
            Ok(_) | Err(ResyncRequestError::AlreadyActive { .. }) => {}
            Err(ResyncRequestError::Journal(e)) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Copies the queued snapshot tables under the exported `snapshot`, journaling each
/// chunk with its progress. Returns the rows copied.
pub(crate) async fn copy(
    url: &SourceUrl,
    published: &[crate::config::TableEntry],
    snapshot: &str,
    consistent_point: Lsn,
    writer: &mut dyn JournalWriter,
    store: &Store,
) -> Result<u64, ResyncError> {
    let journal = store.open(Access::Create)?;
    let queued: Vec<_> = journal
        .resyncs(0)?
        .into_iter()
        .filter(|r| r.kind == "snapshot" && (r.state == "pending" || r.state == "running"))
        .collect();
    drop(journal);
    let mut catalog = Catalog::new(connect_sql(url).await?);
    catalog
        .client()
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
            pgcdc_schema::quote_literal(snapshot)
        ))
        .await?;
    // Snapshot rows sort before every streamed change (those commit at or after the
    // consistent point) and after anything already journaled.
    let floor = (consistent_point.0.saturating_sub(1), 0u32);
    let (lsn, mut seq) = match writer.last_position() {
        Some(last) if last >= floor => (last.0, last.1.saturating_add(1)),
        _ => floor,
    };
    let now_us = chrono::Utc::now().timestamp_micros();
    let now_text = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let mut total = 0u64;
    let tables = queued.len();
    for (index, resync) in queued.into_iter().enumerate() {
        let table = TableName::parse(&resync.table).map_err(ResyncError::Definite)?;
        // A table that cannot be copied (no primary key, gone) fails its own resync,
        // visible in `status`; the other tables and the stream go on.
        let entry = published.iter().find(|e| e.name == table);
        let shape = match shape(&mut catalog, &table, entry).await {
            Ok(shape) => shape,
            Err(ResyncError::Definite(why)) => {
                tracing::error!(table = %table, error = %why, "cannot snapshot this table");
                store.open(Access::Create)?.fail_resync(resync.id, &why)?;
                continue;
            }
            Err(e) => return Err(e),
        };
        let mut last_key = resync.last_key.clone();
        // Debezium's snapshot marks: first/last row of the snapshot, of each table. A
        // table resumed after a crash has had its first row already.
        let (first_table, last_table) = (index == 0, index + 1 == tables);
        let mut first_row = last_key.is_none();
        let column_types = shape.column_types();
        let started = std::time::Instant::now();
        let mut rows_in_table = 0u64;
        loop {
            let sql = chunk_sql(&table, &shape, None, last_key.as_deref())?;
            let mut chunk = ChunkStream::start(catalog.client(), &sql, &shape).await?;
            let mut entries = Vec::new();
            // A row is made an event once the next one arrived: whether it is the
            // table's last row is known only at the end of the COPY.
            let mut held: Option<(Row, Row)> = None;
            loop {
                let next = chunk.next().await?;
                if let Some((key, row)) = held.take() {
                    let last_row = next.is_none() && chunk.done();
                    let mark = SnapshotMark::of(first_table, last_table, first_row, last_row);
                    first_row = false;
                    let origin = Origin {
                        snapshot: Some(mark),
                        column_types: column_types.clone(),
                        ..Origin::default()
                    };
                    let event = read_event(
                        resync.id,
                        &table,
                        key,
                        row,
                        Lsn(lsn),
                        now_text.clone(),
                        origin,
                    );
                    entries.push(JournalEntry {
                        table: table.to_string(),
                        seq,
                        commit_time_unix_us: Some(now_us),
                        event,
                    });
                    seq = seq.checked_add(1).ok_or_else(|| {
                        ResyncError::Definite(
                            "more than 4 billion snapshot rows; use snapshot = \"never\" and `pgcdc resync` per table".into(),
                        )
                    })?;
                }
                match next {
                    Some(row) => held = Some(row),
                    None => break,
                }
            }
            let n = entries.len() as i64;
            let progress = ResyncProgress {
                id: resync.id,
                last_key: chunk.last_key(),
                rows: n,
                done: chunk.done(),
            };
            let refs: Vec<_> = entries.iter().map(|e| (e, None)).collect();
            writer.append(&refs, None, &[progress])?;
            crate::metrics::metrics().resync_rows.inc_by(n as u64);
            rows_in_table += n as u64;
            if chunk.done() {
                break;
            }
            last_key = chunk.last_key();
        }
        total += rows_in_table;
        let secs = started.elapsed().as_secs_f64();
        tracing::info!(table = %table, rows = rows_in_table, seconds = secs, rows_per_s = (rows_in_table as f64 / secs.max(1e-6)) as u64, "snapshot of table journaled");
    }
    catalog.client().batch_execute("COMMIT").await?;
    Ok(total)
}
