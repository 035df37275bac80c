//! One batch through the producer: render and enqueue, await the acks, and on
//! failure recover (new producer session, read-back) and retry what is missing.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Instant;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer};

use super::records::Recs;
use super::retry::{backoff, record_disposition, Failure};
use super::transaction::is_fenced;
use super::{KafkaSink, RENDER_CHUNK, STALL};
use crate::kafka::acks::{Lot, Outcome, SinkProducer};
use crate::kafka::progress;
use crate::retry::Disposition;
use crate::{AttemptOutcome, BatchAttempt, DeliveryIds, ItemResult, Outgoing, SinkError};

/// How long a record librdkafka's full queue refused waits before it is offered again.
const QUEUE_FULL_WAIT: std::time::Duration = std::time::Duration::from_millis(1);

/// Hands `record` to the producer. While librdkafka's queue is full
/// (`queue.buffering.max.*` below what is in flight) it waits for
/// acknowledgements to make room, as long as a broker may stall ([`STALL`]).
pub(super) async fn hand_over<K, P>(
    producer: &SinkProducer,
    mut record: BaseRecord<'_, K, P, usize>,
) -> Result<(), KafkaError>
where
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    let mut full_since: Option<Instant> = None;
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                if full_since.get_or_insert_with(Instant::now).elapsed() < STALL =>
            {
                record = back;
                tokio::time::sleep(QUEUE_FULL_WAIT).await;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// A batch handed to the producer whose acknowledgements are not yet awaited
/// (`submit_batch` → `settle_batch`).
pub(super) struct Submitted {
    started: Instant,
    results: Vec<Option<ItemResult>>,
    recs: Recs,
    pending: Vec<usize>,
    /// The handed-over chunks' acknowledgements, in order.
    lots: Vec<Lot>,
    /// Why enqueueing stopped part-way (the rest was never handed over).
    enqueue_error: Option<String>,
    stops: Stops,
}

/// Rows of the batch one of whose records was refused for good (dead-lettered
/// as it was rendered or handed over), and the records of those rows held back
/// after it: parked, never handed over, so a row's later change never reaches
/// Kafka ahead of the one in its DLQ. (A record the broker refuses after
/// taking it stops only the row's later batches: the rest of its batch is out.)
#[derive(Default)]
struct Stops {
    /// Per stopped row, the first record index held back (records before it,
    /// sent before the refusal, are retried as usual).
    rows: HashMap<String, usize>,
    held: HashSet<usize>,
}

impl Stops {
    /// Whether record `i` of `row` is held back.
    fn holds(&self, row: &str, i: usize) -> bool {
        self.rows.get(row).is_some_and(|&from| i >= from)
    }

    /// Stops `row` from record `from` on (the first stop of a row counts).
    fn stop(&mut self, row: &str, from: usize) {
        self.rows.entry(row.to_string()).or_insert(from);
    }
}

impl KafkaSink {
    /// `Sink::deliver`: every item delivered or dead-lettered, retrying for ever
    /// what fails for a passing reason.
    pub(super) async fn deliver_batch(
        &mut self,
        items: &[Outgoing],
    ) -> Result<Vec<ItemResult>, SinkError> {
        self.submit_batch(items).await?;
        self.settle_batch(items).await
    }

    /// The first half of a delivery: renders the batch and hands it to the
    /// producer, without waiting for the broker.
    pub(super) async fn submit_batch(&mut self, items: &[Outgoing]) -> Result<(), SinkError> {
        self.submitted = None;
        let started = Instant::now();
        let now = chrono::Utc::now();
        self.batch_started_at = now.to_rfc3339();
        self.batch_started_ms = now.timestamp_millis();
        let mut results: Vec<Option<ItemResult>> = vec![None; items.len()];
        let mut recs = self.kept.take().unwrap_or_default();
        // Rendered and enqueued chunk by chunk, so the broker works on the first
        // records while the rest are rendered.
        let mut pending = Vec::with_capacity(items.len());
        let mut lots = Vec::new();
        let mut enqueue_error: Option<String> = None;
        let mut skipped = 0usize;
        let mut stops = Stops::default();
        for chunk in (0..items.len()).collect::<Vec<_>>().chunks(RENDER_CHUNK) {
            let from = recs.len();
            for &i in chunk {
                if stops.rows.contains_key(&items[i].row) {
                    results[i] = Some(ItemResult::Parked);
                } else if let Err(error) = self.records(i, &items[i], &mut recs) {
                    results[i] = Some(ItemResult::DeadLettered { error });
                    // It left no records: every later one of its row is held.
                    stops.stop(&items[i].row, recs.len());
                }
            }
            // Records a read-back found were written before a crash: not again.
            let chunk_pending: Vec<usize> = (from..recs.len())
                .filter(|&i| self.seen.is_empty() || !self.seen.remove(&recs.id(i)))
                .collect();
            skipped += recs.len() - from - chunk_pending.len();
            if enqueue_error.is_none() {
                match self.enqueue(&recs, &chunk_pending, items, &mut stops).await {
                    Ok(lot) => lots.push(lot),
                    Err(f) if f.disposition() == Disposition::Definite => {
                        return Err(self.definite(f.to_string()))
                    }
                    Err(f) => enqueue_error = Some(f.to_string()),
                }
            }
            pending.extend(chunk_pending);
        }
        if skipped > 0 {
            tracing::info!(sink = %self.name, skipped, "skipping records already in Kafka (found by the read-back)");
        }
        self.submitted = Some(Submitted {
            started,
            results,
            recs,
            pending,
            lots,
            enqueue_error,
            stops,
        });
        Ok(())
    }

    /// The second half: awaits the acknowledgements of the submitted batch (or
    /// submits `items` first when nothing is), recovers and retries what failed,
    /// and audits the batch.
    pub(super) async fn settle_batch(
        &mut self,
        items: &[Outgoing],
    ) -> Result<Vec<ItemResult>, SinkError> {
        let submitted = match self.submitted.take() {
            Some(s) if s.results.len() == items.len() => s,
            _ => {
                self.submit_batch(items).await?;
                self.submitted.take().ok_or_else(|| {
                    self.definite("the batch was not submitted (a bug in pgcdc)".into())
                })?
            }
        };
        let Submitted {
            started,
            mut results,
            recs,
            mut pending,
            lots,
            enqueue_error,
            mut stops,
        } = submitted;
        // Under HA a batch is one transaction: a failed round aborts all of it.
        let sent_in_batch = pending.clone();
        let mut first_round = Some((self.await_all(lots).await, enqueue_error));
        let mut round = 0u32;
        while !pending.is_empty() {
            round += 1;
            let mut last_error = String::new();
            let sent = match first_round.take() {
                Some((mut outcomes, error)) => {
                    // Records after an enqueue failure were never handed over.
                    if let Some(m) = &error {
                        last_error = m.clone();
                    }
                    while outcomes.len() < pending.len() {
                        outcomes.push(Err(KafkaError::Canceled));
                    }
                    Ok(outcomes)
                }
                None => self.send(&recs, &pending, items, &mut stops).await,
            };
            let mut failed = match sent {
                Err(f) if f.disposition() == Disposition::Definite => {
                    return Err(self.definite(f.to_string()))
                }
                Err(f) => {
                    last_error = f.to_string();
                    pending.clone()
                }
                Ok(outcomes) => {
                    if let Some(e) = outcomes.iter().find_map(|o| o.as_ref().err()) {
                        if is_fenced(e) {
                            return Err(self.definite(format!(
                                "lost leadership: a newer producer of this sink fenced this one ({e})"
                            )));
                        }
                    }
                    self.book_acks(
                        &recs,
                        &pending,
                        outcomes,
                        &stops,
                        &mut results,
                        &mut last_error,
                    )
                }
            };
            if failed.is_empty() {
                match self.commit().await {
                    Ok(()) => {
                        self.settle_committed();
                        break;
                    }
                    Err(f) if f.disposition() == Disposition::Definite => {
                        return Err(self.definite(f.to_string()))
                    }
                    Err(f) => last_error = f.to_string(),
                }
            }
            if let Err(f) = self.check_not_fenced() {
                return Err(self.definite(f.to_string()));
            }
            if self.transactional() {
                // The transaction is aborted: every record it held is sent again
                // (unless the read-back finds it), not only the failed ones.
                self.uncommitted.clear();
                failed = sent_in_batch
                    .iter()
                    .copied()
                    .filter(|&i| {
                        !stops.held.contains(&i)
                            && !matches!(
                                results[recs.item(i)],
                                Some(ItemResult::DeadLettered { .. })
                            )
                    })
                    .collect();
            }
            tracing::warn!(sink = %self.name, round, failed = failed.len(), error = %last_error,
                "Kafka delivery failed; will start a new producer session, read back what reached the broker, and retry");
            let mut retrying = BTreeSet::new();
            for &i in &failed {
                if retrying.insert(recs.item(i)) {
                    let a = self.audit_attempt(
                        &items[recs.item(i)],
                        round,
                        started,
                        AttemptOutcome::Retrying,
                        Some(last_error.clone()),
                    );
                    self.audit.record(a).await;
                }
            }
            tokio::time::sleep(backoff(round)).await;
            pending = self.recover_round(&recs, failed).await?;
        }
        // What the broker took is one audit row for the batch; a dead letter keeps its own.
        let mut out = Vec::with_capacity(items.len());
        let mut delivered = DeliveryIds::default();
        for (item, r) in items.iter().zip(results) {
            let r = r.unwrap_or(ItemResult::Delivered);
            match &r {
                ItemResult::DeadLettered { error } => {
                    let error = Some(error.clone());
                    let a = self.audit_attempt(
                        item,
                        round.max(1),
                        started,
                        AttemptOutcome::Failed,
                        error,
                    );
                    self.audit.record(a).await;
                }
                // The runner parks it behind its row's dead letter.
                ItemResult::Parked => {}
                _ if item.part == 0 => delivered.push(item.event.id.as_str()),
                _ => delivered.push(&item.delivery_id()),
            }
            out.push(r);
        }
        self.audit
            .record_batch(BatchAttempt {
                sink: self.name.clone(),
                attempt: round.max(1),
                at: crate::AttemptTime::now(),
                latency_ms: started.elapsed().as_millis() as u64,
                outcome: AttemptOutcome::Delivered,
                ids: delivered,
            })
            .await;
        self.kept = recs.recycle();
        Ok(out)
    }

    /// Books a round's acknowledgements: offsets of what the broker took, dead
    /// letters for records it refused for good; returns the records to retry
    /// (`last_error` says why).
    fn book_acks(
        &mut self,
        recs: &Recs,
        pending: &[usize],
        outcomes: Vec<Outcome>,
        stops: &Stops,
        results: &mut [Option<ItemResult>],
        last_error: &mut String,
    ) -> Vec<usize> {
        let mut failed = Vec::new();
        // Next offsets per topic and partition, gathered with borrowed topic names
        // and added to the sink's books once per partition.
        let mut acked: HashMap<(&str, i32), i64> = HashMap::new();
        for (&i, outcome) in pending.iter().zip(outcomes) {
            if stops.held.contains(&i) {
                results[recs.item(i)].get_or_insert(ItemResult::Parked);
                continue;
            }
            match outcome {
                Ok((partition, offset)) => {
                    let e = acked.entry((recs.topic(i), partition)).or_insert(0);
                    *e = (*e).max(offset + 1);
                    self.dirty = true;
                    self.since_progress += 1;
                }
                Err(e) if record_disposition(&e) == Disposition::Definite => {
                    results[recs.item(i)] = Some(ItemResult::DeadLettered {
                        error: format!("Kafka refused the record: {e}"),
                    });
                }
                Err(e) => {
                    if last_error.is_empty() || !matches!(e, KafkaError::Canceled) {
                        *last_error = e.to_string();
                    }
                    failed.push(i);
                }
            }
        }
        // Under HA an offset counts once its transaction is committed.
        let next = if self.transactional() {
            &mut self.uncommitted
        } else {
            &mut self.next
        };
        for ((topic, partition), offset) in acked {
            let e = next.entry((topic.to_string(), partition)).or_insert(0);
            *e = (*e).max(offset);
        }
        failed
    }

    /// The committed transaction's offsets now count for the progress record.
    fn settle_committed(&mut self) {
        for (tp, next) in std::mem::take(&mut self.uncommitted) {
            let e = self.next.entry(tp).or_insert(next);
            *e = (*e).max(next);
        }
    }

    /// After a failed round: a new idempotent session (what the old one had in
    /// flight is settled by the read-back), and of `failed` what the read-back
    /// did not find; all of it when the read-back fails for a passing reason.
    /// Under HA the new session is started before the read-back: that ends the
    /// old one's transaction, so the read-back sees what consumers will see.
    async fn recover_round(
        &mut self,
        recs: &Recs,
        failed: Vec<usize>,
    ) -> Result<Vec<usize>, SinkError> {
        if let Err(f) = self.check_not_fenced() {
            return Err(self.definite(f.to_string()));
        }
        self.drop_producer();
        if let Err(f) = self.fence_others().await {
            if f.disposition() == Disposition::Definite {
                return Err(self.definite(f.to_string()));
            }
            tracing::warn!(sink = %self.name, error = %f, "cannot start a new transactional session yet; retrying");
            return Ok(failed);
        }
        match self.recover().await {
            Ok(found) => {
                // Records a read-back at start found and this process has not
                // skipped yet belong to events after the checkpoint: they do not count.
                let seen = &self.seen;
                self.count_offsets(found.next_where(|id| !seen.contains(id)));
                self.dirty = true;
                Ok(failed
                    .into_iter()
                    .filter(|&i| !found.contains(&recs.id(i)))
                    .collect())
            }
            Err(f) if f.disposition() == Disposition::Definite => Err(self.definite(f.to_string())),
            Err(f) => {
                tracing::warn!(sink = %self.name, error = %f, "read-back failed; retrying");
                Ok(failed)
            }
        }
    }

    /// Produces `recs[pending]` in order; one result per pending record.
    async fn send(
        &mut self,
        recs: &Recs,
        pending: &[usize],
        items: &[Outgoing],
        stops: &mut Stops,
    ) -> Result<Vec<Outcome>, Failure> {
        let lot = self.enqueue(recs, pending, items, stops).await?;
        Ok(self.await_all(vec![lot]).await)
    }

    /// Hands `recs[pending]` to the producer, in order (new topics registered
    /// first): one lot, its places in the order of `pending`. Records of rows in
    /// `stops` are held back; a record refused for good stops its row.
    async fn enqueue(
        &mut self,
        recs: &Recs,
        pending: &[usize],
        items: &[Outgoing],
        stops: &mut Stops,
    ) -> Result<Lot, Failure> {
        // Only topics not yet in the progress record (almost always none) are collected.
        let topics: BTreeSet<String> = pending
            .iter()
            .map(|&i| recs.topic(i))
            .filter(|t| !self.progress.topics.contains_key(*t))
            .map(str::to_string)
            .collect();
        self.register_topics(topics).await?;
        let producer = self.writing_producer().await?;
        let lot = producer.client().context().acks.open(pending.len());
        for (place, &i) in pending.iter().enumerate() {
            let row = &items[recs.item(i)].row;
            if stops.holds(row, i) {
                stops.held.insert(i);
                lot.book(place, Err(KafkaError::Canceled));
                continue;
            }
            let r = recs.view(i);
            let mut headers = OwnedHeaders::new_with_capacity(6)
                .insert(Header {
                    key: progress::H_EVENT_ID,
                    value: Some(r.id.as_bytes()),
                })
                .insert(Header {
                    key: progress::H_LSN,
                    value: Some(r.lsn.as_bytes()),
                })
                .insert(Header {
                    key: progress::H_TABLE,
                    value: Some(r.table.as_bytes()),
                })
                .insert(Header {
                    key: progress::H_OP,
                    value: Some(r.op.as_bytes()),
                })
                .insert(Header {
                    key: progress::H_SINK,
                    value: Some(self.name.as_bytes()),
                });
            if let Some((key, value)) = r.header {
                headers = headers.insert(Header {
                    key,
                    value: Some(value),
                });
            }
            let mut record: BaseRecord<'_, [u8], [u8], usize> =
                BaseRecord::with_opaque_to(r.topic, lot.opaque(place)).headers(headers);
            if let Some(k) = r.key {
                record = record.key(k);
            }
            if let Some(v) = r.value {
                record = record.payload(v);
            }
            if let Err(e) = hand_over(&producer, record).await {
                // Booked as an acknowledgement with this error would be: a record
                // too large is dead-lettered, a passing failure (the producer
                // failed, or stayed full) fails the round, which recovers.
                tracing::debug!(sink = %self.name, error = %e, "enqueue failed");
                if record_disposition(&e) == Disposition::Definite {
                    stops.stop(row, i + 1);
                }
                lot.book(place, Err(e));
            }
        }
        Ok(lot)
    }

    /// The acknowledgements of enqueued lots, in order.
    async fn await_all(&self, lots: Vec<Lot>) -> Vec<Outcome> {
        let enqueued = Instant::now();
        let mut out = Vec::new();
        for lot in lots {
            out.extend(lot.outcomes().await);
        }
        tracing::debug!(sink = %self.name, records = out.len(), acks_ms = enqueued.elapsed().as_millis() as u64, "batch acknowledged");
        out
    }

    /// What the broker holds after the last progress record's offsets (read
    /// back); the caller decides which of it counts for the next progress record.
    pub(super) async fn recover(&self) -> Result<progress::Found, Failure> {
        let base = self.base.clone();
        let record = self.progress.clone();
        let name = self.name.clone();
        let ctx = self.context();
        let committed = self.transactional();
        let found = tokio::task::spawn_blocking(move || {
            let consumer = progress::consumer(&base, ctx, committed)?;
            progress::read_written(&consumer, &record, &name, STALL)
        })
        .await
        .map_err(|e| Failure::Broker(e.to_string()))??;
        Ok(found)
    }

    /// Offsets that now count for the progress record.
    pub(super) fn count_offsets(&mut self, offsets: BTreeMap<(String, i32), i64>) {
        for (tp, next) in offsets {
            let e = self.next.entry(tp).or_insert(next);
            *e = (*e).max(next);
        }
    }
}
