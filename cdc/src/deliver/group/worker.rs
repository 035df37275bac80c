//! The worker's loop: take a batch of records from the partitions this
//! process holds, hand it to every sink exactly as the journal runner does
//! (plan, parking behind dead letters, delivery, DLQ), then commit each
//! partition's offset past the batch. State + one handler per step.
//!
//! A partition's records come in offset order and a batch is settled as a
//! whole before the next one is taken, so one row's events (same key, same
//! partition) reach a sink in commit order. Nothing is committed that is not
//! settled: a crash or a rebalance re-delivers at most the batch in hand,
//! with the same event ids.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use pgcdc_schema::event::Name;
use pgcdc_sinks::http::HttpSink;
use pgcdc_sinks::stdout::StdoutSink;
use pgcdc_sinks::{AuditLog, ItemResult, Outgoing, Sink, SinkError};
use rdkafka::message::{Headers, Message};
use tokio::sync::watch;

use super::consumer::{self, GroupConsumer, GroupState};
use super::record::{self, Decoded, RawRecord};
use crate::deliver::plan::{Mapped, SinkPlan};
use crate::deliver::runner::{
    audit_skipped, blocking, deliver_or_stop, map_or_stop, JournalReader, RunnerError, BATCH_BYTES,
};
use crate::journal::{DlqRecord, DlqState, JournalError};

/// How long the batch waits for more records once it has one.
const LINGER: Duration = Duration::from_millis(20);

/// A sink `pgcdc deliver` runs.
pub(crate) enum DeliverSink {
    /// HTTP.
    Http(Box<HttpSink>),
    /// Standard output.
    Stdout(StdoutSink),
}

impl DeliverSink {
    fn name(&self) -> &str {
        match self {
            DeliverSink::Http(s) => s.name(),
            DeliverSink::Stdout(s) => s.name(),
        }
    }

    fn wants_native_body(&self) -> bool {
        match self {
            DeliverSink::Http(s) => s.wants_native_body(),
            DeliverSink::Stdout(s) => s.wants_native_body(),
        }
    }

    async fn deliver(
        &mut self,
        items: &[Outgoing],
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Option<Vec<ItemResult>>, RunnerError> {
        match self {
            DeliverSink::Http(s) => deliver_or_stop(&mut **s, items, shutdown).await,
            DeliverSink::Stdout(s) => deliver_or_stop(s, items, shutdown).await,
        }
    }

    async fn close(&mut self) -> Result<(), SinkError> {
        match self {
            DeliverSink::Http(s) => s.close().await,
            DeliverSink::Stdout(s) => s.close().await,
        }
    }
}

/// One sink with its plan and its state-store session (DLQ).
pub(crate) struct SinkSlot {
    name: String,
    sink: DeliverSink,
    plan: Arc<SinkPlan>,
    store: Option<JournalReader>,
}

impl SinkSlot {
    /// A sink, its plan and its own session on the state store.
    pub(crate) fn new(sink: DeliverSink, plan: SinkPlan, store: JournalReader) -> SinkSlot {
        let plan = Arc::new(plan.with_native_body(sink.wants_native_body()));
        SinkSlot {
            name: sink.name().to_owned(),
            sink,
            plan,
            store: Some(store),
        }
    }

    /// Runs `f` on the sink's store session, on a blocking thread.
    async fn store<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut JournalReader) -> Result<T, JournalError> + Send + 'static,
    ) -> Result<T, RunnerError> {
        let reader = self.store.take().ok_or_else(|| {
            RunnerError::Task(self.name.clone(), "the state store session is gone".into())
        })?;
        let (reader, out) = blocking(&self.name, reader, f).await?;
        self.store = Some(reader);
        Ok(out)
    }
}

/// Why a worker stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WorkerError {
    /// A sink, the plan or the state store failed (as in `pgcdc run`).
    #[error(transparent)]
    Runner(#[from] RunnerError),
    /// A record that is not a pgcdc event: nothing past it is committed.
    #[error("topic {topic} partition {partition} offset {offset}: {message}. Nothing at or after this offset is committed; remove the topic from [deliver] topics, or move the group past the record (kafka-consumer-groups --reset-offsets --to-offset {next}) if it is not needed")]
    Record {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// Offset.
        offset: i64,
        /// Next offset.
        next: i64,
        /// What is wrong with it.
        message: String,
    },
}

/// One record of a batch, decoded.
struct Taken {
    topic: String,
    partition: i32,
    offset: i64,
    decoded: Decoded,
}

