//! The resync driver: the SQL half of the watermark algorithm (see
//! `ingest::watermark` for the reader's half). It polls the journal for
//! the next queued resync, then per chunk: opens a window, writes the low
//! watermark, reads the next rows by primary-key range with `COPY (SELECT ...)
//! TO STDOUT` (no lock: a plain query, in a READ ONLY transaction with a statement timeout,
//! because it carries the operator's `where`, whose snapshot sees every commit the
//! stream carried before the low watermark: `ingest::visibility`), hands them to the window, writes the high
//! watermark and waits until the reader has journaled the chunk.
//!
//! Transient (retry the chunk): connection loss, a window the reader did not
//! close in time; a journal error ends the driver, whose supervisor restarts it. Definite (the resync is marked failed, with the reason): a
//! missing table, a table without primary key, a `where` that does not parse,
//! that tries to write, or whose chunk query outlasts `source.resync_statement_timeout`.

use std::sync::Arc;
use std::time::Duration;

use pgcdc_schema::event::Row;
use pgcdc_schema::row::Packer;
use pgcdc_schema::{quote_ident, quote_literal, TableName};
use tokio::sync::{oneshot, watch};

use crate::config::TableEntry;
use crate::ingest::catalog::Catalog;
use crate::ingest::copy_text::{CopyReader, CopyTextError};
use crate::ingest::watermark::{self, ChunkRows, Window, Windows};
use crate::journal::{Access, JournalError, ResyncInfo, StateStore, Store};
use crate::replication::{connect_sql, ReplicationError, SourceUrl};
use crate::supervise::{Backoff, TaskHealth};

/// Rows per chunk: bounds the memory of a window and the size of one journal write.
pub(crate) const CHUNK_ROWS: i64 = 2_000;

/// How much one chunk's COPY reads: rows (its `LIMIT`) and bytes of text.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CopyLimits {
    pub(crate) rows: i64,
    pub(crate) bytes: usize,
}

/// A resync chunk, which its window holds in memory until the high watermark.
pub(crate) const CHUNK: CopyLimits = CopyLimits {
    rows: CHUNK_ROWS,
    bytes: CHUNK_BYTES,
};

/// How often the journal is polled for new or cancelled resyncs.
const POLL: Duration = Duration::from_secs(1);

/// How long the reader may take to reach a chunk's high watermark before the chunk
/// is tried again (a reader paused on a full journal, or far behind).
const WINDOW_TIMEOUT: Duration = Duration::from_secs(120);

/// How long the driver waits before reading again a chunk the reader dropped (its
/// SELECT missed a transaction: see `watermark`; it becomes visible meanwhile),
/// doubling up to a second while the same chunk keeps being dropped.
const DROPPED_RETRY: Duration = Duration::from_millis(20);

/// Why a resync could not go on.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ResyncError {
    /// The journal failed (EMFILE, a lock held too long): the driver is restarted.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The source failed; the chunk is retried.
    #[error("source: {0}")]
    Source(#[from] ReplicationError),
    /// The request cannot be carried out as given.
    #[error("{0}")]
    Definite(String),
}

impl From<tokio_postgres::Error> for ResyncError {
    fn from(e: tokio_postgres::Error) -> Self {
        // Errors the server reports about our query (bad `where`, missing column)
        // will not go away by retrying; connection errors will.
        match e.code() {
            Some(code) if !code.code().starts_with("08") && !code.code().starts_with("57") => {
                ResyncError::Definite(crate::source::sql_message(&e))
            }
            _ => ResyncError::Source(ReplicationError::Sql(e)),
        }
    }
}

/// A table's shape as a chunk query needs it.
pub(crate) struct TableShape {
    columns: Vec<(String, pgcdc_schema::value::PgType)>,
    key: Vec<String>,
    /// The publication's row filter for the table (`source.tables` `where`): a copy
    /// reads only the rows the stream would carry.
    row_filter: Option<String>,
    /// The column names, shared by the rows read.
    names: pgcdc_schema::row::Names,
}

