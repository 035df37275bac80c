//! One runner per sink: reads batches after the sink's cursor, selects and
//! maps them for the sink, hands them over, and then — in one SQLite
//! transaction — dead-letters what failed and moves the cursor. Items of a
//! row with dead letters are parked behind them, in order. Replays requested
//! by an operator run before new events.

use std::path::PathBuf;
use std::sync::Arc;

use pgcdc_schema::mapping::MappingError;
use pgcdc_schema::ChangeEvent;
use pgcdc_sinks::{
    Attempt, AttemptOutcome, AuditLog, Checkpoint, ItemResult, Outgoing, Sink, SinkError,
};
use tokio::sync::watch;

use super::plan::{Mapped, SinkPlan};
use crate::journal::{DlqRecord, DlqState, JournalError, JournalHead, JournalReader, StoredEvent};

/// After a shutdown request, how long a batch in delivery may take to finish
/// (an endpoint that is down would otherwise hold the process forever). The
/// batch is then abandoned: its cursor has not moved, so it is delivered again
/// after the restart, with the same idempotency keys.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Stored JSON read per batch at most, besides the sink's count: a batch of large
/// rows holds this much (times the in-memory size of parsed JSON, and once more
/// for the prefetched batch), not `batch_size` rows. One larger event goes alone.
pub const BATCH_BYTES: usize = 8 << 20;

async fn stop_after_grace(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|stop| *stop).await.is_err() {
        // The sender is gone: the engine is going away.
    }
    tokio::time::sleep(SHUTDOWN_GRACE).await;
}