/// What the loop does after a step.
enum Next {
    Continue,
    Close,
    Stop,
}

/// The worker: the group's consumer and every sink.
pub(crate) struct Worker {
    pub(crate) consumer: Arc<GroupConsumer>,
    pub(crate) state: Arc<GroupState>,
    pub(crate) sinks: Vec<SinkSlot>,
    pub(crate) audit: AuditLog,
    pub(crate) max_batch: usize,
    /// The first configured topic: the holder of its partition 0 runs DLQ replays.
    pub(crate) replay_partition: (String, i32),
    pub(crate) shutdown: watch::Receiver<bool>,
}

impl Worker {
    /// Delivers until shutdown (the batch in hand is finished first) or a definite error.
    pub(crate) async fn run(mut self) -> Result<(), WorkerError> {
        let _running: Vec<_> = self
            .sinks
            .iter()
            .map(|s| crate::health::health().sink_running(&s.name))
            .collect();
        loop {
            match self.step().await? {
                Next::Continue => {}
                Next::Close => {
                    for slot in &mut self.sinks {
                        if let Err(e) = slot.sink.close().await {
                            tracing::warn!(sink = %slot.name, error = %e, "sink close failed");
                        }
                    }
                    return Ok(());
                }
                Next::Stop => return Ok(()),
            }
        }
    }

    async fn step(&mut self) -> Result<Next, WorkerError> {
        if *self.shutdown.borrow() {
            return Ok(Next::Close);
        }
        if self.state.assigned().contains(&self.replay_partition) {
            for i in 0..self.sinks.len() {
                if !self.replay(i).await? {
                    return Ok(Next::Stop);
                }
            }
        }
        let Some(batch) = self.take().await? else {
            return Ok(Next::Close);
        };
        if batch.is_empty() {
            return Ok(Next::Continue);
        }
        let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for t in &batch {
            next.insert((t.topic.clone(), t.partition), t.offset + 1);
        }
        let events: Vec<(i64, Arc<pgcdc_schema::ChangeEvent>, Name)> = batch
            .into_iter()
            .filter_map(|t| match t.decoded {
                Decoded::Event(e, table) => Some((t.offset, Arc::new(*e), Name::from(table))),
                Decoded::Tombstone => None,
            })
            .collect();
        for i in 0..self.sinks.len() {
            if !self.settle(i, &events).await? {
                return Ok(Next::Stop);
            }
        }
        consumer::commit(&self.consumer, &self.state, &next).await;
        tracing::debug!(
            records = events.len(),
            partitions = next.len(),
            "batch settled and committed"
        );
        Ok(Next::Continue)
    }