impl TableShape {
    /// Each column's type name.
    pub(crate) fn column_types(&self) -> pgcdc_schema::event::ColumnTypes {
        crate::ingest::changes::column_types(&self.columns)
    }
}

pub(crate) async fn with_journal<T: Send + 'static>(
    store: Store,
    f: impl FnOnce(&mut dyn StateStore) -> Result<T, JournalError> + Send + 'static,
) -> Result<T, ResyncError> {
    tokio::task::spawn_blocking(move || {
        let mut reader = store.open(Access::Create)?;
        f(&mut *reader)
    })
    .await
    .map_err(|e| ResyncError::Definite(format!("journal task failed: {e}")))?
    .map_err(ResyncError::from)
}

/// Runs queued resyncs one after another until `shutdown`. A source error retries
/// the chunk here, with backoff; a journal error (EMFILE, a lock held too long) ends
/// the run, and its supervisor (`supervise`) restarts it: the resync
/// resumes from the progress the journal holds.
pub(crate) async fn run(
    url: SourceUrl,
    published: Arc<[TableEntry]>,
    store: Store,
    statement_timeout: Duration,
    windows: Windows,
    mut shutdown: watch::Receiver<bool>,
    status: TaskHealth,
) -> Result<(), ResyncError> {
    let mut backoff = Backoff::new(POLL, Duration::from_secs(30));
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        let next = with_journal(store.clone(), |j| j.next_resync()).await?;
        let mut wait = POLL;
        match next {
            None => status.ok(),
            Some(resync) => match one(
                &url,
                &published,
                &store,
                statement_timeout,
                &windows,
                &resync,
                &mut shutdown,
            )
            .await
            .inspect(|()| windows.finished())
            {
                Ok(()) => {
                    backoff.reset();
                    status.ok();
                }
                Err(ResyncError::Definite(why)) => {
                    tracing::error!(resync = resync.id, table = %resync.table, error = %why, "resync failed");
                    let id = resync.id;
                    with_journal(store.clone(), move |j| j.fail_resync(id, &why)).await?;
                    status.ok();
                }
                Err(ResyncError::Journal(e)) => return Err(ResyncError::Journal(e)),
                Err(e) => {
                    wait = backoff.next_delay();
                    let why = crate::fd_limit::explain(e.to_string());
                    status.failing(&format!("resync {}: {why}", resync.id));
                    tracing::warn!(resync = resync.id, error = %why, retry_in_ms = wait.as_millis() as u64, "resync interrupted; retrying the chunk");
                }
            },
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return Ok(()),
        }
    }
}

/// The table's columns and key as a copy reads them: with `published` (its
/// `source.tables` entry), only the published columns and rows.
pub(crate) async fn shape(
    catalog: &mut Catalog,
    table: &TableName,
    published: Option<&TableEntry>,
) -> Result<TableShape, ResyncError> {
    let oid: Option<u32> = catalog
        .client()
        .query_opt(
            "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2",
            &[&table.schema, &table.table],
        )
        .await?
        .map(|r| r.get(0));
    let oid = oid.ok_or_else(|| {
        ResyncError::Definite(format!(
            "table {table} does not exist at the source; check the name (schema.table)"
        ))
    })?;
    let rows = catalog
        .client()
        .query(
            "SELECT attname::text, atttypid FROM pg_attribute \
             WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[&oid],
        )
        .await?;
    let mut columns = Vec::with_capacity(rows.len());
    for r in rows {
        let name: String = r.get(0);
        let listed = published
            .and_then(|p| p.columns.as_ref())
            .is_none_or(|list| list.contains(&name));
        if listed {
            let kind = catalog.resolve_type(r.get(1)).await?;
            columns.push((name, kind));
        }
    }
    let key = catalog.primary_key(oid).await?;
    if key.is_empty() {
        return Err(ResyncError::Definite(format!(
            "table {table} has no primary key: resync reads by key ranges; add a primary key"
        )));
    }
    Ok(TableShape {
        names: crate::ingest::changes::column_names(&columns),
        columns,
        key,
        row_filter: published.and_then(|p| p.row_filter.clone()),
    })
}

