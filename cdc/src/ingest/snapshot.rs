//! The initial snapshot (`source.snapshot = "initial"`): when pgcdc creates
//! the slot, it exports the slot's snapshot and copies every table under
//! `SET TRANSACTION SNAPSHOT`, chunk by chunk in primary-key order (`COPY (SELECT
//! ...) TO STDOUT`, see `resync::ChunkStream`), as `read`
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

use pgcdc_schema::event::{Name, Row};

use tokio::sync::mpsc;

use super::resync::{
    chunk_sql, shape, ChunkStream, CopyLimits, ResyncError, TableShape, CHUNK_BYTES, CHUNK_ROWS,
};

use crate::config::Config;
use crate::ingest::catalog::Catalog;
use crate::ingest::changes::{read_event, EventTable};
use crate::journal::{
    Access, JournalEntry, JournalWriter, ResyncKind, ResyncProgress, ResyncRequestError, Store,
};
use crate::replication::{connect_sql, SourceUrl};

/// One COPY of the initial snapshot reads this many rows. Under the exported
/// snapshot no window holds them: they are journaled `CHUNK_ROWS` (or
/// `CHUNK_BYTES`) at a time as they arrive, each write with the key to resume
/// after. A COPY per 2,000 rows cost a query and its index descent each
/// (`scripts/bench-snapshot`, 1M rows: about a tenth faster this way, see
/// docs/benchmarks.md); the LIMIT keeps the plan an index scan in key order,
/// not a sort of the whole table before the first row.
const SNAPSHOT_COPY: CopyLimits = CopyLimits {
    rows: 50_000,
    bytes: 256 << 20,
};

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
    let now_text =
        Name::from(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
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
        // Debezium's snapshot marks: first/last row of the snapshot, of each table. A
        // table resumed after a crash has had its first row already.
        let plan = TablePlan {
            resync_id: resync.id,
            table: table.clone(),
            last_key: resync.last_key.clone(),
            first_table: index == 0,
            last_table: index + 1 == tables,
            lsn: Lsn(lsn),
            seq,
            now_us,
            now_text: now_text.clone(),
        };
        let started = std::time::Instant::now();
        let mut rows_in_table = 0u64;
        // Two stages, so that reading and decoding the next chunk overlaps the journal
        // write of this one: a task reads the COPY into events, this one journals them.
        // One chunk waits in the channel at most: three chunks in memory.
        let (tx, mut rx) = mpsc::channel(1);
        let reading = tokio::spawn(read_table(catalog, shape, plan, tx));
        while let Some(chunk) = rx.recv().await {
            let Journaled { entries, progress } = chunk;
            let n = entries.len() as i64;
            let refs: Vec<_> = entries.iter().map(|e| (e, None)).collect();
            append(writer, &refs, &[progress])?;
            crate::metrics::metrics().resync_rows.inc_by(n as u64);
            rows_in_table += n as u64;
        }
        let (returned, next_seq) = reading
            .await
            .map_err(|e| ResyncError::Definite(format!("snapshot task failed: {e}")))?;
        catalog = returned;
        seq = next_seq?;
        total += rows_in_table;
        let secs = started.elapsed().as_secs_f64();
        tracing::info!(table = %table, rows = rows_in_table, seconds = secs, rows_per_s = (rows_in_table as f64 / secs.max(1e-6)) as u64, "snapshot of table journaled");
    }
    catalog.client().batch_execute("COMMIT").await?;
    Ok(total)
}

/// What one table's copy needs besides its connection and shape.
struct TablePlan {
    resync_id: i64,
    table: TableName,
    /// Where a copy interrupted by a crash resumes; `None` from the first row.
    last_key: Option<String>,
    first_table: bool,
    last_table: bool,
    lsn: Lsn,
    /// Journal position of the table's first row.
    seq: u32,
    now_us: i64,
    now_text: Name,
}

/// One chunk's events with its progress, journaled in one write.
struct Journaled {
    entries: Vec<JournalEntry>,
    progress: ResyncProgress,
}

/// Reads a table chunk by chunk into `tx`. Gives back the connection, and the journal
/// position after the table's last row.
async fn read_table(
    catalog: Catalog,
    shape: TableShape,
    plan: TablePlan,
    tx: mpsc::Sender<Journaled>,
) -> (Catalog, Result<u32, ResyncError>) {
    let result = read_chunks(&catalog, &shape, plan, &tx).await;
    (catalog, result)
}

async fn read_chunks(
    catalog: &Catalog,
    shape: &TableShape,
    plan: TablePlan,
    tx: &mpsc::Sender<Journaled>,
) -> Result<u32, ResyncError> {
    let TablePlan {
        resync_id,
        table,
        mut last_key,
        first_table,
        last_table,
        lsn,
        mut seq,
        now_us,
        now_text,
    } = plan;
    let mut first_row = last_key.is_none();
    let column_types = shape.column_types();
    let table_text = Name::from(table.to_string());
    let event_table = EventTable::of(&table);
    loop {
        let sql = chunk_sql(&table, shape, None, last_key.as_deref(), SNAPSHOT_COPY)?;
        let mut chunk = ChunkStream::start(catalog.client(), &sql, shape, SNAPSHOT_COPY).await?;
        let mut entries = Vec::with_capacity(CHUNK_ROWS as usize);
        // A row is made an event once the next one arrived: whether it is the
        // table's last row is known only at the end of the COPY.
        let mut held: Option<(Row, Row)> = None;
        // COPY text bytes read up to the last journal write.
        let mut written_bytes = 0;
        loop {
            // The held row fills this write: its key (the last read) is where the
            // next write starts after a crash.
            let full = held.is_some()
                && (entries.len() + 1 >= CHUNK_ROWS as usize
                    || chunk.bytes() - written_bytes >= CHUNK_BYTES);
            let write_key = full.then(|| chunk.last_key()).flatten();
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
                    resync_id,
                    &event_table,
                    key,
                    row,
                    lsn,
                    now_text.clone(),
                    origin,
                );
                entries.push(JournalEntry {
                    table: table_text.clone(),
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
            if let Some(key) = write_key {
                // The COPY goes on; what is read so far is journaled now.
                written_bytes = chunk.bytes();
                let entries =
                    std::mem::replace(&mut entries, Vec::with_capacity(CHUNK_ROWS as usize));
                if !write(tx, resync_id, entries, Some(key), false).await {
                    return Ok(seq);
                }
            }
        }
        let done = chunk.done();
        last_key = chunk.last_key();
        drop(chunk);
        if !write(tx, resync_id, entries, last_key.clone(), done).await || done {
            return Ok(seq);
        }
    }
}

/// Hands one journal write to the journaling side, with the key a restart
/// resumes after; false once that side stopped (on an error of its own, which
/// it reports).
async fn write(
    tx: &mpsc::Sender<Journaled>,
    id: i64,
    entries: Vec<JournalEntry>,
    last_key: Option<String>,
    done: bool,
) -> bool {
    let progress = ResyncProgress {
        id,
        last_key,
        rows: entries.len() as i64,
        done,
    };
    tx.send(Journaled { entries, progress }).await.is_ok()
}

/// One journal write. It blocks (SQLite, fsync): on a multi-threaded runtime the
/// worker hands its other tasks (the COPY being read) to another thread meanwhile.
fn append(
    writer: &mut dyn JournalWriter,
    entries: &[(&JournalEntry, Option<&str>)],
    progress: &[ResyncProgress],
) -> Result<(), ResyncError> {
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi_thread {
        tokio::task::block_in_place(|| writer.append(entries, None, progress))?;
    } else {
        writer.append(entries, None, progress)?;
    }
    Ok(())
}