    /// Up to `max_batch` records and about `BATCH_BYTES` of values (waiting up to
    /// a second for the first, then `LINGER` for each next); `None` on shutdown.
    async fn take(&mut self) -> Result<Option<Vec<Taken>>, WorkerError> {
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        let first_wait = Duration::from_secs(1);
        while batch.len() < self.max_batch && bytes < BATCH_BYTES {
            let wait = if batch.is_empty() { first_wait } else { LINGER };
            let received = tokio::select! {
                r = tokio::time::timeout(wait, self.consumer.recv()) => r,
                _ = self.shutdown.wait_for(|s| *s), if batch.is_empty() => return Ok(None),
            };
            let message = match received {
                Err(_) => break,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "Kafka consumer error; retrying (nothing unsettled is committed)");
                    if batch.is_empty() {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    break;
                }
                Ok(Ok(m)) => m,
            };
            let headers = message
                .headers()
                .map(|h| h.iter().map(|h| (h.key, h.value)).collect())
                .unwrap_or_default();
            bytes += message.payload_len();
            let raw = RawRecord {
                headers,
                key: message.key(),
                value: message.payload(),
            };
            let (topic, partition, offset) = (
                message.topic().to_owned(),
                message.partition(),
                message.offset(),
            );
            let decoded = record::decode(&raw).map_err(|message| WorkerError::Record {
                topic: topic.clone(),
                partition,
                offset,
                next: offset + 1,
                message,
            })?;
            if let Some(ts) = message.timestamp().to_millis() {
                self.state.pending(&topic, partition, ts);
            }
            batch.push(Taken {
                topic,
                partition,
                offset,
                decoded,
            });
        }
        Ok(Some(batch))
    }

    /// One sink's share of a batch: select and map, park rows with dead letters,
    /// deliver, and dead-letter or park what failed. `false` on shutdown mid-call
    /// (nothing is committed; the batch comes again).
    async fn settle(
        &mut self,
        i: usize,
        events: &[(i64, Arc<pgcdc_schema::ChangeEvent>, Name)],
    ) -> Result<bool, WorkerError> {
        let shutdown = &mut self.shutdown;
        let audit = &self.audit;
        let slot = &mut self.sinks[i];
        let input: Vec<_> = events
            .iter()
            .map(|(_, e, t)| (Arc::clone(e), t.clone()))
            .collect();
        let Some(mapped) = map_or_stop(&slot.name, &slot.plan, input, shutdown).await? else {
            return Ok(false);
        };
        let mut items: Vec<(Outgoing, i64)> = Vec::new();
        for ((offset, event, _), result) in events.iter().zip(mapped) {
            match result {
                Ok(Mapped::NotSelected) => {}
                Ok(Mapped::Skipped(e)) => audit_skipped(audit, &slot.name, &e).await,
                Ok(Mapped::Items(mapped)) => items.extend(mapped.into_iter().map(|m| (m, *offset))),
                Err(error) => {
                    return Err(RunnerError::Mapping {
                        sink: slot.name.clone(),
                        event: event.id.to_string(),
                        error,
                    }
                    .into())
                }
            }
        }
        if items.is_empty() {
            return Ok(true);
        }
        let sink_name = slot.name.clone();
        let (parked_rows, replaying) = slot.store(move |r| r.dlq_rows(&sink_name)).await?;
        let mut records = Vec::new();
        let (parked, send): (Vec<_>, Vec<_>) = items
            .into_iter()
            .partition(|(item, _)| parked_rows.contains(&item.row));
        records.extend(parked.into_iter().map(|(item, pos)| DlqRecord {
            item,
            pos,
            state: DlqState::Parked,
            error: None,
        }));
        if !send.is_empty() {
            let (send, send_pos): (Vec<Outgoing>, Vec<i64>) = send.into_iter().unzip();
            let Some(results) = slot.sink.deliver(&send, shutdown).await? else {
                return Ok(false);
            };
            crate::metrics::delivered(&slot.name, &send, &results);
            for ((item, pos), result) in send.into_iter().zip(send_pos).zip(results) {
                match result {
                    ItemResult::Delivered => {}
                    ItemResult::DeadLettered { error } => {
                        tracing::warn!(sink = %slot.name, event = %item.delivery_id(), %error, "dead-lettered");
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
        if records.is_empty() {
            return Ok(true);
        }
        // As in the runner: a DLQ item keeps the body it would have been sent with.
        if !slot.plan.is_transformed() {
            for r in records.iter_mut().filter(|r| r.item.body.is_null()) {
                r.item.body = serde_json::to_value(&*r.item.event).unwrap_or_default();
            }
        }
        // Kafka offsets order records within a partition only: the DLQ keeps
        // the batch's order (each row's items stay in order).
        let sink_name = slot.name.clone();
        slot.store(move |r| r.commit_batch(&sink_name, 0, 0, &records, &replaying))
            .await?;
        Ok(true)
    }

    /// Replays an operator asked for, in DLQ order (only the holder of the
    /// replay partition does this, so one row's replays are never sent by two
    /// workers at once). `false` on shutdown mid-call.
    async fn replay(&mut self, i: usize) -> Result<bool, WorkerError> {
        let max_batch = self.max_batch;
        let shutdown = &mut self.shutdown;
        let slot = &mut self.sinks[i];
        let sink_name = slot.name.clone();
        let replay = slot
            .store(move |r| r.dlq_replay_batch(&sink_name, max_batch))
            .await?;
        if replay.is_empty() {
            return Ok(true);
        }
        let items: Vec<Outgoing> = replay.iter().map(|e| e.item.clone()).collect();
        let Some(results) = slot.sink.deliver(&items, shutdown).await? else {
            return Ok(false);
        };
        crate::metrics::delivered(&slot.name, &items, &results);
        let (delivered, failed) = crate::deliver::runner::replay_outcome(&replay, results);
        tracing::info!(sink = %slot.name, replayed = delivered.len(), failed = failed.len(), "DLQ replay batch");
        let sink_name = slot.name.clone();
        slot.store(move |r| r.dlq_settle(&sink_name, &delivered, &failed))
            .await?;
        Ok(true)
    }
}