/// The chunk query: the next `CHUNK_ROWS` rows after `$1` (the last key, JSON of text
/// values, parsed by the columns' own input functions) in key order.
/// The chunk's `SELECT`: the rows after `after` (the previous chunk's last key, as
/// JSON) in key order. Columns are selected as they are, not cast to text: COPY's text
/// format sends each in its type's output format, as pgoutput sends it (a `::text`
/// cast differs: bool gives `true`, char(n) loses its padding, inet shows its netmask).
pub(crate) fn chunk_sql(
    table: &TableName,
    shape: &TableShape,
    where_sql: Option<&str>,
    after: Option<&str>,
    limit: CopyLimits,
) -> Result<String, ResyncError> {
    let q = |s: &str| -> Result<String, ResyncError> { Ok(quote_ident(s)) };
    let mut cols = Vec::with_capacity(shape.columns.len());
    for (c, _) in &shape.columns {
        cols.push(format!("t.{}", q(c)?));
    }
    let mut key_t = Vec::new();
    let mut key_r = Vec::new();
    for k in &shape.key {
        key_t.push(format!("t.{}", q(k)?));
        key_r.push(format!("r.{}", q(k)?));
    }
    let rel = format!("{}.{}", q(&table.schema)?, q(&table.table)?);
    let mut conds = Vec::new();
    if let Some(after) = after {
        conds.push(format!(
            "ROW({}) > (SELECT {} FROM json_populate_record(NULL::{rel}, {}::text::json) r)",
            key_t.join(", "),
            key_r.join(", "),
            quote_literal(after)
        ));
    }
    for w in [shape.row_filter.as_deref(), where_sql]
        .into_iter()
        .flatten()
        .filter(|w| !w.trim().is_empty())
    {
        conds.push(format!("({w})"));
    }
    let where_clause = if conds.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conds.join(" AND "))
    };
    Ok(format!(
        "SELECT {} FROM {rel} t{where_clause} ORDER BY {} LIMIT {}",
        cols.join(", "),
        key_t.join(", "),
        limit.rows
    ))
}

async fn emit(client: &tokio_postgres::Client, content: &str) -> Result<(), ResyncError> {
    client
        .execute(
            "SELECT pg_logical_emit_message(true, $1, $2)",
            &[&watermark::PREFIX, &content],
        )
        .await?;
    Ok(())
}

/// Bytes of COPY text one chunk holds at most (besides its last row): with
/// `CHUNK_ROWS`, bounds a window's memory and one journal write, whatever the rows' width.
pub(crate) const CHUNK_BYTES: usize = 8 << 20;

/// One chunk's rows, streamed from `COPY (<chunk SELECT>) TO STDOUT` and decoded one
/// at a time as the stream decodes them. COPY's text format is each value in its
/// type's output format, under the session settings the replication connection uses
/// (`replication::sql`), so a copied row renders exactly as the same row streamed.
pub(crate) struct ChunkStream<'a> {
    reader: CopyReader,
    shape: &'a TableShape,
    /// Index in `columns` of each key column, in column order (the last key's order).
    key_columns: Vec<usize>,
    /// Index in `columns` of each key column, in the key's order (a row's key).
    key_order: Vec<usize>,
    /// The last row's key columns as received (text; `None` for NULL).
    last_key: Vec<Option<String>>,
    rows: i64,
    bytes: usize,
    limits: CopyLimits,
    /// The COPY ended (every row the LIMIT allowed was read).
    ended: bool,
}

impl<'a> ChunkStream<'a> {
    /// Starts the COPY of `sql` (a [`chunk_sql`] query made with `limits`).
    pub(crate) async fn start(
        client: &tokio_postgres::Client,
        sql: &str,
        shape: &'a TableShape,
        limits: CopyLimits,
    ) -> Result<Self, ResyncError> {
        let copy = client.copy_out(&format!("COPY ({sql}) TO STDOUT")).await?;
        let key_columns = shape
            .columns
            .iter()
            .enumerate()
            .filter(|(_, (name, _))| shape.key.contains(name))
            .map(|(i, _)| i)
            .collect();
        let key_order = shape
            .key
            .iter()
            .filter_map(|k| shape.columns.iter().position(|(name, _)| name == k))
            .collect();
        Ok(ChunkStream {
            reader: CopyReader::new(copy),
            shape,
            key_columns,
            key_order,
            last_key: Vec::new(),
            rows: 0,
            bytes: 0,
            limits,
            ended: false,
        })
    }