/// Delivers through the sink unless shutdown plus the grace period comes first.
async fn deliver_or_stop<S: Sink>(
    sink: &mut S,
    items: &[Outgoing],
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<Vec<ItemResult>>, RunnerError> {
    let name = sink.name().to_string();
    let Some(results) = or_stop(&name, sink.deliver(items), shutdown).await? else {
        tracing::warn!(sink = %name, items = items.len(), "shutting down with a batch still in delivery; it will be delivered again after restart");
        return Ok(None);
    };
    check_len(&name, &results, items.len())?;
    Ok(Some(results))
}

/// Runs a sink call unless shutdown plus the grace period comes first (`None`).
async fn or_stop<T>(
    name: &str,
    call: impl std::future::Future<Output = Result<T, SinkError>>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<T>, RunnerError> {
    tokio::select! {
        out = call => Ok(Some(out?)),
        _ = stop_after_grace(shutdown) => {
            tracing::debug!(sink = %name, "sink call abandoned at shutdown");
            Ok(None)
        }
    }
}

/// Selects and maps a batch; `None` when shutdown comes first (the batch is
/// mapped again after the restart). jq runs on a blocking thread, since an
/// evaluation may take up to `[jq] timeout_ms` per program run, and shutdown
/// does not wait for it: whatever a program does, SIGTERM is honoured.
async fn map_or_stop(
    name: &str,
    plan: &Arc<SinkPlan>,
    events: Vec<(ChangeEvent, String)>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<Vec<Result<Mapped, MappingError>>>, RunnerError> {
    if !plan.runs_jq() {
        return Ok(Some(plan.map_batch_as(events)));
    }
    let plan = Arc::clone(plan);
    let task = tokio::task::spawn_blocking(move || plan.map_batch_as(events));
    tokio::select! {
        mapped = task => mapped
            .map(Some)
            .map_err(|e| RunnerError::Task(name.to_string(), e.to_string())),
        _ = shutdown.wait_for(|stop| *stop) => {
            tracing::info!(sink = %name, "shutting down while jq runs; the batch is mapped again after restart");
            Ok(None)
        }
    }
}

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
    #[error("sink {0}: a blocking task (journal or jq) failed: {1}")]
    Task(String, String),
    /// A trigger, filter or transform failed on an event, or went past a `[jq]` limit.
    #[error("sink {sink}: event {event}: {error}; fix the expression (or raise the [jq] limit it names) and restart (the event is not lost: the cursor stays before it)")]
    Mapping {
        /// Sink.
        sink: String,
        /// Event id.
        event: String,
        /// The jq error, naming the program's config key. Not a `source`:
        /// the message above already holds it once.
        error: MappingError,
    },
    /// The destination's own record of progress does not fit this journal.
    #[error("sink {sink}: {message}")]
    Resume {
        /// Sink.
        sink: String,
        /// What does not fit and what to do.
        message: String,
    },
    /// The sink broke its contract.
    #[error("sink {0}: returned {1} results for {2} items")]
    Contract(String, usize, usize),
}

async fn blocking<T: Send + 'static>(
    sink: &str,
    mut reader: JournalReader,
    f: impl FnOnce(&mut JournalReader) -> Result<T, JournalError> + Send + 'static,
) -> Result<(JournalReader, T), RunnerError> {
    let (reader, out) = tokio::task::spawn_blocking(move || {
        let out = f(&mut reader);
        (reader, out)
    })
    .await
    .map_err(|e| RunnerError::Task(sink.to_string(), e.to_string()))?;
    Ok((reader, out?))
}

fn check_len(name: &str, results: &[ItemResult], items: usize) -> Result<(), RunnerError> {
    if results.len() == items {
        Ok(())
    } else {
        Err(RunnerError::Contract(
            name.to_string(),
            results.len(),
            items,
        ))
    }
}

/// A read of the next batch: the reader comes back with the result.
type PrefetchTask =
    tokio::task::JoinHandle<(JournalReader, Result<Vec<StoredEvent>, JournalError>)>;

/// The next batch, read on a second journal connection while the sink delivers.
struct Prefetch {
    reader: Option<JournalReader>,
    pending: Option<(i64, PrefetchTask)>,
}

impl Prefetch {
    fn new(reader: JournalReader) -> Prefetch {
        Prefetch {
            reader: Some(reader),
            pending: None,
        }
    }

    /// Starts reading the batch after `from`.
    fn start(&mut self, from: i64, limit: usize) {
        if let Some(reader) = self.reader.take() {
            self.pending = Some((
                from,
                tokio::task::spawn_blocking(move || {
                    let out = reader.read_batch(from, limit, BATCH_BYTES);
                    (reader, out)
                }),
            ));
        }
    }

    /// The prefetched batch, if one was read after `from` (a reset makes it stale)
    /// and is not empty (the journal may have grown since).
    async fn take(
        &mut self,
        sink: &str,
        from: i64,
    ) -> Result<Option<Vec<StoredEvent>>, RunnerError> {
        let Some((at, handle)) = self.pending.take() else {
            return Ok(None);
        };
        let (reader, out) = handle
            .await
            .map_err(|e| RunnerError::Task(sink.to_string(), e.to_string()))?;
        self.reader = Some(reader);
        let batch = out?;
        Ok((at == from && !batch.is_empty()).then_some(batch))
    }
}

/// A clean stop between batches: the sink makes its own record final.
async fn close<S: Sink>(sink: &mut S) -> Result<(), RunnerError> {
    let name = sink.name().to_string();
    match tokio::time::timeout(SHUTDOWN_GRACE, sink.close()).await {
        Ok(result) => Ok(result?),
        Err(_) => {
            tracing::warn!(sink = %name, "the sink did not close within the grace period");
            Ok(())
        }
    }
}

/// Where to resume when the sink says it has delivered through `at`; `known` is
/// the id of the journal event at `at.pos`, if the journal holds it.
fn resume_cursor(
    name: &str,
    cursor: i64,
    at: &Checkpoint,
    known: Option<String>,
) -> Result<i64, RunnerError> {
    let err = |message: String| RunnerError::Resume {
        sink: name.to_string(),
        message,
    };
    match known {
        _ if at.pos == cursor => Ok(cursor),
        _ if at.pos == 0 => Ok(0),
        Some(id) if id == at.event_id => {
            if at.pos < cursor {
                tracing::warn!(sink = %name, local = cursor, destination = at.pos,
                    "the destination's progress record is behind the local cursor; resuming at the destination's position");
            } else {
                tracing::info!(sink = %name, local = cursor, destination = at.pos,
                    "the local cursor is stale; resuming at the destination's progress record");
            }
            Ok(at.pos)
        }
        Some(id) => Err(err(format!(
            "the destination's progress record says it has everything up to journal position {} \
             (event {}), but this journal holds event {id} there: the state dir is not the one \
             the destination was written from. Use the original state dir, or delete the sink's \
             progress record at the destination to start over",
            at.pos, at.event_id
        ))),
        None if at.pos < cursor => {
            tracing::warn!(sink = %name, local = cursor, destination = at.pos,
                "the destination's progress record points before the retained journal; resuming at the local cursor");
            Ok(cursor)
        }
        None => Err(err(format!(
            "the destination's progress record says it has everything up to journal position {} \
             (event {}), which this journal does not hold (its cursor is at {cursor}): the state \
             dir is not the one the destination was written from. Use the original state dir, or \
             delete the sink's progress record at the destination to start over",
            at.pos, at.event_id
        ))),
    }
}

/// Delivers until `shutdown` is set; the batch in hand is finished first.
pub async fn run<S: Sink>(
    mut sink: S,
    plan: SinkPlan,
    audit: AuditLog,
    state_dir: PathBuf,
    mut head: watch::Receiver<JournalHead>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), RunnerError> {
    let name = sink.name().to_string();
    let batch_size = sink.batch_size().max(1);
    let plan = Arc::new(plan.with_native_body(sink.wants_native_body()));
    let reader = JournalReader::open(&state_dir, true)?;
    // A second connection reads the next batch while the sink delivers this one.
    let mut prefetch = Prefetch::new(JournalReader::open(&state_dir, false)?);
    let sink_name = name.clone();
    let (mut reader, state) = blocking(&name, reader, move |r| r.cursor_state(&sink_name)).await?;
    let (mut cursor, mut generation) = (state.pos, state.generation);
    // A destination that records its own progress (Kafka) wins over the local cursor.
    let (r, local_id) = blocking(&name, reader, move |r| r.event_id_at(cursor)).await?;
    reader = r;
    let local = Checkpoint {
        pos: cursor,
        event_id: local_id.unwrap_or_default(),
        generation,
    };
    let Some(resumed) = or_stop(&name, sink.resume(&local), &mut shutdown).await? else {
        return Ok(());
    };
    if let Some(at) = resumed {
        let (r, known) = blocking(&name, reader, move |r| r.event_id_at(at.pos)).await?;
        reader = r;
        cursor = resume_cursor(&name, cursor, &at, known)?;
    }
    tracing::info!(sink = %name, cursor, "sink runner started");
    let _running = crate::health::health().sink_running(&name);
    loop {
        if *shutdown.borrow() {
            return close(&mut sink).await;
        }
        // An operator's checkpoint reset (CLI or admin API) bumps the generation.
        let sink_name = name.clone();
        let (r, state) = blocking(&name, reader, move |r| r.cursor_state(&sink_name)).await?;
        reader = r;
        if state.generation != generation {
            tracing::info!(sink = %name, from = cursor, to = state.pos, "cursor reset by an operator");
            (cursor, generation) = (state.pos, state.generation);
        }
        // Replays an operator asked for go first, in DLQ order.
        let sink_name = name.clone();
        let (r, replay) = blocking(&name, reader, move |r| {
            r.dlq_replay_batch(&sink_name, batch_size)
        })
        .await?;
        reader = r;
        if !replay.is_empty() {
            let items: Vec<Outgoing> = replay.iter().map(|e| e.item.clone()).collect();
            let Some(results) = deliver_or_stop(&mut sink, &items, &mut shutdown).await? else {
                return Ok(());
            };
            crate::metrics::delivered(&name, &items, &results);
            let mut delivered = Vec::new();
            let mut failed = Vec::new();
            for (entry, result) in replay.iter().zip(results) {
                match result {
                    ItemResult::Delivered => delivered.push(entry.id),
                    ItemResult::DeadLettered { error } => {
                        failed.push((entry.id, entry.row.clone(), DlqState::Dead, Some(error)))
                    }
                    ItemResult::Parked => {
                        failed.push((entry.id, entry.row.clone(), DlqState::Parked, None))
                    }
                }
            }
            tracing::info!(sink = %name, replayed = delivered.len(), failed = failed.len(), "DLQ replay batch");
            let sink_name = name.clone();
            let (r, ()) = blocking(&name, reader, move |r| {
                r.dlq_settle(&sink_name, &delivered, &failed)
            })
            .await?;
            reader = r;
            continue;
        }

        let from = cursor;
        let batch = match prefetch.take(&name, from).await? {
            Some(batch) => batch,
            None => {
                let (r, batch) = blocking(&name, reader, move |r| {
                    r.read_batch(from, batch_size, BATCH_BYTES)
                })
                .await?;
                reader = r;
                batch
            }
        };
        if let Some(last) = batch.last() {
            prefetch.start(last.pos, batch_size);
        }
        let last_id = batch
            .last()
            .map(|e| e.event.id.to_string())
            .unwrap_or_default();
        let Some(last) = batch.last().map(|e| e.pos) else {
            // Caught up: wait for the journal to grow, a replay request (polled), or shutdown.
            let head_pos = head.borrow_and_update().pos;
            if head_pos > cursor {
                continue;
            }
            tokio::select! {
                changed = head.changed() => if changed.is_err() { return Ok(()) },
                _ = shutdown.changed() => return close(&mut sink).await,
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            }
            continue;
        };
        let mut items = Vec::new();
        let mut positions = Vec::new();
        let mut events = Vec::new();
        let mut stored_at = Vec::new();
        for stored in batch {
            // A targeted resync's rows are for one sink only.
            if stored.target.as_deref().is_some_and(|t| t != name) {
                continue;
            }
            stored_at.push((stored.pos, stored.event.id.to_string()));
            events.push((stored.event, stored.table));
        }
        let Some(mapped) = map_or_stop(&name, &plan, events, &mut shutdown).await? else {
            return close(&mut sink).await;
        };
        for ((pos, id), result) in stored_at.into_iter().zip(mapped) {
            match result {
                Ok(Mapped::NotSelected) => {}
                Ok(Mapped::Skipped(event)) => {
                    audit
                        .record(Attempt {
                            event_id: event.id.to_string(),
                            sink: name.clone(),
                            attempt: 0,
                            at: pgcdc_sinks::AttemptTime::now(),
                            status: None,
                            error: None,
                            latency_ms: 0,
                            outcome: AttemptOutcome::Skipped,
                        })
                        .await
                }
                Ok(Mapped::Items(mapped)) => {
                    for item in mapped {
                        items.push(item);
                        positions.push(pos);
                    }
                }
                Err(error) => {
                    // Nothing of this batch is delivered: the cursor stays before it.
                    return Err(RunnerError::Mapping {
                        sink: name,
                        event: id,
                        error,
                    });
                }
            }
        }
        let sink_name = name.clone();
        let (r, (parked_rows, replaying)) =
            blocking(&name, reader, move |r| r.dlq_rows(&sink_name)).await?;
        reader = r;
        // Rows with dead letters wait behind them; the rest go to the sink.
        let mut records = Vec::new();
        let mut send = Vec::new();
        let mut send_pos = Vec::new();
        for (item, pos) in items.into_iter().zip(positions) {
            if parked_rows.contains(&item.row) {
                records.push(DlqRecord {
                    item,
                    pos,
                    state: DlqState::Parked,
                    error: None,
                });
            } else {
                send.push(item);
                send_pos.push(pos);
            }
        }
        let mut delivered = 0usize;
        if !send.is_empty() {
            let Some(results) = deliver_or_stop(&mut sink, &send, &mut shutdown).await? else {
                return Ok(());
            };
            crate::metrics::delivered(&name, &send, &results);
            for ((item, pos), result) in send.into_iter().zip(send_pos).zip(results) {
                match result {
                    ItemResult::Delivered => delivered += 1,
                    ItemResult::DeadLettered { error } => {
                        tracing::warn!(sink = %name, event = %item.delivery_id(), %error, "dead-lettered");
                        records.push(DlqRecord {
                            item,
                            pos,
                            state: DlqState::Dead,
                            error: Some(error),
                        });
                    }
                    ItemResult::Parked => records.push(DlqRecord {
                        item,
                        pos,
                        state: DlqState::Parked,
                        error: None,
                    }),
                }
            }
        }
        // The destination's own record goes first: the local cursor never runs ahead of it.
        let at = Checkpoint {
            pos: last,
            event_id: last_id,
            generation,
        };
        if or_stop(&name, sink.checkpoint(&at), &mut shutdown)
            .await?
            .is_none()
        {
            return Ok(());
        }
        // A DLQ item keeps the body it would have been sent with: items a sink renders
        // from the event carry none, and a replay after the config changed (a transform
        // added) must not send an empty body.
        if !plan.is_transformed() {
            for r in records.iter_mut().filter(|r| r.item.body.is_null()) {
                r.item.body = serde_json::to_value(&*r.item.event).unwrap_or_default();
            }
        }
        records.sort_by_key(|r| r.pos);
        let dead = records.len();
        let sink_name = name.clone();
        let (r, ()) = blocking(&name, reader, move |r| {
            r.commit_batch(&sink_name, last, generation, &records, &replaying)
        })
        .await?;
        reader = r;
        cursor = last;
        tracing::debug!(sink = %name, cursor, delivered, dead_lettered = dead, "cursor advanced");
    }
}
