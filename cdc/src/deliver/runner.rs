//! One runner per sink: reads batches after the sink's cursor, selects and
//! maps them for the sink, hands them over, and then — in one SQLite
//! transaction — dead-letters what failed and moves the cursor. Items of a
//! row with dead letters are parked behind them, in order. Replays requested
//! by an operator run before new events.
//!
//! Two-phase sinks (Kafka): the runner submits batch N+1 and books batch N
//! (the sink's checkpoint, then the DLQ rows and the cursor) while the
//! destination acknowledges N+1; then it settles N+1. A batch's cursor moves
//! only after its own settle, and at most one batch is booked late. The
//! commit runs on its own connection (`commit`), and a sink that delivers in
//! one phase (stdout, HTTP) delivers the next batch meanwhile.
//!
//! ```text
//!  read+map+park N+1 ─▶ submit N+1 ─▶ book N (checkpoint, commit) ─▶ settle N+1 ─▶ ...
//! ```

mod commit;
mod prefetch;
mod resume;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use pgcdc_schema::mapping::MappingError;
use pgcdc_schema::ChangeEvent;
use pgcdc_sinks::{
    Attempt, AttemptOutcome, AuditLog, Checkpoint, ItemResult, Outgoing, Sink, SinkError,
};
use tokio::sync::watch;

use super::plan::{Mapped, SinkPlan};
use crate::journal::{
    Access, DlqRecord, DlqState, JournalError, JournalHead, RecentReader, Shared, StateStore,
    Store, StoredEvent,
};
use commit::{Commit, Commits};
use prefetch::Prefetch;
use resume::resume_cursor;

/// The runner's session on the state store (moved into each blocking call and back).
pub(super) type JournalReader = Box<dyn StateStore>;

/// After a shutdown request, how long a batch in delivery may take to finish
/// (an endpoint that is down would otherwise hold the process forever). The
/// batch is then abandoned: its cursor has not moved, so it is delivered again
/// after the restart, with the same idempotency keys.
pub(crate) const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Stored JSON read per batch at most, besides the sink's count: a batch of large
/// rows holds this much (times the in-memory size of parsed JSON, and once more
/// for the prefetched batch), not `batch_size` rows. One larger event goes alone.
pub(crate) const BATCH_BYTES: usize = 8 << 20;

async fn stop_after_grace(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|stop| *stop).await.is_err() {
        // The sender is gone: the engine is going away.
    }
    tokio::time::sleep(SHUTDOWN_GRACE).await;
}