    /// The next row (key and full row), or `None` once the chunk is over: the COPY
    /// ended, or the chunk holds its limit of bytes (the rest is the next chunk's;
    /// the connection discards what the server still sends of this COPY).
    pub(crate) async fn next(&mut self) -> Result<Option<(Row, Row)>, ResyncError> {
        if self.ended || self.bytes >= self.limits.bytes {
            return Ok(None);
        }
        let Some(line) = self.reader.next().await.map_err(copy_error)? else {
            self.ended = true;
            return Ok(None);
        };
        let columns = &self.shape.columns;
        if line.len() != columns.len() {
            return Err(ResyncError::Definite(format!(
                "the chunk's COPY sent {} values for {} columns",
                line.len(),
                columns.len()
            )));
        }
        self.rows += 1;
        self.bytes += line.raw_len();
        let mut row = Packer::new(self.shape.names.clone(), line.raw_len() + 4 * columns.len());
        for (i, (_, kind)) in columns.iter().enumerate() {
            match line.get(i) {
                Some(t) => row.text(i, kind, t),
                None => row.null(i),
            }
        }
        let row = row.finish();
        self.last_key.clear();
        self.last_key.extend(
            self.key_columns
                .iter()
                .map(|&i| line.get(i).map(str::to_owned)),
        );
        let key = row.project(&self.key_order).unwrap_or_default();
        Ok(Some((key, row)))
    }

    /// Whether this is the table's last chunk: the COPY ended short of its `LIMIT`.
    /// Meaningful once [`next`](Self::next) returned `None`.
    pub(crate) fn done(&self) -> bool {
        self.ended && self.rows < self.limits.rows
    }

    /// Bytes of COPY text read so far.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// The last row's key (raw text values, JSON): the next chunk starts after it.
    pub(crate) fn last_key(&self) -> Option<String> {
        if self.rows == 0 {
            return None;
        }
        let key: serde_json::Map<String, serde_json::Value> = self
            .key_columns
            .iter()
            .zip(&self.last_key)
            .map(|(&i, text)| (self.shape.columns[i].0.clone(), serde_json::json!(text)))
            .collect();
        Some(serde_json::Value::Object(key).to_string())
    }
}

fn copy_error(e: CopyTextError) -> ResyncError {
    match e {
        CopyTextError::Source(e) => e.into(),
        CopyTextError::Malformed(why) => ResyncError::Definite(why),
    }
}

/// Reads one chunk into memory (a resync window holds it until its high watermark):
/// at most `CHUNK_ROWS` rows and about `CHUNK_BYTES` of text.
pub(crate) async fn select_chunk(
    client: &tokio_postgres::Client,
    sql: &str,
    shape: &TableShape,
) -> Result<ChunkRows, ResyncError> {
    let mut chunk = ChunkStream::start(client, sql, shape, CHUNK).await?;
    let mut rows = Vec::new();
    while let Some(row) = chunk.next().await? {
        rows.push(row);
    }
    Ok(ChunkRows {
        rows,
        last_key: chunk.last_key(),
        done: chunk.done(),
        column_types: shape.column_types(),
        unseen: None,
    })
}

