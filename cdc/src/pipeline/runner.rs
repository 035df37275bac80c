//! One runner per sink: reads batches after the sink's cursor, selects and
//! maps them for the sink, hands them over, and then — in one SQLite
//! transaction — dead-letters what failed and moves the cursor. Items of a
//! row with dead letters are parked behind them, in order. Replays requested
//! by an operator run before new events.

use std::path::PathBuf;

use pgcdc_schema::mapping::MappingError;
use pgcdc_sinks::{Attempt, AttemptOutcome, AuditLog, ItemResult, Outgoing, Sink, SinkError};
use tokio::sync::watch;

use super::plan::{Mapped, SinkPlan};
use crate::journal::{DlqRecord, DlqState, JournalError, JournalHead, JournalReader};

/// Events read from the journal per batch.
pub const BATCH: usize = 1_000;

/// After a shutdown request, how long a batch in delivery may take to finish
/// (an endpoint that is down would otherwise hold the process forever). The
/// batch is then abandoned: its cursor has not moved, so it is delivered again
/// after the restart, with the same idempotency keys.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

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
    tokio::select! {
        results = sink.deliver(items) => {
            let results = results?;
            check_len(&name, &results, items.len())?;
            Ok(Some(results))
        }
        _ = stop_after_grace(shutdown) => {
            tracing::warn!(sink = %name, items = items.len(), "shutting down with a batch still in delivery; it will be delivered again after restart");
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
    #[error("sink {0}: journal task failed: {1}")]
    Task(String, String),
    /// A trigger, filter or transform failed on an event.
    #[error("sink {sink}: event {event}: {source}; fix the expression and restart (the event is not lost: the cursor stays before it)")]
    Mapping {
        /// Sink.
        sink: String,
        /// Event id.
        event: String,
        /// The jq error.
        source: MappingError,
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
    let reader = JournalReader::open(&state_dir, true)?;
    let sink_name = name.clone();
    let (mut reader, state) = blocking(&name, reader, move |r| r.cursor_state(&sink_name)).await?;
    let (mut cursor, mut generation) = (state.pos, state.generation);
    tracing::info!(sink = %name, cursor, "sink runner started");
    let _running = crate::admin::health().sink_running(&name);
    loop {
        if *shutdown.borrow() {
            return Ok(());
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
            r.dlq_replay_batch(&sink_name, BATCH)
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
        let (r, batch) = blocking(&name, reader, move |r| r.read_after(from, BATCH)).await?;
        reader = r;
        let Some(last) = batch.last().map(|e| e.pos) else {
            // Caught up: wait for the journal to grow, a replay request (polled), or shutdown.
            let head_pos = head.borrow_and_update().pos;
            if head_pos > cursor {
                continue;
            }
            tokio::select! {
                changed = head.changed() => if changed.is_err() { return Ok(()) },
                _ = shutdown.changed() => return Ok(()),
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            }
            continue;
        };
        let mut items = Vec::new();
        let mut positions = Vec::new();
        for stored in batch {
            // A targeted resync's rows are for one sink only.
            if stored.target.as_deref().is_some_and(|t| t != name) {
                continue;
            }
            let id = stored.event.id.to_string();
            match plan.map(stored.event) {
                Ok(Mapped::NotSelected) => {}
                Ok(Mapped::Skipped(event)) => {
                    audit
                        .record(Attempt {
                            event_id: event.id.to_string(),
                            sink: name.clone(),
                            attempt: 0,
                            at: chrono::Utc::now().to_rfc3339(),
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
                        positions.push(stored.pos);
                    }
                }
                Err(source) => {
                    // Deliver what came before the failing event, then stop.
                    return Err(RunnerError::Mapping {
                        sink: name,
                        event: id,
                        source,
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