/// Delivers through the sink unless shutdown plus the grace period comes first.
pub(super) async fn deliver_or_stop<S: Sink>(
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
pub(super) async fn map_or_stop(
    name: &str,
    plan: &Arc<SinkPlan>,
    events: Vec<(Arc<ChangeEvent>, pgcdc_schema::event::Name)>,
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
pub(crate) enum RunnerError {
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

pub(super) async fn blocking<T: Send + 'static>(
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

/// A filter skipped `event`: the audit says so.
pub(super) async fn audit_skipped(audit: &AuditLog, sink: &str, event: &ChangeEvent) {
    audit
        .record(Attempt {
            event_id: event.id.to_string(),
            sink: sink.to_string(),
            attempt: 0,
            at: pgcdc_sinks::AttemptTime::now(),
            status: None,
            error: None,
            latency_ms: 0,
            outcome: AttemptOutcome::Skipped,
        })
        .await
}

/// What the loop does after a step.
enum Next {
    /// Go round again.
    Continue,
    /// Shutdown between batches: the sink makes its own record final.
    Close,
    /// Shutdown mid-call (the batch is delivered again after the restart), or
    /// the journal thread is gone: end without closing the sink.
    Stop,
}

/// A batch of new events on its way through the steps.
struct Batch {
    /// Journal position and id of its last event: where the cursor goes after it.
    last: i64,
    last_id: String,
    /// Items for the sink, with their journal positions.
    items: Vec<(Outgoing, i64)>,
    /// Items for the DLQ (parked behind a dead letter, or dead-lettered),
    /// committed in one transaction with the cursor.
    records: Vec<DlqRecord>,
    /// Rows whose DLQ entries are being replayed (their new items park behind them).
    replaying: std::collections::HashSet<String>,
}

/// One sink's runner: the sink, its plan, its journal connections and its cursor.
/// `run` is the loop; each step is one method below.
struct Runner<S: Sink> {
    name: String,
    sink: S,
    plan: Arc<SinkPlan>,
    audit: AuditLog,
    batch_size: usize,
    /// The journal connection; taken while a blocking call runs on it.
    reader: Option<JournalReader>,
    /// A second connection reads the next batch while the sink delivers this one.
    prefetch: Prefetch,
    /// A third connection commits the booked batch while the next one goes on.
    commits: Commits,
    /// The events the journal thread wrote last: read from here while they hold
    /// the next batch.
    recent: RecentReader,
    cursor: i64,
    generation: i64,
    /// The settled batch not yet booked (and how many items it delivered): its
    /// checkpoint and commit run while the sink works on the next one.
    settled: Option<(Batch, usize)>,
    head: watch::Receiver<JournalHead>,
    shutdown: watch::Receiver<bool>,
}

/// Delivers until `shutdown` is set; the batch in hand is finished first.
pub(crate) async fn run<S: Sink>(
    sink: S,
    plan: SinkPlan,
    audit: AuditLog,
    store: Store,
    head: watch::Receiver<JournalHead>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), RunnerError> {
    let name = sink.name().to_string();
    let batch_size = sink.batch_size().max(1);
    let plan = Arc::new(plan.with_native_body(sink.wants_native_body()));
    let mut runner = Runner {
        name,
        sink,
        plan,
        audit,
        batch_size,
        reader: Some(store.open(Access::Create)?),
        // A second connection reads the next batch while the sink delivers this one.
        prefetch: Prefetch::new(store.open(Access::Existing)?),
        commits: Commits::new(store.open(Access::Existing)?),
        recent: store.recent().reader(),
        cursor: 0,
        generation: 0,
        settled: None,
        head,
        shutdown,
    };
    if !runner.resume().await? {
        return Ok(());
    }
    tracing::info!(sink = %runner.name, cursor = runner.cursor, "sink runner started");
    let _running = crate::health::health().sink_running(&runner.name);
    loop {
        match runner.step().await? {
            Next::Continue => {}
            Next::Close => {
                runner.commits.wait(&runner.name).await?;
                return close(&mut runner.sink).await;
            }
            Next::Stop => return runner.commits.wait(&runner.name).await,
        }
    }
}

impl<S: Sink> Runner<S> {
    /// Runs `f` on the journal connection, on a blocking thread.
    async fn journal<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut JournalReader) -> Result<T, JournalError> + Send + 'static,
    ) -> Result<T, RunnerError> {
        let reader = self.reader.take().ok_or_else(|| {
            RunnerError::Task(self.name.clone(), "the journal connection is gone".into())
        })?;
        let (reader, out) = blocking(&self.name, reader, f).await?;
        self.reader = Some(reader);
        Ok(out)
    }

    /// Loads the local cursor and lets the sink say where it really is: a
    /// destination that records its own progress (Kafka) wins over the local
    /// cursor. `false` when shutdown came first.
    async fn resume(&mut self) -> Result<bool, RunnerError> {
        let sink_name = self.name.clone();
        let state = self.journal(move |r| r.cursor_state(&sink_name)).await?;
        (self.cursor, self.generation) = (state.pos, state.generation);
        let cursor = self.cursor;
        let local_id = self.journal(move |r| r.event_id_at(cursor)).await?;
        let local = Checkpoint {
            pos: cursor,
            event_id: local_id.unwrap_or_default(),
            generation: self.generation,
        };
        let Some(resumed) =
            or_stop(&self.name, self.sink.resume(&local), &mut self.shutdown).await?
        else {
            return Ok(false);
        };
        if let Some(at) = resumed {
            let pos = at.pos;
            let known = self.journal(move |r| r.event_id_at(pos)).await?;
            self.cursor = resume_cursor(&self.name, self.cursor, &at, known)?;
        }
        Ok(true)
    }

    /// One turn of the loop: an operator's reset, then a replay batch, or else the
    /// next batch of new events (or a wait for one). The settled batch is booked
    /// while the sink works on the next, or before anything that needs the
    /// state it commits.
    async fn step(&mut self) -> Result<Next, RunnerError> {
        if *self.shutdown.borrow() {
            return Ok(if self.book().await? {
                Next::Close
            } else {
                Next::Stop
            });
        }
        if !self.follow_reset().await? {
            return Ok(Next::Stop);
        }
        if let Some(next) = self.replay().await? {
            return Ok(next);
        }
        let batch = self.next_batch().await?;
        if batch.is_empty() {
            if !self.book().await? {
                return Ok(Next::Stop);
            }
            return self.wait_for_events().await;
        }
        let Some(mut batch) = self.map(batch).await? else {
            return Ok(if self.book().await? {
                Next::Close
            } else {
                Next::Stop
            });
        };
        // Rows the settled batch dead-letters or parks must be in the DLQ before
        // this batch's items of those rows are parked behind them.
        if self
            .settled
            .as_ref()
            .is_some_and(|(b, _)| !b.records.is_empty())
            && !self.book().await?
        {
            return Ok(Next::Stop);
        }
        self.park(&mut batch).await?;
        let Some(delivered) = self.deliver(&mut batch).await? else {
            return Ok(Next::Stop);
        };
        self.settled = Some((batch, delivered));
        Ok(Next::Continue)
    }

    /// Books the settled batch, if any: the sink's checkpoint, then its DLQ rows
    /// and the cursor. `false` when shutdown cut the checkpoint short (the batch
    /// is delivered again after the restart).
    async fn book(&mut self) -> Result<bool, RunnerError> {
        let Some((batch, delivered)) = self.settled.take() else {
            return Ok(true);
        };
        if !self.checkpoint(&batch).await? {
            return Ok(false);
        }
        self.commit(batch, delivered).await?;
        Ok(true)
    }

    /// An operator's checkpoint reset (CLI or admin API) bumps the generation; the
    /// settled batch is booked first (under the generation it was read in).
    /// `false` when shutdown cut that short.
    async fn follow_reset(&mut self) -> Result<bool, RunnerError> {
        let sink_name = self.name.clone();
        let state = self.journal(move |r| r.cursor_state(&sink_name)).await?;
        if state.generation != self.generation {
            if !self.book().await? {
                return Ok(false);
            }
            self.commits.wait(&self.name).await?;
            tracing::info!(sink = %self.name, from = self.cursor, to = state.pos, "cursor reset by an operator");
            (self.cursor, self.generation) = (state.pos, state.generation);
        }
        Ok(true)
    }

    /// Replays an operator asked for go first, in DLQ order; `None` when there
    /// are none.
    async fn replay(&mut self) -> Result<Option<Next>, RunnerError> {
        let sink_name = self.name.clone();
        let batch_size = self.batch_size;
        self.commits.wait_for_dlq_rows(&self.name).await?;
        let replay = self
            .journal(move |r| r.dlq_replay_batch(&sink_name, batch_size))
            .await?;
        if replay.is_empty() {
            return Ok(None);
        }
        if !self.book().await? {
            return Ok(Some(Next::Stop));
        }
        let items: Vec<Outgoing> = replay.iter().map(|e| e.item.clone()).collect();
        let Some(results) = deliver_or_stop(&mut self.sink, &items, &mut self.shutdown).await?
        else {
            return Ok(Some(Next::Stop));
        };
        crate::metrics::delivered(&self.name, &items, &results);
        let (delivered, failed) = replay_outcome(&replay, results);
        tracing::info!(sink = %self.name, replayed = delivered.len(), failed = failed.len(), "DLQ replay batch");
        let sink_name = self.name.clone();
        self.journal(move |r| r.dlq_settle(&sink_name, &delivered, &failed))
            .await?;
        Ok(Some(Next::Continue))
    }

    /// The batch after the cursor, or after the settled batch not yet booked
    /// (prefetched, if the prefetch is still current), and the prefetch of the
    /// one after it.
    async fn next_batch(&mut self) -> Result<Vec<Shared>, RunnerError> {
        let from = self.settled.as_ref().map_or(self.cursor, |(b, _)| b.last);
        // Caught up with what the journal thread has written: nothing to read.
        if from >= self.head.borrow().pos {
            self.recent.at(from);
            return Ok(Vec::new());
        }
        let batch_size = self.batch_size;
        // Kept up: the batch is still in memory, no prefetch is needed (one under
        // way goes stale and is dropped when next taken).
        if let Some(batch) = self.recent.read(from, batch_size, BATCH_BYTES) {
            crate::metrics::batch_read(&self.name, true);
            return Ok(batch);
        }
        let mut batch = match self.prefetch.take(&self.name, from).await? {
            Some(batch) => batch,
            None => {
                let mut buf = self.prefetch.buffer();
                self.journal(move |r| {
                    r.read_batch_into(from, batch_size, BATCH_BYTES, &mut buf)
                        .map(|()| buf)
                })
                .await?
            }
        };
        // Behind one row wider than a batch, the next is read after it is
        // delivered: a prefetch would hold one more such row meanwhile.
        let wide = matches!(&batch[..], [one] if one.event.packed_bytes() > BATCH_BYTES);
        let last = batch.last().map(|e| e.pos);
        // Shared here, on the thread that frees them after delivery.
        let shared = batch
            .drain(..)
            .map(|e| StoredEvent {
                pos: e.pos,
                seq: e.seq,
                event: Arc::new(e.event),
                target: e.target,
                table: e.table,
            })
            .collect();
        self.prefetch.recycle(batch);
        if let Some(last) = last {
            self.recent.at(last);
            crate::metrics::batch_read(&self.name, false);
            if !wide {
                self.prefetch.start(last, batch_size);
            }
        }
        Ok(shared)
    }

    /// Caught up: waits for the journal to grow, a replay request (polled), or shutdown.
    async fn wait_for_events(&mut self) -> Result<Next, RunnerError> {
        let head_pos = self.head.borrow_and_update().pos;
        if head_pos > self.cursor {
            return Ok(Next::Continue);
        }
        // Caught up: the cursor on disk catches up too before the wait.
        self.commits.wait(&self.name).await?;
        tokio::select! {
            changed = self.head.changed() => if changed.is_err() { return Ok(Next::Stop) },
            _ = self.shutdown.changed() => return Ok(Next::Close),
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
        Ok(Next::Continue)
    }

    /// Selects and maps a (non-empty) batch through the plan, auditing what a
    /// filter skipped; `None` when shutdown comes first. A mapping error stops
    /// the runner with nothing of the batch delivered: the cursor stays before it.
    async fn map(&mut self, stored: Vec<Shared>) -> Result<Option<Batch>, RunnerError> {
        let (last, last_id) = match stored.last() {
            Some(e) => (e.pos, e.event.id.to_string()),
            None => (self.cursor, String::new()),
        };
        let mut events = Vec::with_capacity(stored.len());
        let mut stored_at = Vec::with_capacity(stored.len());
        for stored in stored {
            // A targeted resync's rows are for one sink only.
            if stored.target.as_deref().is_some_and(|t| t != self.name) {
                continue;
            }
            stored_at.push((stored.pos, stored.event.id.to_string()));
            events.push((stored.event, stored.table));
        }
        let Some(mapped) = map_or_stop(&self.name, &self.plan, events, &mut self.shutdown).await?
        else {
            return Ok(None);
        };
        let mut items = Vec::new();
        for ((pos, id), result) in stored_at.into_iter().zip(mapped) {
            match result {
                Ok(Mapped::NotSelected) => {}
                Ok(Mapped::Skipped(event)) => audit_skipped(&self.audit, &self.name, &event).await,
                Ok(Mapped::Items(mapped)) => items.extend(mapped.into_iter().map(|i| (i, pos))),
                Err(error) => {
                    return Err(RunnerError::Mapping {
                        sink: self.name.clone(),
                        event: id,
                        error,
                    });
                }
            }
        }
        Ok(Some(Batch {
            last,
            last_id,
            items,
            records: Vec::new(),
            replaying: Default::default(),
        }))
    }

    /// Rows with dead letters wait behind them: their items move to the DLQ as
    /// parked; the rest stay for the sink.
    async fn park(&mut self, batch: &mut Batch) -> Result<(), RunnerError> {
        self.commits.wait_for_dlq_rows(&self.name).await?;
        let sink_name = self.name.clone();
        let (parked_rows, replaying) = self.journal(move |r| r.dlq_rows(&sink_name)).await?;
        let (parked, send): (Vec<_>, Vec<_>) = std::mem::take(&mut batch.items)
            .into_iter()
            .partition(|(item, _)| parked_rows.contains(&item.row));
        batch
            .records
            .extend(parked.into_iter().map(|(item, pos)| DlqRecord {
                item,
                pos,
                state: DlqState::Parked,
                error: None,
            }));
        batch.items = send;
        batch.replaying = replaying;
        Ok(())
    }

    /// Hands the batch's items to the sink in two phases (submit, then settle),
    /// booking the settled batch in between; what the sink dead-letters or parks
    /// joins the batch's DLQ records. The number delivered, or `None` when
    /// shutdown came first.
    async fn deliver(&mut self, batch: &mut Batch) -> Result<Option<usize>, RunnerError> {
        if batch.items.is_empty() {
            return Ok(if self.book().await? { Some(0) } else { None });
        }
        let (send, send_pos): (Vec<Outgoing>, Vec<i64>) =
            std::mem::take(&mut batch.items).into_iter().unzip();
        let Some(two_phase) =
            or_stop(&self.name, self.sink.submit(&send), &mut self.shutdown).await?
        else {
            return Ok(None);
        };
        if !self.book().await? {
            return Ok(None);
        }
        // The booked batch's commit lands before this one settles: while the
        // destination acknowledges it (two phases), or while the sink delivers it.
        if two_phase {
            self.commits.wait(&self.name).await?;
        }
        let Some(results) =
            or_stop(&self.name, self.sink.settle(&send), &mut self.shutdown).await?
        else {
            tracing::warn!(sink = %self.name, items = send.len(), "shutting down with a batch still in delivery; it will be delivered again after restart");
            return Ok(None);
        };
        self.commits.wait(&self.name).await?;
        check_len(&self.name, &results, send.len())?;
        crate::metrics::delivered(&self.name, &send, &results);
        let mut delivered = 0usize;
        for ((item, pos), result) in send.into_iter().zip(send_pos).zip(results) {
            match result {
                ItemResult::Delivered => delivered += 1,
                ItemResult::DeadLettered { error } => {
                    tracing::warn!(sink = %self.name, event = %item.delivery_id(), %error, "dead-lettered");
                    batch.records.push(DlqRecord {
                        item,
                        pos,
                        state: DlqState::Dead,
                        error: Some(error),
                    });
                }
                ItemResult::Parked => batch.records.push(DlqRecord {
                    item,
                    pos,
                    state: DlqState::Parked,
                    error: None,
                }),
            }
        }
        Ok(Some(delivered))
    }

    /// The destination's own record goes first: the local cursor never runs
    /// ahead of it. `false` when shutdown came first.
    async fn checkpoint(&mut self, batch: &Batch) -> Result<bool, RunnerError> {
        let at = Checkpoint {
            pos: batch.last,
            event_id: batch.last_id.clone(),
            generation: self.generation,
        };
        Ok(
            or_stop(&self.name, self.sink.checkpoint(&at), &mut self.shutdown)
                .await?
                .is_some(),
        )
    }

    /// Dead-letters and parks the batch's DLQ records and moves the cursor past
    /// the batch, in one transaction, on the commit connection (see `commit`).
    async fn commit(&mut self, batch: Batch, delivered: usize) -> Result<(), RunnerError> {
        let Batch {
            last,
            mut records,
            replaying,
            ..
        } = batch;
        // A DLQ item keeps the body it would have been sent with: items a sink renders
        // from the event carry none, and a replay after the config changed (a transform
        // added) must not send an empty body.
        if !self.plan.is_transformed() {
            for r in records.iter_mut().filter(|r| r.item.body.is_null()) {
                r.item.body = serde_json::to_value(&*r.item.event).unwrap_or_default();
            }
        }
        records.sort_by_key(|r| r.pos);
        let dead = records.len();
        let commit = Commit {
            sink: self.name.clone(),
            cursor: last,
            generation: self.generation,
            records,
            replaying,
        };
        self.commits.start(&self.name, commit).await?;
        self.cursor = last;
        tracing::debug!(sink = %self.name, cursor = self.cursor, delivered, dead_lettered = dead, "cursor advancing");
        Ok(())
    }
}

/// A replayed entry that is not delivered: its id, row, new state and error.
pub(super) type ReplayFailure = (i64, String, DlqState, Option<String>);

/// A DLQ replay's results as `dlq_settle` takes them: the delivered entries' ids, and
/// the others with their new state (and error).
pub(super) fn replay_outcome(
    replay: &[crate::journal::DlqEntry],
    results: Vec<ItemResult>,
) -> (Vec<i64>, Vec<ReplayFailure>) {
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
    (delivered, failed)
}