/// Runs one chunk query in a READ ONLY transaction under `timeout` whose snapshot sees
/// every commit before the low watermark (see `ingest::visibility`): the `where` in it
/// comes from an operator (CLI, admin API, schedule) and runs with pgcdc's role, so a
/// function with side effects fails (`cannot execute ... in a read-only transaction`)
/// and a query that would hold the source for long is cancelled. (A read-only
/// transaction cannot stop functions that write nothing, such as
/// `pg_terminate_backend`: the admin API's token keeps strangers from sending a `where`.)
async fn select_chunk_read_only(
    client: &tokio_postgres::Client,
    sql: &str,
    shape: &TableShape,
    timeout: Duration,
) -> Result<ChunkRows, ResyncError> {
    let unseen = super::visibility::begin_chunk(client, timeout).await?;
    let selected = select_chunk(client, sql, shape).await.map(|mut rows| {
        rows.unseen = Some(unseen);
        rows
    });
    let ended = client
        .batch_execute(if selected.is_ok() {
            "COMMIT"
        } else {
            "ROLLBACK"
        })
        .await;
    let rows = selected.map_err(|e| match e {
        ResyncError::Source(ReplicationError::Sql(e))
            if e.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED) =>
        {
            ResyncError::Definite(format!(
                "the chunk query ran longer than source.resync_statement_timeout ({}); narrow \
                 the where, index its columns, or raise the timeout",
                humantime::format_duration(timeout)
            ))
        }
        ResyncError::Definite(why) if why.contains("read-only transaction") => {
            ResyncError::Definite(format!(
                "{why}: a resync's where runs in a read-only transaction and may only read"
            ))
        }
        e => e,
    })?;
    ended?;
    Ok(rows)
}

async fn one(
    url: &SourceUrl,
    published: &[TableEntry],
    store: &Store,
    statement_timeout: Duration,
    windows: &Windows,
    resync: &ResyncInfo,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), ResyncError> {
    let table = TableName::parse(&resync.table).map_err(ResyncError::Definite)?;
    let mut catalog = Catalog::new(connect_sql(url).await?);
    let entry = published.iter().find(|e| e.name == table);
    let shape = shape(&mut catalog, &table, entry).await?;
    let client = catalog.client();
    tracing::info!(resync = resync.id, kind = %resync.kind, table = %table, sink = ?resync.sink, from = ?resync.last_key, "resync running");
    let mut dropped = Backoff::new(DROPPED_RETRY, Duration::from_secs(1));
    loop {
        // Re-read: a cancel, or progress made by the reader since.
        let id = resync.id;
        let current = with_journal(store.clone(), move |j| j.resync(id)).await?;
        let Some(current) = current.filter(|r| r.state == "pending" || r.state == "running") else {
            tracing::info!(resync = resync.id, "resync finished or cancelled");
            return Ok(());
        };
        if *shutdown.borrow() {
            return Ok(());
        }
        let sql = chunk_sql(
            &table,
            &shape,
            current.r#where.as_deref(),
            current.last_key.as_deref(),
            CHUNK,
        )?;
        let token = format!(
            "{}.{}.{}",
            resync.id,
            current.chunks,
            chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
        );
        let (done_tx, done_rx) = oneshot::channel();
        windows.open(Window::new(
            token.clone(),
            resync.id,
            table.clone(),
            current.sink.clone(),
            done_tx,
        ));
        let attempt = async {
            emit(client, &format!("low:{token}")).await?;
            let rows = select_chunk_read_only(client, &sql, &shape, statement_timeout).await?;
            if !windows.set_rows(&token, rows) {
                return Err(ResyncError::Definite("the resync window was closed".into()));
            }
            emit(client, &format!("high:{token}")).await
        };
        if let Err(e) = attempt.await {
            windows.close(&token);
            return Err(e);
        }
        tokio::select! {
            r = tokio::time::timeout(WINDOW_TIMEOUT, done_rx) => match r {
                Ok(Ok(())) => dropped.reset(),
                // The window was dropped (its SELECT missed a transaction: see
                // `watermark`) or replaced (reader restarted): read the chunk again.
                Ok(Err(_)) => tokio::time::sleep(dropped.next_delay()).await,
                Err(_) => {
                    windows.close(&token);
                    tracing::warn!(resync = resync.id, "the reader did not reach the chunk's high watermark in time; retrying the chunk");
                }
            },
            _ = shutdown.changed() => {
                windows.close(&token);
                return Ok(());
            }
        }
    }
}
