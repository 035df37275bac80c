//! One runner per sink: reads batches after the sink's cursor, hands them to
//! the sink, and moves the cursor only after the sink reports them durable.

use std::collections::HashSet;
use std::path::PathBuf;

use pgcdc_schema::ChangeEvent;
use pgcdc_sinks::{Sink, SinkError};
use tokio::sync::watch;

use crate::config::TableName;
use crate::journal::{JournalError, JournalHead, JournalReader, StoredEvent};

/// Events read from the journal per batch.
pub const BATCH: usize = 1_000;

/// Why a runner stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The journal failed.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The sink failed definitely.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// A blocking task panicked or was cancelled.
    #[error("sink {0}: journal task failed: {1}")]
    Task(String, String),
}

/// Which events a sink receives.
#[derive(Debug, Clone)]
pub struct Selection {
    /// Tables; empty means all.
    pub tables: HashSet<TableName>,
}

impl Selection {
    fn wants(&self, e: &ChangeEvent) -> bool {
        self.tables.is_empty()
            || self.tables.contains(&TableName {
                schema: e.schema.clone(),
                table: e.table.clone(),
            })
    }
}

async fn blocking<T: Send + 'static>(
    sink: &str,
    reader: JournalReader,
    f: impl FnOnce(&JournalReader) -> Result<T, JournalError> + Send + 'static,
) -> Result<(JournalReader, T), RunnerError> {
    let r = tokio::task::spawn_blocking(move || {
        let out = f(&reader);
        (reader, out)
    })
    .await
    .map_err(|e| RunnerError::Task(sink.to_string(), e.to_string()))?;
    Ok((r.0, r.1?))
}

/// Delivers until `shutdown` is set; the batch in hand is finished first.
pub async fn run<S: Sink>(
    mut sink: S,
    selection: Selection,
    state_dir: PathBuf,
    mut head: watch::Receiver<JournalHead>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), RunnerError> {
    let name = sink.name().to_string();
    let reader = JournalReader::open(&state_dir, true)?;
    let sink_name = name.clone();
    let (mut reader, mut cursor) = blocking(&name, reader, move |r| r.cursor(&sink_name)).await?;
    tracing::info!(sink = %name, cursor, "sink runner started");
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        let from = cursor;
        let (r, batch): (_, Vec<StoredEvent>) = blocking(&name, reader, move |r| r.read_after(from, BATCH)).await?;
        reader = r;
        let Some(last) = batch.last().map(|e| e.pos) else {
            // Caught up: wait for the journal to grow (or to be told to stop).
            let head_pos = head.borrow_and_update().pos;
            if head_pos > cursor {
                continue;
            }
            tokio::select! {
                changed = head.changed() => if changed.is_err() { return Ok(()) },
                _ = shutdown.changed() => return Ok(()),
            }
            continue;
        };
        let events: Vec<ChangeEvent> = batch
            .into_iter()
            .map(|s| s.event)
            .filter(|e| selection.wants(e))
            .collect();
        if !events.is_empty() {
            sink.deliver(&events).await?;
        }
        let sink_name = name.clone();
        let (r, ()) = blocking(&name, reader, move |r| r.advance_cursor(&sink_name, last)).await?;
        reader = r;
        cursor = last;
        tracing::debug!(sink = %name, cursor, delivered = events.len(), "cursor advanced");
    }
}
